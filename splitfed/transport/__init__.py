"""Wire protocol: the protobuf schema (``pb``), tensor/lengths codec and chunking.

The only package that imports grpc (in the generated ``splitfed_pb2_grpc``, loaded on demand).
"""

from splitfed.transport import splitfed_pb2 as pb
from splitfed.transport.chunking import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    Reassembler,
    split_bytes,
)
from splitfed.transport.codec import (
    ADAPTER_BYTES,
    ADAPTER_ELEMENTS,
    MAX_RANK,
    WIRE_CODECS,
    WIRE_DTYPES,
    Codec,
    TensorLimits,
    adapter_limits,
    decode_int64,
    decode_tensor,
    encode_int64,
    encode_like,
    encode_tensor,
    lengths_to_mask,
    mask_to_lengths,
)
from splitfed.transport.envelope import PAYLOAD_KINDS, parse_message, parse_payload
from splitfed.transport.errors import WireFormatError
from splitfed.transport.quantize import DEFAULT_BLOCK_SIZE, INT8_BLOCKWISE, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE

__all__ = [
    "ADAPTER_BYTES",
    "ADAPTER_ELEMENTS",
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "INT8_BLOCKWISE",
    "MAX_BLOCK_SIZE",
    "MAX_RANK",
    "MIN_BLOCK_SIZE",
    "PAYLOAD_KINDS",
    "WIRE_CODECS",
    "WIRE_DTYPES",
    "Codec",
    "Reassembler",
    "TensorLimits",
    "WireFormatError",
    "adapter_limits",
    "decode_int64",
    "decode_tensor",
    "encode_int64",
    "encode_like",
    "encode_tensor",
    "lengths_to_mask",
    "mask_to_lengths",
    "parse_message",
    "parse_payload",
    "pb",
    "split_bytes",
]
