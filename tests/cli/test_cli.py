"""The command line: every --help explains itself; the demo runs end to end on a tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from splitfed.cli import app

runner = CliRunner()


def _row(data: dict, method: str) -> dict:
    """The row of ``method`` in a demo's results.json (an evaluation result of one task)."""
    return next(row for row in data["results"] if row["method"] == method)


def _federated(data: dict) -> dict:
    return next(row for row in data["results"] if row["method"] not in ("zero-shot", "centralized"))


@pytest.mark.parametrize("command", [[], ["demo"], ["export"], ["models"]])
def test_help_explains_every_command(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    if command == ["demo"]:
        for option in ("--model", "--clients", "--steps", "--task", "--head", "--tail"):
            assert option in result.output


def test_python_dash_m_splitfed_is_the_same_command():
    result = subprocess.run([sys.executable, "-m", "splitfed", "models"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == runner.invoke(app, ["models"]).output


def test_demo_on_tiny_model_writes_results(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, ["demo", "--model", "tiny-llama", "--steps", "6", "--rounds", "1",
                                 "--clients", "2", "--train-examples", "24", "--eval-examples", "8",
                                 "--in-process",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    assert len(_federated(data)["losses"]) == 6 and len(_row(data, "centralized")["losses"]) == 6
    assert _federated(data)["metrics"]["n"] == 8
    assert [row["method"] for row in data["results"]] == ["zero-shot", "federated-iid", "centralized"]
    assert (out / "losses.png").stat().st_size > 1000
    assert "centralized" in (out / "results.md").read_text()
    for part in ("head", "trunk", "tail"):
        assert (out / "adapters" / part / "adapter_model.safetensors").is_file()


def test_demo_rejects_bad_input_clearly(tmp_path):
    args = ["demo", "--model", "tiny-llama", "--output", str(tmp_path)]
    result = runner.invoke(app, [*args, "--task", "nope"])
    assert result.exit_code == 2 and "unknown task" in result.output
    result = runner.invoke(app, ["demo", "--model", "no-such-model", "--output", str(tmp_path)])
    assert result.exit_code == 2 and "Accepted" in result.output
    result = runner.invoke(app, ["demo", "--model", "tiny-llama", "--head", "3", "--tail", "1",
                                 "--output", str(tmp_path)])
    assert result.exit_code == 2 and "no block" in result.output


def test_models_lists_families():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0 and "gpt2" in result.output and "llama" in result.output


def test_demo_with_one_client_matches_its_centralized_baseline(tmp_path):
    """With one client and one round, federated split training and the centralized baseline see the
    same data, initial adapters and seeds, so their losses agree step for step."""
    out = tmp_path / "one"
    result = runner.invoke(app, ["demo", "--model", "tiny-gpt2", "--dtype", "float32", "--steps", "5",
                                 "--rounds", "1",
                                 "--clients", "1", "--train-examples", "20", "--eval-examples", "6",
                                 "--in-process",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "results.json").read_text())
    federated, centralized = _federated(data), _row(data, "centralized")
    assert federated["losses"] == pytest.approx(centralized["losses"], abs=1e-5)
    assert federated["metrics"]["loss"] == pytest.approx(centralized["metrics"]["loss"], abs=1e-5)


def test_networked_demo_equals_the_in_process_federation(tmp_path):
    """`splitfed demo` runs a server and client processes over TLS; with the same settings the
    federated losses equal those of the in-process federation step for step."""
    args = ["demo", "--model", "tiny-llama", "--dtype", "float32", "--steps", "4", "--rounds", "2",
            "--clients", "2",
            "--train-examples", "16", "--eval-examples", "6"]
    network = runner.invoke(app, [*args, "--output", str(tmp_path / "net")])
    assert network.exit_code == 0, network.output
    local = runner.invoke(app, [*args, "--in-process", "--output", str(tmp_path / "local")])
    assert local.exit_code == 0, local.output
    a = json.loads((tmp_path / "net" / "results.json").read_text())
    b = json.loads((tmp_path / "local" / "results.json").read_text())
    federated, local_row = _row(a, "federated-network"), _row(b, "federated-iid")
    assert federated["losses"] == pytest.approx(local_row["losses"], abs=1e-5)
    assert federated["metrics"]["loss"] == pytest.approx(local_row["metrics"]["loss"], abs=1e-5)
    assert (tmp_path / "net" / "federation" / "server.log").is_file()
    # the train time counts steps, not process start-up (model loads, handshakes), which is reported apart
    assert federated["startup_seconds"] > 0 and federated["train_seconds"] > 0
    assert federated["train_seconds"] + federated["startup_seconds"] <= a["total_seconds"]
    markdown = (tmp_path / "net" / "results.md").read_text()
    assert "excludes start-up" in markdown and "one example is 16.7 accuracy points" in markdown
    assert f"({round(federated['metrics']['accuracy'] * 6)}/6)" in markdown


def test_demo_with_a_defense_reports_what_the_server_could_read(tmp_path):
    result = runner.invoke(app, ["demo", "--model", "tiny-llama", "--in-process", "--defense", "bottleneck",
                                 "--steps", "3", "--rounds", "1", "--clients", "3", "--train-examples", "12",
                                 "--eval-examples", "6", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "results.json").read_text())
    exposed = saved["extras"]["exposure"]
    assert exposed["victims"] == 32 and exposed["private_tokens"] > 0
    without, with_ = exposed["without_defense"], exposed["with_defense"]
    assert without["token_accuracy"] >= 0.95  # a tiny random head=1 model is read entirely
    assert 0.0 <= with_["token_accuracy"] <= 1.0 and with_["attack"]
    assert (tmp_path / "adapters" / "cut" / "cut.safetensors").is_file()
    markdown = (tmp_path / "results.md").read_text()
    assert "without the defense" in markdown and "with bottleneck" in markdown
    bad = runner.invoke(app, ["demo", "--model", "tiny-llama", "--defense", "mixup", "--output",
                              str(tmp_path)])
    assert bad.exit_code == 2 and "mixup" in bad.output


def test_parts_writes_a_part_a_client_loads_and_refuses_a_used_directory(tmp_path):
    from splitfed.models import Partition
    from splitfed.models.party import load_client_parts

    out = tmp_path / "client"
    result = runner.invoke(app, ["parts", "--model", "tiny-llama", "--party", "client", "--head", "1",
                                 "--tail", "1", "--dtype", "bfloat16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "head + tail of tiny-llama" in " ".join(result.output.split())
    loaded = load_client_parts(out, Partition(1, 1), "three-part", dtype=torch.bfloat16)
    assert loaded.split.trunk is None and loaded.report.tensors_read > 0
    again = runner.invoke(app, ["parts", "--model", "tiny-llama", "--party", "client", "--out", str(out)])
    assert again.exit_code == 2 and "not empty" in again.output
    bad = runner.invoke(app, ["parts", "--model", "tiny-llama", "--party", "server", "--head", "3",
                              "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "leaves no block" in bad.output


def _commands():
    import typer.main

    return typer.main.get_command(app).commands


OWN_DEFAULTS = {("simulate", "--output")}  # a command whose default is its own (runs/simulate, not runs/eval)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_option_shows_its_default_and_the_settings_bounds(name):
    """One source, two views: an option made from a settings field shows the field's default and
    enforces its bounds; every other option shows its default too (or is a flag or required)."""
    import json

    from splitfed.cli.options import FIELDS_FILE

    fields = [field for model in json.loads(FIELDS_FILE.read_text()).values() for field in model.values()]
    by_help = {field["help"]: field for field in fields if field["help"]}
    command = _commands()[name]
    for parameter in command.params:
        if "--help" in parameter.opts or parameter.param_type_name == "argument":
            continue
        shown = parameter.show_default
        assert parameter.required or parameter.is_flag or shown not in (None, False) or \
            parameter.default not in (None, ()), f"{name} {parameter.opts}: no default shown"
        field = by_help.get((parameter.help or "").split(" (> ")[0].split(" (< ")[0])
        if field is not None:
            bounds = (field.get("min"), field.get("max"))
            assert (parameter.min, parameter.max) == bounds, (name, parameter.opts)
            if field["default"] is not None and (name, parameter.opts[0]) not in OWN_DEFAULTS:
                assert shown == field["default"], (name, parameter.opts)


@pytest.mark.parametrize("name", sorted(_commands()))
def test_help_shows_every_extra_it_names(name):
    """Rich markup must not swallow `[ray]` in `pip install 'splitfed[ray]'`."""
    import re

    command = _commands()[name]
    source = " ".join([command.help or "", *(getattr(p, "help", "") or "" for p in command.params)])
    extras = set(re.findall(r"splitfed\\\\?\[([a-z]+)\]", source))
    rendered = " ".join(runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).output.split())
    for extra in extras:
        assert f"splitfed[{extra}]" in rendered, (name, extra)
    if name == "simulate":
        assert extras == {"ray"}
