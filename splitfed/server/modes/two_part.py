"""The two-part layout: the client keeps only the head; this server runs every later block, the final
norm and the LM head, and computes the loss from the client's labels (it sees them). Sequential turns."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from splitfed.layout import Layout
from splitfed.server.modes.base import SubServerMode
from splitfed.server.scheduler import TurnScheduler
from splitfed.server.service_parts import Session
from splitfed.server.sub_server import InProcessSubServer, SubServer
from splitfed.server.two_part import TwoPartTrunk
from splitfed.transport import WireFormatError

if TYPE_CHECKING:
    from splitfed.models import SplitModel
    from splitfed.server.settings import ServerSettings

log = logging.getLogger(__name__)


class TwoPartMode(SubServerMode):
    """Clients send ``loss`` messages (head output and labels); forward/backward are refused."""

    name = str(Layout.TWO_PART)
    layout = Layout.TWO_PART
    micro_batches_max = 0

    def __init__(self, trunk: TwoPartTrunk, roster: list[str] | None = None) -> None:
        scheduler = TurnScheduler(roster)
        super().__init__([InProcessSubServer(trunk, scheduler)], scheduler, roster)
        self.model_end = trunk

    @classmethod
    def from_settings(cls, settings: ServerSettings, split: SplitModel) -> TwoPartMode:
        log.warning("two-part layout: this server runs the LM head and the loss, so it receives every "
                    "client's labels")
        trunk = TwoPartTrunk(split.trunk, split.tail, settings.optimizer, settings.sparse)
        return cls(trunk, settings.roster)

    def loss(self, session: Session, step: int, hidden: torch.Tensor, mask: torch.Tensor,
             labels: torch.Tensor, train: bool) -> Any:
        sub = session.sub
        assert isinstance(sub, InProcessSubServer)
        vocab = int(self.model_end.tail.config.vocab_size)
        if bool(((labels != -100) & ((labels < 0) | (labels >= vocab))).any()):
            raise WireFormatError("bad_labels", f"labels must be -100 or token ids below {vocab}")
        if not train:
            return sub.run(self.model_end.loss, session.key, hidden, mask, labels, train=False)
        self.book.refuse_if_draining()
        self._take_turn(session)
        try:
            self.book.open(session, step)
            result = sub.run(self.model_end.loss, session.key, hidden, mask, labels, train=True)
            self._count(session, int(hidden.shape[0]))
            self._after_step()  # still holding the turn: no other step is open
        finally:
            session.open_step = None
            sub.scheduler.release(session.name)
        return result

    def generation_output(self, sub: SubServer, output: torch.Tensor) -> torch.Tensor:
        """The LM head runs here: the last position's logits."""
        with torch.no_grad():
            return self.model_end.tail(output[:, -1:], None)
