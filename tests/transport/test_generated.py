"""The checked-in generated code matches the schema, and the schema says what DESIGN.md §4 says."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from splitfed.transport import pb

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ["splitfed_pb2.py", "splitfed_pb2.pyi", "splitfed_pb2_grpc.py"]


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools (dev extra)")
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_checked_in_code_is_fresh(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(["bash", str(ROOT / "scripts/gen_proto.sh"), str(tmp_path)], check=True, env=env)
    for name in GENERATED:
        fresh = (tmp_path / "splitfed/transport" / name).read_text()
        checked_in = (ROOT / "splitfed/transport" / name).read_text()
        assert fresh == checked_in, f"{name} is stale: run scripts/gen_proto.sh"
        assert fresh.startswith("# ruff: noqa\n")


def test_grpc_module_imports_messages_from_the_package():
    from splitfed.transport import splitfed_pb2_grpc as grpc_module

    source = (ROOT / "splitfed/transport/splitfed_pb2_grpc.py").read_text()
    assert "from splitfed.transport import splitfed_pb2 as" in source
    assert {"TrunkStub", "TrunkServicer", "add_TrunkServicer_to_server"} <= set(dir(grpc_module))


def test_schema_shape():
    assert pb.DESCRIPTOR.package == "splitfed.v1"
    sealed = pb.Sealed.DESCRIPTOR.fields_by_name
    numbers = {name: sealed[name].number for name in sealed}
    names = ["session_id", "kind", "step", "counter", "ciphertext", "chunk_index", "chunk_count"]
    assert numbers == {name: number for number, name in enumerate(names, start=1)}
    assert [(f.name, f.number) for f in pb.Tensor.DESCRIPTOR.fields] == [
        ("dtype", 1), ("shape", 2), ("data", 3), ("scales", 4), ("block_size", 5)]
    service = pb.DESCRIPTOR.services_by_name["Trunk"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {"Handshake": (False, False), "Step": (True, True), "Exchange": (False, False),
                       "Close": (False, False)}
    assert service.methods_by_name["Handshake"].output_type.name == "HelloReply"


def test_only_transport_imports_grpc():
    pattern = re.compile(r"^\s*(import|from)\s+grpc(_tools)?\b", re.MULTILINE)
    offenders = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "splitfed").rglob("*.py")
        if "transport" not in path.relative_to(ROOT / "splitfed").parts[:1]
        and pattern.search(path.read_text())
    ]
    assert offenders == []
