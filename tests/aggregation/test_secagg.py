"""Secure aggregation: correct weighted averages with and without dropouts, masked inputs that reveal nothing,
double-masking rules, tampered shares and out-of-order calls refused, no secrets in reprs or errors."""

from __future__ import annotations

import base64
import copy
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitfed.aggregation import SecAggClient, SecAggError, SecAggServer, run_round_in_memory
from splitfed.aggregation.fixed_point import DEFAULT_SCALE, decode, encode
from splitfed.aggregation.secagg_client import KEY_KIND, SEED_KIND, _reveal_message
from splitfed.aggregation.secagg_round import RoundRoster
from splitfed.aggregation.shamir import shamir_combine, shamir_split
from splitfed.security import SecurityError
from splitfed.security.encoding import unpack
from splitfed.security.masking import add_stream, pair_key, self_key

ROUND = b"round-0001"


def _values(count: int, seed: int = 0, shapes: dict[str, tuple[int, ...]] | None = None,
            ) -> dict[str, tuple[dict[str, torch.Tensor], float]]:
    generator = torch.Generator().manual_seed(seed)
    shapes = shapes or {"lora_A": (8, 16), "lora_B": (16, 8), "bias": (5,)}
    return {f"client{i}": ({name: torch.randn(shape, generator=generator) for name, shape in shapes.items()},
                           float(10 * (i + 1)))
            for i in range(count)}


def _plain_average(values, contributors: list[str]) -> dict[str, torch.Tensor]:
    total = sum(values[c][1] for c in contributors)
    names = values[contributors[0]][0]
    return {name: sum(values[c][0][name].double() * values[c][1] for c in contributors) / total
            for name in names}


def _bound(values, contributors: list[str], scale: float = DEFAULT_SCALE) -> float:
    """The documented bound n / (2 * scale * total_weight), plus float64 slack."""
    total = sum(values[c][1] for c in contributors)
    return len(contributors) / (2 * scale * total) + 1e-12


def _assert_matches(result, values, contributors):
    expected = _plain_average(values, contributors)
    assert set(result) == set(expected)
    for name, tensor in result.items():
        assert tensor.shape == expected[name].shape and tensor.dtype == torch.float64
        scale = max(1.0, float(expected[name].abs().max()))
        assert float((tensor - expected[name]).abs().max()) <= _bound(values, contributors) + 1e-15 * scale


class Round:
    """Drives clients and server step by step, for tests that step in between."""

    def __init__(self, count: int, threshold: int, seed: int = 0) -> None:
        self.values = _values(count, seed)
        self.server = SecAggServer(ROUND, threshold, dtype=torch.float64)
        self.clients = {c: SecAggClient(c, ROUND, threshold) for c in self.values}
        self.roster = self.server.collect_keys({c: client.advertise() for c, client in self.clients.items()})
        self.sent = {c: client.share_keys(self.roster) for c, client in self.clients.items()}
        self.routed = self.server.route_shares(self.sent)

    def mask_all(self, lost: set[str] = frozenset()) -> dict[str, dict[str, torch.Tensor]]:
        masked = {}
        for c, client in self.clients.items():
            client.receive_shares(self.routed[c])
            tensors, weight = self.values[c]
            masked[c] = client.mask(tensors, weight)
            if c not in lost:
                self.server.collect_masked(c, masked[c], weight)
        return masked


# ------------------------------------------------------------------------------------------- correctness

@pytest.mark.parametrize("count", [3, 4, 5])
def test_no_dropout_matches_plain_average(count):
    values = _values(count, seed=count)
    result, contributors = run_round_in_memory(values, threshold=count - 1, dtype=torch.float64)
    assert contributors == sorted(values)
    _assert_matches(result, values, contributors)


def test_default_output_is_float32_and_close():
    values = _values(3)
    result, contributors = run_round_in_memory(values, threshold=2)
    expected = _plain_average(values, contributors)
    for name, tensor in result.items():
        assert tensor.dtype == torch.float32
        torch.testing.assert_close(tensor.double(), expected[name], rtol=1e-6, atol=1e-6)


