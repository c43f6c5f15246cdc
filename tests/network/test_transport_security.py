"""Transport rules: plaintext only on loopback when asked, pinned and mutual TLS, chunked messages."""

from __future__ import annotations

import pytest
import torch

from splitfed.client.remote_trunk import RemoteTrunk, TrunkMismatchError
from splitfed.models import LoraSpec, init_adapter, load_model, split_model
from splitfed.models.split import Partition
from splitfed.security import (
    AllowList,
    Identity,
    ServerHandshake,
    create_client_tls_files,
    create_server_files,
)
from splitfed.server import LocalTrunk
from splitfed.server.modes import SequentialMode
from splitfed.server.trunk_service import ServiceLimits, TrunkService
from splitfed.training.replicate import replicate
from splitfed.transport import INT8_BLOCKWISE, Codec
from splitfed.transport.addresses import is_loopback
from splitfed.transport.connection import TrunkConnection
from splitfed.transport.errors import RemoteError
from splitfed.transport.server import serve


@pytest.mark.parametrize(("address", "loopback"), [("127.0.0.1:1", True), ("127.8.9.1:1", True),
                                                   ("localhost:5", True), ("[::1]:5", True),
                                                   ("10.0.0.1:5", False), ("example.org:5", False),
                                                   ("0.0.0.0:5", False)])
def test_loopback_detection(address, loopback):
    assert is_loopback(address) is loopback


def test_plaintext_is_refused_beyond_loopback_and_without_the_flag():
    with pytest.raises(ValueError, match="not a loopback"):
        serve(object(), "0.0.0.0:0", allow_insecure_loopback=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="insecure-loopback"):
        serve(object(), "127.0.0.1:0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a loopback"):
        TrunkConnection("10.1.2.3:50051", allow_insecure_loopback=True)
    with pytest.raises(ValueError, match="insecure-loopback"):
        TrunkConnection("127.0.0.1:50051")


class _Setup:
    def __init__(self, tmp_path, limits: ServiceLimits | None = None, mutual: bool = False) -> None:
        self.files = create_server_files(tmp_path, ["localhost"], ["127.0.0.1"])
        self.server_identity = Identity.load(self.files.identity_key)
        self.alice = Identity.generate("alice")
        self.model, _ = load_model("tiny-llama")
        split = split_model(replicate(self.model), Partition(1, 1))
        init_adapter(split.trunk, LoraSpec(r=2), 0)
        self.local = LocalTrunk(split.trunk)
        handshake = ServerHandshake(self.server_identity, AllowList([self.alice.public]))
        service = self.service = TrunkService(SequentialMode(self.local), handshake, limits=limits)
        self.client_cert = create_client_tls_files(tmp_path, "alice") if mutual else None
        roots = self.client_cert[0].read_bytes() if mutual else None
        self.server, port = serve(service, "127.0.0.1:0", (self.files.tls_cert.read_bytes(),
                                                           self.files.tls_key.read_bytes()),
                                  client_certificates=roots)
        self.address = f"127.0.0.1:{port}"

    def remote(self, client_certificate=None) -> RemoteTrunk:
        connection = TrunkConnection(self.address, self.files.tls_cert.read_bytes(), timeout_s=20,
                                     client_certificate=client_certificate)
        return RemoteTrunk(connection, self.alice, self.server_identity.public)


def test_mutual_tls_admits_only_enrolled_certificates(tmp_path):
    setup = _Setup(tmp_path, mutual=True)
    try:
        cert, key = setup.client_cert
        remote = setup.remote((cert.read_bytes(), key.read_bytes()))
        remote.connect((1, 3), 64)
        out = remote.forward("alice", torch.randn(1, 3, 64), None, train=False)
        assert out.shape == (1, 3, 64)
        with pytest.raises(RemoteError) as caught:
            setup.remote().connect((1, 3), 64)  # no client certificate
        assert caught.value.status == "UNAVAILABLE"
        other_cert, other_key = create_client_tls_files(tmp_path / "other", "alice")
        with pytest.raises(RemoteError):
            setup.remote((other_cert.read_bytes(), other_key.read_bytes())).connect((1, 3), 64)
    finally:
        setup.server.stop(0)


def test_a_client_pinning_another_server_certificate_is_refused(tmp_path):
    setup = _Setup(tmp_path)
    try:
        impostor = create_server_files(tmp_path / "impostor", ["localhost"], ["127.0.0.1"])
        connection = TrunkConnection(setup.address, impostor.tls_cert.read_bytes(), timeout_s=10)
        with pytest.raises(RemoteError) as caught:
            RemoteTrunk(connection, setup.alice, setup.server_identity.public).connect((1, 3), 64)
        assert caught.value.status == "UNAVAILABLE"
    finally:
        setup.server.stop(0)


