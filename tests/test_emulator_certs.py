"""The emulator's CA and server certificate: real TLS handshakes, reuse, renewal.

Handshakes run on loopback: a server thread wraps one accepted socket with the
generated certificate; the client trusts only ``ca.pem`` and checks the name.
Every wait has a timeout; certificate ages are set with ``now``, not the clock.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from iotdev.emulator._certs import CertPaths, ensure_certificates
from tests._ci import skip_or_fail

HUB = "test-hub.azure-devices.net"
TIMEOUT = 5.0
T0 = datetime.datetime(2030, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
FILES = ("ca.pem", "ca.key", "server.pem", "server.key")


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Each file's bytes and modification time (a rewrite changes the latter)."""
    return {
        name: ((folder / name).read_bytes(), (folder / name).stat().st_mtime_ns)
        for name in FILES
    }


def handshake(paths: CertPaths, server_hostname: str, *, host: str = "127.0.0.1") -> str:
    """One TLS connection to a server using ``paths``; returns what it sent.

    Raises:
        ssl.SSLCertVerificationError: the client did not accept the certificate.
    """
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(paths.server_cert, paths.server_key)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.settimeout(TIMEOUT)
    listener.bind((host, 0))
    listener.listen(1)
    server_errors: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(TIMEOUT)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"hello from the hub")
        except (OSError, ssl.SSLError) as exc:  # the client refused us
            server_errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client_ctx = ssl.create_default_context(cafile=str(paths.ca_cert))
        with socket.create_connection(listener.getsockname()[:2], timeout=TIMEOUT) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                return tls.recv(100).decode()
    finally:
        thread.join(TIMEOUT)
        listener.close()
        assert not thread.is_alive()


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def sans(path: Path) -> tuple[set[str], set[str]]:
    ext = load(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return (set(ext.get_values_for_type(x509.DNSName)),
            {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)})


@pytest.fixture
def certs(tmp_path: Path) -> CertPaths:
    return ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1", "::1"])


# ------------------------------------------------------------------ handshakes


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", HUB, HUB.upper()])
def test_handshake_verifies_for_every_covered_name(certs: CertPaths, server_hostname: str) -> None:
    assert handshake(certs, server_hostname) == "hello from the hub"


def test_handshake_over_ipv6(certs: CertPaths) -> None:
    try:
        socket.socket(socket.AF_INET6).close()
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        skip_or_fail("no IPv6 loopback here")
    assert handshake(certs, "::1", host="::1") == "hello from the hub"


@pytest.mark.parametrize("server_hostname", ["other.example", "127.0.0.2", "hub"])
def test_handshake_fails_for_a_name_not_covered(certs: CertPaths, server_hostname: str) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(certs, server_hostname)


def test_handshake_fails_against_another_ca(tmp_path: Path, certs: CertPaths) -> None:
    other = ensure_certificates(tmp_path / "other", hub_name=HUB, addresses=["127.0.0.1"])
    mixed = CertPaths(other.ca_cert, certs.server_cert, certs.server_key, other.ca_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
        handshake(mixed, "localhost")


# ------------------------------------------------------------------ contents


def test_certificate_contents(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1", "[::1]",
                                                                   "emu.lan"], now=T0)
    assert paths.ca_pem == (tmp_path / "ca.pem").read_text()
    assert (paths.ca_cert, paths.server_cert, paths.server_key) == (
        tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    ca, server = load(paths.ca_cert), load(paths.server_cert)

    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    server.verify_directly_issued_by(ca)
    assert server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == \
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    for cert in (ca, server):
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert server.not_valid_after_utc - T0 == datetime.timedelta(days=365)
    assert server.not_valid_before_utc <= T0 <= ca.not_valid_before_utc + \
        datetime.timedelta(hours=2)
    assert sans(paths.server_cert) == ({"localhost", HUB, "emu.lan"}, {"127.0.0.1", "::1"})


def test_keys_are_private_and_certificates_readable(certs: CertPaths, tmp_path: Path) -> None:
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in FILES}
    assert modes == {"ca.pem": 0o644, "ca.key": 0o600, "server.pem": 0o644,
                     "server.key": 0o600}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)  # no temp files left


