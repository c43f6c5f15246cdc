"""Metrics as CSV and TensorBoard events, JSON logs, the status file and command, reconnect backoff."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner

from splitfed.cli import app
from splitfed.client.link import ServerLink
from splitfed.client.settings import ClientSettings
from splitfed.observability import JsonFormatter, MetricsWriter, plot_metrics, read_metrics, write_status
from splitfed.transport.errors import RemoteError


def test_metrics_go_to_csv_and_tensorboard_and_a_png(tmp_path):
    writer = MetricsWriter(tmp_path)
    for step in range(1, 6):
        writer.log(step, loss=1.0 / step, tokens_per_s=100.0 + step)
    writer.close()
    columns = read_metrics(tmp_path / "metrics.csv")
    assert columns["step"] == [1, 2, 3, 4, 5] and columns["loss"][-1] == pytest.approx(0.2)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4, 5]
    assert events.Scalars("tokens_per_s")[0].value == pytest.approx(101.0)
    png = plot_metrics(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    resumed = MetricsWriter(tmp_path, tensorboard=False)  # a resumed run appends under the same columns
    resumed.log(6, loss=0.1, tokens_per_s=90.0)
    assert read_metrics(tmp_path / "metrics.csv")["step"][-1] == 6


def test_json_log_lines(caplog):
    record = logging.LogRecord("splitfed.x", logging.WARNING, __file__, 1, "round %d done", (3,), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["message"] == "round 3 done"
    assert entry["logger"] == "splitfed.x"
    assert entry["time"].endswith("Z")


def test_status_command_shows_clients_and_progress(tmp_path):
    write_status(tmp_path, {"mode": "sequential", "sub_servers": 1, "aggregation": "secure",
                            "sessions": ["bob"],
                            "steps": 12, "progress": {"alice": 7, "bob": 5}, "plain_rounds": 0,
                            "secure_rounds": 2, "generation_streams": 1, "generation_cache_mib": 0.5,
                            "draining": False, "port": 50051, "model": "tiny-llama"})
    result = CliRunner().invoke(app, ["status", str(tmp_path)], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    assert "12 trunk steps" in result.output and "2 FedAvg round(s)" in result.output
    assert "alice" in result.output and "7" in result.output and "secure aggregation" in result.output
    missing = CliRunner().invoke(app, ["status", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "no status.json" in missing.output


class _Remote:
    def __init__(self, name: str) -> None:
        self.name = name
        counters = {"bytes_sent": 10, "bytes_received": 20, "close": lambda self: None}
        self.connection = type("C", (), counters)()


def test_the_link_reconnects_with_backoff_and_repeats_the_action(tmp_path):
    settings = ClientSettings(name="alice", identity=tmp_path / "k", server_key=tmp_path / "s.pub",
                              reconnect_timeout_s=60)
    attempts = iter([RemoteError("UNAVAILABLE", "down"), _Remote("first"),
                     RemoteError("UNAVAILABLE", "down"), RemoteError("UNAVAILABLE", "down"),
                     _Remote("second")])

    def connect():
        item = next(attempts)
        if isinstance(item, Exception):
            raise item
        return item

    sleeps: list[float] = []
    link = ServerLink(settings, connect, sleep=sleeps.append)
    assert link.remote.name == "first" and sleeps == [0.5]
    calls: list[str] = []

    def action(remote):
        calls.append(remote.name)
        if remote.name == "first":
            raise RemoteError("UNAVAILABLE", "server restarting")
        return "done"

    seen: list[str] = []
    assert link.call(action, lambda remote: seen.append(remote.name)) == "done"
    assert calls == ["first", "second"] and seen == ["second"] and link.reconnects == 1
    assert sleeps == [0.5, 0.5, 1.0] and link.bytes_sent == 20  # counters survive the reconnect
    with pytest.raises(RemoteError, match="PERMISSION_DENIED"):
        link.call(lambda remote: (_ for _ in ()).throw(RemoteError("PERMISSION_DENIED", "no")), seen.append)
