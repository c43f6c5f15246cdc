"""Fair use of the trunk (issue 40, item 4), against a live `splitfed serve` on 127.0.0.1: an enrolled
client that opens training steps and never sends their backward is dropped at a deadline scaled to the
measured step time (not step_timeout_s), slowed down, then suspended with PERMISSION_DENIED
"suspended" (one log line, shown in the status); the honest client training meanwhile keeps at least
half its rate."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from splitfed.security import ClientHandshake, Identity, SecureChannel, ServerHello
from splitfed.transport import encode_tensor, mask_to_lengths, pb
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from tests.network.hostile import live_server, steps_per_second

# step_timeout_s is what a held step cost before: 30 s here, longer than the measuring window
CONFIG = """step_timeout_s: 30
fair_use:
  step_deadline_floor_s: 1.0
  held_steps_suspend: 2
"""
ALONE_S, UNDER_ATTACK_S = 5.0, 10.0
KEPT = 0.5  # issue 40: the honest client keeps at least half its rate


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with live_server(tmp_path_factory.mktemp("held"), CONFIG) as up:
        yield {"address": up.address, "certificate": up.certificate, "server_key": up.server_key,
               "alice": up.alice, "batch": up.batch,
               "mallory": Identity.load(up.keys / "mallory.key", name="mallory"), "root": up.root}

def hold_steps(live: dict, stop: threading.Event, events: list[tuple[float, str]],
               seconds: float = 45.0) -> None:
    """Mallory: training forwards whose backward never comes, one after another, until suspended
    (bounded in count and time); ``events`` gets (time, outcome) of every request."""
    connection = TrunkConnection(live["address"], live["certificate"], timeout_s=30)
    handshake = ClientHandshake(live["mallory"], live["server_key"])
    reply = connection.handshake(handshake.hello().to_bytes())
    channel = SecureChannel(handshake.finish(ServerHello.from_bytes(reply.server_hello)))
    mask = torch.ones(2, 12, dtype=torch.long)
    ends = time.monotonic() + seconds
    try:
        for step in range(1, 2000):
            if stop.is_set() or time.monotonic() > ends:
                return
            request = pb.ForwardRequest(step=step, hidden=encode_tensor(torch.randn(2, 12, 64)),
                                        lengths=mask_to_lengths(mask), train=True)
            try:
                channel.open(connection.exchange(channel.seal("forward", step, request.SerializeToString())))
                events.append((time.monotonic(), "OK"))
            except RemoteError as error:
                events.append((time.monotonic(), f"{error.status} {error.code}"))
                if error.code == "suspended":
                    return
                stop.wait(0.05)  # its step is still open ("step_open"): ask again
    finally:
        connection.close()


def test_a_client_holding_steps_is_dropped_slowed_and_suspended_while_the_honest_one_trains(live):
    alice, batch = live["alice"], live["batch"]
    alone = steps_per_second(alice, batch, ALONE_S)
    stop, events = threading.Event(), []
    mallory = threading.Thread(target=hold_steps, args=(live, stop, events), daemon=True)
    mallory.start()
    try:
        under_attack = steps_per_second(alice, batch, UNDER_ATTACK_S)
        mallory.join(timeout=40)  # it is suspended after its second held step
    finally:
        stop.set()
        mallory.join(timeout=40)
    outcomes = [outcome for _, outcome in events]
    print(f"honest rate alone {alone:.1f} steps/s, while mallory holds steps {under_attack:.1f} "
          f"({under_attack / alone:.2f}); mallory's outcomes: {sorted(set(outcomes))}")
    assert under_attack >= KEPT * alone, (alone, under_attack)
    assert outcomes.count("OK") == 2, outcomes  # two steps opened, each dropped at the deadline
    assert outcomes[-1] == "PERMISSION_DENIED suspended", outcomes
    status = json.loads((live["root"] / "out" / "server" / "status.json").read_text())
    assert "mallory" in status["suspended"] and status["step_deadline_s"] < 30
    log = (live["root"] / "server.log").read_text()
    assert log.count("mallory suspended") == 1
    assert steps_per_second(alice, batch, 1.0) > 0  # the honest client trains on
