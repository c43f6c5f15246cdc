"""Real processes on 127.0.0.1: a trunk server and clients started with the `splitfed` command."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from splitfed.federation.processes import wait_for_port as _wait_for_port
from splitfed.security import create_identity_files, create_server_files

CLIENTS = ("alice", "bob")
COMMON = """model: tiny-llama
dtype: float32
seed: 3
partition: {head: 1, tail: 1}
adapter: {kind: lora, r: 4, alpha: 8}
optimizer: {lr: 0.01}
"""


@dataclass
class Deployment:
    root: Path
    keys: Path

    def client_config(self, name: str, shard: int, steps: int, extra: str = "") -> Path:
        path = self.root / f"{name}.yaml"
        path.write_text(COMMON + f"""name: {name}
identity: {self.keys / f"{name}.key"}
server_key: {self.keys / "server.pub"}
server_cert: {self.keys / "tls-cert.pem"}
steps: {steps}
batch_size: 2
output: {self.root / "out" / name}
data: {{task: rte, limit: 24, shard: {shard}, shards: 2, seed: 3, max_length: 64}}
""" + extra)
        return path

    def server_config(self, extra: str = "") -> Path:
        path = self.root / "server.yaml"
        path.write_text(COMMON + f"""listen: 127.0.0.1:0
identity: {self.keys / "server.key"}
allowlist: {self.root / "allow"}
tls_cert: {self.keys / "tls-cert.pem"}
tls_key: {self.keys / "tls-key.pem"}
port_file: {self.root / "port"}
output: {self.root / "out" / "server"}
""" + extra)
        return path


def splitfed(*args: str, log: Path) -> subprocess.Popen:
    """Start `python -m splitfed.cli ARGS` with its output in ``log``."""
    handle = log.open("w")
    env = dict(os.environ, COLUMNS="120")
    return subprocess.Popen([sys.executable, "-m", "splitfed.cli", *args], stdout=handle,
                            stderr=subprocess.STDOUT, env=env)


def wait_for_port(path: Path, server: subprocess.Popen, timeout_s: float = 90.0) -> int:
    return _wait_for_port(path, server, path.parent / "server.log", timeout_s)


@pytest.fixture
def deployment(tmp_path) -> Deployment:
    keys = tmp_path / "keys"
    create_server_files(keys, ["localhost"], ["127.0.0.1"])
    allow = tmp_path / "allow"
    allow.mkdir()
    for name in CLIENTS:
        create_identity_files(keys, name)
        (allow / f"{name}.pub").write_bytes((keys / f"{name}.pub").read_bytes())
    return Deployment(tmp_path, keys)
