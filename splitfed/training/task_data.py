"""A client's private training data: a shipped task or the user's own file, its shard, encoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from splitfed.tasks import encode_example, load_cloze_file, load_task
from splitfed.training.data import iid_shards


class DataSettings(BaseModel):
    """Which examples this client trains on."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field("rte", description="shipped task (rte, cb, copa, boolq) or the template of `file`")
    file: Path | None = Field(None, description="the client's own JSONL file in the task's format")
    limit: int | None = Field(480, ge=1, description="use at most this many examples before sharding")
    shard: int = Field(0, ge=0, description="which shard of the data this client holds")
    shards: int = Field(1, ge=1, description="into how many IID shards the data is split")
    seed: int = 0
    max_length: int = Field(256, ge=8)


def load_client_examples(settings: DataSettings, tokenizer: Any) -> list[dict]:
    """The encoded training examples of this client's shard."""
    if settings.shard >= settings.shards:
        raise ValueError(f"data.shard {settings.shard} must be < data.shards {settings.shards}")
    if settings.file is not None:
        examples = load_cloze_file(settings.file, settings.task, limit=settings.limit)
    else:
        examples = load_task(settings.task, "train", limit=settings.limit)
    encoded = [encode_example(tokenizer, example, settings.max_length) for example in examples]
    return iid_shards(encoded, settings.shards, settings.seed)[settings.shard]
