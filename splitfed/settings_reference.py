"""The configuration reference, generated from the pydantic settings so that nothing is written twice.

Every field of a settings model becomes a row (name, type, default, description); a field whose type
is another settings model links to that model's own table, which follows. ``splitfed config-reference``
prints it and the docs site renders it (``docs/hooks.py``).
"""

from __future__ import annotations

import enum
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class ConfigFile:
    """One kind of config file and the settings model that validates it."""

    name: str
    command: str
    settings: type[BaseModel]


def config_files() -> list[ConfigFile]:
    """The config files a user writes, in the order the reference shows them."""
    from splitfed.client.settings import ClientSettings
    from splitfed.evaluation.settings import EvalSettings
    from splitfed.server.settings import ServerSettings

    return [ConfigFile("server", "splitfed serve --config", ServerSettings),
            ConfigFile("client", "splitfed train --config (and splitfed generate)", ClientSettings),
            ConfigFile("eval", "splitfed eval --config", EvalSettings)]


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The settings models an annotation refers to (through unions, lists and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for argument in typing.get_args(annotation):
        found += _models_in(argument)
    return found


def _anchor(model: type[BaseModel]) -> str:
    return model.__name__.lower()


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type: ``int | None``, ``"sequential" | "auto"``."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(arguments[0])
    if origin is typing.Literal:
        return " \\| ".join(f'"{value}"' if isinstance(value, str) else repr(value) for value in arguments)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(argument) for argument in arguments)
    if origin in (list, tuple, set, dict):
        inner = ", ".join(type_name(argument) for argument in arguments if argument is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{_anchor(annotation)})"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " \\| ".join(f'"{member.value}"' for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return "path"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    """The default as a user would write it in YAML; ``required`` when there is none."""
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return f"`{portable_path(value)}`"
    return f"`{value}`"


def portable_path(path: Path) -> str:
    """A default path as every installation shows it: files shipped inside the package are named from
    the package (``splitfed/tasks/data/...``), not from where this checkout happens to live."""
    package = Path(__file__).resolve().parent
    try:
        return (package.name / path.resolve().relative_to(package)).as_posix()
    except ValueError:
        return path.as_posix()


def _description(field: FieldInfo) -> str:
    text = (field.description or "").replace("|", "\\|").replace("\n", " ")
    bounds = [f"{symbol} {value}" for symbol, name in ((">", "gt"), (">=", "ge"), ("<", "lt"), ("<=", "le"))
              for value in [_bound(field, name)] if value is not None]
    if bounds:
        text += (" " if text else "") + f"({', '.join(bounds)})"
    return text


def _bound(field: FieldInfo, name: str) -> Any:
    for constraint in field.metadata:
        value = getattr(constraint, name, None)
        if value is not None:
            return value
    return None


def model_table(model: type[BaseModel]) -> str:
    """One model's Markdown section: its docstring and a table of its fields."""
    doc = " ".join((model.__doc__ or "").split())
    lines = [f'### {model.__name__} {{#{_anchor(model)}}}', ""]
    if doc:
        lines += [doc, ""]
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        lines.append(f"| `{name}` | {type_name(field.annotation)} | {default_text(field)} | "
                     f"{_description(field)} |")
    return "\n".join(lines) + "\n"


def referenced_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """``root`` and every settings model reachable from its fields, each once, depth first."""
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for field in model.model_fields.values():
            for child in _models_in(field.annotation):
                visit(child)

    visit(root)
    return seen


def undescribed_fields(root: type[BaseModel]) -> list[str]:
    """``Model.field`` for every reachable field without a description (the reference would be mute)."""
    return [f"{model.__name__}.{name}" for model in referenced_models(root)
            for name, field in model.model_fields.items() if not field.description]


def config_reference() -> str:
    """The whole reference as Markdown: one section per config file, each model once."""
    parts = ["Generated from the pydantic settings (`splitfed config-reference` prints this page). "
             "Every field can be set in the YAML or TOML file given to `--config`, or on the command "
             "line with `--set dotted.name=value`; unknown fields are refused with the field's name.", ""]
    shown: set[type[BaseModel]] = set()
    for config in config_files():
        parts += [f"## {config.name} config", "", f"Read by `{config.command}`.", ""]
        for model in referenced_models(config.settings):
            if model in shown:
                parts += [f"`{model.__name__}`: see [above](#{_anchor(model)}).", ""]
                continue
            shown.add(model)
            parts.append(model_table(model))
    return "\n".join(parts)
