# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "scales", "block_size")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    scales: bytes
    block_size: int
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., scales: _Optional[bytes] = ..., block_size: _Optional[int] = ...) -> None: ...

class Lengths(_message.Message):
    __slots__ = ("lengths", "left_padding", "past_length")
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    LEFT_PADDING_FIELD_NUMBER: _ClassVar[int]
    PAST_LENGTH_FIELD_NUMBER: _ClassVar[int]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    left_padding: _containers.RepeatedScalarFieldContainer[int]
    past_length: int
    def __init__(self, lengths: _Optional[_Iterable[int]] = ..., left_padding: _Optional[_Iterable[int]] = ..., past_length: _Optional[int] = ...) -> None: ...

class ForwardRequest(_message.Message):
    __slots__ = ("step", "hidden", "lengths", "train", "labelled_tokens", "first_block", "end_block", "micro_batch", "micro_batches")
    STEP_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    LABELLED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    END_BLOCK_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCH_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCHES_FIELD_NUMBER: _ClassVar[int]
    step: int
    hidden: Tensor
    lengths: Lengths
    train: bool
    labelled_tokens: int
    first_block: int
    end_block: int
    micro_batch: int
    micro_batches: int
    def __init__(self, step: _Optional[int] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Union[Lengths, _Mapping]] = ..., train: _Optional[bool] = ..., labelled_tokens: _Optional[int] = ..., first_block: _Optional[int] = ..., end_block: _Optional[int] = ..., micro_batch: _Optional[int] = ..., micro_batches: _Optional[int] = ...) -> None: ...

