"""Read rows (dicts) from JSONL, JSON, CSV/TSV, Parquet files or a Hugging Face dataset saved to disk."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Literal

FileFormat = Literal["jsonl", "json", "csv", "tsv", "parquet", "hf"]
FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "tsv", "parquet", "hf")
_SUFFIXES = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}


def detect_format(path: Path) -> str:
    """The format of ``path`` from its suffix; a directory is a dataset saved with ``save_to_disk``."""
    if path.is_dir():
        return "hf"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the format of {path} from its suffix; give format: one of "
                         f"{', '.join(FORMATS)}")
    return fmt


def read_rows(path: str | Path, fmt: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    """All rows of a data file as dicts.

    ``json`` is a list of rows or an object whose ``data`` list holds them (the CoQA layout).
    ``hf`` is a directory written by ``datasets``' ``save_to_disk``; a ``DatasetDict`` needs ``split``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data.get("data") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows or an object with a 'data' list")
        return rows
    if fmt in ("csv", "tsv"):
        with path.open(encoding="utf-8", newline="") as f:
            return [dict(row) for row in csv.DictReader(f, delimiter="\t" if fmt == "tsv" else ",")]
    if fmt == "parquet":
        return _optional("pyarrow.parquet", "pyarrow").read_table(path).to_pylist()
    return _read_hf(path, split)


class DataError(ValueError):
    """A data file that cannot be read as a task's rows: the message names the task, the file and,
    where there is one, the row."""


def read_task_rows(task: str, path: Path, fmt: str | None = None, split: str | None = None,
                   which: str = "") -> list[dict[str, Any]]:
    """``read_rows``, with every failure (missing, not UTF-8, unparsable, no rows) as a ``DataError``
    naming ``task`` and the file; ``which`` names the rows wanted in the message (train, val)."""
    try:
        rows = read_rows(path, fmt, split)
    except UnicodeDecodeError as err:
        raise DataError(f"task {task!r}: {path}: not UTF-8 text ({err.reason} at byte {err.start}); "
                        "save the file as UTF-8") from None
    except (OSError, ValueError, ImportError) as err:
        raise DataError(f"task {task!r}: {err}") from None
    if not rows:
        path = Path(path)
        header = " (a header line and no rows)" if path.suffix.lower() in (".csv", ".tsv") and \
            path.is_file() and path.read_text(encoding="utf-8", errors="replace").strip() else ""
        raise DataError(f"task {task!r}: {path} holds no {which + ' ' if which else ''}rows{header}")
    return rows


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not valid JSON: {err.msg}") from err
    return rows


def _read_hf(path: Path, split: str | None) -> list[dict[str, Any]]:
    datasets = _optional("datasets", "datasets")
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if split is None or split not in loaded:
            raise ValueError(f"{path} holds the splits {', '.join(loaded)}; name one as split")
        loaded = loaded[split]
    return loaded.to_list()


def _optional(module: str, package: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"reading this format needs {package}: pip install {package}") from err
