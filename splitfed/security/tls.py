"""Self-signed X.509 certificates for the gRPC TLS layer, pinned by the peer.

The client passes the server's certificate as grpc's `root_certificates`, so it trusts that one
certificate only; `certificate_fingerprint` is what operators compare out of band.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from splitfed.security.errors import KeyFileError
from splitfed.security.files import PRIVATE_MODE, PUBLIC_MODE, refuse_existing, write_file

CERT_FILE = "tls-cert.pem"
KEY_FILE = "tls-key.pem"


def make_self_signed(common_name: str, hostnames: list[str], ips: list[str],
                     days: int = 365) -> tuple[bytes, bytes]:
    """A self-signed EC P-256 certificate valid for `hostnames` and `ips`; returns (cert PEM, key PEM).

    It is its own CA (basicConstraints CA, path length 0) so TLS libraries accept it as a pinned root.
    """
    if not hostnames and not ips:
        raise ValueError("give at least one hostname or IP address for the certificate")
    if days < 1:
        raise ValueError("days must be at least 1")
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    try:
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    except ValueError as error:
        raise ValueError(f"invalid IP address: {error}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert_pem, key_pem


def save_tls(cert_pem: bytes, key_pem: bytes, directory: str | Path,
             overwrite: bool = False) -> tuple[Path, Path]:
    """Write `tls-cert.pem` and `tls-key.pem` (mode 0600) to `directory`; return their paths."""
    directory = Path(directory)
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    refuse_existing([cert_path, key_path], overwrite)
    write_file(key_path, key_pem, PRIVATE_MODE, overwrite)
    write_file(cert_path, cert_pem, PUBLIC_MODE, overwrite)
    return cert_path, key_path


def _load(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise KeyFileError("not a PEM X.509 certificate") from None


def certificate_fingerprint(cert_pem: bytes) -> str:
    """Hex SHA-256 of the certificate's DER encoding (what `openssl x509 -fingerprint -sha256` shows)."""
    return hashlib.sha256(_load(cert_pem).public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """The (DNS names, IP addresses) a certificate is valid for, from its SubjectAlternativeName."""
    try:
        names = _load(cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips = [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    return names.get_values_for_type(x509.DNSName), ips
