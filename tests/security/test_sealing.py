"""Sealing at rest: round trip, and tampered, truncated, wrong-key and unsealed data refused by name."""

from __future__ import annotations

import base64
import sys

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from splitfed.security import (
    AttestationError,
    AttestedKeyProvider,
    CommandKeyProvider,
    EnvKeyProvider,
    FileKeyProvider,
    KeyProviderError,
    Sealer,
    SealingError,
    SealingSettings,
    SimulatedAttester,
    SimulatedVerifier,
    code_measurement,
    create_key_file,
)
from splitfed.security.sealing import new_key

PLAINTEXT = b"trunk adapter bytes " * 50


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "chacha20-poly1305"])
def test_round_trip_and_every_failure_named(algorithm):
    sealer = Sealer(new_key(), algorithm)
    blob = sealer.seal(PLAINTEXT, b"slot-a")
    assert PLAINTEXT not in blob and len(blob) == len(PLAINTEXT) + 16 + 37
    assert sealer.open(blob, b"slot-a") == PLAINTEXT
    assert sealer.seal(PLAINTEXT, b"slot-a") != blob  # fresh nonce each time
    cases = {
        "tampered": blob[:-40] + bytes([blob[-40] ^ 1]) + blob[-39:],
        "truncated": blob[:-1],
        "truncated header": blob[:20],
        "trailing bytes": blob + b"x",
    }
    for case, damaged in cases.items():
        with pytest.raises(SealingError) as error:
            sealer.open(damaged, b"slot-a", what="ckpt")
        expected = {"tampered": "tampered", "truncated": "truncated", "truncated header": "truncated",
                    "trailing bytes": "trailing"}[case]
        assert expected in str(error.value), case
    with pytest.raises(SealingError, match="another slot"):
        sealer.open(blob, b"slot-b")
    with pytest.raises(SealingError, match="another key"):
        Sealer(new_key(), algorithm).open(blob, b"slot-a")
    with pytest.raises(SealingError, match="not sealed"):
        sealer.open(b'{"plain": "json checkpoint with no seal at all"}', b"slot-a")


def test_key_never_in_repr_or_errors():
    key = new_key()
    sealer = Sealer(key)
    with pytest.raises(SealingError) as error:
        Sealer(new_key()).open(sealer.seal(b"x"))
    for text in (repr(sealer), str(error.value)):
        assert key.hex() not in text and key.hex()[:16] not in text


def test_key_providers_file_env_command(tmp_path, monkeypatch):
    path = create_key_file(tmp_path / "sealing.key")
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        create_key_file(path)
    key = FileKeyProvider(path).key()
    assert len(key) == 32
    monkeypatch.setenv("SEAL_KEY", base64.b64encode(key).decode())
    assert EnvKeyProvider("SEAL_KEY").key() == key
    command = [sys.executable, "-c", f"import sys; sys.stdin.read(); print({key.hex()!r})"]
    assert CommandKeyProvider(command).key() == key
    assert SealingSettings(key_provider="file", key_file=path).sealer().key == key
    with pytest.raises(KeyProviderError, match="not set"):
        EnvKeyProvider("SPLITFED_NO_SUCH_VARIABLE").key()
    with pytest.raises(KeyProviderError, match="exited with 3"):
        CommandKeyProvider([sys.executable, "-c", "import sys; sys.exit(3)"]).key()
    (tmp_path / "short.key").write_text("abcd\n")
    (tmp_path / "short.key").chmod(0o600)
    with pytest.raises(KeyProviderError, match="32-byte key"):
        FileKeyProvider(tmp_path / "short.key").key()
    with pytest.raises(KeyProviderError, match="not found"):
        FileKeyProvider(tmp_path / "missing.key").key()


def test_attested_key_release(tmp_path):
    import splitfed

    measurement = code_measurement(splitfed.__path__[0])
    platform = Ed25519PrivateKey.generate()
    key_file = create_key_file(tmp_path / "k")
    verifier = SimulatedVerifier(platform.public_key(), {measurement})
    good = AttestedKeyProvider(FileKeyProvider(key_file), SimulatedAttester(platform, measurement), verifier)
    assert good.key() == FileKeyProvider(key_file).key()
    other_code = SimulatedAttester(platform, bytes(32))
    with pytest.raises(AttestationError, match="not allowed"):
        AttestedKeyProvider(FileKeyProvider(key_file), other_code, verifier).key()
    forged = SimulatedAttester(Ed25519PrivateKey.generate(), measurement)
    with pytest.raises(AttestationError, match="signature"):
        AttestedKeyProvider(FileKeyProvider(key_file), forged, verifier).key()
    replayed = SimulatedAttester(platform, measurement).evidence(b"old nonce")
    with pytest.raises(AttestationError, match="nonce"):
        verifier.verify(replayed, b"new nonce")
    # the evidence reaches an external key command (a KMS client) on its standard input
    echo = [sys.executable, "-c", "import sys, json, hashlib; e = json.loads(sys.stdin.read()); "
            "print(hashlib.sha256(bytes.fromhex(e['measurement'])).hexdigest())"]
    released = AttestedKeyProvider(CommandKeyProvider(echo), SimulatedAttester(platform, measurement),
                                   verifier).key()
    import hashlib

    assert released == hashlib.sha256(measurement).digest()
