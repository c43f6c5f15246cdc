"""The generated references say everything once and stay true: every config field described, every
example config (and every option commented out in it) accepted by the settings it is written for."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from splitfed.cli.reference import cli_reference
from splitfed.client.settings import ClientSettings
from splitfed.config import ConfigError, build_settings
from splitfed.evaluation.settings import EvalSettings
from splitfed.server.settings import ServerSettings
from splitfed.settings_reference import (
    config_files,
    config_reference,
    model_table,
    referenced_models,
    undescribed_fields,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SETTINGS_OF_EXAMPLE = {"server.yaml": ServerSettings, "client.yaml": ClientSettings,
                       "eval.yaml": EvalSettings, "eval_own_data.yaml": EvalSettings,
                       "own_data.yaml": EvalSettings}


def test_every_config_field_has_a_description():
    for config in config_files():
        assert undescribed_fields(config.settings) == [], config.name


def test_the_reference_has_a_row_for_every_field_of_every_reachable_model():
    text = config_reference()
    for config in config_files():
        for model in referenced_models(config.settings):
            heading = f"### {model.__name__} {{#{model.__name__.lower()}}}"
            section = text.split(heading, 1)[1].split("\n### ")[0]
            for name in model.model_fields:
                assert f"| `{name}` |" in section, f"{model.__name__}.{name}"


def test_rows_give_type_default_and_bounds():
    server = model_table(ServerSettings)
    assert re.search(r"\| `identity` \| path \| \*\*required\*\* \|", server)
    modes = '"sequential" \\| "client-batch" \\| "hierarchical" \\| "auto"'
    assert f"| `mode` | {modes} | `sequential` |" in server
    assert "| `partition` | [PartitionSettings](#partitionsettings) | see below |" in server
    assert re.search(r"\| `batch_max_rows` \| int \| `64` \| .*\(>= 1\) \|", server)
    client = model_table(ClientSettings)
    assert "| `insecure_loopback` | bool | false |" in client
    assert "| `output` | path | `runs/client` |" in client


def test_shared_models_are_shown_once():
    text = config_reference()
    assert text.count("### PrivacySettings {#privacysettings}") == 1
    assert "`PrivacySettings`: see [above](#privacysettings)." in text  # the eval config refers back


def test_the_cli_reference_lists_every_command_and_option():
    text = cli_reference()
    for command in ("demo", "serve", "train", "generate", "eval", "attack", "keygen", "config-reference"):
        assert f"## splitfed {command}\n" in text
    assert "| `--config`, `-c` |" in text and "| `--in-process` | `off` |" in text
    assert "| `--clients` | `3` | >= 1 | clients of the federated methods |" in text  # eval's: EvalSettings


def test_the_generated_files_in_the_repository_are_current():
    """docs/reference/*.md (read on the repository host) and the settings' fields the commands show are
    what the code generates now: scripts/gen_reference.sh rewrites them."""
    from splitfed.cli.options import FIELDS_FILE, collect_fields
    from splitfed.cli.reference import reference_pages

    reference = Path(__file__).resolve().parents[2] / "docs" / "reference"
    for name, text in reference_pages().items():
        stale = f"docs/reference/{name} is stale: run scripts/gen_reference.sh"
        assert (reference / name).read_text() == text, stale
    assert json.loads(FIELDS_FILE.read_text()) == json.loads(json.dumps(collect_fields())), \
        "splitfed/cli/settings_fields.json is stale: run scripts/gen_reference.sh"


def _commented_options(text: str) -> list[str]:
    """Options shown commented out: a ``# key: value`` line, or ``# key:`` and its indented lines."""
    lines = text.splitlines()
    options, index = [], 0
    while index < len(lines):
        match = re.match(r"^# ([a-z_]+):(.*)$", lines[index])
        index += 1
        if not match:
            continue
        block = [f"{match.group(1)}:{match.group(2)}"]
        while index < len(lines) and lines[index].startswith("#   "):
            block.append(lines[index][2:])
            index += 1
        options.append("\n".join(block))
    return options


@pytest.mark.parametrize("name", sorted(path.name for path in EXAMPLES.glob("*.yaml")))
def test_example_configs_and_their_commented_options_validate(name, tmp_path):
    assert name in SETTINGS_OF_EXAMPLE, f"examples/{name}: say which settings validate it in this test"
    settings = SETTINGS_OF_EXAMPLE[name]
    path = EXAMPLES / name
    build_settings(settings, path)
    base = yaml.safe_load(path.read_text())
    for option in _commented_options(path.read_text()):
        variant = tmp_path / name
        variant.write_text(yaml.safe_dump({**base, **yaml.safe_load(option)}))
        try:
            build_settings(settings, variant)
        except ConfigError as error:
            pytest.fail(f"examples/{name}: the commented option\n{option}\nis refused: {error}")


def test_an_example_with_a_field_the_settings_reject_fails(tmp_path):
    bad = tmp_path / "client.yaml"
    bad.write_text((EXAMPLES / "client.yaml").read_text() + "noise: {std: 0.02}\n")
    with pytest.raises(ConfigError, match="noise"):
        build_settings(ClientSettings, bad)
    example = "# Trusted slice: prose\n# mode: client-batch\n# privacy:\n#   delta: 1.0e-5\n"
    assert _commented_options(example) == ["mode: client-batch", "privacy:\n  delta: 1.0e-5"]


def test_shown_defaults_do_not_depend_on_where_the_checkout_lives():
    """A default path inside the package is shown from the package, so the generated files are the
    same on every machine (CI checks them out elsewhere)."""
    from splitfed.cli.options import collect_fields

    shown = [field["default"] for fields in collect_fields().values() for field in fields.values()
             if isinstance(field["default"], str)]
    assert "splitfed/tasks/data/wikitext2/test_first300k.raw" in shown
    assert not [value for value in shown if value.startswith("/")]
