"""`splitfed serve` builds the service of each mode from its settings."""

from __future__ import annotations

import logging

import pytest

from splitfed.security import create_identity_files, create_server_files
from splitfed.server.modes import MODES, ClientBatchMode, HierarchicalMode, SequentialMode, TwoPartMode
from splitfed.server.process import build_service, rpc_workers
from splitfed.server.settings import ServerSettings


@pytest.fixture
def files(tmp_path):
    create_server_files(tmp_path, ["localhost"], ["127.0.0.1"])
    allow = tmp_path / "allow"
    for name in ("a", "b", "c"):
        create_identity_files(allow, name)
    return {"identity": tmp_path / "server.key", "allowlist": allow, "model": "tiny-llama",
            "partition": {"head": 1, "tail": 1}}


def test_each_mode_builds_its_service(files):
    sequential = build_service(ServerSettings(**files))
    assert isinstance(sequential.mode, SequentialMode) and len(sequential.sub_servers) == 1
    batched = build_service(ServerSettings(**files, mode="client-batch"))
    assert isinstance(batched.mode, ClientBatchMode) and batched.status()["mode"] == "client-batch"
    two_part = build_service(ServerSettings(**{**files, "partition": {"head": 1, "layout": "two-part"}}))
    assert isinstance(two_part.mode, TwoPartMode) and two_part.layout == "two-part"
    hierarchical = build_service(ServerSettings(**files, mode="hierarchical", sub_servers=3))
    trunks = [sub.trunk for sub in hierarchical.sub_servers]
    assert len(trunks) == 3 and trunks[0] is not trunks[1] and isinstance(hierarchical.mode, HierarchicalMode)
    frozen = [p for p in trunks[0].parameters() if not p.requires_grad]
    assert all(any(p is q for q in trunks[1].parameters()) for p in frozen)  # one frozen base


def test_auto_mode_logs_its_choice(files, caplog):
    caplog.set_level(logging.INFO)
    service = build_service(ServerSettings(**files, mode="auto"))
    assert "mode auto ->" in caplog.text
    assert service.mode.name in MODES and len(service.sub_servers) >= 1


def test_request_threads_cover_every_enrolled_client(files):
    assert rpc_workers(ServerSettings(**files)) == 16  # 3 clients: the floor
    for index in range(20):
        create_identity_files(files["allowlist"], f"more{index}")
    assert rpc_workers(ServerSettings(**files)) == 2 * 23 + 8
    assert rpc_workers(ServerSettings(**files, rpc_workers=6)) == 6


def test_the_server_announces_the_codecs_it_accepts(files):
    assert list(build_service(ServerSettings(**files)).session_limits().dtypes) == [
        "float32", "bfloat16", "float16", "int8-blockwise"]
    restricted = build_service(ServerSettings(**files, wire_codecs=["int8-blockwise", "bfloat16"]))
    assert list(restricted.session_limits().dtypes) == ["int8-blockwise", "bfloat16"]
    assert restricted._adapter_limits.dtypes == {"float32"}  # FedAvg adapters travel in float32 regardless
    with pytest.raises(ValueError):
        ServerSettings(**files, wire_codecs=[])
    with pytest.raises(ValueError):
        ServerSettings(**files, wire_codecs=["int4"])


def test_a_range_of_client_partitions_is_served_or_refused_with_the_reason(files):
    ranged = {**files, "partition": {"head": [1, 2], "tail": 1}, "aggregation": "plain"}
    service = build_service(ServerSettings(**ranged))
    limits = service.session_limits()
    served = (limits.trunk_start, limits.first_block_max, limits.end_block_min, limits.trunk_end)
    assert served == (1, 2, 3, 3)
    assert service.rounds.partial_keys  # FedAvg over the clients holding each block
    hierarchical = build_service(ServerSettings(**ranged, mode="hierarchical", sub_servers=2))
    assert hierarchical.session_limits().first_block_max == 2
    auto = build_service(ServerSettings(**ranged, mode="auto"))
    assert auto.mode.name in ("sequential", "hierarchical")  # never client-batch
    with pytest.raises(ValueError, match="mode client-batch concatenates"):
        ServerSettings(**ranged, mode="client-batch")
    with pytest.raises(ValueError, match="aggregation secure masks"):
        ServerSettings(**{**ranged, "aggregation": "secure"})
    with pytest.raises(ValueError, match="prefix adapter"):
        ServerSettings(**ranged, adapter={"kind": "prefix"})
    with pytest.raises(ValueError, match="would leave the server none"):  # tiny-llama has 4 blocks
        build_service(ServerSettings(**{**ranged, "partition": {"head": [1, 2], "tail": [1, 2]}}))
