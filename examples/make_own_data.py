"""Write the "bring your own data" example files (examples/data/own/) from public data, as a user would
turn their own records into a CSV / TSV. Run from the repository root:

    .venv/bin/python examples/make_own_data.py

* boolq_train.csv (300 rows) and boolq_eval.csv (100 rows): SuperGLUE BoolQ's official validation rows
  1001-1400 of ../shared/data/superglue/BoolQ/val.jsonl (CC-BY-SA-3.0; not the rows splitfed ships),
  columns passage, question, answer with the answer as 0 (no) / 1 (yes), as a spreadsheet would hold it.
* xsum_train.tsv (60 rows) and xsum_eval.tsv (20 rows): XSum articles and summaries from the rows
  splitfed ships (splitfed/tasks/data/xsum, see its SOURCES.md), columns article, summary.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "examples" / "data" / "own"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    boolq = [json.loads(line) for line in (ROOT.parent / "shared/data/superglue/BoolQ/val.jsonl").open()]
    rows = [{"passage": r["passage"], "question": r["question"], "answer": int(r["label"])}
            for r in boolq[1000:1400]]
    for name, part in (("boolq_train.csv", rows[:300]), ("boolq_eval.csv", rows[300:])):
        with (OUT / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["passage", "question", "answer"])
            writer.writeheader()
            writer.writerows(part)
    xsum = ROOT / "splitfed" / "tasks" / "data" / "xsum"
    for name, source, count in (("xsum_train.tsv", "test_rows101-220.jsonl", 60),
                                ("xsum_eval.tsv", "test_first100.jsonl", 20)):
        records = [json.loads(line) for line in (xsum / source).open()][:count]
        with (OUT / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, ["article", "summary"], delimiter="\t")
            writer.writeheader()
            writer.writerows({"article": r["document"], "summary": r["summary"]} for r in records)
    print(f"wrote {sorted(p.name for p in OUT.iterdir())} in {OUT}")


if __name__ == "__main__":
    main()
