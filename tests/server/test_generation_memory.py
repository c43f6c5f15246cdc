"""The generation budget counts real memory: caches plus each step's working memory (activations and
attention masks), and a long prefill's working memory goes back to the system afterwards. Measured in a
fresh process (peak RSS sampled every 10 ms), as a server would run it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

PROBE = r"""
import json, sys, threading, time
import torch
from splitfed.memory import resident_bytes
from splitfed.models import Partition, load_model, split_model
from splitfed.server.generation import GenerationCaches

name, rows, length, budget = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, _ = load_model(name)
caches = GenerationCaches(split_model(model, Partition(1, 1)).trunk, budget_bytes=budget)
hidden = torch.randn(rows, length, model.config.hidden_size)
mask = torch.ones(rows, length, dtype=torch.long)
mask[1:, :5] = 0  # left padding, as a batch of prompts has: the masks are materialised
caches.step("warm", 0, hidden[:1, :8], mask[:1, :8], 0)
caches.release("warm")
caches.accounted_peak = 0
base = resident_bytes()
peak = [base]
stop = threading.Event()

def sample():
    while not stop.wait(0.01):
        peak[0] = max(peak[0], resident_bytes())

sampler = threading.Thread(target=sample)
sampler.start()
for stream in range(8):  # 8 streams, as the flood of the issue
    caches.step("client", stream, hidden, mask, 0)
stop.set()
sampler.join()
print(json.dumps({"growth": peak[0] - base, "accounted": caches.accounted_peak,
                  "end": resident_bytes() - base, "in_use": caches.bytes_in_use}))
"""


@pytest.mark.parametrize("model", ["tiny-llama", "tiny-qwen2"])
def test_rss_growth_stays_within_what_the_budget_accounts(model):
    result = subprocess.run([sys.executable, "-c", PROBE, model, "32", "1024", str(1 << 30)],
                            capture_output=True, text=True, timeout=300, check=True)
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["growth"] <= 1.25 * measured["accounted"], measured
    # what stays resident after the steps is the caches (plus allocator slack), not their working memory:
    # at least half of it went back to the system
    assert measured["end"] - measured["in_use"] <= (measured["growth"] - measured["in_use"]) / 2, measured


def test_a_prefill_whose_working_memory_cannot_fit_is_refused_before_it_runs():
    import torch

    from splitfed.models import Partition, load_model, split_model
    from splitfed.models.kv_cache import prefill_transient_bytes
    from splitfed.server.generation import CacheBudgetExceeded, GenerationCaches

    model, _ = load_model("tiny-llama")
    trunk = split_model(model, Partition(1, 1)).trunk
    rows, length = 16, 512
    cache_only = rows * length * GenerationCaches(trunk).per_token
    assert prefill_transient_bytes(trunk, rows, length) > cache_only  # working memory dominates a prefill
    caches = GenerationCaches(trunk, budget_bytes=2 * cache_only)  # room for the cache, not the work
    with pytest.raises(CacheBudgetExceeded):
        caches.step("client", 0, torch.randn(rows, length, 64), torch.ones(rows, length, dtype=torch.long), 0)
    assert caches.bytes_in_use == 0