def test_dropout_after_masking():
    values = _values(4, seed=1)
    result, contributors = run_round_in_memory(values, threshold=3, drop_after_masking={"client2"},
                                               dtype=torch.float64)
    assert contributors == ["client0", "client1", "client3"]
    _assert_matches(result, values, contributors)


def test_dropout_before_masking_and_before_sharing():
    values = _values(5, seed=2)
    result, contributors = run_round_in_memory(values, threshold=3, drop_before_masking={"client0"},
                                               dtype=torch.float64)
    assert contributors == ["client1", "client2", "client3", "client4"]
    _assert_matches(result, values, contributors)
    result, contributors = run_round_in_memory(values, threshold=2, drop_before_sharing={"client4"},
                                               drop_before_masking={"client1"},
                                               drop_after_masking={"client3"}, dtype=torch.float64)
    assert contributors == ["client0", "client2"]
    _assert_matches(result, values, contributors)


def test_survivor_silent_during_unmasking_is_still_counted():
    run = Round(5, threshold=3, seed=3)
    run.mask_all(lost={"client4"})
    survivors, dropped = run.server.unmask_request()
    assert dropped == ["client4"]
    revealed = {c: run.clients[c].unmask_shares(survivors, dropped) for c in survivors[:3]}
    result, contributors = run.server.finish(revealed)
    assert contributors == survivors
    _assert_matches(result, run.values, contributors)


def test_encode_decode_wraps_around_and_checks_range():
    x = torch.tensor([1.5, -2.25, 0.0, 1e-9], dtype=torch.float64)
    assert torch.equal(decode(encode(x)), torch.round(x * DEFAULT_SCALE) / DEFAULT_SCALE)
    big = torch.full((3,), 2.0**38)
    wrapped = encode(big) + encode(big) + encode(-big) + encode(-big) + encode(big)  # passes 2**63 on the way
    assert torch.equal(decode(wrapped), big.double())
    for bad in (torch.tensor([float("nan")]), torch.tensor([float("inf")]), torch.tensor([2.0**40])):
        with pytest.raises(SecAggError):
            encode(bad)
    with pytest.raises(SecAggError):
        encode(torch.tensor([1, 2]))


def test_shamir_threshold():
    secret = os.urandom(32)
    shares = shamir_split(secret, 3, range(1, 6))
    for subset in ([1, 2, 3], [2, 4, 5], [1, 3, 5], [1, 2, 3, 4, 5]):
        assert shamir_combine({x: shares[x] for x in subset}, 3) == secret
    with pytest.raises(SecAggError):
        shamir_combine({1: shares[1], 2: shares[2]}, 3)
    with pytest.raises(SecAggError):  # a bad surplus share is caught
        shamir_combine({1: shares[1], 2: shares[2], 3: shares[3], 4: shares[4] + 1}, 3)
    # t - 1 shares, read as a lower-degree polynomial, give something else
    assert shamir_combine({1: shares[1], 2: shares[2]}, 2, size=66) != secret.rjust(66, b"\0")


# ---------------------------------------------------------------------------------------------- privacy

def test_masked_input_looks_nothing_like_the_input():
    values = _values(3, shapes={"w": (20_000,)})
    server = SecAggServer(ROUND, 2)
    clients = {c: SecAggClient(c, ROUND, 2) for c in values}
    roster = server.collect_keys({c: client.advertise() for c, client in clients.items()})
    routed = server.route_shares({c: client.share_keys(roster) for c, client in clients.items()})
    for c, client in clients.items():
        client.receive_shares(routed[c])
        x, weight = values[c][0]["w"], values[c][1]
        masked = client.mask({"w": x}, weight)["w"]
        assert masked.dtype == torch.int64 and masked.shape == x.shape
        as_float = masked.double()
        correlation = torch.corrcoef(torch.stack([as_float, x.double()]))[0, 1]
        assert abs(float(correlation)) < 0.1
        alone = decode(masked) / weight
        assert float((alone - x.double()).abs().median()) > 1e6  # garbage, about 2**63 / scale in size


