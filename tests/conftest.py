"""Shared fixtures: tiny random models and left-padded batches."""

from __future__ import annotations

import os
import warnings

import pytest
import torch
from hypothesis import settings

from splitfed.models import PrivacyWarning, load_model

TINY = ["tiny-llama", "tiny-qwen2", "tiny-gpt2", "tiny-glm"]

# CI replays the same examples every run (a failure there is a real, reproducible one); local runs
# draw new examples each time to keep looking for bugs.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(autouse=True)
def _quiet_privacy_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)
        yield


def make_batch(batch: int = 3, length: int = 14, left_pad: bool = True, seed: int = 0) -> dict:
    """Random token ids with different amounts of left padding per row, and LM labels."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, 259, (batch, length), generator=generator)
    mask = torch.ones_like(input_ids)
    if left_pad:
        for row in range(1, batch):
            mask[row, : 2 + 3 * row] = 0
        input_ids = input_ids.masked_fill(mask == 0, 0)
    labels = input_ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


@pytest.fixture(params=TINY)
def tiny(request):
    model, tokenizer = load_model(request.param)
    return model, tokenizer


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance with 2 CPUs for one test module (Ray is imported only where it is used)."""
    import ray

    from splitfed.server.ray_backend import connect_ray

    connect_ray(None, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny_llama():
    """tiny-llama, loaded once per test module."""
    return load_model("tiny-llama")[0]
