"""Creating the key files of a client or a server (for `splitfed keygen`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitfed.security.files import PRIVATE_MODE, PUBLIC_MODE, refuse_existing, write_file
from splitfed.security.identity import Identity, check_name
from splitfed.security.tls import CERT_FILE, KEY_FILE, certificate_fingerprint, make_self_signed, save_tls


@dataclass(frozen=True)
class ServerFiles:
    """What `create_server_files` wrote, and the fingerprints to hand to clients."""

    identity_key: Path
    identity_pub: Path
    tls_cert: Path
    tls_key: Path
    identity_fingerprint: str
    tls_fingerprint: str


def create_identity_files(directory: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """Generate an Ed25519 identity and write `<name>.key` (0600) and `<name>.pub`; return their paths."""
    return Identity.generate(name).save(directory, overwrite=overwrite)


def create_server_files(directory: str | Path, hostnames: list[str], ips: list[str], name: str = "server",
                        overwrite: bool = False, days: int = 365) -> ServerFiles:
    """Write the server's identity (`<name>.key`, `<name>.pub`) and its TLS certificate and key.

    Nothing is written if any of the four files exists and `overwrite` is false.
    """
    directory = Path(directory)
    check_name(name)
    refuse_existing([directory / f"{name}.key", directory / f"{name}.pub", directory / CERT_FILE,
                     directory / KEY_FILE], overwrite)
    cert_pem, key_pem = make_self_signed(name, hostnames, ips, days=days)
    identity = Identity.generate(name)
    key_path, pub_path = identity.save(directory, overwrite=overwrite)
    cert_path, tls_key_path = save_tls(cert_pem, key_pem, directory, overwrite=overwrite)
    return ServerFiles(key_path, pub_path, cert_path, tls_key_path, identity.public.fingerprint,
                       certificate_fingerprint(cert_pem))


def create_client_tls_files(directory: str | Path, name: str, overwrite: bool = False) -> tuple[Path, Path]:
    """A self-signed TLS certificate for a client, for mutual TLS: writes `<name>-tls-cert.pem` (give it
    to the server's `tls_client_certs`) and `<name>-tls-key.pem` (0600); returns their paths."""
    directory = Path(directory)
    check_name(name)
    cert_path, key_path = directory / f"{name}-tls-cert.pem", directory / f"{name}-tls-key.pem"
    refuse_existing([cert_path, key_path], overwrite)
    cert_pem, key_pem = make_self_signed(name, [name], [])
    directory.mkdir(parents=True, exist_ok=True)
    write_file(key_path, key_pem, PRIVATE_MODE, overwrite)
    write_file(cert_path, cert_pem, PUBLIC_MODE, overwrite)
    return cert_path, key_path
