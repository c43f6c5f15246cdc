"""The memory benchmark end to end on a tiny Llama shape: random checkpoints written tensor by tensor
(safetensors shards and GGUF) load to the same parts, and a real federation reports each party's
peak, part, load report, bound and plan."""

from __future__ import annotations

import json
import os

import torch

from splitfed.models import Partition
from splitfed.models.party import CLIENT_ROLES, SERVER_ROLES, load_parts
from tests.benchmarks.conftest import load_benchmark, run_benchmark
from tests.conftest import make_batch


def test_random_checkpoints_as_shards_and_as_gguf_give_the_same_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITFED_CACHE", str(tmp_path / "cache"))
    checkpoints = load_benchmark("random_checkpoints")
    directory = checkpoints.write_hf_checkpoint("llama-tiny", tmp_path / "hf", shard_bytes=100_000)
    gguf = checkpoints.write_gguf(directory, tmp_path / "model.gguf")
    assert len(list(directory.glob("*.safetensors"))) > 1  # sharded, with an index
    partition = Partition(2, 2)
    batch = make_batch(2, 10, seed=1)
    outputs = []
    for source in (directory, gguf):
        client = load_parts(source, partition, CLIENT_ROLES)
        server = load_parts(source, partition, SERVER_ROLES)
        mask = batch["attention_mask"]
        hidden = server.split.trunk(client.split.head(batch["input_ids"], mask), mask)
        outputs.append(client.split.tail(hidden, mask))
    assert torch.equal(outputs[0], outputs[1])  # GGUF's q/k layout is undone exactly


def test_memory_benchmark_reports_each_party_against_its_bound_and_plan(tmp_path):
    output = tmp_path / "memory"
    common = ["--shapes", "llama-tiny", "--inputs", "hf", "--head", "1", "--tail", "1", "--workdir",
              str(tmp_path / "work"), "--output", str(output)]
    finished = run_benchmark("memory", *common, "--aggregations", "plain", "--steps", "1")
    assert finished.returncode == 0, finished.stderr[-3000:] + finished.stdout[-3000:]
    finished = run_benchmark("memory", *common, "--load-only", "--dtypes", "float32", "--merge")
    assert finished.returncode == 0, finished.stderr[-3000:] + finished.stdout[-3000:]
    rows = json.loads(output.with_suffix(".json").read_text())["rows"]
    federation, loaded = rows
    assert federation["dtype"] == "bfloat16" and not federation["load_only"]
    assert set(federation["parties"]) == {"server", "alice", "bob"}
    assert loaded["load_only"] and set(loaded["parties"]) == {"server", "alice"}
    for row in rows:
        for name, party in row["parties"].items():
            assert party["peak_bytes"] > row["runtime_bytes"] > 100 * 2**20, name
            assert party["load"]["part_bytes"] > 0 and party["load"]["tensors_read"] > 0
            assert row["verdicts"][name]["within_bound"], (name, party["peak_bytes"])
            assert abs(row["verdicts"][name]["plan_error"]) < 0.5
    assert federation["parties"]["alice"]["step_seconds"] > 0
    alice = federation["parties"]["alice"]
    assert federation["plan"]["client"]["weight_bytes"] == alice["load"]["part_bytes"]
    text = output.with_suffix(".md").read_text()
    assert "| llama-tiny | hf | bfloat16 | federation, plain | server |" in text and "load only" in text
    assert os.path.getsize(output.with_suffix(".png")) > 0
