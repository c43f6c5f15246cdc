"""Attestation hook: release the sealing key only to code whose measurement a verifier accepts.

``Attester`` produces evidence bound to a fresh nonce (on real hardware: an SGX/TDX quote, an SEV-SNP
report or an NVIDIA H100 CC report whose report data carries the nonce); ``Verifier`` checks it
(signature chain to the platform vendor, measurement in an allow-list, freshness). The simulated pair
below is a test double: an Ed25519 key stands in for the platform's attestation key and a hash of the
package source stands in for the measurement. It exercises the protocol; it protects no memory.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from splitfed.security.errors import AttestationError

SIMULATED = "simulated"


@dataclass(frozen=True)
class Evidence:
    """What an attester hands a verifier: the platform, the code measurement, the nonce it binds."""

    platform: str
    measurement: bytes
    nonce: bytes
    signature: bytes

    def to_json(self) -> str:
        return json.dumps({"platform": self.platform, "measurement": self.measurement.hex(),
                           "nonce": self.nonce.hex(), "signature": self.signature.hex()})


class Attester(Protocol):
    def evidence(self, nonce: bytes) -> Evidence:
        """Evidence that the running code has a measurement, bound to ``nonce``."""
        ...


class Verifier(Protocol):
    def verify(self, evidence: Evidence, nonce: bytes) -> None:
        """Return if ``evidence`` is genuine, fresh (binds ``nonce``) and of allowed code; else raise
        ``AttestationError``."""
        ...


def _signed_bytes(platform: str, measurement: bytes, nonce: bytes) -> bytes:
    return b"splitfed attestation\x00" + platform.encode() + b"\x00" + measurement + nonce


def code_measurement(root: str | Path) -> bytes:
    """SHA-256 over every ``.py`` file under ``root`` (relative path and content): the simulated
    stand-in for MRENCLAVE / MRTD / a launch digest."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\x00")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.digest()


class SimulatedAttester:
    """Test double of a TEE's quoting: signs (measurement, nonce) with a stand-in platform key."""

    def __init__(self, platform_key: Ed25519PrivateKey, measurement: bytes) -> None:
        self._key = platform_key
        self.measurement = measurement

    def evidence(self, nonce: bytes) -> Evidence:
        signature = self._key.sign(_signed_bytes(SIMULATED, self.measurement, nonce))
        return Evidence(SIMULATED, self.measurement, nonce, signature)


class SimulatedVerifier:
    """Test double of a verifier: the stand-in platform key, and the measurements allowed the key."""

    def __init__(self, platform_public: Ed25519PublicKey, allowed: set[bytes]) -> None:
        self._public = platform_public
        self.allowed = set(allowed)

    def verify(self, evidence: Evidence, nonce: bytes) -> None:
        if evidence.platform != SIMULATED:
            raise AttestationError(f"this verifier checks simulated evidence, not {evidence.platform!r}")
        if not hmac.compare_digest(evidence.nonce, nonce):
            raise AttestationError("the evidence does not bind this request's nonce (stale or replayed)")
        try:
            self._public.verify(evidence.signature,
                                _signed_bytes(evidence.platform, evidence.measurement, evidence.nonce))
        except InvalidSignature:
            raise AttestationError("the evidence's signature does not verify") from None
        if evidence.measurement not in self.allowed:
            raise AttestationError(f"measurement {evidence.measurement.hex()[:16]}... is not allowed "
                                   "the key")
