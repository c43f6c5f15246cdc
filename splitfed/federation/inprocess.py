"""A federation in one process: clients with private shards take turns against one trunk."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from splitfed.aggregation.fedavg import keywise_average
from splitfed.client import SplitClient, client_class
from splitfed.endpoints import MicroBatch, micro_kwargs
from splitfed.federation.config import FederationSettings
from splitfed.layout import Layout
from splitfed.models import adapter_state, init_adapter, num_layers, split_model, token_embedding_matrix
from splitfed.privacy import SplitDefense, format_epsilon, warm_up
from splitfed.server import LocalTrunk
from splitfed.server.two_part import TwoPartTrunk
from splitfed.training.data import Batch, shuffled_batches
from splitfed.training.replicate import replicate

log = logging.getLogger(__name__)

StepCallback = Callable[[int, float], None]


def client_defense(settings: FederationSettings, index: int, shard_size: int,
                   hidden_size: int) -> SplitDefense | None:
    """Client ``index``'s defense as its own process would build it (seed offset by its index)."""
    privacy = settings.privacy
    if not privacy.enabled:
        return None
    seed = None if privacy.seed is None else privacy.seed + index
    size = min(settings.batch_size, shard_size)
    return SplitDefense(privacy.model_copy(update={"seed": seed}),
                        planned_steps=settings.rounds * settings.local_steps,
                        steps_per_epoch=shard_size // size, batch_size=size, hidden_size=hidden_size)


def build_client(model: nn.Module, index: int, settings: FederationSettings, shard_sizes: Sequence[int],
                 trunk: Any, public_text: Batch | None) -> SplitClient:
    """Client ``index`` of a federation: its own head and tail (frozen base shared with ``model``,
    adapters seeded from ``settings.seed`` as every party does), its defense (warmed up on
    ``public_text`` when learned), talking to ``trunk``. Used in process and on Ray alike."""
    partition = settings.client_partition(index)
    split = split_model(replicate(model), partition.partition())
    init_adapter(split.head, settings.adapter, settings.seed)
    init_adapter(split.tail, settings.adapter, settings.seed)
    hidden_size = int(token_embedding_matrix(model).shape[1])
    defense = client_defense(settings, index, shard_sizes[index], hidden_size)
    if defense is not None and defense.cut is not None and public_text is not None:
        warm_up(defense.cut, split.head, split.trunk, split.tail, public_text["input_ids"],
                public_text["attention_mask"], seed=settings.seed + index)
    if settings.client_partitions is not None:
        blocks = (partition.head, num_layers(model) - partition.tail)
        trunk = BlockRange(trunk, blocks)
    return client_class(partition.layout)(f"client-{index}", split.head, split.tail, trunk,
                                          settings.optimizer, defense)


class BlockRange:
    """A trunk endpoint that runs only ``blocks`` of the trunk: a client whose own partition keeps the
    others (what ``first_block`` / ``end_block`` say on the wire)."""

    def __init__(self, trunk: Any, blocks: tuple[int, int]) -> None:
        self.inner, self.blocks = trunk, blocks

    @property
    def accepts_micro_batches(self) -> bool:
        return bool(getattr(self.inner, "accepts_micro_batches", False))

    def forward(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                train: bool = True, labelled_tokens: int = 0,
                micro: MicroBatch | None = None) -> torch.Tensor:
        return self.inner.forward(client_id, hidden, attention_mask, train, labelled_tokens,
                                  blocks=self.blocks, **micro_kwargs(micro))

    def backward(self, client_id: str, grad_output: torch.Tensor,
                 micro: MicroBatch | None = None) -> torch.Tensor:
        return self.inner.backward(client_id, grad_output, **micro_kwargs(micro))


class InProcessFederation:
    """Sequential split training of several clients against one trunk, with FedAvg every round.

    Each client holds its shard and its own head/tail adapters; the server holds the trunk adapter.
    All clients start from the same adapter weights (seeded per part role, as separate processes
    would); the frozen base weights are shared in memory.
    """

    def __init__(
        self,
        model: nn.Module,
        shards: Sequence[Sequence[Any]],
        collate: Callable[[list[Any]], Batch],
        settings: FederationSettings,
        public_text: Batch | None = None,
    ) -> None:
        """``public_text`` (input_ids, attention_mask; e.g. ``public_chunks(tokenizer)``) is what a
        learned defense warms up on; it is needed only then."""
        if len(shards) != settings.clients:
            raise ValueError(f"{settings.clients} clients but {len(shards)} data shards")
        if any(len(shard) == 0 for shard in shards):
            raise ValueError("every client needs at least one example")
        self.settings = settings
        partition = settings.partition.partition()
        server_split = split_model(replicate(model), partition)
        init_adapter(server_split.trunk, settings.adapter, settings.seed)
        layout = settings.partition.layout
        if layout == Layout.TWO_PART:
            self.server: LocalTrunk = TwoPartTrunk(server_split.trunk, server_split.tail, settings.optimizer,
                                                   settings.sparse)
        else:
            self.server = LocalTrunk(server_split.trunk, settings.optimizer, settings.sparse)
        self.shard_sizes = [len(shard) for shard in shards]
        self._batches = []
        self.clients: list[SplitClient] = []
        if settings.privacy.learned is not None and public_text is None:
            raise ValueError("privacy.learned: the defense warms up on public text; pass public_text")
        for index, shard in enumerate(shards):
            client = build_client(model, index, settings, self.shard_sizes, self.server, public_text)
            self.clients.append(client)
            self._batches.append(shuffled_batches(shard, settings.batch_size, settings.seed + index, collate))
        self.rounds_done = 0

    def privacy_reports(self) -> list[dict[str, Any]]:
        """Each client's privacy spent so far (empty without a defense)."""
        return [client.defense.report() for client in self.clients if client.defense is not None]

    def initial_states(self) -> list[dict[str, torch.Tensor]]:
        """Adapter weights of head, trunk and tail (to start a centralized baseline identically)."""
        first = self.clients[0]
        return [adapter_state(first.head), adapter_state(self.server.trunk), adapter_state(first.tail)]

    def train_round(self, on_step: StepCallback | None = None) -> list[float]:
        """One round: clients take turns, one step each, ``local_steps`` times; then FedAvg."""
        losses: list[float] = []
        for _ in range(self.settings.local_steps):
            for index, client in enumerate(self.clients):
                loss = client.train_step(next(self._batches[index]))
                losses.append(loss)
                if on_step is not None:
                    on_step(index, loss)
        self.aggregate()
        self.rounds_done += 1
        log.info("round %d: mean loss %.4f", self.rounds_done, sum(losses) / len(losses))
        reports = self.privacy_reports()
        if reports:
            worst = max(reports, key=lambda r: float(r["epsilon"]))
            log.info("round %d: privacy spent, worst client: %s", self.rounds_done, format_epsilon(worst))
        return losses

    def aggregate(self) -> None:
        """FedAvg of the clients' head and tail adapters, weighted by shard size, sent back to all."""
        states = [client.adapter_states() for client in self.clients]
        averaged = {  # each block's adapter over the clients holding it (all of them, one partition)
            part: keywise_average([state[part] for state in states], self.shard_sizes)
            for part in ("head", "tail")
        }
        for client, state in zip(self.clients, states, strict=True):
            client.load_adapter_states({part: {key: averaged[part][key] for key in state[part]}
                                        for part in ("head", "tail")})

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Inference with the federated model (after ``aggregate`` every client holds the same one)."""
        return self.clients[0].logits(input_ids, attention_mask)


def seeded_initial_states(model: nn.Module, settings: FederationSettings) -> list[dict[str, torch.Tensor]]:
    """Head, trunk and tail adapter weights as every party initialises them from ``settings.seed``."""
    split = split_model(replicate(model), settings.partition.partition())
    for part in split.parts.values():
        init_adapter(part, settings.adapter, settings.seed)
    return [adapter_state(part) for part in split.parts.values()]
