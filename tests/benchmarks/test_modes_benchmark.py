"""The modes benchmark end to end on the tiny model: real server, client and baseline processes, paired
blocks, the JSON and the plot it promises."""

from __future__ import annotations

import argparse
import json

import pytest

from tests.benchmarks.conftest import load_benchmark, run_benchmark


def test_modes_benchmark_pairs_each_block_with_the_baseline(tmp_path):
    output = tmp_path / "modes.json"
    finished = run_benchmark("modes", "--model", "tiny-llama", "--clients", "2", "--modes", "sequential",
                             "--blocks", "1", "--block-steps", "1", "--warmup", "1", "--batch-size", "4",
                             "--length", "16", "--output", str(output))
    assert finished.returncode == 0, finished.stderr[-3000:]
    results = json.loads(output.read_text())
    assert output.with_suffix(".png").stat().st_size > 0
    [run] = results["runs"]
    assert run["mode"] == "sequential" and run["clients"] == 2 and run["rows_per_client"] == 4
    assert len(run["over_centralized_each"]) == len(run["tokens_per_s_each"]) == 1
    speeds = zip(run["tokens_per_s_each"], run["centralized_tokens_per_s_each"], strict=True)
    pairs = [federated / centralized for federated, centralized in speeds]
    assert run["over_centralized_each"] == pairs
    assert min(pairs) <= run["over_centralized"] <= max(pairs)
    assert all(speed > 0 for speed in run["tokens_per_s_each"] + run["centralized_tokens_per_s_each"])
    assert len(run["floor_tokens_per_s_each"]) == 1  # the in-process floor, paired too


def test_the_batched_modes_give_each_client_its_share_of_the_batch():
    modes = load_benchmark("modes")
    args = argparse.Namespace(batch_size=8)
    assert modes._rows(args, "sequential", 4) == 8
    batched = ("client-batch", "hierarchical", "sequential-split")
    assert [modes._rows(args, mode, 4) for mode in batched] == [2, 2, 2]


def test_a_batch_that_does_not_split_across_the_clients_is_refused_up_front(tmp_path):
    finished = run_benchmark("modes", "--model", "tiny-llama", "--clients", "1", "3", "--modes",
                             "client-batch", "--batch-size", "4", "--output", str(tmp_path / "modes.json"))
    assert finished.returncode == 2
    assert "does not split evenly across 3 clients" in finished.stderr
    assert not (tmp_path / "modes.json").exists()


def test_a_worker_that_fails_is_reported_with_its_log(tmp_path):
    modes = load_benchmark("modes")
    modes.WORKER = tmp_path / "failing_worker.py"  # fails as a client without its key files would
    modes.WORKER.write_text("import sys\nkeys = sys.argv[sys.argv.index('--keys') + 1]\n"
                            "sys.exit(f'FileNotFoundError: {keys}/tls-cert.pem')\n")
    args = argparse.Namespace(model="tiny-llama", length=8, head=1, tail=1)
    worker = modes.Worker("client", args, tmp_path / "client0.log", rows=2, port=1, keys=tmp_path / "none",
                          index=0)
    with pytest.raises(RuntimeError, match=r"(?s)benchmark worker ended \(exit 1\).*tls-cert\.pem"):
        worker.wait_ready()
    worker.close()
