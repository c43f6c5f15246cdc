"""Secure aggregation of adapter weights for FedAvg, after Bonawitz et al., "Practical Secure Aggregation
for Privacy-Preserving Machine Learning" (CCS 2017), in its honest-but-curious server version.

The server learns the weighted sum of the surviving clients' tensors (and so their weighted average), and
nothing else about any single client's tensors; a client that drops out mid-round does not spoil the round
for the others as long as at least `threshold` clients stay to the end. This module holds the client's
side of the protocol; `secagg_round.py` the round's phases, roster and input checks, `secagg_server.py`
the server's side, and `splitfed.security.masking` the cryptography (keys, mask stream, sealed shares).

Fixed point. Masking works on integers mod 2**64 (torch int64, two's complement wrap-around):
`encode(x, scale)` = round(x * scale) mod 2**64 and `decode(s, scale)` = s (as a signed integer) / scale.
Each client submits `encode(weight * x)`; rounding costs at most 1 / (2 * scale) per client and
coordinate, so the decoded sum is within n_clients / (2 * scale) of the exact weighted sum (plus float64
rounding, relative 2**-52), and the average within n_clients / (2 * scale * total_weight). The sum must
stay below 2**63 / scale in absolute value (2**39 for the default scale 2**24): a larger sum wraps around
undetected. Each client's own contribution is checked against that range.

Weights (sample counts) are sent in the clear: they are public in this design. The server divides the
decoded sum by the sum of the surviving clients' weights.

Protocol, for a round id `r` and threshold `t` (2 <= t <= number of clients):

0. Advertise: each client makes two X25519 key pairs for the round (`MaskingKeys`): c for encrypting
   shares, s for the pairwise masks (separate keys, as in the paper, so that reconstructing a dropped
   client's s key does not open the shares it exchanged), and sends `c_pk || s_pk` (64 bytes). The server
   relays the list of (client id, keys) to everyone: `RoundRoster` (U1, needs >= t clients).
1. Share keys: client i picks a random 32-byte self-mask seed b_i and splits both b_i and its s private
   key t-out-of-|U1| with Shamir's scheme over the prime field GF(2**521 - 1) (a 32-byte secret is one
   field element; shares are 66 bytes; the share of the client at position k of the sorted roster is the
   polynomial's value at x = k + 1). The shares for j are sealed with AES-256-GCM under
   HKDF-SHA256(X25519(c_i, c_j), info = label, r, sorted ids) with associated data binding r, sender and
   recipient, so the server, which routes them, cannot read them, and a misrouted or altered share is
   refused. Clients whose shares arrive form U2 (>= t).
2. Mask: with s_ij = X25519(s_i, s_j), client i submits for each tensor k of n elements

       y_i = encode(w_i * x_i) + PRG(b_i, k) + sum_{j in U2, i < j} PRG(s_ij, k)
                                              - sum_{j in U2, i > j} PRG(s_ij, k)

   (ids compared as strings). PRG(secret, k) is the ChaCha20 keystream (zero nonce) read as n
   little-endian int64 words, keyed by HKDF-SHA256(secret, info = label, r, the ids (sorted for a pair),
   k): a fresh key per round, pair and tensor. Clients whose masked input arrives form U3 (>= t).
3. Unmask: the server sends U3 (survivors) and U2 \\ U3 (dropped) to the survivors; each reveals its
   shares of b_i for every survivor i and of s_d for every dropped d, never both for the same client: a
   client answers once, refuses overlapping or incomplete lists, fewer than t survivors, or a list that
   does not name itself as a survivor; the server refuses a seed share of a dropped client or a key share
   of a survivor. From >= t answers the server rebuilds each b_i (checking surplus shares) and each s_d
   (checking it against d's advertised public key), removes PRG(b_i) of the survivors and the pairwise
   masks between each dropped client and each survivor, and decodes the sum.

Pairwise masks cancel in the sum; self masks b_i make a dropped client's input, should it arrive late,
still unreadable although its s key was revealed (double masking).

What it protects, against a server that follows the protocol (honest but curious), possibly colluding
with fewer than t clients: every individual client's tensors (only the sum over U3 is revealed), and the
shares from the server that routes them. Other clients learn nothing about a client's tensors.

What it does not protect: a malicious server can lie about who dropped (e.g. tell different clients
different lists, or substitute keys in the roster: advertised keys are not signed here), or shrink the
round to exactly t clients; there is no consistency-check round of the actively secure version. No
Byzantine robustness: a client may submit anything (poisoning the average) or bad shares (detected for s
keys, for b seeds only when there are surplus shares), which aborts the round. The sum itself, the
weights and the sets U1-U3 are revealed: with few clients the sum may say much about each (no
differential privacy). Client authentication and transport confidentiality come from the session layer
(`splitfed.security.handshake`, `splitfed.security.channel`), whose sealed channel should carry these
messages. Python big-integer arithmetic is not constant-time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Iterable, Mapping

import torch

from splitfed.aggregation.fixed_point import DEFAULT_SCALE, check_scale, encode
from splitfed.aggregation.secagg_round import (
    RoundRoster,
    check_client_id,
    check_round_id,
    check_threshold,
    check_weight,
)
from splitfed.aggregation.shamir import PRIME, SECRET_SIZE, SHARE_SIZE, shamir_split
from splitfed.security.encoding import decode_uint, encode_uint, pack, unpack
from splitfed.security.errors import SecAggError
from splitfed.security.masking import (
    MaskingKeys,
    add_stream,
    open_share,
    pair_key,
    seal_share,
    self_key,
)

MAX_MESSAGE = 1 << 16

SHARE_TAG = b"splitfed SecAggShares"
REVEAL_TAG = b"splitfed SecAggReveal"
SHARE_AD_LABEL = b"splitfed-v1 secagg share"
SEED_KIND = b"seed"
KEY_KIND = b"key"


def _reveal_message(kind: bytes, round_id: bytes, owner: str, holder: str, x: int, value: int) -> bytes:
    return pack(REVEAL_TAG, kind, round_id, owner.encode(), holder.encode(), encode_uint(x, 4),
                encode_uint(value, SHARE_SIZE))


def check_tensors(tensors: object, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(tensors, Mapping) or not tensors:
        raise SecAggError(f"{what} must be a non-empty dict of tensors")
    for name, tensor in tensors.items():
        if not isinstance(name, str) or not name:
            raise SecAggError(f"{what}: tensor names must be non-empty strings")
        if not isinstance(tensor, torch.Tensor):
            raise SecAggError(f"{what}: {name!r} is not a tensor")
    return dict(tensors)


class SecAggClient:
    """One client's side of a round: `advertise`, `share_keys`, `receive_shares`, `mask`, `unmask_shares`."""

    def __init__(self, client_id: str, round_id: bytes | None, threshold: int,
                 scale: float = DEFAULT_SCALE) -> None:
        """``round_id`` None: adopt the id of the roster the server relays (chosen by the server; the
        keys are fresh every round, so a repeated id would not repeat a mask)."""
        self.client_id = check_client_id(client_id)
        self.round_id = None if round_id is None else check_round_id(round_id)
        self.threshold = check_threshold(threshold)
        self.scale = check_scale(scale)
        self._state = "new"
        self._keys: MaskingKeys | None = None
        self._seed: bytes | None = None
        self._roster: dict[str, bytes] = {}
        self._points: dict[str, int] = {}
        self._own_shares: tuple[int, int] | None = None
        self._held: dict[str, tuple[int, int]] = {}
        self._members: frozenset[str] = frozenset()

    @property
    def state(self) -> str:
        return self._state

    def _expect(self, state: str, action: str) -> None:
        if self._state != state:
            raise SecAggError(f"client {self.client_id!r} cannot {action} in state {self._state!r}")

    def advertise(self) -> bytes:
        """This round's public keys `c_pk || s_pk` (made once)."""
        if self._state == "advertised" and self._keys is not None:
            return self._keys.public
        self._expect("new", "advertise")
        self._keys = MaskingKeys.generate()
        self._seed = secrets.token_bytes(SECRET_SIZE)
        self._state = "advertised"
        return self._keys.public

    def share_keys(self, roster: RoundRoster | Mapping[str, bytes]) -> dict[str, bytes]:
        """Encrypted Shamir shares of the s key and of the self-mask seed, for every other roster client."""
        self._expect("advertised", "share keys")
        assert self._keys is not None and self._seed is not None
        if isinstance(roster, RoundRoster):
            if self.round_id is None:
                self.round_id = roster.round_id
            if roster.round_id != self.round_id:
                raise SecAggError("roster belongs to another round")
        elif isinstance(roster, Mapping):
            if self.round_id is None:
                raise SecAggError("a roster without a round id needs the client to know the round id")
            roster = RoundRoster.from_dict(self.round_id, roster)
        else:
            raise SecAggError("roster must be a RoundRoster or a dict of public keys")
        keys = roster.as_dict()
        if self.client_id not in keys or not hmac.compare_digest(keys[self.client_id], self._keys.public):
            raise SecAggError(f"roster does not hold client {self.client_id!r} with its own keys")
        if len(keys) < self.threshold:
            raise SecAggError(f"roster has {len(keys)} clients, fewer than the threshold {self.threshold}")
        points = {client_id: index + 1 for index, client_id in enumerate(roster.ids)}
        key_shares = shamir_split(self._keys.mask_private_bytes(), self.threshold, points.values())
        seed_shares = shamir_split(self._seed, self.threshold, points.values())
        out = {}
        for peer, x in points.items():
            if peer == self.client_id:
                continue
            plaintext = pack(SHARE_TAG, self.round_id, self.client_id.encode(), peer.encode(),
                             encode_uint(x, 4), encode_uint(key_shares[x], SHARE_SIZE),
                             encode_uint(seed_shares[x], SHARE_SIZE))
            secret = self._keys.cipher_secret(keys[peer], peer)
            out[peer] = seal_share(secret, self.round_id, self.client_id, peer, plaintext,
                                   self._share_ad(self.client_id, peer))
        own = points[self.client_id]
        self._roster, self._points = keys, points
        self._own_shares = (key_shares[own], seed_shares[own])
        self._state = "shared"
        return out

    def _share_ad(self, sender: str, recipient: str) -> bytes:
        return pack(SHARE_AD_LABEL, self.round_id, sender.encode(), recipient.encode())

    def receive_shares(self, shares: Mapping[str, bytes]) -> None:
        """Open the shares the other clients sent this one; their senders (and this client) form U2."""
        self._expect("shared", "receive shares")
        assert self._keys is not None and self._own_shares is not None
        if not isinstance(shares, Mapping):
            raise SecAggError("shares must be a dict: sender -> encrypted share")
        unknown = set(shares) - set(self._roster) | ({self.client_id} & set(shares))
        if unknown:
            raise SecAggError(f"shares from unexpected senders {sorted(map(str, unknown))}")
        if len(shares) + 1 < self.threshold:
            raise SecAggError(f"{len(shares) + 1} clients shared keys, fewer than the threshold "
                              f"{self.threshold}")
        held = {self.client_id: self._own_shares}
        for sender, blob in shares.items():
            if not isinstance(blob, bytes):
                raise SecAggError(f"malformed share from {sender!r}")
            secret = self._keys.cipher_secret(self._roster[sender], sender)
            plaintext = open_share(secret, self.round_id, sender, self.client_id, blob,
                                   self._share_ad(sender, self.client_id))
            valid, values = False, (0, 0)
            try:
                if plaintext is not None:
                    fields = unpack(plaintext, 7, MAX_MESSAGE)
                    tag, round_id, from_id, to_id, x, key_share, seed_share = fields
                    valid = (tag == SHARE_TAG and round_id == self.round_id and from_id == sender.encode()
                             and to_id == self.client_id.encode()
                             and decode_uint(x, 4) == self._points[self.client_id])
                    values = (decode_uint(key_share, SHARE_SIZE), decode_uint(seed_share, SHARE_SIZE))
            except ValueError:
                valid = False
            if not valid or max(values) >= PRIME:
                raise SecAggError(f"share from {sender!r} failed authentication or is not addressed to "
                                  f"{self.client_id!r} in this round")
            held[sender] = values
        self._held = held
        self._members = frozenset(held)
        self._state = "ready"

    @property
    def members(self) -> list[str]:
        """U2 as this client sees it: the clients it masks against, and itself."""
        return sorted(self._members)

    def mask(self, tensors: Mapping[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
        """`encode(weight * x)` plus the self mask and the pairwise masks with U2, per tensor (int64)."""
        self._expect("ready", "mask")
        assert self._keys is not None and self._seed is not None
        tensors = check_tensors(tensors, "tensors")
        weight = check_weight(weight)
        for name, tensor in tensors.items():
            if not tensor.is_floating_point():
                raise SecAggError(f"tensor {name!r} is not floating point")
        peers = sorted(self._members - {self.client_id})
        pair_secrets = {peer: self._keys.mask_secret(self._roster[peer], peer) for peer in peers}
        out = {}
        for name, tensor in tensors.items():
            flat = encode(tensor.detach().cpu().to(torch.float64) * weight, self.scale).reshape(-1)
            add_stream(flat, self_key(self._seed, self.round_id, self.client_id, name), +1)
            for peer, secret in pair_secrets.items():
                sign = 1 if self.client_id < peer else -1
                add_stream(flat, pair_key(secret, self.round_id, self.client_id, peer, name), sign)
            out[name] = flat.reshape(tensor.shape)
        self._keys, self._seed = None, None  # the shares are all that is needed from now on
        self._state = "masked"
        return out

    def unmask_shares(self, survivors: Iterable[str], dropped: Iterable[str]) -> dict[str, bytes]:
        """Reveal the b-seed shares of `survivors` and the s-key shares of `dropped`, once."""
        self._expect("masked", "reveal shares")
        survivors, dropped = list(survivors), list(dropped)
        if not all(isinstance(c, str) for c in survivors + dropped):
            raise SecAggError("client ids must be strings")
        both = set(survivors) & set(dropped)
        if both:
            raise SecAggError(f"refusing to reveal both the seed and the key shares of {sorted(both)}")
        if len(set(survivors)) != len(survivors) or len(set(dropped)) != len(dropped):
            raise SecAggError("survivor and dropped lists must not repeat clients")
        if set(survivors) | set(dropped) != self._members:
            raise SecAggError("survivors and dropped clients must together be exactly the clients that "
                              "shared keys")
        if self.client_id not in survivors:
            raise SecAggError(f"client {self.client_id!r} is listed as dropped")
        if len(survivors) < self.threshold:
            raise SecAggError(f"only {len(survivors)} survivors, fewer than the threshold {self.threshold}")
        x = self._points[self.client_id]
        out = {owner: _reveal_message(SEED_KIND, self.round_id, owner, self.client_id, x,
                                      self._held[owner][1]) for owner in survivors}
        out.update({owner: _reveal_message(KEY_KIND, self.round_id, owner, self.client_id, x,
                                           self._held[owner][0]) for owner in dropped})
        self._held = {}
        self._state = "done"
        return out

    def __repr__(self) -> str:
        round_id = "<from roster>" if self.round_id is None else self.round_id.hex()
        return (f"SecAggClient(client_id={self.client_id!r}, round_id={round_id}, "
                f"threshold={self.threshold}, state={self._state!r})")

    def __reduce__(self) -> object:
        raise TypeError("a SecAggClient holds secret keys and shares and cannot be serialized or copied")
