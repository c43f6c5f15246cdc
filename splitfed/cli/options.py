"""Command-line options made from the typed settings: one source, two views.

``setting("EvalSettings", "clients")`` is a ``typer.Option`` whose help is the field's description,
whose shown default is the field's default, and whose bounds are the field's: the configuration
reference and ``--help`` cannot disagree. The option's own default stays None, so a flag not given
leaves the config file's value (or the field's default) in force.

The settings import torch (through their model types), and ``splitfed --help`` should not wait for
it: the fields are read from ``settings_fields.json``, written from the settings themselves by
``python -m splitfed.cli.options`` (``scripts/gen_reference.sh``); a test fails when it is stale.
"""

from __future__ import annotations

import enum
import importlib
import json
import sys
import typing
from functools import cache
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

FIELDS_FILE = Path(__file__).with_name("settings_fields.json")
SETTINGS = {
    "AttackSettings": "splitfed.attacks.harness",
    "ClientSettings": "splitfed.client.settings",
    "DemoSettings": "splitfed.demo",
    "EvalSettings": "splitfed.evaluation.settings",
    "ServerSettings": "splitfed.server.settings",
}


def _shown_default(info: Any) -> str | None:
    """A field's default as ``--help`` shows it (None: required, or a nested settings block)."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if info.default is PydanticUndefined and info.default_factory is None:
        return None
    value = info.default_factory() if info.default_factory is not None else info.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, BaseModel):
        return None
    if isinstance(value, Path):
        from splitfed.settings_reference import portable_path

        return portable_path(value)
    if isinstance(value, list | tuple):
        return ", ".join(str(item) for item in value) or "none"
    return str(value)


def _bounds(info: Any) -> dict[str, Any]:
    """``min`` / ``max`` from ``ge``/``gt``/``le``/``lt`` (an open bound on an integer becomes the next
    integer; on a float it is said in words, and validation enforces it)."""
    import annotated_types

    limits: dict[str, Any] = {}
    words = []
    integer = info.annotation is int or int in typing.get_args(info.annotation)
    for item in info.metadata:
        if isinstance(item, annotated_types.Ge):
            limits["min"] = item.ge
        elif isinstance(item, annotated_types.Gt):
            limits.update({"min": item.gt + 1} if integer else {})
            words += [] if integer else [f"> {item.gt}"]
        elif isinstance(item, annotated_types.Le):
            limits["max"] = item.le
        elif isinstance(item, annotated_types.Lt):
            limits.update({"max": item.lt - 1} if integer else {})
            words += [] if integer else [f"< {item.lt}"]
    if words:
        limits["words"] = ", ".join(words)
    return limits


def _fields(model: Any, prefix: str = "") -> dict[str, dict[str, Any]]:
    from pydantic import BaseModel

    fields = {}
    for name, info in model.model_fields.items():
        path = prefix + name
        entry = {"help": info.description or "", "default": _shown_default(info),
                 "required": info.is_required(), **_bounds(info)}
        fields[path] = entry
        nested = [arg for arg in (info.annotation, *typing.get_args(info.annotation))
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if len(nested) == 1:
            fields.update(_fields(nested[0], path + "."))
    return fields


def collect_fields() -> dict[str, dict[str, dict[str, Any]]]:
    """Every field of the settings the commands take: help, shown default, required, bounds."""
    return {name: _fields(getattr(importlib.import_module(module), name))
            for name, module in sorted(SETTINGS.items())}


@cache
def _known() -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(FIELDS_FILE.read_text())


def setting(model: str, path: str, *flags: str, help: str | None = None, default: str | None = None) -> Any:
    """A ``typer.Option`` for the field ``path`` of the settings ``model``: its description (or
    ``help``), its default shown (or ``default``, where the command's is another), its bounds."""
    field = _known()[model][path]
    text = help if help is not None else field["help"]
    if "words" in field:
        text += f" ({field['words']})"
    shown = default if default is not None else field["default"]
    if shown is None and field["required"]:
        shown = "required: here or in --config"
    limits = {key: field[key] for key in ("min", "max") if key in field}
    return typer.Option(*flags, help=escape(text), show_default=shown or False, **limits)


def main() -> None:
    """Write ``settings_fields.json`` from the settings (``--check``: exit 1 if it is stale)."""
    text = json.dumps(collect_fields(), indent=1, sort_keys=True) + "\n"
    if "--check" in sys.argv:
        sys.exit(0 if FIELDS_FILE.read_text() == text else 1)
    FIELDS_FILE.write_text(text)
    print(f"wrote {FIELDS_FILE}")


if __name__ == "__main__":
    main()