def test_late_input_of_a_dropped_client_stays_masked():
    """Double masking: with the dropped client's key rebuilt, its late input is still hidden by b_d."""
    run = Round(4, threshold=3, seed=4)
    seed_d = run.clients["client1"]._seed
    masked = run.mask_all(lost={"client1"})
    survivors, dropped = run.server.unmask_request()
    with pytest.raises(SecAggError):  # too late: input collection is closed
        run.server.collect_masked("client1", masked["client1"], run.values["client1"][1])
    revealed = {c: run.clients[c].unmask_shares(survivors, dropped) for c in survivors}
    run.server.finish(revealed)
    key_shares = {}
    for messages in revealed.values():
        _, kind, _, owner, _, point, value = unpack(messages["client1"], 7, 1 << 16)
        assert kind == KEY_KIND and owner == b"client1"
        key_shares[int.from_bytes(point, "big")] = int.from_bytes(value, "big")
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

    private = X25519PrivateKey.from_private_bytes(shamir_combine(key_shares, 3))
    keys = run.roster.as_dict()
    flat = masked["client1"]["lora_A"].reshape(-1).clone()
    for peer in survivors:
        secret = private.exchange(X25519PublicKey.from_public_bytes(keys[peer][32:]))
        sign = 1 if peer > "client1" else -1
        add_stream(flat, pair_key(secret, ROUND, "client1", peer, "lora_A"), -sign)
    x, weight = run.values["client1"][0]["lora_A"].reshape(-1).double(), run.values["client1"][1]
    assert float((decode(flat) / weight - x).abs().median()) > 1e6
    add_stream(flat, self_key(seed_d, ROUND, "client1", "lora_A"), -1)  # only with b_d is it readable
    assert float((decode(flat) / weight - x).abs().max()) <= 1 / DEFAULT_SCALE


# ------------------------------------------------------------------------------------------- robustness

def test_too_many_dropouts_abort_without_result():
    values = _values(4, seed=5)
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        run_round_in_memory(values, threshold=3, drop_after_masking={"client0"},
                            drop_before_masking={"client1"})
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        run_round_in_memory(values, threshold=3, drop_before_sharing={"client0", "client3"})
    run = Round(4, threshold=3, seed=5)
    run.mask_all(lost={"client3"})
    survivors, dropped = run.server.unmask_request()
    revealed = {c: run.clients[c].unmask_shares(survivors, dropped) for c in survivors[:2]}
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        run.server.finish(revealed)
    assert run.server.state == "unmask"


def test_client_refuses_to_reveal_seed_and_key_of_the_same_client():
    run = Round(4, threshold=2)
    run.mask_all()
    client = run.clients["client0"]
    everyone = sorted(run.values)
    with pytest.raises(SecAggError, match="both"):
        client.unmask_shares(everyone, ["client3"])
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        client.unmask_shares(["client0"], everyone[1:])
    with pytest.raises(SecAggError, match="exactly"):  # nobody may be left out
        client.unmask_shares(everyone[:3], [])
    with pytest.raises(SecAggError, match="dropped"):
        client.unmask_shares(everyone[1:], ["client0"])
    assert client.state == "masked"
    client.unmask_shares(everyone, [])
    with pytest.raises(SecAggError):  # a second request (e.g. now calling client3 dropped) is refused
        client.unmask_shares(everyone[:3], ["client3"])


def test_server_refuses_seed_and_key_shares_of_the_same_client():
    run = Round(4, threshold=3)
    run.mask_all(lost={"client3"})
    survivors, dropped = run.server.unmask_request()
    revealed = {c: run.clients[c].unmask_shares(survivors, dropped) for c in survivors}
    x = run.roster.ids.index("client0") + 1
    forged = {c: dict(messages) for c, messages in revealed.items()}
    forged["client0"]["client3"] = _reveal_message(SEED_KIND, ROUND, "client3", "client0", x, 12345)
    with pytest.raises(SecAggError, match="never unmasks both"):
        run.server.finish(forged)
    forged = {c: dict(messages) for c, messages in revealed.items()}
    forged["client0"]["client1"] = _reveal_message(KEY_KIND, ROUND, "client1", "client0", x, 12345)
    with pytest.raises(SecAggError, match="never unmasks both"):
        run.server.finish(forged)
    forged = {c: dict(messages) for c, messages in revealed.items()}
    forged["client0"]["client1"] = revealed["client2"]["client1"]  # someone else's share
    with pytest.raises(SecAggError, match="misaddressed"):
        run.server.finish(forged)
    result, contributors = run.server.finish(revealed)  # the honest answers still work
    _assert_matches(result, run.values, contributors)
    with pytest.raises(SecAggError):
        run.server.finish(revealed)


