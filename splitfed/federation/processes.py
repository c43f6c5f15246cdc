"""A federation as real processes on this machine: one `splitfed serve` and N `splitfed train`, over
loopback with pinned TLS and AES-256-GCM payloads, FedAvg rounds through the server (the demo's default)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from rich.progress import Progress

from splitfed.colocation import colocated_environment
from splitfed.federation.config import FederationSettings
from splitfed.security import create_identity_files, create_server_files
from splitfed.training.task_data import DataSettings


class FederationFailed(RuntimeError):
    """A server or client process of the demo failed; the message points at its log."""


@dataclass
class NetworkRun:
    losses: list[float]
    seconds: float  # training: from the first client's first step to the last client's end
    adapters: dict[str, Path]
    bytes_sent: int
    startup_seconds: float  # from starting the server to the first client's first step
    wall_seconds: float  # everything: start-up, training, saving, exit


def _write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(data, default=str)), sort_keys=False))
    return path


def _spawn(args: list[str], log: Path, client: bool = False) -> subprocess.Popen:
    env = dict(colocated_environment() if client else os.environ, COLUMNS="100")
    handle = log.open("w")
    return subprocess.Popen([sys.executable, "-m", "splitfed.cli", *args], stdout=handle,
                            stderr=subprocess.STDOUT, env=env)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


def run_network_federation(
    model: str,
    data: DataSettings,
    settings: FederationSettings,
    directory: Path,
    progress: Progress,
    shared: dict | None = None,
) -> NetworkRun:
    """Run the server and ``settings.clients`` client processes; wait for them; collect the results.
    ``shared``: more settings for every process's config (e.g. ``dtype``, ``device``)."""
    keys = directory / "keys"
    create_server_files(keys, ["localhost"], ["127.0.0.1"], overwrite=True)
    allow = directory / "allowlist"
    allow.mkdir(parents=True, exist_ok=True)
    names = [f"client-{index}" for index in range(settings.clients)]
    for name in names:
        create_identity_files(keys, name, overwrite=True)
        (allow / f"{name}.pub").write_bytes((keys / f"{name}.pub").read_bytes())
    common = {"model": model, "seed": settings.seed, "partition": settings.partition.model_dump(),
              "adapter": settings.adapter.model_dump(), "optimizer": settings.optimizer.model_dump(),
              **(shared or {})}
    port_file = directory / "server.port"
    port_file.unlink(missing_ok=True)
    server_config = _write_yaml(directory / "server.yaml", {
        **common, "listen": "127.0.0.1:0", "identity": keys / "server.key", "allowlist": allow,
        "tls_cert": keys / "tls-cert.pem", "tls_key": keys / "tls-key.pem", "roster": names,
        "exit_when_done": True, "port_file": port_file, "output": directory / "server"})
    spawned_at = time.time()
    server = _spawn(["serve", "--config", str(server_config)], directory / "server.log")
    clients: list[subprocess.Popen] = []
    try:
        port = wait_for_port(port_file, server, directory / "server.log")
        steps_per_client = settings.rounds * settings.local_steps
        for index, name in enumerate(names):
            config = _write_yaml(directory / f"{name}.yaml", {
                **common, "name": name, "identity": keys / f"{name}.key", "server": f"127.0.0.1:{port}",
                "server_key": keys / "server.pub", "server_cert": keys / "tls-cert.pem",
                "steps": steps_per_client, "rounds": settings.rounds, "batch_size": settings.batch_size,
                "data": {**data.model_dump(), "shard": index, "shards": settings.clients},
                "output": directory / name, **_privacy_block(settings, index),
                # every client here is honest, and the run is compared with the in-process methods on the
                # same rows: none is held out to check the averages
                "self_check": {"enabled": False}})
            # the clients share this machine's cores with the server and each other
            clients.append(_spawn(["train", "--config", str(config)], directory / f"{name}.log", client=True))
        started = time.perf_counter()
        task = progress.add_task(f"federated ({settings.clients} client processes)",
                                 total=settings.total_steps, status="")
        while any(c.poll() is None for c in clients):
            done = sum(_progress_of(directory / name) for name in names)
            progress.update(task, completed=done, status=f"{done} trunk steps, TLS + AES-GCM")
            for name, process in zip(names, clients, strict=True):
                if process.poll() not in (None, 0):
                    raise FederationFailed(f"{name} failed; see {directory / f'{name}.log'}")
            if server.poll() not in (None, 0):
                raise FederationFailed(f"the server failed; see {directory / 'server.log'}")
            time.sleep(0.5)
        seconds = time.perf_counter() - started
        for name, process in zip(names, clients, strict=True):
            if process.returncode != 0:
                raise FederationFailed(f"{name} failed; see {directory / f'{name}.log'}")
        progress.update(task, completed=settings.total_steps)
        if server.wait(60) != 0:
            raise FederationFailed(f"the server failed; see {directory / 'server.log'}")
    finally:
        for process in [*clients, server]:
            _stop(process)
    summaries = [json.loads((directory / name / "summary.json").read_text()) for name in names]
    losses = [loss for step in zip(*(s["losses"] for s in summaries), strict=True) for loss in step]
    adapters = {"head": directory / names[0] / "head", "trunk": directory / "server" / "trunk",
                "tail": directory / names[0] / "tail"}
    if (directory / names[0] / "cut").is_dir():  # client 0's learned defense
        adapters["cut"] = directory / names[0] / "cut"
    first_step_at = min(s["training_started_at"] for s in summaries)
    training = max(s["training_ended_at"] for s in summaries) - first_step_at
    return NetworkRun(losses, training, adapters, sum(s["bytes_sent"] for s in summaries),
                      startup_seconds=first_step_at - spawned_at, wall_seconds=seconds)


def _privacy_block(settings: FederationSettings, index: int) -> dict:
    """A client's ``privacy:`` block: the federation's, its seed (if any) offset per client as in process."""
    privacy = settings.privacy
    if not privacy.enabled:
        return {}
    seed = None if privacy.seed is None else privacy.seed + index
    return {"privacy": privacy.model_copy(update={"seed": seed}).model_dump(mode="json")}


def _progress_of(client_dir: Path) -> int:
    try:
        return int(json.loads((client_dir / "progress.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_port(path: Path, server: subprocess.Popen, log: Path, timeout_s: float = 180.0) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        if server.poll() is not None:
            raise FederationFailed(f"the server exited with {server.returncode}; see {log}")
        time.sleep(0.2)
    raise FederationFailed(f"the server did not start within {timeout_s:.0f}s; see {log}")
