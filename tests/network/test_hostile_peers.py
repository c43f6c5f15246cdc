"""Hostile peers against a live server while an honest client trains (issue 22's probes): the honest
client is not starved, the server's RSS grows < 300 MiB and comes back, and every refusal has a
precise status (never UNKNOWN or INTERNAL).

Not starved means it keeps at least a third of the step rate it has alone (before the front door, idle
streams took it to 0). The ratio itself, 0.55-0.87 when measured, is the benchmark's
(``benchmarks/abuse.py``): on two cores shared with other work the speed drifts from minute to minute,
and in this suite the same probes measured 0.19-0.46 of a stale baseline, and 0.26-0.28 of a fresh one
in single unlucky minutes (step flood, idle streams). So each probe compares against the rate measured
alone just before it, and one that falls short is measured again, up to three times in all: starvation
(0 steps a second) fails every time."""

from __future__ import annotations

import time

import pytest

from tests.network.hostile import (
    AttackProcess,
    live_server,
    rss_mib,
    run_probe,
    steps_per_second,
)

WINDOW_S = 2.5
STARVED = 1 / 3  # an honest client below this share of its rate alone is starved
ATTEMPTS = 3  # starvation is below it every time; a noisy machine is not
FRONT_DOOR = """front_door:
  first_message_timeout_s: 2.0
  stream_idle_timeout_s: 2.0
"""
ACCEPTED = {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "INVALID_ARGUMENT",
            "CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE"}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    with live_server(root, FRONT_DOOR) as up:
        attacker = AttackProcess(up.address, up.certificate, (up.keys / "server.pub").read_text(),
                                 up.keys / "mallory.key")
        yield {"server": up.server, "alice": up.alice, "batch": up.batch, "attacker": attacker,
               "baseline_rss": rss_mib(up.server.pid), "log": root / "server.log"}
        attacker.close()

PROBES = ["idle_streams", "big_unknown_session", "slow_drip", "huge_chunk_count", "handshake_flood",
          "many_sessions", "step_flood"]


@pytest.mark.parametrize("name", PROBES)
def test_the_honest_client_trains_on_under_attack(live, name):
    def honest() -> float:
        return steps_per_second(live["alice"], live["batch"], WINDOW_S)

    ratios, peak, statuses = [], 0.0, {}
    for _ in range(ATTEMPTS):  # against a fresh baseline each time: a slow minute is not starvation
        alone = honest()  # this minute's speed of the machine
        rate, attempt_peak, statuses = run_probe(live["attacker"], name, WINDOW_S, honest, live["server"].pid)
        ratios.append(rate / alone)
        peak = max(peak, attempt_peak)
        if ratios[-1] >= STARVED:
            break
        time.sleep(2.0)
    time.sleep(2.0)  # deadlines pass, buffers are freed
    after = rss_mib(live["server"].pid)
    assert live["server"].poll() is None, live["log"].read_text()[-3000:]
    assert max(ratios) >= STARVED, (name, ratios, statuses)
    assert peak - live["baseline_rss"] < 300, (name, peak, live["baseline_rss"])
    assert after - live["baseline_rss"] < 150, (name, after, live["baseline_rss"])
    assert sum(statuses.values()) > 0, "the probe sent nothing"
    assert set(statuses) <= ACCEPTED, (name, statuses)
    refusals = {k: v for k, v in statuses.items() if k != "OK"}
    assert refusals, (name, "the server accepted every hostile request")