def test_bad_key_share_is_detected():
    run = Round(4, threshold=3)
    run.mask_all(lost={"client3"})
    survivors, dropped = run.server.unmask_request()
    revealed = {c: run.clients[c].unmask_shares(survivors, dropped) for c in survivors}
    x = run.roster.ids.index("client0") + 1
    revealed["client0"]["client3"] = _reveal_message(KEY_KIND, ROUND, "client3", "client0", x, 12345)
    with pytest.raises(SecAggError, match="client3"):
        run.server.finish(revealed)


def test_tampered_or_misrouted_share_is_refused():
    run = Round(4, threshold=3)
    routed = run.routed
    blob = routed["client0"]["client1"]
    cases = [
        {**routed["client0"], "client1": blob[:-1] + bytes([blob[-1] ^ 1])},  # flipped bit
        {**routed["client0"], "client1": routed["client2"]["client1"]},  # share meant for client2
        {**routed["client0"], "client1": routed["client0"]["client3"]},  # client3's share, labelled client1
        {**routed["client0"], "client1": b"short"},
        {**routed["client0"], "client0": blob},  # from itself
        {**routed["client0"], "mallory": blob},  # not in the roster
    ]
    for shares in cases:
        with pytest.raises(SecAggError):
            run.clients["client0"].receive_shares(shares)
        assert run.clients["client0"].state == "shared"
    other = SecAggClient("client0", b"round-other", 3)
    with pytest.raises(SecAggError):
        other.share_keys(run.roster)  # another round's roster
    run.clients["client0"].receive_shares(routed["client0"])


def test_roster_must_hold_the_clients_own_keys():
    client = SecAggClient("alice", ROUND, 2)
    public = client.advertise()
    impostor = SecAggClient("bob", ROUND, 2).advertise()
    with pytest.raises(SecAggError, match="own keys"):
        client.share_keys({"alice": impostor, "bob": public})
    with pytest.raises(SecAggError, match="distinct"):
        client.share_keys({"alice": public, "bob": public})
    roster = RoundRoster.from_dict(ROUND, {"alice": public, "bob": impostor})
    assert RoundRoster.from_bytes(roster.to_bytes()) == roster
    with pytest.raises(SecAggError):
        RoundRoster.from_bytes(roster.to_bytes()[:-1])


def test_out_of_order_calls_and_bad_inputs():
    client = SecAggClient("alice", ROUND, 2)
    with pytest.raises(SecAggError, match="state"):
        client.mask({"w": torch.ones(3)}, 1.0)
    with pytest.raises(SecAggError, match="state"):
        client.receive_shares({})
    assert client.advertise() == client.advertise()
    server = SecAggServer(ROUND, 2)
    with pytest.raises(SecAggError, match="state"):
        server.collect_masked("alice", {"w": torch.zeros(3, dtype=torch.int64)}, 1.0)
    with pytest.raises(SecAggError, match="state"):
        server.finish({})
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        server.collect_keys({"alice": client.advertise()})
    for bad in (dict(threshold=1), dict(threshold=True), dict(round_id=b"")):
        with pytest.raises(SecAggError):
            SecAggClient("alice", **{"round_id": ROUND, "threshold": 2, **bad})
    run = Round(3, threshold=2)
    run.clients["client0"].receive_shares(run.routed["client0"])
    with pytest.raises(SecAggError, match="weight"):
        run.clients["client0"].mask({"w": torch.ones(2)}, 0.0)
    with pytest.raises(SecAggError, match="floating"):
        run.clients["client0"].mask({"w": torch.ones(2, dtype=torch.int64)}, 1.0)
    masked = run.clients["client0"].mask({"w": torch.ones(2)}, 1.0)
    with pytest.raises(SecAggError, match="state"):
        run.clients["client0"].mask({"w": torch.ones(2)}, 1.0)
    run.server.collect_masked("client0", masked, 1.0)
    with pytest.raises(SecAggError, match="already"):
        run.server.collect_masked("client0", masked, 1.0)
    with pytest.raises(SecAggError, match="differ"):
        run.server.collect_masked("client1", {"w": torch.zeros(3, dtype=torch.int64)}, 1.0)
    with pytest.raises(SecAggError, match="did not share"):
        run.server.collect_masked("mallory", masked, 1.0)
    with pytest.raises(SecAggError, match="fewer than the threshold"):
        run.server.unmask_request()


