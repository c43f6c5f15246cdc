"""The public description of a secure-aggregation round (``secagg_client.py`` and ``secagg_server.py``
hold the protocol): its phases, the roster of clients and their advertised keys, and the checks every
party applies to round ids, client ids, thresholds and weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

from splitfed.security.encoding import decode_uint, encode_uint, pack, unpack
from splitfed.security.errors import SecAggError
from splitfed.security.identity import check_name
from splitfed.security.masking import KEY_SIZE, split_advertisement

MAX_ROUND_ID = 64
MAX_ROSTER_BYTES = 1 << 26
ROSTER_TAG = b"splitfed SecAggRoster"


class Phase(IntEnum):
    """The four phases of a round, each one sealed "secagg" message each way (the wire's phase number)."""

    ADVERTISE = 1  # fresh X25519 keys; the server relays the roster
    SHARE = 2  # Shamir shares of the masking key and self-mask seed, encrypted per recipient
    MASKED = 3  # the weighted adapters in fixed point plus pairwise and self masks
    REVEAL = 4  # shares that unmask the survivors and the clients that dropped out

    @property
    def description(self) -> str:
        return {1: "advertise keys", 2: "share keys", 3: "masked input", 4: "reveal shares"}[self.value]


def check_round_id(round_id: object) -> bytes:
    if not isinstance(round_id, bytes) or not 0 < len(round_id) <= MAX_ROUND_ID:
        raise SecAggError(f"round_id must be 1-{MAX_ROUND_ID} bytes")
    return round_id


def majority_threshold(clients: int) -> int:
    """The smallest threshold a round of ``clients`` accepts: a strict majority, and at least 2."""
    return max(2, clients // 2 + 1)


def check_threshold(threshold: object) -> int:
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 2:
        raise SecAggError("threshold must be an integer >= 2")
    return threshold


def check_client_id(client_id: object) -> str:
    try:
        return check_name(client_id)
    except ValueError:
        raise SecAggError("client id is not a valid identity name") from None


def check_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight) \
            or weight <= 0:
        raise SecAggError("weight must be a positive finite number")
    return float(weight)


@dataclass(frozen=True)
class RoundRoster:
    """The clients of a round and their advertised keys (U1), sorted by id; the server relays it."""

    round_id: bytes
    entries: tuple[tuple[str, bytes], ...]

    def __post_init__(self) -> None:
        check_round_id(self.round_id)
        if not isinstance(self.entries, tuple):
            raise SecAggError("entries must be a tuple")
        for entry in self.entries:
            if not isinstance(entry, tuple) or len(entry) != 2:
                raise SecAggError("each roster entry is (client_id, public keys)")
            check_client_id(entry[0])
            split_advertisement(entry[1])
        ids = [client_id for client_id, _ in self.entries]
        if ids != sorted(set(ids)):
            raise SecAggError("roster ids must be unique and sorted")
        keys = [public[i:i + KEY_SIZE] for _, public in self.entries for i in (0, KEY_SIZE)]
        if len(set(keys)) != len(keys):
            raise SecAggError("roster public keys must be distinct")

    @classmethod
    def from_dict(cls, round_id: bytes, keys: Mapping[str, bytes]) -> RoundRoster:
        return cls(round_id, tuple(sorted(keys.items())))

    def as_dict(self) -> dict[str, bytes]:
        return dict(self.entries)

    @property
    def ids(self) -> list[str]:
        return [client_id for client_id, _ in self.entries]

    def to_bytes(self) -> bytes:
        body = pack(*(field for client_id, public in self.entries for field in (client_id.encode(), public)))
        return pack(ROSTER_TAG, self.round_id, encode_uint(len(self.entries), 4), body)

    @classmethod
    def from_bytes(cls, data: bytes) -> RoundRoster:
        """Parse `to_bytes` output; `SecAggError` if malformed."""
        try:
            tag, round_id, count, body = unpack(data, 4, MAX_ROSTER_BYTES)
            if tag != ROSTER_TAG:
                raise ValueError("not a roster")
            fields = unpack(body, 2 * decode_uint(count, 4), MAX_ROSTER_BYTES)
            entries = tuple((fields[i].decode("ascii"), fields[i + 1]) for i in range(0, len(fields), 2))
        except (ValueError, UnicodeDecodeError):
            raise SecAggError("malformed roster") from None
        return cls(round_id, entries)

    def __repr__(self) -> str:
        return f"RoundRoster(round_id={self.round_id.hex()}, clients={self.ids})"