def test_tensors_above_the_grpc_message_limit_travel_in_chunks(tmp_path):
    setup = _Setup(tmp_path, ServiceLimits(max_batch=20, max_length=1024))
    try:
        remote = setup.remote()
        remote.connect((1, 3), 64)
        hidden = torch.randn(20, 1000, 64)  # 5.1 MB in fp32: three 2 MiB chunks each way
        before = remote.connection.bytes_sent
        out = remote.forward("alice", hidden, None, train=False)
        assert remote.connection.bytes_sent - before > 5_000_000
        with torch.no_grad():
            expected = setup.local.trunk(hidden, None)
        assert torch.equal(out, expected)
    finally:
        setup.server.stop(0)


@pytest.mark.parametrize(("wire_dtype", "tolerance"), [("bfloat16", 0.05), ("float16", 0.01)])
def test_half_precision_on_the_wire_halves_the_bytes(tmp_path, wire_dtype, tolerance):
    setup = _Setup(tmp_path)
    try:
        remote = setup.remote()
        remote.wire_dtype = wire_dtype
        remote.connect((1, 3), 64)
        hidden = torch.randn(2, 50, 64)
        before = remote.connection.bytes_sent
        out = remote.forward("alice", hidden, None, train=False)
        sent = remote.connection.bytes_sent - before
        assert 2 * 50 * 64 * 2 <= sent < 2 * 50 * 64 * 2 + 512  # two bytes per element, small overhead
        with torch.no_grad():
            expected = setup.local.trunk(hidden.to(getattr(torch, wire_dtype)).float(), None)
        assert out.dtype == torch.float32
        assert (out - expected).abs().max().item() <= tolerance * expected.abs().max().item()
    finally:
        setup.server.stop(0)


def test_int8_forward_and_bfloat16_backward_each_come_back_in_their_own_codec(tmp_path):
    setup = _Setup(tmp_path, ServiceLimits(max_batch=4, max_length=1024))
    try:
        remote = setup.remote()
        remote.forward_codec, remote.backward_codec = Codec(INT8_BLOCKWISE, 64), Codec("bfloat16")
        remote.connect((1, 3), 64)
        assert INT8_BLOCKWISE in remote.limits.dtypes  # announced at the handshake
        hidden = torch.randn(4, 500, 64)
        elements = hidden.numel()
        sent, received = remote.connection.bytes_sent, remote.connection.bytes_received
        out = remote.forward("alice", hidden, None, train=True)
        up, down = remote.connection.bytes_sent - sent, remote.connection.bytes_received - received
        # one byte per element and a float32 scale per 64: 1.0625 bytes, a quarter of float32, each way
        assert elements * 1.0625 <= up <= 1.1 * elements and elements * 1.0625 <= down <= 1.1 * elements
        with torch.no_grad():
            expected = setup.local.trunk(hidden, None)
        assert (out - expected).abs().max().item() <= 0.05 * expected.abs().max().item()
        sent, received = remote.connection.bytes_sent, remote.connection.bytes_received
        grad_in = remote.backward("alice", torch.randn(4, 500, 64) * 1e-3)
        up, down = remote.connection.bytes_sent - sent, remote.connection.bytes_received - received
        assert 2 * elements <= up <= 2.05 * elements and 2 * elements <= down <= 2.05 * elements  # bfloat16
        assert grad_in.shape == hidden.shape and bool(torch.isfinite(grad_in).all())
    finally:
        setup.server.stop(0)


def test_a_codec_the_server_does_not_accept_is_refused_at_connect(tmp_path):
    setup = _Setup(tmp_path, ServiceLimits(dtypes=("float32", "bfloat16")))
    try:
        remote = setup.remote()
        remote.backward_codec = Codec(INT8_BLOCKWISE)
        with pytest.raises(TrunkMismatchError, match="int8-blockwise on the wire \\(backward"):
            remote.connect((1, 3), 64)
        assert setup.service.sessions() == []  # the session was closed at once
        remote = setup.remote()
        remote.wire_dtype = "bfloat16"
        remote.connect((1, 3), 64)
        assert list(remote.limits.dtypes) == ["float32", "bfloat16"]
    finally:
        setup.server.stop(0)