# --------------------------------------------------------------------------------------------- property

@st.composite
def _rounds(draw):
    count = draw(st.integers(3, 5))
    threshold = draw(st.integers(2, count))
    size = draw(st.integers(1, 6))
    finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
    values = {f"c{i}": ({"w": torch.tensor(draw(st.lists(finite, min_size=size, max_size=size)))},
                        float(draw(st.integers(1, 10_000))))
              for i in range(count)}
    fates = ["stay", "stay", "before_sharing", "before_masking", "after_masking"]
    fate = draw(st.lists(st.sampled_from(fates), min_size=count, max_size=count))
    groups = {kind: {c for c, f in zip(values, fate, strict=True) if f == kind}
              for kind in ("before_sharing", "before_masking", "after_masking")}
    return values, threshold, groups


@settings(max_examples=60, deadline=None)
@given(_rounds())
def test_secure_result_matches_plain_fedavg(case):
    values, threshold, groups = case
    contributors = sorted(set(values) - set().union(*groups.values()))
    sharing = len(values) - len(groups["before_sharing"])
    kwargs = dict(drop_before_sharing=groups["before_sharing"], drop_before_masking=groups["before_masking"],
                  drop_after_masking=groups["after_masking"], dtype=torch.float64)
    if len(contributors) < threshold or sharing < threshold:
        with pytest.raises(SecAggError, match="threshold"):
            run_round_in_memory(values, threshold, **kwargs)
        return
    result, got = run_round_in_memory(values, threshold, **kwargs)
    assert got == contributors
    _assert_matches(result, values, contributors)


# ------------------------------------------------------------------------------------------------ leaks

def _forms(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), repr(secret), base64.b64encode(secret).decode(),
            str(list(secret)), str(int.from_bytes(secret, "big"))]


def test_no_secrets_in_reprs_or_errors():
    run = Round(4, threshold=3)
    secrets = []
    for client in run.clients.values():
        keys = client._keys
        secrets += [client._seed, keys._mask.private_bytes_raw(), keys._cipher.private_bytes_raw()]
        with pytest.raises(TypeError):
            copy.copy(client)
        with pytest.raises(TypeError):
            copy.copy(keys)
    a, b = run.clients["client0"]._keys, run.clients["client1"]._keys
    secrets += [a.mask_secret(b.public, "client1"), a.cipher_secret(b.public, "client1")]
    shares = [str(share) for client in run.clients.values() for share in client._own_shares]
    texts = [repr(c) + str(c) + repr(c._keys) for c in run.clients.values()]
    texts += [repr(run.server), repr(run.roster)]
    failures = [
        lambda: run.clients["client0"].receive_shares({**run.routed["client0"], "client1": b"x" * 200}),
        lambda: run.clients["client0"].mask({"w": torch.ones(2)}, 1.0),
        lambda: run.clients["client0"].share_keys(run.roster),
        lambda: run.server.finish({}),
        lambda: SecAggClient("client0", ROUND, 3).share_keys(run.roster),
    ]
    for failure in failures:
        with pytest.raises(SecurityError) as info:
            failure()
        texts += [str(info.value), repr(info.value)]
    run.mask_all(lost={"client3"})
    survivors, dropped = run.server.unmask_request()
    texts.append(repr(run.server))
    with pytest.raises(SecAggError) as info:
        run.clients["client0"].unmask_shares(survivors, dropped + ["client1"])
    texts += [str(info.value), repr(info.value)]
    text = "\n".join(texts)
    assert "hidden" in text
    for secret in secrets:
        assert not any(form in text for form in _forms(secret))
    assert not any(share in text for share in shares)
