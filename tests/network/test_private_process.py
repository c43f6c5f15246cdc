"""A real client process with the privacy defense on: it trains exactly like the same defended
federation in one process, and reports the epsilon it spends in its progress, metrics, summary and
checkpoint."""

from __future__ import annotations

import csv
import json

from splitfed.checkpoint import CheckpointStore
from tests.network.conftest import splitfed, wait_for_port
from tests.network.test_resume import _assert_matches_reference

STEPS, ROUNDS = 6, 2
PRIVACY = """privacy:
  forward: {clip: 2.0, sigma: 0.5}
  backward: {clip: 0.01, sigma: 0.5}
  seed: 11
"""


def test_a_defended_client_process_trains_like_one_process_and_reports_epsilon(deployment, monkeypatch):
    monkeypatch.setattr("tests.network.test_processes.STEPS", STEPS)
    monkeypatch.setattr("tests.network.test_processes.ROUNDS", ROUNDS)
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", "alice",
                      "--exit-when-done", log=root / "server.log")
    client = None
    try:
        port = wait_for_port(root / "port", server)
        config = deployment.client_config("alice", 0, STEPS, f"rounds: {ROUNDS}\ncheckpoint_every: 2\n"
                                          + PRIVACY)
        client = splitfed("train", "--config", str(config), "--server", f"127.0.0.1:{port}",
                          log=root / "alice.log")
        assert client.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in (server, client):
            if process is not None and process.poll() is None:
                process.kill()
    out = root / "out" / "alice"
    with (out / "metrics.csv").open() as handle:
        epsilons = [float(row["epsilon"]) for row in csv.DictReader(handle)]
    assert len(epsilons) == STEPS and epsilons[0] > 0
    assert all(later >= earlier for earlier, later in zip(epsilons, epsilons[1:], strict=False))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == epsilons[-1] and summary["privacy"]["delta"] == 1e-5
    assert json.loads((out / "progress.json").read_text())["privacy"]["epsilon"] == epsilons[-1]
    checkpoint = CheckpointStore(out / "checkpoints").latest()
    assert checkpoint is not None and checkpoint.step == STEPS
    assert checkpoint.meta["privacy"]["steps"] == STEPS  # the accountant resumes with the epsilon spent
    assert f"privacy spent eps={epsilons[-1]:.3g} (delta=1e-05)" in (root / "alice.log").read_text()
    # the same seeded noise in one process gives the same adapters: the defense ran where it should
    _assert_matches_reference(deployment, config)


LEARNED = """privacy:
  learned: {kind: bottleneck, kl_weight: 0.1, bypass: true, warmup_steps: 3, warmup_batch_size: 2}
  seed: 5
"""


def test_a_client_process_with_a_learned_defense_trains_like_one_process_and_keeps_the_cut(deployment,
                                                                                         monkeypatch):
    monkeypatch.setattr("tests.network.test_processes.STEPS", STEPS)
    monkeypatch.setattr("tests.network.test_processes.ROUNDS", ROUNDS)
    root = deployment.root
    server = splitfed("serve", "--config", str(deployment.server_config()), "--roster", "alice",
                      "--exit-when-done", log=root / "server.log")
    client = None
    try:
        port = wait_for_port(root / "port", server)
        config = deployment.client_config("alice", 0, STEPS, f"rounds: {ROUNDS}\n" + LEARNED)
        client = splitfed("train", "--config", str(config), "--server", f"127.0.0.1:{port}",
                          log=root / "alice.log")
        assert client.wait(timeout=300) == 0, (root / "alice.log").read_text()[-3000:]
        assert server.wait(timeout=60) == 0, (root / "server.log").read_text()[-3000:]
    finally:
        for process in (server, client):
            if process is not None and process.poll() is None:
                process.kill()
    log = (root / "alice.log").read_text()
    assert "learned defense (bottleneck): warm-up of 3 steps" in log
    assert (root / "out" / "alice" / "cut" / "cut.safetensors").is_file()  # what `generate` loads
    _assert_matches_reference(deployment, config)
