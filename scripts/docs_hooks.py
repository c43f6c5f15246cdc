"""MkDocs hooks. (The reference pages are generated into ``docs/reference`` by
``scripts/gen_reference.sh``, so they read the same on the repository host; a test checks they are
current.)

* Pages link benchmark figures where they live in the repository (``../benchmarks/results/x.png``, which
  also works when reading the Markdown on a forge); the site gets copies under ``results/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RESULTS_LINK = "../benchmarks/results/"


def on_files(files: Files, config: Any) -> Files:
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{figure.name}", abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    depth = page.file.src_uri.count("/")
    return markdown.replace(RESULTS_LINK, "../" * depth + "results/")
