"""The server side of secure aggregation, and a whole round in memory (for tests and integration)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping

import torch

from splitfed.aggregation.fixed_point import DEFAULT_SCALE, check_scale, decode
from splitfed.aggregation.secagg_client import (
    KEY_KIND,
    MAX_MESSAGE,
    REVEAL_TAG,
    SEED_KIND,
    SecAggClient,
    check_tensors,
)
from splitfed.aggregation.secagg_round import RoundRoster, check_round_id, check_threshold, check_weight
from splitfed.aggregation.shamir import SHARE_SIZE, shamir_combine
from splitfed.security.encoding import decode_uint, unpack
from splitfed.security.errors import SecAggError
from splitfed.security.masking import (
    AEAD_NONCE_SIZE,
    AEAD_TAG_SIZE,
    RecoveredMaskKey,
    add_stream,
    pair_key,
    self_key,
)


class SecAggServer:
    """The server's side of a round: `collect_keys`, `route_shares`, `collect_masked` (per client),
    `unmask_request`, `finish`."""

    def __init__(self, round_id: bytes, threshold: int, scale: float = DEFAULT_SCALE,
                 dtype: torch.dtype = torch.float32) -> None:
        self.round_id = check_round_id(round_id)
        self.threshold = check_threshold(threshold)
        self.scale = check_scale(scale)
        self.dtype = dtype
        self._state = "advertise"
        self._roster: RoundRoster | None = None
        self._members: frozenset[str] = frozenset()
        self._shapes: dict[str, torch.Size] = {}
        self._sums: dict[str, torch.Tensor] = {}
        self._weights: dict[str, float] = {}
        self._survivors: list[str] = []
        self._dropped: list[str] = []

    @property
    def state(self) -> str:
        return self._state

    def _expect(self, state: str, action: str) -> None:
        if self._state != state:
            raise SecAggError(f"server cannot {action} in state {self._state!r}")

    def collect_keys(self, advertisements: Mapping[str, bytes]) -> RoundRoster:
        """The clients' advertised keys -> the roster (U1) to relay to all of them."""
        self._expect("advertise", "collect keys")
        if not isinstance(advertisements, Mapping):
            raise SecAggError("advertisements must be a dict: client id -> public keys")
        roster = RoundRoster.from_dict(self.round_id, advertisements)
        if len(roster.entries) < self.threshold:
            raise SecAggError(f"{len(roster.entries)} clients advertised keys, fewer than the threshold "
                              f"{self.threshold}")
        self._roster = roster
        self._state = "share"
        return roster

    def route_shares(self, shares: Mapping[str, Mapping[str, bytes]]) -> dict[str, dict[str, bytes]]:
        """sender -> {recipient: share} -> recipient -> {sender: share}, within U2 (the senders)."""
        self._expect("share", "route shares")
        assert self._roster is not None
        ids = set(self._roster.ids)
        if not isinstance(shares, Mapping) or not set(shares) <= ids:
            raise SecAggError("shares must come from roster clients")
        for sender, outgoing in shares.items():
            if not isinstance(outgoing, Mapping) or set(outgoing) != ids - {sender}:
                raise SecAggError(f"client {sender!r} must send one share to every other roster client")
            if not all(isinstance(blob, bytes) and AEAD_NONCE_SIZE + AEAD_TAG_SIZE < len(blob) <= MAX_MESSAGE
                       for blob in outgoing.values()):
                raise SecAggError(f"malformed share from client {sender!r}")
        if len(shares) < self.threshold:
            raise SecAggError(f"{len(shares)} clients shared keys, fewer than the threshold {self.threshold}")
        self._members = frozenset(shares)
        self._state = "mask"
        return {recipient: {sender: shares[sender][recipient] for sender in sorted(self._members)
                            if sender != recipient} for recipient in sorted(self._members)}

    def collect_masked(self, client_id: str, tensors: Mapping[str, torch.Tensor], weight: float) -> None:
        """Add one client's masked tensors (int64) and its public weight to the running sum."""
        self._expect("mask", "collect masked input")
        if client_id not in self._members:
            raise SecAggError(f"client {client_id!r} did not share keys in this round")
        if client_id in self._weights:
            raise SecAggError(f"client {client_id!r} already sent its masked input")
        tensors = check_tensors(tensors, "masked tensors")
        weight = check_weight(weight)
        shapes = {name: tensor.shape for name, tensor in tensors.items()}
        if any(tensor.dtype != torch.int64 for tensor in tensors.values()):
            raise SecAggError("masked tensors must be int64")
        if self._shapes and shapes != self._shapes:
            raise SecAggError(f"client {client_id!r} sent tensors whose names or shapes differ from the "
                              "others'")
        if not self._shapes:
            self._shapes = shapes
            self._sums = {name: torch.zeros(tensor.numel(), dtype=torch.int64)
                          for name, tensor in tensors.items()}
        for name, tensor in tensors.items():
            self._sums[name].add_(tensor.detach().cpu().reshape(-1))
        self._weights[client_id] = weight

    def unmask_request(self) -> tuple[list[str], list[str]]:
        """Close input collection: (survivors U3, dropped U2 minus U3) to send to the survivors."""
        self._expect("mask", "request unmasking")
        if len(self._weights) < self.threshold:
            raise SecAggError(f"only {len(self._weights)} clients sent masked input, fewer than the "
                              f"threshold {self.threshold}: round aborted")
        self._survivors = sorted(self._weights)
        self._dropped = sorted(self._members - set(self._weights))
        self._state = "unmask"
        return list(self._survivors), list(self._dropped)

    def _parse_reveal(self, blob: object, owner: str, holder: str, x: int) -> tuple[bytes, int]:
        try:
            tag, kind, round_id, owner_id, holder_id, point, value = unpack(blob, 7, MAX_MESSAGE)  # type: ignore[arg-type]
            if (tag != REVEAL_TAG or round_id != self.round_id or owner_id != owner.encode()
                    or holder_id != holder.encode() or decode_uint(point, 4) != x):
                raise ValueError("mismatch")
            return kind, decode_uint(value, SHARE_SIZE)
        except ValueError:
            raise SecAggError(f"malformed or misaddressed share of {owner!r} from {holder!r}") from None

    def finish(self, revealed: Mapping[str, Mapping[str, bytes]],
               ) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Unmask with the survivors' revealed shares -> (weighted average per tensor, contributors U3)."""
        self._expect("unmask", "finish")
        assert self._roster is not None
        if not isinstance(revealed, Mapping) or not set(revealed) <= set(self._survivors):
            raise SecAggError("only surviving clients may reveal shares")
        if len(revealed) < self.threshold:
            raise SecAggError(f"only {len(revealed)} survivors revealed shares, fewer than the threshold "
                              f"{self.threshold}: round aborted")
        points = {client_id: index + 1 for index, client_id in enumerate(self._roster.ids)}
        seed_shares: dict[str, dict[int, int]] = {owner: {} for owner in self._survivors}
        key_shares: dict[str, dict[int, int]] = {owner: {} for owner in self._dropped}
        for holder, messages in revealed.items():
            if not isinstance(messages, Mapping) or set(messages) != self._members:
                raise SecAggError(f"client {holder!r} must reveal one share for every client that "
                                  "shared keys")
            for owner, blob in messages.items():
                kind, value = self._parse_reveal(blob, owner, holder, points[holder])
                if owner in seed_shares and kind == SEED_KIND:
                    seed_shares[owner][points[holder]] = value
                elif owner in key_shares and kind == KEY_KIND:
                    key_shares[owner][points[holder]] = value
                elif owner in seed_shares:
                    raise SecAggError(f"refusing a non-seed share of surviving client {owner!r}: the server "
                                      "never unmasks both the seed and the key of a client")
                else:
                    raise SecAggError(f"refusing a non-key share of dropped client {owner!r}: the server "
                                      "never unmasks both the seed and the key of a client")
        keys = self._roster.as_dict()
        seeds = {owner: shamir_combine(shares, self.threshold) for owner, shares in seed_shares.items()}
        dropped_keys = {}
        for owner, shares in key_shares.items():
            try:
                private_bytes = shamir_combine(shares, self.threshold)
            except SecAggError:
                raise SecAggError(f"could not rebuild the key of dropped client {owner!r}") from None
            dropped_keys[owner] = RecoveredMaskKey(private_bytes, keys[owner], owner)
        result = {}
        for name, total in self._sums.items():
            flat = total.clone()
            for owner, seed in seeds.items():
                add_stream(flat, self_key(seed, self.round_id, owner, name), -1)
            for owner, private in dropped_keys.items():
                for survivor in self._survivors:
                    secret = private.mask_secret(keys[survivor], survivor)
                    sign = 1 if survivor < owner else -1  # what the survivor added for this pair
                    add_stream(flat, pair_key(secret, self.round_id, owner, survivor, name), -sign)
            average = decode(flat, self.scale) / math.fsum(self._weights.values())
            result[name] = average.to(self.dtype).reshape(self._shapes[name])
        self._sums = {}
        self._state = "done"
        return result, list(self._survivors)

    def __repr__(self) -> str:
        return (f"SecAggServer(round_id={self.round_id.hex()}, threshold={self.threshold}, "
                f"state={self._state!r}, inputs={len(self._weights)})")


