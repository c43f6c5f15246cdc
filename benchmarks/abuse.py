"""Abuse benchmark: an honest client's training rate and the server's memory under each hostile probe.

Starts a real `splitfed serve` (tiny-llama, TLS on 127.0.0.1, sequential mode) with two enrolled
identities, trains honest "alice" in this process, and runs each probe of ``tests/network/hostile.py``
in a process of its own (niced: on a real network the attacker's CPU is not the server's) for
``--seconds``. Reports per probe: honest steps/s alone and under attack (ratio), server RSS before,
peak and after, and the statuses the attacker got. Saves ``benchmarks/results/abuse.json``.

    .venv/bin/python benchmarks/abuse.py --seconds 5
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

from splitfed.security import Identity, PublicIdentity
from tests.conftest import make_batch
from tests.network.conftest import wait_for_port
from tests.network.hostile import (
    AttackProcess,
    honest_client,
    hostile_deployment,
    rss_mib,
    run_probe,
    steps_per_second,
)

PROBES = ["idle_streams", "big_unknown_session", "slow_drip", "huge_chunk_count", "handshake_flood",
          "many_sessions", "step_flood"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="honest measurement per window")
    parser.add_argument("--probes", default=",".join(PROBES))
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/abuse.json"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="splitfed-abuse-"))
    deployment, server = hostile_deployment(root)
    keys = deployment.keys
    rows = []
    try:
        port = wait_for_port(root / "port", server)
        address = f"127.0.0.1:{port}"
        certificate = (keys / "tls-cert.pem").read_bytes()
        server_key_text = (keys / "server.pub").read_text()
        alice = honest_client(address, certificate, Identity.load(keys / "alice.key", name="alice"),
                              PublicIdentity.from_text(server_key_text))
        batch = make_batch(2, 12)
        attacker = AttackProcess(address, certificate, server_key_text, keys / "mallory.key")
        steps_per_second(alice, batch, 2.0)  # warm up
        for probe in args.probes.split(","):
            alone = steps_per_second(alice, batch, args.seconds)
            before = rss_mib(server.pid)
            rate, peak, statuses = run_probe(attacker, probe, args.seconds,
                                             lambda: steps_per_second(alice, batch, args.seconds), server.pid)
            time.sleep(3.0)
            after = rss_mib(server.pid)
            row = {"probe": probe, "honest_steps_per_s_alone": alone, "honest_steps_per_s_attacked": rate,
                   "ratio": rate / alone if alone else 0.0, "rss_before_mib": before, "rss_peak_mib": peak,
                   "rss_after_mib": after, "statuses": statuses}
            rows.append(row)
            print(f"{probe:22s} honest {alone:6.1f} -> {rate:6.1f} steps/s ({row['ratio']:.2f}); server RSS "
                  f"{before:.0f} / {peak:.0f} / {after:.0f} MiB; attacker got {statuses}", flush=True)
        attacker.close()
    finally:
        server.kill()
        server.wait(timeout=30)
    result = {"rows": rows, "worst_ratio": min(r["ratio"] for r in rows),
              "median_ratio": statistics.median(r["ratio"] for r in rows),
              "max_rss_growth_mib": max(r["rss_peak_mib"] - r["rss_before_mib"] for r in rows),
              "seconds": args.seconds, "platform": {"python": platform.python_version(),
                                                    "machine": platform.machine()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"saved {args.output}: worst ratio {result['worst_ratio']:.2f}, max RSS growth "
          f"{result['max_rss_growth_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
