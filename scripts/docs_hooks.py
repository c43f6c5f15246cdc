"""MkDocs hooks: pages generated from the code, so nothing is written twice.

* ``<!-- splitfed:config-reference -->`` becomes the configuration reference (from the pydantic
  settings), ``<!-- splitfed:cli-reference -->`` the options of every command.
* Pages link benchmark figures where they live in the repository (``../benchmarks/results/x.png``, which
  also works when reading the Markdown on a forge); the site gets copies under ``results/``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

MARKERS = {
    "<!-- splitfed:config-reference -->": ("splitfed.settings_reference", "config_reference"),
    "<!-- splitfed:cli-reference -->": ("splitfed.cli.reference", "cli_reference"),
}
RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
RESULTS_LINK = "../benchmarks/results/"


def on_files(files: Files, config: Any) -> Files:
    for figure in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{figure.name}", abs_src_path=str(figure)))
    return files


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    for marker, (module, function) in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, getattr(importlib.import_module(module), function)())
    depth = page.file.src_uri.count("/")
    return markdown.replace(RESULTS_LINK, "../" * depth + "results/")
