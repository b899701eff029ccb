"""X.509 device identities for the emulator: certificates issued by the
emulator's CA, recognised by their thumbprint.

IoT Hub also accepts self-signed device certificates; the emulator cannot,
because Python's ``ssl`` offers no verification callback to let an unknown
self-signed client certificate through.  Devices therefore get a certificate
from the emulator's own CA (``Hub.add_x509_device``), and the hub compares its
SHA-1 or SHA-256 thumbprint with the registry, as the service does.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path

_UTC = datetime.timezone.utc

__all__ = ["DeviceCertificate", "issue_device_certificate", "thumbprints"]


@dataclass(frozen=True)
class DeviceCertificate:
    """A device certificate and key written to the state folder."""

    cert_file: Path
    key_file: Path
    sha1_thumbprint: str
    sha256_thumbprint: str


def thumbprints(der: bytes) -> tuple[str, str]:
    """Upper-case hex SHA-1 and SHA-256 thumbprints of a DER certificate."""
    return hashlib.sha1(der).hexdigest().upper(), hashlib.sha256(der).hexdigest().upper()


def issue_device_certificate(state_dir: Path, device_id: str, *, days: int = 365,
                             module_id: str | None = None) -> DeviceCertificate:
    """Issue a client certificate (CN = device id, or ``{device}/{module}``)
    signed by the emulator's CA (``ca.pem`` / ``ca.key`` in ``state_dir``);
    files go to ``state_dir/devices/{device_id}.pem`` and ``.key`` (a
    module's to ``state_dir/modules/{device_id}/{module_id}.pem``)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from ._store import write_file_atomically

    ca_cert = x509.load_pem_x509_certificate((state_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((state_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(_UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(
            NameOID.COMMON_NAME, device_id if module_id is None else f"{device_id}/{module_id}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    def safe(name: str) -> str:
        return "".join(c if c.isalnum() or c in "-._" else "_" for c in name)

    folder = state_dir / "devices" if module_id is None else \
        state_dir / "modules" / safe(device_id)
    folder.mkdir(parents=True, exist_ok=True)
    safe_name = safe(device_id if module_id is None else module_id)
    cert_file = folder / f"{safe_name}.pem"
    key_file = folder / f"{safe_name}.key"
    write_file_atomically(cert_file, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    write_file_atomically(key_file, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    sha1, sha256 = thumbprints(cert.public_bytes(serialization.Encoding.DER))
    return DeviceCertificate(cert_file, key_file, sha1, sha256)
