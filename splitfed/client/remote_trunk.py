"""The trunk behind the network, as a ``TrunkEndpoint``: handshake, encryption, tensor codec."""

from __future__ import annotations

import logging

import torch

from splitfed.endpoints import LossResult, MicroBatch, StaleCacheError
from splitfed.layout import Layout, TrunkRange
from splitfed.security import ClientHandshake, Identity, PublicIdentity, SecureChannel, ServerHello
from splitfed.transport import (
    Codec,
    TensorLimits,
    adapter_limits,
    decode_tensor,
    encode_int64,
    encode_tensor,
    mask_to_lengths,
    parse_payload,
    pb,
)
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.envelope import CLOSE_INTERRUPTED
from splitfed.transport.errors import RemoteError

log = logging.getLogger(__name__)



class TrunkMismatchError(RuntimeError):
    """The server's trunk does not fit this client's head and tail."""


class RemoteTrunk:
    """Implements ``splitfed.endpoints.TrunkEndpoint`` over an encrypted, authenticated session.

    Hidden states and gradients are encoded (codec + shape + bytes), sealed with AES-256-GCM under
    this session's key and sent; the attention mask travels as per-row lengths only. Hidden states
    (forward, generate, loss) go in the ``forward`` codec, gradients in the ``backward`` one; the
    server answers each in the codec it was asked in. ``wire_dtype`` sets both directions.
    """

    def __init__(
        self,
        connection: TrunkConnection,
        identity: Identity,
        server_key: PublicIdentity,
        wire_dtype: str = "float32",
        forward: Codec | None = None,
        backward: Codec | None = None,
    ) -> None:
        self.connection = connection
        self.identity = identity
        self.server_key = server_key
        self.forward_codec = forward or Codec(wire_dtype)
        self.backward_codec = backward or Codec(wire_dtype)
        self.channel: SecureChannel | None = None
        self.limits: pb.SessionLimits | None = None
        self._step = 0
        self._open_step: int | None = None
        self._shape: tuple[int, ...] = ()
        self._open_micro: dict[int, tuple[int, tuple[int, ...]]] = {}  # micro-batch -> (step, shape)
        self.blocks: tuple[int, int] | None = None  # the trunk blocks this client's partition leaves

    @property
    def wire_dtype(self) -> str:
        """The forward codec's name (``wire_dtype = name`` sets both directions, default block size)."""
        return self.forward_codec.name

    @wire_dtype.setter
    def wire_dtype(self, name: str) -> None:
        self.forward_codec = self.backward_codec = Codec(name)

    @property
    def accepts_micro_batches(self) -> bool:
        """Whether the server's mode takes a training step in micro-batches (``MicroBatchEndpoint``)."""
        return self.limits is not None and self.limits.micro_batches_max > 0

    def connect(self, expected_layers: tuple[int, int] | None = None, hidden_size: int | None = None,
                layout: str | None = None, model_type: str | None = None, micro_batches: int = 1,
                base_id: str | None = None) -> None:
        """Run the signed handshake and check that the server's trunk fits between head and tail (and
        takes ``micro_batches`` per step); ``base_id`` (the digest of the base model this client's parts
        come from) lets the server refuse parts of another model."""
        handshake = ClientHandshake(self.identity, self.server_key)
        reply = self.connection.handshake(handshake.hello().to_bytes(), base_id)
        keys = handshake.finish(ServerHello.from_bytes(reply.server_hello))
        self.channel = SecureChannel(keys)
        self.limits = reply.limits
        try:
            self._check_served(expected_layers, hidden_size, layout, model_type)
            self._check_micro_batches(micro_batches)
        except TrunkMismatchError:
            self._close_quietly()  # the server frees the session now, not when it times out
            raise
        log.info("connected to the trunk (blocks [%d:%d], session %s)", self.limits.trunk_start,
                 self.limits.trunk_end, keys.session_id.hex()[:8])

    def _check_served(self, expected_layers: tuple[int, int] | None, hidden_size: int | None,
                      layout: str | None, model_type: str | None = None) -> None:
        assert self.limits is not None
        if model_type is not None and self.limits.model_type and self.limits.model_type != model_type:
            raise TrunkMismatchError(f"the server serves a {self.limits.model_type!r} model, this client "
                                     f"loads a {model_type!r} one: use the server's model")
        served = (self.limits.trunk_start, self.limits.trunk_end)
        served_layout = self.limits.layout or Layout.THREE_PART
        if layout is not None and served_layout != layout:
            raise TrunkMismatchError(f"the server runs the {served_layout} layout, this client the {layout} "
                                     "one: use the same partition.layout")
        if expected_layers is not None:
            self.blocks = self._blocks_within(served, tuple(expected_layers))
        if hidden_size is not None and self.limits.hidden_size != hidden_size:
            raise TrunkMismatchError(f"server hidden size {self.limits.hidden_size} != {hidden_size}")
        for direction, codec in (("forward", self.forward_codec), ("backward", self.backward_codec)):
            if codec.name not in self.limits.dtypes:
                raise TrunkMismatchError(f"the server does not accept {codec.name} on the wire ({direction} "
                                         f"codec); it accepts {', '.join(self.limits.dtypes)}: set wire."
                                         f"{direction} (or wire_dtype) to one of them")

    def _check_micro_batches(self, micro_batches: int) -> None:
        assert self.limits is not None
        if micro_batches > 1 and micro_batches > self.limits.micro_batches_max:
            most = self.limits.micro_batches_max
            takes = f"at most {most} micro-batches" if most else "a step in one forward only"
            raise TrunkMismatchError(f"micro_batches is {micro_batches}, and the server's mode takes "
                                     f"{takes}: set micro_batches within it (1: no micro-batches)")

    def _blocks_within(self, served: tuple[int, int], wanted: tuple[int, ...]) -> tuple[int, int] | None:
        """The blocks to name in each request (None: all the trunk holds), or a refusal when the server
        does not run what this client's partition leaves to it."""
        assert self.limits is not None
        if wanted == served:
            return None
        trunk = TrunkRange.of(*served, self.limits.first_block_max, self.limits.end_block_min)
        if trunk.accepts(wanted[0], wanted[1]):
            return (wanted[0], wanted[1])
        if not trunk.ranged:
            raise TrunkMismatchError(f"the server runs blocks [{served[0]}:{served[1]}], this client needs "
                                     f"[{wanted[0]}:{wanted[1]}]: use the same partition")
        raise TrunkMismatchError(f"this client's partition leaves blocks [{wanted[0]}:{wanted[1]}] to the "
                                 f"server, which runs for a client {trunk.describe()}: choose "
                                 "partition.head and .tail within the server's range")

    def _close_quietly(self) -> None:
        try:
            self.close(interrupted=True)  # not finished: it may come back with the right settings
        except RemoteError as error:
            log.debug("could not close the session: %s", error)

    def _exchange(self, kind: str, step: int, message: pb.Message) -> pb.Message:
        if self.channel is None:
            raise RuntimeError("call connect() first")
        sealed = self.channel.seal(kind, step, message.SerializeToString())
        reply = self.connection.exchange(sealed)
        expected = f"{kind}_reply"
        plaintext = self.channel.open(reply)
        if reply.kind != expected or reply.step != step:
            raise RuntimeError(f"server answered {reply.kind!r} step {reply.step} to {kind} step {step}")
        return parse_payload(expected, plaintext)

    def _tensor_limits(self) -> TensorLimits:
        assert self.limits is not None
        limits = self.limits
        return TensorLimits(dtypes=frozenset(limits.dtypes),
                            max_elements=limits.max_batch * limits.max_length * limits.hidden_size,
                            max_bytes=limits.max_message_bytes)

    def forward(
        self,
        client_id: str,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None,
        train: bool = True,
        labelled_tokens: int = 0,
        micro: MicroBatch | None = None,
    ) -> torch.Tensor:
        self._step += 1
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        micro_fields = {} if micro is None else {"micro_batch": micro.index, "micro_batches": micro.count}
        request = pb.ForwardRequest(step=self._step, hidden=self.forward_codec.encode(hidden.detach()),
                                    lengths=mask_to_lengths(attention_mask), train=train,
                                    labelled_tokens=labelled_tokens, **self._block_fields(), **micro_fields)
        reply = self._exchange("forward", self._step, request)
        output = decode_tensor(reply.hidden, self._tensor_limits(), tuple(hidden.shape), hidden.dtype)
        if train and micro is not None:
            self._open_micro[micro.index] = (self._step, tuple(hidden.shape))
        elif train:
            self._open_step, self._shape = self._step, tuple(hidden.shape)
        return output

    def _block_fields(self) -> dict[str, int]:
        """first_block / end_block of a request: this client's own blocks where the server accepts a
        range of partitions (none for one partition)."""
        return {} if self.blocks is None else {"first_block": self.blocks[0], "end_block": self.blocks[1]}

    def backward(self, client_id: str, grad_output: torch.Tensor,
                 micro: MicroBatch | None = None) -> torch.Tensor:
        if micro is not None:
            if micro.index not in self._open_micro:
                raise RuntimeError(f"backward of micro-batch {micro.index} without its training forward")
            step, shape = self._open_micro.pop(micro.index)
        else:
            if self._open_step is None:
                raise RuntimeError("backward without a training forward")
            step, shape = self._open_step, self._shape
            self._open_step = None
        request = pb.BackwardRequest(step=step, grad=self.backward_codec.encode(grad_output))
        reply = self._exchange("backward", step, request)
        return decode_tensor(reply.grad, self._tensor_limits(), shape, grad_output.dtype)

    def loss(self, client_id: str, hidden: torch.Tensor, attention_mask: torch.Tensor | None,
             labels: torch.Tensor, train: bool = True) -> LossResult:
        """Two-part layout (``LossEndpoint``): the head's output and the labels go up; the loss (and, when
        training, the gradient for the head; when scoring, per-row NLL) come back."""
        self._step += 1
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], dtype=torch.long)
        request = pb.LossRequest(step=self._step, hidden=self.forward_codec.encode(hidden.detach()),
                                 lengths=mask_to_lengths(attention_mask), labels=encode_int64(labels.long()),
                                 train=train)
        reply = self._exchange("loss", self._step, request)
        if not train:
            return LossResult(float(reply.loss), None, torch.tensor(list(reply.row_nll)),
                              torch.tensor(list(reply.row_tokens)))
        grad = decode_tensor(reply.grad, self._tensor_limits(), tuple(hidden.shape), hidden.dtype)
        return LossResult(float(reply.loss), grad)

    def aggregate(self, round_index: int, weight: float,
                  state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
        """Submit this client's adapters for FedAvg round ``round_index``; returns the weighted average
        over the round's clients (and how many contributed) once the server has them all."""
        self._step += 1
        request = pb.AggregateRequest(step=self._step, round=round_index, weight=weight)
        for name in sorted(state):
            request.tensors.add(name=name, tensor=encode_tensor(state[name], "float32"))
        reply = self._exchange("aggregate", self._step, request)
        limits = adapter_limits()
        average = {item.name: decode_tensor(item.tensor, limits, tuple(state[item.name].shape))
                   for item in reply.tensors if item.name in state}
        if set(average) != set(state):
            raise RuntimeError("the server's average does not carry this client's adapter weights")
        return average, int(reply.contributors)

    def generate_step(self, stream: int, hidden: torch.Tensor, attention_mask: torch.Tensor, past_length: int,
                      use_cache: bool = True) -> torch.Tensor:
        """One split-inference step of ``stream`` (``splitfed.inference.GenerationEndpoint``): the new
        tokens' hidden states go up, with the mask as per-row lengths over past and new positions. In the
        two-part layout the server answers with the last position's logits (B, 1, V) instead."""
        self._step += 1
        request = pb.GenerateRequest(step=self._step, stream=stream,
                                     hidden=self.forward_codec.encode(hidden.detach()),
                                     lengths=mask_to_lengths(attention_mask, past_length),
                                     use_cache=use_cache, **self._block_fields())
        try:
            reply = self._exchange("generate", self._step, request)
        except RemoteError as error:
            if error.code == "stale_cache":
                raise StaleCacheError(error.message) from None
            raise
        assert self.limits is not None
        two_part = self.limits.layout == Layout.TWO_PART  # the server answers with the last logits
        expected = (hidden.shape[0], 1, None) if two_part else tuple(hidden.shape)
        return decode_tensor(reply.hidden, self._tensor_limits(), expected, hidden.dtype)

    def release_stream(self, stream: int) -> None:
        """Free ``stream``'s trunk cache on the server."""
        self._step += 1
        request = pb.GenerateRequest(step=self._step, stream=stream, release=True)
        self._exchange("generate", self._step, request)

    @property
    def aggregation(self) -> str:
        """How the server aggregates FedAvg rounds: "secure" or "plain" (servers before it: "plain")."""
        if self.limits is None:
            raise RuntimeError("call connect() first")
        return self.limits.aggregation or "plain"

    def secagg(self, request: pb.SecAggRequest) -> pb.SecAggReply:
        """Send one phase of a secure-aggregation round; returns the server's answer to it."""
        self._step += 1
        request.step = self._step
        reply = self._exchange("secagg", self._step, request)
        if reply.round != request.round or reply.phase != request.phase:
            raise RuntimeError(f"server answered round {reply.round} phase {reply.phase} to round "
                               f"{request.round} phase {request.phase}")
        return reply

    def close(self, interrupted: bool = False) -> None:
        """End the session (the server frees everything it holds for this client); ``interrupted``: this
        client stops before its end and will resume (the server does not count it as finished)."""
        if self.channel is None:
            return
        self._step += 1
        sealed = self.channel.seal("close", self._step, CLOSE_INTERRUPTED if interrupted else b"")
        try:
            self.connection.exchange(sealed)
        finally:
            self.channel = None
