"""Exceptions of the security layer. Messages never carry key material."""

from __future__ import annotations


class SecurityError(Exception):
    """Base of every error raised by `splitfed.security`."""


class AuthenticationError(SecurityError):
    """A signature or a peer's identity did not verify."""


class UnknownClientError(AuthenticationError):
    """The client is not in the allow-list, or was revoked."""


class HandshakeError(SecurityError):
    """A handshake message is malformed or breaks the protocol."""


class StaleHandshakeError(HandshakeError):
    """A handshake's timestamp is outside the allowed clock skew."""


class ReplayError(SecurityError):
    """A handshake nonce or a message counter was seen before (replayed or reordered)."""


class DecryptionError(SecurityError):
    """A sealed message failed authentication or belongs to another session."""


class KeyFileError(SecurityError):
    """A key, public-key line, allow-list or certificate file is missing, unreadable or malformed."""


class InsecurePermissionsWarning(UserWarning):
    """A private key file is readable or writable by other users."""


class SecAggError(SecurityError):
    """A secure-aggregation call is out of order, its input is inconsistent, or the round cannot finish."""


# ---------------------------------------------------------------------------------------------- fixed point


class SealingError(SecurityError):
    """Sealed data that does not open: tampered, truncated, sealed under another key, or not sealed."""


class KeyProviderError(SecurityError):
    """A sealing key could not be obtained from its provider (missing, malformed, command failed)."""


class AttestationError(SecurityError):
    """Attestation evidence did not verify, so the key is not released."""
