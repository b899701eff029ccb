"""The emulator's TLS material: a local test CA and a server certificate it signs.

Theory of operation
-------------------
``ensure_certificates`` keeps four files in the state folder:

* ``ca.pem`` / ``ca.key``: a self-signed CA (EC P-256, 10 years), made once and
  kept, so that a client configured with ``ca.pem`` stays configured;
* ``server.pem`` / ``server.key``: the hub's certificate (EC P-256, one year,
  ``serverAuth``), signed by that CA, with the SANs ``localhost``, the hub
  name and every requested address.

Every call checks what is on disk and makes only what is missing or unusable.
The CA is remade (and the server certificate with it) when a file is missing
or unreadable, the key does not match the certificate, or it is not valid from
now until at least a day ahead.  The server certificate is remade when it is
missing, unreadable, not signed by the current CA, not matching its key, not
valid for at least another day, or when a requested name is not among its
SANs; the new one covers the requested names plus the names the previous one
covered, so two configurations sharing a folder do not keep replacing each
other's certificate.

Each file is written atomically (``write_file_atomically``), keys with mode
0600, certificates 0644; a key is written before its certificate, so a crash in
between leaves a mismatched pair that the next call detects and replaces.

``cryptography`` is imported inside the functions that need it: importing this
module stays cheap.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ._store import write_file_atomically

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

_UTC = datetime.timezone.utc

__all__ = ["CertPaths", "ensure_certificates"]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server.key"

CA_LIFETIME = datetime.timedelta(days=3650)
SERVER_LIFETIME = datetime.timedelta(days=365)
RENEW_MARGIN = datetime.timedelta(days=1)
"""A certificate that expires within this margin is replaced."""
BACKDATE = datetime.timedelta(hours=1)
"""``notBefore`` is this far in the past, for clocks a little behind ours."""

_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class CertPaths:
    """Where the emulator's TLS files are.

    Attributes:
        ca_cert: the CA certificate (PEM) clients should trust.
        server_cert: the hub's certificate (PEM, leaf only).
        server_key: the hub's private key (PEM, PKCS#8, unencrypted, mode 0600).
        ca_pem: the CA certificate as text (for ``server_verification_cert``).
    """

    ca_cert: Path
    server_cert: Path
    server_key: Path
    ca_pem: str


@dataclass(frozen=True, slots=True)
class _Names:
    dns: frozenset[str]
    ips: frozenset[_IP]

    @classmethod
    def empty(cls) -> _Names:
        return cls(frozenset(), frozenset())

    def __or__(self, other: _Names) -> _Names:
        return _Names(self.dns | other.dns, self.ips | other.ips)

    def covers(self, other: _Names) -> bool:
        return other.dns <= self.dns and other.ips <= self.ips


def _requested_names(hub_name: str, addresses: Iterable[str]) -> _Names:
    dns = {"localhost", _dns_name(hub_name, "hub_name")}
    ips: set[_IP] = set()
    for address in addresses:
        text = address.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        try:
            ips.add(ipaddress.ip_address(text))
        except ValueError:
            dns.add(_dns_name(text, f"address {address!r}"))
    return _Names(frozenset(dns), frozenset(ips))


def _dns_name(name: str, what: str) -> str:
    """A DNS name in the form certificates and ``ssl`` compare (ASCII, lower case)."""
    text = name.strip().rstrip(".").lower()
    if (
        not text
        or len(text) > 253
        or not text.isascii()
        or any(c.isspace() or c in "/\\:@" for c in text)
    ):
        raise ValueError(f"{what}: {name!r} is not a host name or an IP address")
    return text


def ensure_certificates(
    state_dir: Path,
    *,
    hub_name: str,
    addresses: Sequence[str],
    now: datetime.datetime | None = None,
) -> CertPaths:
    """Make (or reuse) the CA and the server certificate in ``state_dir``.

    Args:
        state_dir: the folder for ``ca.pem``, ``ca.key``, ``server.pem`` and
            ``server.key`` (created, mode 0700, if missing).
        hub_name: the hub's host name, a DNS SAN.
        addresses: the addresses clients dial: IP addresses become IP SANs,
            anything else a DNS SAN.  ``localhost`` is always covered.
        now: the current time (aware); the clock when ``None``.

    Returns:
        The file paths and the CA as PEM text.

    Raises:
        ValueError: ``hub_name`` or an address is not a usable name.
        OSError: the folder or a file could not be written.
    """
    from cryptography.hazmat.primitives import serialization

    wanted = _requested_names(hub_name, addresses)
    moment = datetime.datetime.now(_UTC) if now is None else now
    if moment.tzinfo is None:
        raise ValueError("now must be an aware datetime")
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert_path, ca_key_path = state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE
    server_cert_path, server_key_path = state_dir / SERVER_CERT_FILE, state_dir / SERVER_KEY_FILE

    ca = _load_pair(ca_cert_path, ca_key_path, moment)
    if ca is not None and not _is_ca(ca[0]):
        ca = None
    renew_server = ca is None
    if ca is None:
        ca = _make_ca(moment)
        _write_pair(ca_cert_path, ca_key_path, *ca)
    ca_cert, ca_key = ca

    server = _load_pair(server_cert_path, server_key_path, moment)
    old_cert = server[0] if server is not None else _load_cert(server_cert_path)
    old_names = _names_of(old_cert) if old_cert is not None else _Names.empty()
    renew_server = (
        renew_server
        or server is None
        or not _issued_by(server[0], ca_cert)
        or not old_names.covers(wanted)
    )
    if renew_server:
        server = _make_server(ca_cert, ca_key, wanted | old_names, moment)
        _write_pair(server_cert_path, server_key_path, *server)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    return CertPaths(ca_cert_path, server_cert_path, server_key_path, ca_pem)


# ------------------------------------------------------------------ loading


def _load_cert(path: Path) -> x509.Certificate | None:
    from cryptography import x509

    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return None


def _load_pair(
    cert_path: Path, key_path: Path, now: datetime.datetime
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None:
    """The certificate and its key if both load, match, and stay valid a day more."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    cert = _load_cert(cert_path)
    if cert is None:
        return None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, spki) != cert.public_key().public_bytes(der, spki):
        return None
    if cert.not_valid_before_utc > now or cert.not_valid_after_utc - now < RENEW_MARGIN:
        return None
    return cert, key


def _is_ca(cert: x509.Certificate) -> bool:
    from cryptography import x509

    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return constraints.ca


def _issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _names_of(cert: x509.Certificate) -> _Names:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return _Names.empty()
    return _Names(
        frozenset(name.lower() for name in san.get_values_for_type(x509.DNSName)),
        frozenset(
            ip for ip in san.get_values_for_type(x509.IPAddress)
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ),
    )


# ------------------------------------------------------------------ making


def _subject(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotdev emulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )


def _make_ca(now: datetime.datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = _subject("iotdev emulator test CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: _Names,
    now: datetime.datetime,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(name) for name in sorted(names.dns)]
    sans += [x509.IPAddress(ip) for ip in sorted(names.ips, key=lambda ip: (ip.version, ip))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_subject("iotdev emulator hub"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _write_pair(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_file_atomically(key_path, key_pem, mode=0o600)
    write_file_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
