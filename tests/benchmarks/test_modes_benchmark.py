"""The modes benchmark end to end on the tiny model: real server, client and baseline processes, paired
blocks, the JSON and the plot it promises."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_modes_benchmark_pairs_each_mode_with_the_baseline(tmp_path):
    output = tmp_path / "modes.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "modes.py"), "--model", "tiny-llama",
               "--clients", "2", "--modes", "sequential", "client-batch", "--blocks", "1",
               "--block-steps", "1", "--warmup", "1", "--batch-size", "4", "--length", "16",
               "--output", str(output)]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(output.read_text())
    assert output.with_suffix(".png").stat().st_size > 0
    runs = {run["mode"]: run for run in results["runs"]}
    assert set(runs) == {"sequential", "client-batch"}
    assert runs["sequential"]["rows_per_client"] == 4 and runs["client-batch"]["rows_per_client"] == 2
    for run in runs.values():
        assert run["clients"] == 2
        assert len(run["over_centralized_each"]) == len(run["tokens_per_s_each"]) == 1
        speeds = zip(run["tokens_per_s_each"], run["centralized_tokens_per_s_each"], strict=True)
        pairs = [federated / centralized for federated, centralized in speeds]
        assert run["over_centralized_each"] == pairs
        assert min(pairs) <= run["over_centralized"] <= max(pairs)
        assert all(speed > 0 for speed in run["tokens_per_s_each"] + run["centralized_tokens_per_s_each"])
    assert len(runs["sequential"]["floor_tokens_per_s_each"]) == 1  # the in-process floor, paired too
    assert "floor_tokens_per_s_each" not in runs["client-batch"]


def test_a_batch_that_does_not_split_across_the_clients_is_refused_up_front(tmp_path):
    command = [sys.executable, str(ROOT / "benchmarks" / "modes.py"), "--model", "tiny-llama",
               "--clients", "1", "3", "--modes", "client-batch", "--batch-size", "4",
               "--output", str(tmp_path / "modes.json")]
    finished = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 2
    assert "does not split evenly across 3 clients" in finished.stderr
    assert not (tmp_path / "modes.json").exists()


def test_a_worker_that_fails_is_reported_with_its_log(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import modes

    args = argparse.Namespace(model="tiny-llama", length=8, head=1, tail=1)
    worker = modes.Worker("client", args, tmp_path / "client0.log", rows=2, port=1, keys=tmp_path / "none",
                          index=0)
    with pytest.raises(RuntimeError, match=r"(?s)benchmark worker ended \(exit 1\).*tls-cert\.pem"):
        worker.wait_ready()
    worker.close()
