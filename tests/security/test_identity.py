"""Ed25519 identities: files, permissions, signatures and the one-line public format."""

from __future__ import annotations

import stat
import warnings
from pathlib import Path

import pytest

from splitfed.security import (
    AuthenticationError,
    Identity,
    InsecurePermissionsWarning,
    KeyFileError,
    PublicIdentity,
)


def test_save_load_round_trip_and_mode(tmp_path):
    identity = Identity.generate("alice")
    key_path, pub_path = identity.save(tmp_path)
    assert (key_path.name, pub_path.name) == ("alice.key", "alice.pub")
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Identity.load(key_path)
    assert loaded.name == "alice"
    assert loaded.public == identity.public
    signature = loaded.sign(b"data")
    identity.public.verify(signature, b"data")
    assert PublicIdentity.from_text(pub_path.read_text()) == identity.public


def test_save_refuses_to_overwrite(tmp_path):
    first = Identity.generate("alice")
    key_path, _ = first.save(tmp_path)
    second = Identity.generate("alice")
    with pytest.raises(FileExistsError):
        second.save(tmp_path)
    assert Identity.load(key_path).public == first.public
    second.save(tmp_path, overwrite=True)
    assert Identity.load(key_path).public == second.public
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_load_errors(tmp_path):
    with pytest.raises(KeyFileError, match="not found"):
        Identity.load(tmp_path / "missing.key")
    garbage = tmp_path / "garbage.key"
    garbage.write_bytes(b"not a key")
    garbage.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        Identity.load(garbage)
    directory = tmp_path / "dir.key"
    directory.mkdir()
    with pytest.raises(KeyFileError):
        Identity.load(directory)


def test_load_refuses_other_key_types(tmp_path):
    from splitfed.security import make_self_signed

    _, ec_key_pem = make_self_signed("x", ["localhost"], [])
    path = tmp_path / "ec.key"
    path.write_bytes(ec_key_pem)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        Identity.load(path)


def test_unreadable_key(tmp_path, monkeypatch):
    key_path, _ = Identity.generate("alice").save(tmp_path)

    def refuse(self):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", refuse)
    with pytest.raises(KeyFileError, match="cannot read .*Permission denied"):
        Identity.load(key_path)


def test_open_permissions_warn(tmp_path):
    key_path, _ = Identity.generate("alice").save(tmp_path)
    key_path.chmod(0o644)
    with pytest.warns(InsecurePermissionsWarning, match="chmod 600"):
        Identity.load(key_path)


def test_signature_checks():
    alice, mallory = Identity.generate("alice"), Identity.generate("alice")
    signature = alice.sign(b"message")
    alice.public.verify(signature, b"message")
    with pytest.raises(AuthenticationError):
        alice.public.verify(signature, b"messagE")
    with pytest.raises(AuthenticationError):
        mallory.public.verify(signature, b"message")
    with pytest.raises(AuthenticationError):
        alice.public.verify(signature[:-1], b"message")


def test_public_text_format():
    public = Identity.generate("client-1.example").public
    text = public.to_text()
    kind, encoded, name = text.split(" ")
    assert (kind, name) == ("splitfed-ed25519", "client-1.example")
    assert PublicIdentity.from_text(text) == public
    assert len(public.fingerprint) == 64 and int(public.fingerprint, 16) >= 0
    assert public.fingerprint == PublicIdentity.from_text(text).fingerprint
    for bad in ["", "splitfed-ed25519 AAAA", f"ssh-ed25519 {encoded} x", f"splitfed-ed25519 {encoded}!! x",
                f"splitfed-ed25519 {encoded[:-4]} x", f"splitfed-ed25519 {encoded} ../etc",
                f"splitfed-ed25519 {encoded} a b"]:
        with pytest.raises(KeyFileError):
            PublicIdentity.from_text(bad)


@pytest.mark.parametrize("name", ["", "../x", "a/b", "a b", "-x", ".hidden", "x" * 65, "é"])
def test_invalid_names(name):
    with pytest.raises(ValueError):
        Identity.generate(name)


def test_identity_not_serializable_nor_shown():
    import copy

    identity = Identity.generate("alice")
    with pytest.raises(TypeError):
        identity.__reduce_ex__(4)
    with pytest.raises(TypeError):
        identity.sign(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        copy.deepcopy(identity)
    assert "alice" in repr(identity) and "PRIVATE" not in repr(identity)
