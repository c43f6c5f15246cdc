"""The command-line reference, generated from the typer app: every command, its help and its options.

``scripts/gen_reference.sh`` writes it, with the configuration reference, into ``docs/reference/``
(readable on the repository host as on the site); a test fails when the pages are stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("\\[", "[").replace("|", "\\|")


def _default(parameter: Any) -> str:
    if parameter.required:
        return "**required**"
    shown = getattr(parameter, "show_default", None)
    if isinstance(shown, str):
        return f"`{shown}`"
    default = parameter.default
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


def _range(parameter: Any) -> str:
    """The bounds typer enforces on an option (``>= 1``, ``0 ... 64``), from its click type."""
    low, high = getattr(parameter, "min", None), getattr(parameter, "max", None)
    if low is not None and high is not None:
        return f"{low} ... {high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


def _options(parameter: Any) -> str:
    names = [*parameter.opts, *parameter.secondary_opts]
    if parameter.param_type_name == "argument":
        return f"`{parameter.name.upper()}` (argument)"
    return ", ".join(f"`{name}`" for name in names)


def cli_reference() -> str:
    """Markdown: the app's help, then per command its help text and a table of its options."""
    import typer.main

    from splitfed.cli import app

    group = typer.main.get_command(app)
    lines = [_cell(group.help or ""), "", "Global options (before the command): "
             + ", ".join(f"`{option}`" for parameter in group.params for option in parameter.opts
                         if option != "--help") + ".", ""]
    for name, command in group.commands.items():
        help_text = (command.help or "").strip()
        summary, _, rest = help_text.partition("\n\n")
        lines += [f"## splitfed {name}", "", _cell(summary), ""]
        if rest:
            lines += [_cell(rest), ""]
        rows = [parameter for parameter in command.params if "--help" not in parameter.opts]
        if rows:
            lines += ["| option | default | range | description |", "|---|---|---|---|"]
            lines += [f"| {_options(p)} | {_default(p)} | {_range(p)} | "
                      f"{_cell(getattr(p, 'help', '') or '')} |" for p in rows]
            lines.append("")
    return "\n".join(lines)


REFERENCE_PAGES = {
    "cli.md": ("# Command line\n\nGenerated from the commands themselves (`scripts/gen_reference.sh` "
               "rewrites this page; a test fails when it is stale). `splitfed COMMAND --help` (or `python -m "
               "splitfed COMMAND --help`) prints the same.\n\n", "splitfed.cli.reference", "cli_reference"),
    "config.md": ("# Configuration reference\n\n", "splitfed.settings_reference", "config_reference"),
}


def reference_pages() -> dict[str, str]:
    """``docs/reference`` page name -> its whole Markdown, generated from the code."""
    import importlib

    return {name: header + getattr(importlib.import_module(module), function)().rstrip("\n") + "\n"
            for name, (header, module, function) in REFERENCE_PAGES.items()}


def write_references(directory: Path) -> list[Path]:
    """Write the generated reference pages into ``directory`` (``docs/reference``)."""
    written = []
    for name, text in reference_pages().items():
        (directory / name).write_text(text)
        written.append(directory / name)
    return written
