"""Config files (YAML or TOML) validated into typed settings; command-line flags override them."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

Settings = TypeVar("Settings", bound=BaseModel)


class ConfigError(ValueError):
    """A config file that cannot be read or does not validate; the message names the fields."""


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a ``.yaml``/``.yml`` or ``.toml`` file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config {path}: {error.strerror or error}") from error
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text)
        elif path.suffix == ".toml":
            data = tomllib.loads(text)
        else:
            raise ConfigError(f"config {path} must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"config {path} is not valid {path.suffix[1:].upper()}: {error}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a mapping of options, not {type(data).__name__}")
    return data


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = {}
            node[name] = child
        node = child
    node[leaf] = value


def build_settings(
    model: type[Settings],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Settings from an optional file, then ``overrides`` (dotted keys; ``None`` values ignored)."""
    data = read_config_file(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_dotted(data, key, value)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(describe_validation_error(error, path)) from error


def describe_validation_error(error: ValidationError, path: str | Path | None = None) -> str:
    """One line per problem, each naming the field by its dotted path."""
    source = f" in {path}" if path is not None else ""
    lines = [f"invalid settings{source}:"]
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        lines.append(f"  {field}: {problem['msg']}")
    return "\n".join(lines)


def parse_assignments(assignments: list[str] | None) -> dict[str, Any]:
    """``["partition.head=2", "roster=[a, b]"]`` -> dotted overrides; values are read as YAML scalars,
    lists or mappings, so any option of a settings model can be given on the command line."""
    overrides: dict[str, Any] = {}
    for assignment in assignments or []:
        key, sep, text = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (e.g. partition.head=2), got {assignment!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: cannot read the value {text!r}: {error}") from error
    return overrides
