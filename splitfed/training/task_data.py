"""A client's private training data: a shipped task or the user's own file, its shard, encoded."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from splitfed.tasks import ClozeExample, encode_example, load_cloze_file, load_task, select_examples
from splitfed.training.data import iid_shards
from splitfed.training.partitioning import dirichlet_partition


class DataSettings(BaseModel):
    """Which examples this client trains on."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field("rte", description="shipped task (rte, cb, copa, boolq) or the template of `file`")
    file: Path | None = Field(None, description="the client's own JSONL file in the task's format")
    limit: int | None = Field(480, ge=1, description="use at most this many examples before sharding (a "
                                                      "file with more rows gives a sample: select)")
    select: Literal["sample", "first"] = Field(
        "sample", description="how limit chooses rows from a file with more: sample: a random choice "
                              "drawn from seed, stratified by label (each label keeps its share), kept in "
                              "file order; first: the first rows in file order")
    shard: int = Field(0, ge=0, description="which shard of the data this client holds")
    shards: int = Field(1, ge=1, description="into how many shards the data is split")
    scheme: Literal["iid", "dirichlet"] = Field("iid", description="iid, or dirichlet label skew")
    alpha: float = Field(0.5, gt=0, description="dirichlet: concentration (small = more skewed)")
    seed: int = Field(0, description="seed of the shuffle and of the shards (same on every client)")
    max_length: int = Field(256, ge=8, description="tokens per example; longer ones are cut")


def read_client_examples(settings: DataSettings) -> list[ClozeExample]:
    """This client's examples before its shard is taken, read and checked (no tokenizer, no model:
    a bad file is refused before anything loads, naming the task, the file and the row)."""
    if settings.shard >= settings.shards:
        raise ValueError(f"data.shard {settings.shard} must be < data.shards {settings.shards}")
    if settings.file is not None:
        examples = load_cloze_file(settings.file, settings.task)
    else:
        examples = load_task(settings.task, "train")
    return select_examples(examples, settings.limit, settings.select, settings.seed)


def load_client_examples(settings: DataSettings, tokenizer: Any,
                         examples: list[ClozeExample] | None = None) -> list[dict]:
    """The encoded training examples of this client's shard (of ``examples`` when already read)."""
    examples = read_client_examples(settings) if examples is None else examples
    encoded = [encode_example(tokenizer, example, settings.max_length) for example in examples]
    if settings.scheme == "iid":
        return iid_shards(encoded, settings.shards, settings.seed)[settings.shard]
    shards = dirichlet_partition([e.label for e in examples], settings.shards, settings.alpha, settings.seed)
    return [encoded[i] for i in shards[settings.shard]]