def run_round_in_memory(clients_values: Mapping[str, tuple[Mapping[str, torch.Tensor], float]],
                        threshold: int,
                        drop_after_masking: Iterable[str] = (), drop_before_masking: Iterable[str] = (),
                        drop_before_sharing: Iterable[str] = (), *, round_id: bytes | None = None,
                        scale: float = DEFAULT_SCALE, dtype: torch.dtype = torch.float32,
                        ) -> tuple[dict[str, torch.Tensor], list[str]]:
    """One whole round without a transport -> (weighted average, contributors).

    `drop_before_sharing` clients advertise keys then vanish; `drop_before_masking` ones also share keys;
    `drop_after_masking` ones mask but their input never reaches the server. Everyone else reveals shares.
    Raises `SecAggError` (and returns nothing) when fewer than `threshold` clients remain.
    """
    round_id = os.urandom(16) if round_id is None else round_id
    drops = [set(drop_before_sharing), set(drop_before_masking), set(drop_after_masking)]
    if any(not group <= set(clients_values) for group in drops):
        raise SecAggError("dropped clients must be clients of the round")
    if len(set().union(*drops)) != sum(map(len, drops)):
        raise SecAggError("a client can drop out only once")
    gone_before_sharing, gone_before_masking, gone_after_masking = drops
    server = SecAggServer(round_id, threshold, scale, dtype)
    clients = {client_id: SecAggClient(client_id, round_id, threshold, scale) for client_id in clients_values}
    roster = server.collect_keys({client_id: client.advertise() for client_id, client in clients.items()})
    sharing = [client_id for client_id in clients if client_id not in gone_before_sharing]
    routed = server.route_shares({client_id: clients[client_id].share_keys(roster) for client_id in sharing})
    for client_id in sharing:
        if client_id not in gone_before_masking:
            clients[client_id].receive_shares(routed[client_id])
    for client_id in sharing:
        if client_id in gone_before_masking:
            continue
        tensors, weight = clients_values[client_id]
        masked = clients[client_id].mask(tensors, weight)
        if client_id not in gone_after_masking:
            server.collect_masked(client_id, masked, weight)
    survivors, dropped = server.unmask_request()
    return server.finish({client_id: clients[client_id].unmask_shares(survivors, dropped)
                          for client_id in survivors})
