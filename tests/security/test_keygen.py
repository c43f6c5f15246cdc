"""Key files for `splitfed keygen`."""

from __future__ import annotations

import stat

import pytest

from splitfed.security import (
    AllowList,
    Identity,
    certificate_fingerprint,
    certificate_names,
    create_identity_files,
    create_server_files,
)


def test_create_identity_files(tmp_path):
    key_path, pub_path = create_identity_files(tmp_path / "keys", "hospital-a")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    identity = Identity.load(key_path)
    assert AllowList.from_file(pub_path).get("hospital-a") == identity.public
    with pytest.raises(FileExistsError):
        create_identity_files(tmp_path / "keys", "hospital-a")
    create_identity_files(tmp_path / "keys", "hospital-a", overwrite=True)
    assert Identity.load(key_path).public != identity.public


def test_create_server_files(tmp_path):
    files = create_server_files(tmp_path, ["localhost"], ["127.0.0.1"])
    for path in (files.identity_key, files.tls_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(files.identity_key).public.fingerprint == files.identity_fingerprint
    cert_pem = files.tls_cert.read_bytes()
    assert certificate_fingerprint(cert_pem) == files.tls_fingerprint
    assert certificate_names(cert_pem) == (["localhost"], ["127.0.0.1"])
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(FileExistsError):
        create_server_files(tmp_path, ["localhost"], ["127.0.0.1"])
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before
