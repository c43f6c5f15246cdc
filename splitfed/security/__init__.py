"""Security layer: identities, allow-list, signed handshake, sealed messages and TLS certificates.

Transport-agnostic: it works on bytes and dataclasses; the gRPC layer carries its messages. See
DESIGN.md section 5 and `handshake.py` for the protocol. Only this package imports `cryptography`.
"""

from splitfed.security.allowlist import AllowList
from splitfed.security.channel import Sealed, SecureChannel
from splitfed.security.errors import (
    AuthenticationError,
    DecryptionError,
    HandshakeError,
    InsecurePermissionsWarning,
    KeyFileError,
    ReplayError,
    SecurityError,
    StaleHandshakeError,
    UnknownClientError,
)
from splitfed.security.handshake import VERSION, ClientHandshake, ServerHandshake
from splitfed.security.hello import ClientHello, ServerHello
from splitfed.security.identity import Identity, PublicIdentity
from splitfed.security.keygen import (
    ServerFiles,
    create_client_tls_files,
    create_identity_files,
    create_server_files,
)
from splitfed.security.secagg import (
    MaskingKeys,
    RoundRoster,
    SecAggClient,
    SecAggError,
    majority_threshold,
)
from splitfed.security.secagg_server import SecAggServer, run_round_in_memory
from splitfed.security.session import SessionKeys
from splitfed.security.tls import certificate_fingerprint, certificate_names, make_self_signed, save_tls

__all__ = [
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
    "RoundRoster",
    "SecAggClient",
    "SecAggError",
    "SecAggServer",
    "majority_threshold",
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
    "run_round_in_memory",
    "save_tls",
]
