"""The command-line reference, generated from the typer app: every command, its help and its options.

The docs site renders it (``scripts/docs_hooks.py``), so the page is always the ``--help`` of the
version built.
"""

from __future__ import annotations

from typing import Any


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _default(parameter: Any) -> str:
    if parameter.required:
        return "**required**"
    default = parameter.default
    if default is None or default == () or default == []:
        return ""
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


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
            lines += ["| option | default | description |", "|---|---|---|"]
            lines += [f"| {_options(p)} | {_default(p)} | {_cell(getattr(p, 'help', '') or '')} |"
                      for p in rows]
            lines.append("")
    return "\n".join(lines)
