"""Config files: YAML and TOML, flags override, errors name the field."""

from __future__ import annotations

import pytest

from splitfed.config import ConfigError, build_settings
from splitfed.federation import FederationSettings


def test_yaml_and_toml_give_the_same_settings(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("clients: 2\npartition:\n  head: 1\n  tail: 3\nadapter:\n  kind: prefix\n")
    toml_file = tmp_path / "run.toml"
    toml_file.write_text('clients = 2\n[partition]\nhead = 1\ntail = 3\n[adapter]\nkind = "prefix"\n')
    a = build_settings(FederationSettings, yaml_file)
    b = build_settings(FederationSettings, toml_file)
    assert a == b and a.partition.tail == 3 and a.adapter.kind == "prefix"


def test_flags_override_the_file_and_none_means_unset(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("clients: 2\npartition: {head: 1, tail: 1}\n")
    settings = build_settings(FederationSettings, path, {"clients": 5, "partition.tail": 2, "rounds": None})
    assert settings.clients == 5 and settings.partition.tail == 2 and settings.partition.head == 1
    assert settings.rounds == FederationSettings().rounds


@pytest.mark.parametrize(
    ("text", "field"),
    [("clients: 0\n", "clients"), ("partition: {head: -1}\n", "partition.head"),
     ("colour: red\n", "colour"), ("adapter: {kind: lora, r: zero}\n", "adapter.lora.r")],
)
def test_errors_name_the_field(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        build_settings(FederationSettings, path)
    assert field in str(caught.value) and str(path) in str(caught.value)


def test_unreadable_or_malformed_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        build_settings(FederationSettings, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.toml"
    bad.write_text("clients = = 2")
    with pytest.raises(ConfigError, match="not valid TOML"):
        build_settings(FederationSettings, bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_settings(FederationSettings, listing)
    other = tmp_path / "run.json"
    other.write_text("{}")
    with pytest.raises(ConfigError, match=r"\.yaml"):
        build_settings(FederationSettings, other)


def test_shipped_example_configs_validate():
    from pathlib import Path

    from splitfed.client.settings import ClientSettings
    from splitfed.server.settings import ServerSettings

    examples = Path(__file__).resolve().parents[2] / "examples"
    server = build_settings(ServerSettings, examples / "server.yaml")
    client = build_settings(ClientSettings, examples / "client.yaml")
    assert server.partition == client.partition and server.model == client.model
    assert server.tls_cert is not None and client.server_cert is not None


def test_set_assignments_reach_any_field_and_bad_ones_are_clear(tmp_path):
    from splitfed.config import parse_assignments
    from splitfed.server.settings import ServerSettings

    overrides = parse_assignments(["adapter.r=16", "roster=[a, b]", "max_batch=32", "tls_cert="])
    settings = build_settings(ServerSettings, None, {"identity": "k", "allowlist": "a", **overrides})
    assert settings.adapter.r == 16 and settings.roster == ["a", "b"] and settings.max_batch == 32
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_assignments(["adapter.r"])
    with pytest.raises(ConfigError, match="max_batch"):
        build_settings(ServerSettings, None, {"identity": "k", "allowlist": "a",
                                              **parse_assignments(["max_batch=-1"])})


def test_cli_set_flag_reaches_the_settings(tmp_path):
    from typer.testing import CliRunner

    from splitfed.cli import app

    result = CliRunner().invoke(app, ["train", "--set", "steps=0", "--name", "a", "--identity", "k",
                                      "--server-key", "s.pub"])
    assert result.exit_code == 2 and "steps" in result.output