class ForwardReply(_message.Message):
    __slots__ = ("step", "hidden")
    STEP_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    step: int
    hidden: Tensor
    def __init__(self, step: _Optional[int] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class BackwardRequest(_message.Message):
    __slots__ = ("step", "grad")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    step: int
    grad: Tensor
    def __init__(self, step: _Optional[int] = ..., grad: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class BackwardReply(_message.Message):
    __slots__ = ("step", "grad")
    STEP_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    step: int
    grad: Tensor
    def __init__(self, step: _Optional[int] = ..., grad: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class NamedTensor(_message.Message):
    __slots__ = ("name", "tensor")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    name: str
    tensor: Tensor
    def __init__(self, name: _Optional[str] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("step", "round", "weight", "tensors")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    step: int
    round: int
    weight: float
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, step: _Optional[int] = ..., round: _Optional[int] = ..., weight: _Optional[float] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class AggregateReply(_message.Message):
    __slots__ = ("step", "round", "contributors", "tensors")
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    step: int
    round: int
    contributors: int
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, step: _Optional[int] = ..., round: _Optional[int] = ..., contributors: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("step", "round", "phase", "keys", "shares", "weight", "tensors")
    class SharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    step: int
    round: int
    phase: int
    keys: bytes
    shares: _containers.ScalarMap[str, bytes]
    weight: float
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    def __init__(self, step: _Optional[int] = ..., round: _Optional[int] = ..., phase: _Optional[int] = ..., keys: _Optional[bytes] = ..., shares: _Optional[_Mapping[str, bytes]] = ..., weight: _Optional[float] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("step", "round", "phase", "roster", "threshold", "shares", "survivors", "dropped", "contributors", "tensors", "weight")
    class SharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROSTER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    step: int
    round: int
    phase: int
    roster: bytes
    threshold: int
    shares: _containers.ScalarMap[str, bytes]
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    contributors: int
    tensors: _containers.RepeatedCompositeFieldContainer[NamedTensor]
    weight: float
    def __init__(self, step: _Optional[int] = ..., round: _Optional[int] = ..., phase: _Optional[int] = ..., roster: _Optional[bytes] = ..., threshold: _Optional[int] = ..., shares: _Optional[_Mapping[str, bytes]] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., contributors: _Optional[int] = ..., tensors: _Optional[_Iterable[_Union[NamedTensor, _Mapping]]] = ..., weight: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("step", "stream", "hidden", "lengths", "use_cache", "release", "first_block", "end_block")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    USE_CACHE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_FIELD_NUMBER: _ClassVar[int]
    END_BLOCK_FIELD_NUMBER: _ClassVar[int]
    step: int
    stream: int
    hidden: Tensor
    lengths: Lengths
    use_cache: bool
    release: bool
    first_block: int
    end_block: int
    def __init__(self, step: _Optional[int] = ..., stream: _Optional[int] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Union[Lengths, _Mapping]] = ..., use_cache: _Optional[bool] = ..., release: _Optional[bool] = ..., first_block: _Optional[int] = ..., end_block: _Optional[int] = ...) -> None: ...

class GenerateReply(_message.Message):
    __slots__ = ("step", "hidden", "cached_tokens")
    STEP_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    step: int
    hidden: Tensor
    cached_tokens: int
    def __init__(self, step: _Optional[int] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class LossRequest(_message.Message):
    __slots__ = ("step", "hidden", "lengths", "labels", "train")
    STEP_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    step: int
    hidden: Tensor
    lengths: Lengths
    labels: Tensor
    train: bool
    def __init__(self, step: _Optional[int] = ..., hidden: _Optional[_Union[Tensor, _Mapping]] = ..., lengths: _Optional[_Union[Lengths, _Mapping]] = ..., labels: _Optional[_Union[Tensor, _Mapping]] = ..., train: _Optional[bool] = ...) -> None: ...

class LossReply(_message.Message):
    __slots__ = ("step", "loss", "grad", "row_nll", "row_tokens")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    ROW_NLL_FIELD_NUMBER: _ClassVar[int]
    ROW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    grad: Tensor
    row_nll: _containers.RepeatedScalarFieldContainer[float]
    row_tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., grad: _Optional[_Union[Tensor, _Mapping]] = ..., row_nll: _Optional[_Iterable[float]] = ..., row_tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("client_hello", "base_id")
    CLIENT_HELLO_FIELD_NUMBER: _ClassVar[int]
    BASE_ID_FIELD_NUMBER: _ClassVar[int]
    client_hello: bytes
    base_id: str
    def __init__(self, client_hello: _Optional[bytes] = ..., base_id: _Optional[str] = ...) -> None: ...

class SessionLimits(_message.Message):
    __slots__ = ("hidden_size", "max_batch", "max_length", "max_message_bytes", "dtypes", "trunk_start", "trunk_end", "model_type", "aggregation", "layout", "first_block_max", "end_block_min", "micro_batches_max", "base_id")
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DTYPES_FIELD_NUMBER: _ClassVar[int]
    TRUNK_START_FIELD_NUMBER: _ClassVar[int]
    TRUNK_END_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    FIRST_BLOCK_MAX_FIELD_NUMBER: _ClassVar[int]
    END_BLOCK_MIN_FIELD_NUMBER: _ClassVar[int]
    MICRO_BATCHES_MAX_FIELD_NUMBER: _ClassVar[int]
    BASE_ID_FIELD_NUMBER: _ClassVar[int]
    hidden_size: int
    max_batch: int
    max_length: int
    max_message_bytes: int
    dtypes: _containers.RepeatedScalarFieldContainer[str]
    trunk_start: int
    trunk_end: int
    model_type: str
    aggregation: str
    layout: str
    first_block_max: int
    end_block_min: int
    micro_batches_max: int
    base_id: str
    def __init__(self, hidden_size: _Optional[int] = ..., max_batch: _Optional[int] = ..., max_length: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., dtypes: _Optional[_Iterable[str]] = ..., trunk_start: _Optional[int] = ..., trunk_end: _Optional[int] = ..., model_type: _Optional[str] = ..., aggregation: _Optional[str] = ..., layout: _Optional[str] = ..., first_block_max: _Optional[int] = ..., end_block_min: _Optional[int] = ..., micro_batches_max: _Optional[int] = ..., base_id: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("server_hello", "limits")
    SERVER_HELLO_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    server_hello: bytes
    limits: SessionLimits
    def __init__(self, server_hello: _Optional[bytes] = ..., limits: _Optional[_Union[SessionLimits, _Mapping]] = ...) -> None: ...

class Sealed(_message.Message):
    __slots__ = ("session_id", "kind", "step", "counter", "ciphertext", "chunk_index", "chunk_count")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COUNTER_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    session_id: bytes
    kind: str
    step: int
    counter: int
    ciphertext: bytes
    chunk_index: int
    chunk_count: int
    def __init__(self, session_id: _Optional[bytes] = ..., kind: _Optional[str] = ..., step: _Optional[int] = ..., counter: _Optional[int] = ..., ciphertext: _Optional[bytes] = ..., chunk_index: _Optional[int] = ..., chunk_count: _Optional[int] = ...) -> None: ...
