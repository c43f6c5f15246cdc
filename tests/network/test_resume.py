"""Interrupt either side mid-run with SIGTERM and resume it: the run ends with the same adapters as an
uninterrupted one. Real `splitfed serve` and `splitfed train` processes on 127.0.0.1."""

from __future__ import annotations

import json
import signal
import time

from splitfed.models.adapters import read_adapter
from tests.network.conftest import splitfed, wait_for_port
from tests.network.test_processes import ROUNDS, STEPS, _reference

INTERRUPTED_EXIT = 130


def _wait_for_step(deployment, name: str, step: int, process, timeout_s: float = 300.0) -> None:
    progress = deployment.root / "out" / name / "progress.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if progress.is_file() and json.loads(progress.read_text())["step"] >= step:
            return
        assert process.poll() is None, f"{name} ended early"
        time.sleep(0.05)
    raise AssertionError(f"{name} did not reach step {step}")


def _assert_matches_reference(deployment, config) -> None:
    reference = _reference([config])
    for key, expected in reference.items():
        _, got = read_adapter(deployment.root / "out" / key)
        for name, value in expected.items():
            assert (got[name] - value).abs().max().item() <= 1e-5, (key, name)


def _kill(*processes) -> None:
    for process in processes:
        if process is not None and process.poll() is None:
            process.kill()


def test_a_client_interrupted_and_resumed_ends_like_an_uninterrupted_run(deployment):
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", "alice",
                      "--exit-when-done", log=root / "server.log")
    client = None
    try:
        port = wait_for_port(root / "port", server)
        config = deployment.client_config("alice", 0, STEPS, f"rounds: {ROUNDS}\ncheckpoint_every: 1\n")
        command = ("train", "--config", str(config), "--server", f"127.0.0.1:{port}")
        client = splitfed(*command, log=root / "alice-1.log")
        _wait_for_step(deployment, "alice", 3, client)
        client.send_signal(signal.SIGTERM)
        assert client.wait(timeout=120) == INTERRUPTED_EXIT, (root / "alice-1.log").read_text()[-3000:]
        assert "interrupted at step" in (root / "alice-1.log").read_text()
        assert server.poll() is None  # an interrupted client does not count as finished
        client = splitfed(*command, "--resume", log=root / "alice-2.log")
        assert client.wait(timeout=300) == 0, (root / "alice-2.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        _kill(server, client)
    resumed_log = (root / "alice-2.log").read_text()
    assert "resuming from" in resumed_log
    summary = json.loads((root / "out" / "alice" / "summary.json").read_text())
    assert summary["steps"] == STEPS and len(summary["losses"]) == STEPS
    metrics = (root / "out" / "alice" / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("step,loss") and len(metrics) == STEPS + 1
    assert (root / "out" / "alice" / "curves.png").stat().st_size > 1000
    _assert_matches_reference(deployment, config)


def test_the_server_interrupted_and_resumed_while_the_client_waits(deployment):
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", "alice",
                      "--exit-when-done", log=root / "server-1.log")
    client = None
    try:
        port = wait_for_port(root / "port", server)
        config = deployment.client_config("alice", 0, STEPS, f"rounds: {ROUNDS}\n")
        client = splitfed("train", "--config", str(config), "--server", f"127.0.0.1:{port}",
                          log=root / "alice.log")
        _wait_for_step(deployment, "alice", 3, client)
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0, (root / "server-1.log").read_text()[-3000:]
        first_log = (root / "server-1.log").read_text()
        assert "checkpoint after" in first_log
        status = json.loads((root / "out" / "server" / "status.json").read_text())
        assert status["stopped"] and status["progress"]["alice"] >= 3
        time.sleep(1.0)  # the client is now retrying with backoff
        (root / "port").unlink()
        server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", "alice",
                          "--exit-when-done", "--resume", "--listen", f"127.0.0.1:{port}",
                          log=root / "server-2.log")
        assert client.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server-2.log").read_text()[-3000:]
    finally:
        _kill(server, client)
    assert "resumed from" in (root / "server-2.log").read_text()
    assert "reconnecting" in (root / "alice.log").read_text()
    summary = json.loads((root / "out" / "alice" / "summary.json").read_text())
    assert summary["reconnects"] >= 1 and summary["steps"] == STEPS
    _assert_matches_reference(deployment, config)
