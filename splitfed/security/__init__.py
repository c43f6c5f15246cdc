"""Security layer: identities, allow-list, signed handshake, sealed messages and TLS certificates.

Transport-agnostic: it works on bytes and dataclasses; the gRPC layer carries its messages. The
protocol is in `handshake.py` (identities and session keys) and `channel.py` (sealed messages);
`masking.py` holds the cryptography under secure aggregation, whose protocol is `splitfed.aggregation`.
docs/security.md describes the threat model. Only this package imports `cryptography`.
"""

from splitfed.security.allowlist import AllowList
from splitfed.security.attestation import Evidence, SimulatedAttester, SimulatedVerifier, code_measurement
from splitfed.security.channel import Sealed, SecureChannel
from splitfed.security.errors import (
    AttestationError,
    AuthenticationError,
    DecryptionError,
    HandshakeError,
    InsecurePermissionsWarning,
    KeyFileError,
    KeyProviderError,
    ReplayError,
    SealingError,
    SecAggError,
    SecurityError,
    StaleHandshakeError,
    UnknownClientError,
)
from splitfed.security.handshake import VERSION, ClientHandshake, ServerHandshake
from splitfed.security.hello import ClientHello, ServerHello
from splitfed.security.identity import Identity, PublicIdentity
from splitfed.security.key_providers import (
    AttestedKeyProvider,
    CommandKeyProvider,
    EnvKeyProvider,
    FileKeyProvider,
    SealingSettings,
    create_key_file,
)
from splitfed.security.keygen import (
    ServerFiles,
    create_client_tls_files,
    create_identity_files,
    create_server_files,
)
from splitfed.security.masking import MaskingKeys
from splitfed.security.sealing import Sealer
from splitfed.security.session import SessionKeys
from splitfed.security.tls import certificate_fingerprint, certificate_names, make_self_signed, save_tls

__all__ = [
    "AttestationError",
    "AttestedKeyProvider",
    "CommandKeyProvider",
    "EnvKeyProvider",
    "Evidence",
    "FileKeyProvider",
    "KeyProviderError",
    "Sealer",
    "SealingError",
    "SealingSettings",
    "SimulatedAttester",
    "SimulatedVerifier",
    "code_measurement",
    "create_key_file",
    "VERSION",
    "AllowList",
    "AuthenticationError",
    "ClientHandshake",
    "ClientHello",
    "DecryptionError",
    "HandshakeError",
    "Identity",
    "InsecurePermissionsWarning",
    "KeyFileError",
    "MaskingKeys",
    "PublicIdentity",
    "ReplayError",
    "SecAggError",
    "Sealed",
    "SecureChannel",
    "SecurityError",
    "ServerFiles",
    "ServerHandshake",
    "ServerHello",
    "SessionKeys",
    "StaleHandshakeError",
    "UnknownClientError",
    "certificate_fingerprint",
    "certificate_names",
    "create_client_tls_files",
    "create_identity_files",
    "create_server_files",
    "make_self_signed",
    "save_tls",
]
