"""Self-signed TLS certificates: SANs, files, fingerprints, and pinning through a real gRPC connection."""

from __future__ import annotations

import stat

import pytest

from splitfed.security import (
    KeyFileError,
    certificate_fingerprint,
    certificate_names,
    make_self_signed,
    save_tls,
)


@pytest.fixture(scope="module")
def certificate() -> tuple[bytes, bytes]:
    return make_self_signed("splitfed-server", ["localhost", "trunk.example.org"], ["127.0.0.1", "::1"])


def test_sans(certificate):
    cert_pem, key_pem = certificate
    assert cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert certificate_names(cert_pem) == (["localhost", "trunk.example.org"], ["127.0.0.1", "::1"])


def test_fingerprint_stable_and_distinct(certificate, tmp_path):
    cert_pem, _ = certificate
    fingerprint = certificate_fingerprint(cert_pem)
    assert len(fingerprint) == 64 and int(fingerprint, 16) >= 0
    assert certificate_fingerprint(cert_pem) == fingerprint
    assert certificate_fingerprint(cert_pem.replace(b"\n", b"\r\n")) == fingerprint
    cert_path, _ = save_tls(*certificate, tmp_path)
    assert certificate_fingerprint(cert_path.read_bytes()) == fingerprint
    other, _ = make_self_signed("splitfed-server", ["localhost", "trunk.example.org"], ["127.0.0.1", "::1"])
    assert certificate_fingerprint(other) != fingerprint
    with pytest.raises(KeyFileError):
        certificate_fingerprint(b"not a certificate")


def test_save_tls_modes_and_overwrite(certificate, tmp_path):
    cert_path, key_path = save_tls(*certificate, tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes() == certificate[1] and cert_path.read_bytes() == certificate[0]
    with pytest.raises(FileExistsError):
        save_tls(*certificate, tmp_path)
    save_tls(*certificate, tmp_path, overwrite=True)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_invalid_arguments():
    with pytest.raises(ValueError):
        make_self_signed("x", [], [])
    with pytest.raises(ValueError, match="IP"):
        make_self_signed("x", [], ["999.1.1.1"])


def _call(grpc, port: int, root: bytes, target: str) -> bytes:
    credentials = grpc.ssl_channel_credentials(root_certificates=root)
    with grpc.secure_channel(f"{target}:{port}", credentials) as channel:
        return channel.unary_unary("/splitfed.Test/Echo")(b"ping", timeout=10)


def test_pinned_certificate_works_with_grpc(certificate):
    from concurrent import futures

    import grpc  # a declared dependency: never skipped

    cert_pem, key_pem = certificate
    handler = grpc.method_handlers_generic_handler(
        "splitfed.Test", {"Echo": grpc.unary_unary_rpc_method_handler(lambda request, context: request)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key_pem, cert_pem)]))
    server.start()
    try:
        assert _call(grpc, port, cert_pem, "127.0.0.1") == b"ping"
        assert _call(grpc, port, cert_pem, "localhost") == b"ping"
        other, _ = make_self_signed("splitfed-server", ["localhost"], ["127.0.0.1"])
        with pytest.raises(grpc.RpcError):  # a client pinning another certificate refuses the server
            _call(grpc, port, other, "127.0.0.1")
    finally:
        server.stop(None)
