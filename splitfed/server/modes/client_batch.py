"""Client-batch mode: the training forwards that arrive within a window (or up to a number of rows)
run through the trunk as one left-padded batch, each client's gradient weighted by its share of the
labelled tokens, then one backward and one optimizer step: a centralized step on the joined batch."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from splitfed.server.batcher import Batcher, DroppedFromStep
from splitfed.server.client_batch import BatchedTrunk, ForwardItem
from splitfed.server.local_trunk import LocalTrunk
from splitfed.server.modes.base import SubServerMode
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.service_parts import Session
from splitfed.server.sub_server import InProcessSubServer, restore_trainable, trainable_checkpoint
from splitfed.transport import WireFormatError
from splitfed.transport.errors import ServiceError

if TYPE_CHECKING:
    from splitfed.endpoints import MicroBatch
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings

log = logging.getLogger(__name__)


class ClientBatchMode(SubServerMode):
    """Training goes through ``batcher``; ``trunk`` (the same trunk part) serves generation."""

    name = "client-batch"
    micro_batches_max = 0  # a step is one forward, batched with other clients'

    def __init__(self, trunk: LocalTrunk, batcher: Batcher, roster: list[str] | None = None) -> None:
        scheduler = TurnScheduler(roster)
        super().__init__([InProcessSubServer(trunk, scheduler, batcher.compute)], scheduler, roster)
        self.batcher = batcher

    @classmethod
    def from_settings(cls, settings: ServerSettings, split: SplitModel) -> ClientBatchMode:
        batcher = Batcher(BatchedTrunk(split.trunk, settings.optimizer), settings.batch_window_s,
                          settings.batch_max_rows, settings.backward_deadline_s)
        log.info("client-batch mode: window %.3fs, up to %d rows, backward deadline %.0fs",
                 settings.batch_window_s, settings.batch_max_rows, settings.backward_deadline_s)
        return cls(LocalTrunk(split.trunk, settings.optimizer, settings.sparse), batcher, settings.roster)

    def forward(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
                train: bool, labelled_tokens: int, micro: MicroBatch | None = None) -> torch.Tensor:
        if not train:
            return self.batcher.evaluate(hidden, mask)
        if labelled_tokens < 1:
            raise WireFormatError("no_labelled_tokens", "client-batch training needs labelled_tokens >= 1")
        if session.open_step is not None:
            raise WireFormatError("step_open", f"step {session.open_step} is still waiting for its backward")
        item = ForwardItem(session.key, hidden, mask, labelled_tokens)
        self.book.open(session, step)
        try:
            return self.batcher.forward(item, self.limits.turn_timeout_s)
        except TimeoutError as error:
            session.open_step = None
            raise ServiceError("UNAVAILABLE", "busy", str(error)) from None
        except BaseException:
            session.open_step = None
            raise

    def backward(self, session: Session, grad: torch.Tensor, micro: MicroBatch | None = None) -> torch.Tensor:
        try:
            grad_in = self.batcher.backward(session.key, grad)
        except DroppedFromStep as error:
            session.open_step = None
            raise ServiceError("FAILED_PRECONDITION", "dropped_from_step", str(error)) from None
        except BaseException:
            session.open_step = None
            raise
        self._count(session, int(grad.shape[0]))
        return grad_in

    def abandon(self, session: Session, reason: str) -> None:
        session.open_step = None  # the batch's backward deadline leaves it out

    @property
    def steps(self) -> int:
        """Batches stepped."""
        return self.batcher.trunk.steps

    def _trainables(self) -> list[Any]:
        return [self.batcher.trunk]

    @staticmethod
    def _save(sub: Any, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return trainable_checkpoint(sub, prefix)

    @staticmethod
    def _load(sub: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str) -> None:
        restore_trainable(sub, tensors, meta, prefix)
