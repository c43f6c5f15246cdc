"""The WAN benchmark's pieces that need no namespace: the delaying proxy holds every byte for half the
round trip each way and keeps their order, and the link floor adds bytes over rate and two round trips."""

from __future__ import annotations

import asyncio
import importlib.util
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("wan", ROOT / "benchmarks" / "wan.py")
wan = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wan)


async def _round_trips(delay_ms: float, messages: list[bytes]) -> tuple[list[float], list[bytes]]:
    async def echo(reader, writer):
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.close()

    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    proxy = await wan.start_proxy(0, f"127.0.0.1:{target_port}", delay_ms)
    proxy_port = proxy.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    times, echoed = [], []
    for message in messages:
        started = time.perf_counter()
        writer.write(message)
        await writer.drain()
        echoed.append(await asyncio.wait_for(reader.readexactly(len(message)), 5))
        times.append(time.perf_counter() - started)
    writer.close()
    proxy.close()
    target.close()
    return times, echoed


def test_the_proxy_adds_the_round_trip_and_keeps_the_bytes_in_order():
    messages = [bytes([i]) * (1000 * (i + 1)) for i in range(5)]
    times, echoed = asyncio.run(_round_trips(60.0, messages))
    assert echoed == messages
    assert min(times) >= 0.055  # 30 ms each way, one round trip per message
    assert sorted(times)[len(times) // 2] < 0.5  # and not much more


def test_the_floor_is_loopback_plus_bytes_over_the_rates_plus_two_round_trips():
    loopback = {"seconds_per_step": 1.0}
    measured = {"bytes_up_per_step": 12.5e6, "bytes_down_per_step": 25e6}  # 100 and 200 Mbit
    up, down, rtt = wan.PROFILES["clinic"]  # 100 Mbit/s both ways, 20 ms
    assert (up, down, rtt) == (100.0, 100.0, 20.0)
    assert wan.floor_seconds(loopback, measured, "clinic") == pytest.approx(1.0 + 1.0 + 2.0 + 0.04)


def test_variants_links_and_the_sweep_plot(tmp_path):
    import argparse

    assert wan.parse_variant("int8-blockwise@2") == ("int8-blockwise", 2)
    assert wan.parse_variant("float32") == ("float32", 1)
    for bad in ("float32@0", "float32@two"):
        with pytest.raises(argparse.ArgumentTypeError, match="micro-batches"):
            wan.parse_variant(bad)
    args = argparse.Namespace(profiles=["clinic"], sweep_mbit=[10.0, 300.0], sweep_rtt_ms=40.0)
    chosen = wan.links(args)
    assert chosen == {"clinic": (100.0, 100.0, 20.0), "10 Mbit/s": (10.0, 10.0, 40.0),
                      "300 Mbit/s": (300.0, 300.0, 40.0)}
    loopback = {"seconds_per_step": 1.0}
    measured = {"bytes_up_per_step": 1.25e6, "bytes_down_per_step": 1.25e6}  # 1 s each way at 10 Mbit/s
    assert wan.floor_seconds(loopback, measured, "10 Mbit/s", chosen["10 Mbit/s"]) == pytest.approx(3.08)

    def row(tokens_per_s: float, floor: float | None = None) -> dict:
        return {"tokens_per_s": tokens_per_s, "seconds_per_step": 512 / tokens_per_s,
                "floor_seconds_per_step": floor}

    speeds = {"loopback": (200.0, 210.0, None), "clinic": (150.0, 170.0, 3.0),
              "10 Mbit/s": (90.0, 110.0, 5.0), "300 Mbit/s": (190.0, 200.0, 2.7)}
    results = {"model": "tiny", "codecs": ["float32", "float32@2"], "links": chosen,
               "profiles": {name: {"training": {"float32": row(one, floor), "float32@2": row(two, floor)}}
                            for name, (one, two, floor) in speeds.items()}}
    path = tmp_path / "sweep.png"
    wan.plot_sweep(results, path)
    assert path.stat().st_size > 10_000


def test_pinning_puts_a_process_on_one_cpu_with_one_thread():
    import argparse
    import os
    import subprocess
    import sys

    probe = [sys.executable, "-c",
             "import os; print(*sorted(os.sched_getaffinity(0)), os.environ.get('OMP_NUM_THREADS'))"]
    shared = subprocess.run(probe, capture_output=True, text=True, check=True,
                            **wan.pinned(argparse.Namespace(pin=False), 0))
    assert shared.stdout.split()[:-1] == [str(cpu) for cpu in sorted(os.sched_getaffinity(0))]
    pinned = subprocess.run(probe, capture_output=True, text=True, check=True,
                            **wan.pinned(argparse.Namespace(pin=True), 0))
    assert pinned.stdout.split() == ["0", "1"]


def test_generation_prompts_and_the_generation_plot(tmp_path):
    import argparse

    from splitfed.models import load_model

    _, tokenizer = load_model("tiny-llama")
    args = argparse.Namespace(prompts="xsum", context=96, prompt_count=3)
    prompts = wan.generation_prompts(args, tokenizer, 256)
    assert len(prompts) == 3 and all(p.shape[0] == 1 and 40 < p.shape[1] < 1000 for p in prompts)  # bytes
    assert len({tuple(p[0].tolist()) for p in prompts}) == 3  # three different passages
    assert "The passage is" in tokenizer.decode(prompts[0][0])
    random = wan.generation_prompts(argparse.Namespace(prompts="random", context=50, prompt_count=2),
                                    tokenizer, 256)
    assert [tuple(p.shape) for p in random] == [(1, 50), (1, 50)] and int(random[0].max()) < 256

    def generation(plain: float, looked_up: float) -> dict:
        return {"generation": {"0": {"tokens_per_s": plain}, "8": {"tokens_per_s": looked_up}}}

    results = {"model": "tiny", "prompts": "xsum", "lookup": [0, 8],
               "links": {"clinic": (100.0, 100.0, 20.0), "cross-region": (1000.0, 1000.0, 40.0)},
               "local_generation_tokens_per_s": {"0": 12.0, "8": 20.0},
               "profiles": {"loopback": generation(11.0, 18.0), "clinic": generation(9.0, 15.0),
                            "cross-region": generation(7.0, 12.0)}}
    path = tmp_path / "generation.png"
    wan.plot_generation(results, path)
    assert path.stat().st_size > 10_000


def test_repeated_cycles_report_the_median_of_each_cycles_ratio():
    def cycle(loopback: float, clinic: float) -> dict:
        def training(tokens_per_s: float) -> dict:
            step = {"tokens_per_s": tokens_per_s, "seconds_per_step": 100 / tokens_per_s,
                    "bytes_up_per_step": 10.0, "bytes_down_per_step": 10.0}
            return {"training": {"int8": step}}
        return {"loopback": training(loopback), "clinic": training(clinic)}

    # the machine slows down between cycles: each cycle's own ratio is 0.9, the medians' ratio is not
    merged = wan.median_cycles([cycle(100.0, 90.0), cycle(50.0, 45.0), cycle(200.0, 180.0)])
    clinic = merged["clinic"]["training"]["int8"]
    assert clinic["over_loopback"] == pytest.approx(0.9)
    assert clinic["over_loopback_cycles"] == pytest.approx([0.9, 0.9, 0.9])
    assert clinic["tokens_per_s"] == 90.0 and merged["loopback"]["training"]["int8"]["tokens_per_s"] == 100.0
    assert "over_loopback" not in merged["loopback"]["training"]["int8"]


def test_repeated_generation_cycles_take_each_cycles_own_yardstick():
    def cycle(split_tokens_per_s: float) -> dict:
        return {"loopback": {"training": {}, "generation": {"0": {"tokens_per_s": 2 * split_tokens_per_s}}},
                "cross-region": {"training": {}, "generation": {"0": {"tokens_per_s": split_tokens_per_s}}}}

    links = {"cross-region": (1000.0, 1000.0, 40.0)}  # 1 / RTT = 25 tok/s, above every local rate here
    locals_ = [{"0": 10.0}, {"0": 20.0}, {"0": 16.0}]
    merged = wan.median_cycles([cycle(8.0), cycle(14.0), cycle(12.0)], locals_, links)
    generation = merged["cross-region"]["generation"]["0"]
    assert generation["over_bound_cycles"] == pytest.approx([0.8, 0.7, 0.75])
    assert generation["over_bound"] == pytest.approx(0.75) and generation["tokens_per_s"] == 12.0
    assert "over_bound" not in merged["loopback"]["generation"]["0"]
