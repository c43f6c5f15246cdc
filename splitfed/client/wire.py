"""The client's side of the wire codecs: which codec each direction uses, error feedback for the
gradient it sends, and ``CodecTrunk``, the codecs at the cut of an in-process split."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from splitfed.client.settings import WireSettings
from splitfed.endpoints import MicroBatch, TrunkEndpoint, micro_kwargs
from splitfed.transport import WIRE_CODECS, Codec, TensorLimits, decode_tensor


def wire_codecs(wire: WireSettings) -> tuple[Codec, Codec]:
    """(forward codec, backward codec) of ``wire``."""
    return Codec(wire.forward, wire.block_size), Codec(wire.backward, wire.block_size)


def error_feedback(wire: WireSettings) -> ErrorFeedback | None:
    """The error feedback ``wire`` asks for, or None (off, or a lossless backward codec)."""
    if not wire.error_feedback or wire.backward == "float32":
        return None
    return ErrorFeedback(wire_codecs(wire)[1], int(wire.error_feedback_mb * 2**20))


class ErrorFeedback:
    """Error feedback (EF-SGD: Seide et al. 2014, Karimireddy et al. 2019) on the gradient the client
    sends up through a lossy codec, kept per training example.

    EF adds what quantization lost from a coordinate last time to that coordinate's next value before
    quantizing, so the errors telescope instead of piling up: over any run of steps, the sum of what
    was sent equals the sum of the true values minus the last residual. That needs coordinates that
    persist from one message to the next, and the rows of a split step's gradient do not: each step is
    another batch, padded to another length. So the residual is kept per example (keyed by its tokens)
    over its real positions, and added when that example comes back, in the next epoch or a repeated
    step, wherever it sits in the batch (AQ-SGD, Wang et al. 2022, keeps per-example state for the same
    reason). Memory: one float32 per real token and hidden unit of each example seen, up to
    ``max_bytes`` (the least recently seen are dropped). Not checkpointed: a resumed client starts over.
    """

    def __init__(self, codec: Codec, max_bytes: int) -> None:
        self.codec = codec
        self.max_bytes = max_bytes
        self._residuals: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self.bytes = 0
        self.rows = 0  # rows compensated so far ...
        self.applied = 0  # ... and those that found their example's residual

    @staticmethod
    def _key(tokens: torch.Tensor) -> bytes:
        return hashlib.blake2b(tokens.to(torch.int64).numpy().tobytes(), digest_size=16).digest()

    def compensate(self, grad: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: torch.Tensor | None) -> torch.Tensor:
        """``grad`` (B, T, H) plus each example's residual, to send in ``codec``; keeps the new residuals."""
        real = (torch.ones(input_ids.shape, dtype=torch.bool) if attention_mask is None
                else attention_mask.to(device="cpu", dtype=torch.bool))
        ids = input_ids.detach().cpu()
        keys = [self._key(ids[row][real[row]]) for row in range(ids.shape[0])]
        total = grad.detach().to(device="cpu", dtype=torch.float32).clone()
        for row, key in enumerate(keys):
            self.rows += 1
            residual = self._pop(key)
            if residual is not None and residual.shape[0] == int(real[row].sum()):
                total[row, real[row]] += residual
                self.applied += 1
        sent = total.to(grad.dtype)
        error = sent.to(torch.float32) - self.codec.round_trip(sent)
        for row, key in enumerate(keys):
            residual = error[row, real[row]]
            if bool(torch.isfinite(residual).all()):
                self._residuals[key] = residual.clone()
                self.bytes += residual.numel() * 4
        while self.bytes > self.max_bytes and self._residuals:
            self._pop(next(iter(self._residuals)))
        return sent.to(grad.device)

    def _pop(self, key: bytes) -> torch.Tensor | None:
        residual = self._residuals.pop(key, None)
        if residual is not None:
            self.bytes -= residual.numel() * 4
        return residual


class CodecTrunk:
    """A ``TrunkEndpoint`` that puts the wire codecs at the cut of an in-process split: every tensor
    crossing it is encoded and decoded as over the network (hidden states both ways in the forward
    codec, gradients both ways in the backward codec, as the server mirrors each request) and its
    message bytes are counted per direction. What the network adds (encryption, framing) is not."""

    KEYS = ("forward_up", "forward_down", "backward_up", "backward_down")

    def __init__(self, inner: TrunkEndpoint, forward: Codec, backward: Codec) -> None:
        self.inner = inner
        self.forward_codec = forward
        self.backward_codec = backward
        self.limits = TensorLimits(frozenset(WIRE_CODECS), max_elements=1 << 40, max_bytes=1 << 42)
        self.bytes = dict.fromkeys(self.KEYS, 0)
        self.tokens = dict.fromkeys(self.KEYS, 0)

    def _cross(self, tensor: torch.Tensor, codec: Codec, key: str) -> torch.Tensor:
        message = codec.encode(tensor)
        self.bytes[key] += message.ByteSize()
        self.tokens[key] += tensor.shape[0] * tensor.shape[1]
        return decode_tensor(message, self.limits, tuple(tensor.shape), tensor.dtype).to(tensor.device)

    @property
    def accepts_micro_batches(self) -> bool:
        return bool(getattr(self.inner, "accepts_micro_batches", False))

    def forward(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
                train: bool = True, labelled_tokens: int = 0,
                micro: MicroBatch | None = None) -> torch.Tensor:
        received = self._cross(hidden, self.forward_codec, "forward_up")
        output = self.inner.forward(client_id, received, attention_mask, train, labelled_tokens,
                                    **micro_kwargs(micro))
        return self._cross(output, self.forward_codec, "forward_down")

    def backward(self, client_id: str, grad_output: torch.Tensor,
                 micro: MicroBatch | None = None) -> torch.Tensor:
        received = self._cross(grad_output, self.backward_codec, "backward_up")
        grad_in = self.inner.backward(client_id, received, **micro_kwargs(micro))
        return self._cross(grad_in, self.backward_codec, "backward_down")

    def bytes_per_token(self) -> dict[str, float]:
        """Message bytes per token (batch x sequence position) of each direction so far."""
        return {key: self.bytes[key] / self.tokens[key] for key in self.KEYS if self.tokens[key]}
