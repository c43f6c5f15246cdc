"""The ``splitfed`` Typer app: global options, logging setup and what every command shares."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from splitfed import __version__

app = typer.Typer(
    name="splitfed",
    help=(
        "Federated split fine-tuning and split inference of LLMs. Each client keeps the embedding, "
        "the first blocks (head), the last blocks and the LM head (tail) with its private data; a "
        "server runs the middle blocks (trunk)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
INTERRUPTED_EXIT = 130  # stopped by SIGTERM/SIGINT after checkpointing; resumable


def _version(value: bool) -> None:
    if value:
        console.print(f"splitfed {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug details.")] = False,
    log_json: Annotated[bool, typer.Option("--log-json", help="Logs as one JSON object per line on "
                                           "stderr (for log collectors).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Federated split fine-tuning and split inference of LLMs."""
    if log_json:
        from splitfed.observability import JsonFormatter

        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter())
    else:
        handler = RichHandler(console=console, show_path=False, show_time=False)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[handler], force=True)
    for noisy in ("httpx", "urllib3", "filelock", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


ConfigOption = Annotated[Path | None, typer.Option("--config", "-c", help="YAML or TOML file with the "
                                                  "settings; flags given here override it.")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="Any setting as KEY=VALUE with a dotted "
                                                     "key, e.g. --set adapter.r=16 --set max_batch=32 "
                                                     "(repeatable; overrides the file).")]


def _merge(assignments: list[str] | None, flags: dict) -> dict:
    """--set KEY=VALUE settings, then the named flags that were given (they win)."""
    from splitfed.config import parse_assignments

    return {**parse_assignments(assignments), **{k: v for k, v in flags.items() if v is not None}}


def _fail(error: Exception) -> typer.Exit:
    console.print(f"[red]error:[/] {error}", soft_wrap=True)  # one line: readable, searchable, copyable
    return typer.Exit(2)
