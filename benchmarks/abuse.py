"""Abuse benchmark: an honest client's training rate and the server's memory under each hostile probe.

Starts a real `splitfed serve` (tiny-llama, TLS on 127.0.0.1, sequential mode) with two enrolled
identities, trains honest "alice" in this process, and runs each probe of ``tests/network/hostile.py``
in a process of its own (niced: on a real network the attacker's CPU is not the server's) for
``--seconds``. Reports per probe: honest steps/s alone and under attack (ratio), server RSS before,
peak and after, the statuses the attacker got, and whether the honest client trained on to a finite
loss. The enrolled attackers of issue 40 (poisoned backwards, held steps, sequences past the model's
positions, a generation flood) each use a name of their own, since strikes and suspensions belong to a
name; the flood's row sets the server's RSS growth against what its generation budget accounted.

    PYTHONPATH=. .venv/bin/python benchmarks/abuse.py --seconds 5
    PYTHONPATH=. .venv/bin/python benchmarks/abuse.py --seconds 3 --merge --probes garbage_bytes,held_steps
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

from splitfed.security import Identity, PublicIdentity
from splitfed.transport.errors import RemoteError
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
          "many_sessions", "step_flood", "garbage_bytes", "long_sequences", "poison_3e38", "poison_1e30",
          "poison_norm_1e5", "held_steps", "generation_flood"]
# enrolled attackers (issue 40) each under a name of their own: suspensions and strikes belong to a name
ENROLLED = {"long_sequences": "mallory-long", "poison_3e38": "mallory-3e38", "poison_1e30": "mallory-1e30",
            "poison_norm_1e5": "mallory-1e5", "held_steps": "mallory-held", "generation_flood": "mallory-gen"}


LONG = ("held_steps", "generation_flood")


def server_status(root: Path) -> dict:
    try:
        return json.loads((root / "out" / "server" / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="honest measurement per window")
    parser.add_argument("--probes", default=",".join(PROBES))
    parser.add_argument("--long-seconds", type=float, default=20.0, help="honest measurement for the "
                        f"probes {', '.join(LONG)}: a held step blocks the trunk until its deadline (5 s by "
                        "default), then the client waits 4**n deadlines; a 64 x 1,024 prefill takes seconds, "
                        "and the flood needs 8 of them to hold 8 caches")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/abuse.json"))
    parser.add_argument("--merge", action="store_true", help="keep the rows of --output for probes not "
                        "run now (their own windows), replace those run")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="splitfed-abuse-"))
    deployment, server = hostile_deployment(root, attackers=tuple(ENROLLED.values()))
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
            seconds = args.long_seconds if probe in LONG else args.seconds
            alone = steps_per_second(alice, batch, seconds)
            before, status_before = rss_mib(server.pid), server_status(root)
            failure: list[str] = []

            def honest(seconds: float = seconds, failure: list[str] = failure) -> float:
                try:
                    return steps_per_second(alice, batch, seconds)
                except RemoteError as error:  # the honest client was stopped by the attack
                    failure.append(str(error))
                    return 0.0
            key = keys / f"{ENROLLED[probe]}.key" if probe in ENROLLED else None
            rate, peak, statuses = run_probe(attacker, probe, seconds, honest, server.pid, key)
            time.sleep(3.0)
            after = rss_mib(server.pid)
            try:  # the honest client trains on after the attack, to a finite loss
                loss = alice.train_step(batch)
            except RemoteError as error:
                failure.append(str(error))
                loss = float("nan")
            row = {"probe": probe, "honest_steps_per_s_alone": alone, "honest_steps_per_s_attacked": rate,
                   "ratio": rate / alone if alone else 0.0, "rss_before_mib": before, "rss_peak_mib": peak,
                   "rss_after_mib": after, "statuses": statuses, "seconds": seconds,
                   "honest_finished": not failure and math.isfinite(loss), "honest_loss_after": loss}
            if failure:
                row["honest_error"] = failure[0]
            if probe == "generation_flood":  # what the generation budget accounted, against RSS growth
                status = server_status(root)
                accounted = status.get("generation_accounted_peak_mib", 0.0)
                row.update(generation_accounted_peak_mib=accounted,
                           generation_cache_mib_after=status.get("generation_cache_mib"),
                           generation_streams_after=status.get("generation_streams"),
                           rss_growth_over_accounted=(peak - before) / accounted if accounted else None)
            if probe in ENROLLED:  # is the attacker suspended now (fair use, or its gradients)?
                status = server_status(root)
                row["attacker"] = ENROLLED[probe]
                row["attacker_suspended"] = {
                    "held_steps": ENROLLED[probe] in status.get("suspended", {}),
                    "gradients": ENROLLED[probe] in status.get("suspended_for_gradients", {})}
                row["gradients_refused"] = status.get("gradients_refused", 0) - status_before.get(
                    "gradients_refused", 0)
                row["gradients_clipped"] = status.get("gradients_clipped", 0) - status_before.get(
                    "gradients_clipped", 0)
            rows.append(row)
            print(f"{probe:22s} honest {alone:6.1f} -> {rate:6.1f} steps/s ({row['ratio']:.2f}); server RSS "
                  f"{before:.0f} / {peak:.0f} / {after:.0f} MiB; attacker got {statuses}; honest finished "
                  f"{row['honest_finished']}", flush=True)
        attacker.close()
    finally:
        server.kill()
        server.wait(timeout=30)
    ran = [r["probe"] for r in rows]
    runs = [{"probes": ran, "seconds": args.seconds, "long_seconds": args.long_seconds}]
    seconds = args.seconds
    if args.merge and args.output.exists():  # each row keeps its window; "runs" says which run made it
        previous = json.loads(args.output.read_text())
        seconds = previous["seconds"]
        earlier = previous.get("runs") or [{"probes": [r["probe"] for r in previous["rows"]],
                                             "seconds": previous["seconds"]}]
        earlier = [dict(run, probes=[p for p in run["probes"] if p not in ran]) for run in earlier]
        runs = [run for run in earlier if run["probes"]] + runs
        rows += [dict(r, seconds=r.get("seconds", previous["seconds"])) for r in previous["rows"]
                 if r["probe"] not in ran]
        order = {name: index for index, name in enumerate(PROBES)}
        rows.sort(key=lambda r: order.get(r["probe"], len(order)))
    result = {"rows": rows, "runs": runs, "worst_ratio": min(r["ratio"] for r in rows),
              "median_ratio": statistics.median(r["ratio"] for r in rows),
              "max_rss_growth_mib": max(r["rss_peak_mib"] - r["rss_before_mib"] for r in rows),
              "seconds": seconds, "platform": {"python": platform.python_version(),
                                                    "machine": platform.machine()}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"saved {args.output}: worst ratio {result['worst_ratio']:.2f}, max RSS growth "
          f"{result['max_rss_growth_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