def test_module_imports_without_cryptography() -> None:
    code = ("import sys; import iotdev.emulator._certs, iotdev.emulator._store; "
            "print(sorted(m for m in sys.modules if m.startswith('cryptography')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, timeout=60)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("hub_name", ["", "a b", "hub/x", "hüb.local"])
def test_bad_hub_name_is_refused(tmp_path: Path, hub_name: str) -> None:
    with pytest.raises(ValueError, match="hub_name"):
        ensure_certificates(tmp_path, hub_name=hub_name, addresses=[])
    assert not (tmp_path / "ca.pem").exists()


def test_naive_now_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aware"):
        ensure_certificates(tmp_path, hub_name=HUB, addresses=[],
                            now=datetime.datetime(2030, 1, 1))


# ------------------------------------------------------------------ reuse and renewal


def test_second_call_reuses_every_file(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    before = snapshot(tmp_path)
    second = ensure_certificates(tmp_path, hub_name=HUB.upper(), addresses=["127.0.0.1"])
    assert second == first
    assert snapshot(tmp_path) == before
    # A subset of the covered names is also served by the same certificate.
    ensure_certificates(tmp_path, hub_name=HUB, addresses=[])
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("hub_name", "addresses", "new_name"),
    [
        (HUB, ["127.0.0.1", "127.0.0.2"], "127.0.0.2"),
        ("second-hub.local", ["127.0.0.1"], "second-hub.local"),
        (HUB, ["127.0.0.1", "emu.lan"], "emu.lan"),
    ],
)
def test_new_name_regenerates_the_server_certificate_with_the_same_ca(
    tmp_path: Path, hub_name: str, addresses: list[str], new_name: str
) -> None:
    first = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    before = snapshot(tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(first, new_name)
    second = ensure_certificates(tmp_path, hub_name=hub_name, addresses=addresses)
    after = snapshot(tmp_path)
    assert second.ca_pem == first.ca_pem
    assert after["ca.pem"] == before["ca.pem"] and after["ca.key"] == before["ca.key"]
    assert after["server.pem"][0] != before["server.pem"][0]
    assert after["server.key"][0] != before["server.key"][0]
    # The new certificate serves the new name and still every old one.
    for name in (new_name, "localhost", "127.0.0.1", HUB):
        assert handshake(second, name) == "hello from the hub"


@pytest.mark.parametrize(
    ("age", "renewed"),
    [
        (datetime.timedelta(days=363), False),
        (datetime.timedelta(days=364), False),  # exactly one day left
        (datetime.timedelta(days=364, seconds=1), True),
        (datetime.timedelta(days=400), True),  # already expired
    ],
)
def test_server_certificate_is_renewed_a_day_before_it_expires(
    tmp_path: Path, age: datetime.timedelta, renewed: bool
) -> None:
    ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"], now=T0)
    before = snapshot(tmp_path)
    later = T0 + age
    ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"], now=later)
    after = snapshot(tmp_path)
    assert after["ca.pem"] == before["ca.pem"]
    assert (after["server.pem"] != before["server.pem"]) is renewed
    if renewed:
        assert load(tmp_path / "server.pem").not_valid_after_utc == \
            later + datetime.timedelta(days=365)


def test_ca_is_renewed_a_day_before_it_expires(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"], now=T0)
    ca_expiry = load(tmp_path / "ca.pem").not_valid_after_utc
    assert ca_expiry - T0 == datetime.timedelta(days=3650)
    before = snapshot(tmp_path)
    ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"],
                        now=ca_expiry - datetime.timedelta(hours=23))
    after = snapshot(tmp_path)
    assert after["ca.pem"][0] != before["ca.pem"][0]
    load(tmp_path / "server.pem").verify_directly_issued_by(load(tmp_path / "ca.pem"))


def test_unusable_files_are_replaced(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    # A server key that does not match its certificate (a crash between the two writes).
    other_key = ensure_certificates(tmp_path / "x", hub_name=HUB, addresses=[]).server_key
    (tmp_path / "server.key").write_bytes(other_key.read_bytes())
    second = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    assert second.ca_pem == first.ca_pem
    assert handshake(second, "127.0.0.1") == "hello from the hub"
    # A damaged CA key: a new CA, and a server certificate signed by it.
    (tmp_path / "ca.key").write_text("garbage")
    third = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    assert third.ca_pem != first.ca_pem
    load(third.server_cert).verify_directly_issued_by(load(third.ca_cert))
    assert handshake(third, HUB) == "hello from the hub"
    # A missing server certificate.
    (tmp_path / "server.pem").unlink()
    fourth = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    assert fourth.ca_pem == third.ca_pem
    assert handshake(fourth, "localhost") == "hello from the hub"


def test_ip_sans_are_real_ip_entries(certs: CertPaths) -> None:
    ext = load(certs.server_cert).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert set(ext.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    assert "127.0.0.1" not in ext.get_values_for_type(x509.DNSName)


def test_a_replaced_ca_gets_a_server_certificate_it_signed(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    own = ensure_certificates(tmp_path / "own-ca", hub_name=HUB, addresses=[])
    for name in ("ca.pem", "ca.key"):  # the user brings their own CA
        (tmp_path / name).write_bytes((tmp_path / "own-ca" / name).read_bytes())
    paths = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    assert paths.ca_pem == own.ca_pem
    assert handshake(paths, "127.0.0.1") == "hello from the hub"


def test_a_non_ca_certificate_in_place_of_the_ca_is_replaced(tmp_path: Path) -> None:
    first = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    # A leaf certificate with its key where the CA should be: valid pair, but no CA.
    (tmp_path / "ca.pem").write_bytes(first.server_cert.read_bytes())
    (tmp_path / "ca.key").write_bytes(first.server_key.read_bytes())
    paths = ensure_certificates(tmp_path, hub_name=HUB, addresses=["127.0.0.1"])
    ca = load(paths.ca_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert handshake(paths, "localhost") == "hello from the hub"
