"""Real-broker test helpers: a throwaway CA, a mosquitto process, raw MQTT sockets.

Everything here waits on something (a socket, a process, a line of output) with
a deadline; nothing sleeps to paper over a race.  The pytest fixtures that use
these helpers live in ``tests/conftest.py``.

* ``CertAuthority``: a CA made at run time with ``cryptography``, a server
  certificate for ``localhost`` / ``127.0.0.1`` and client certificates on demand.
* ``Mosquitto``: one broker process with a plain TCP, a TLS and a WebSocket-over-
  TLS listener on free loopback ports, a log file, ``start/stop/restart``.
* ``PacketSocket`` / ``WebSocketPacketSocket``: a blocking socket that sends our
  encoded packets and decodes what comes back with ``PacketReader``.
* ``OutputWatcher``: a subprocess (``mosquitto_sub``) whose output lines are read
  as they come, through a pseudo-terminal so the child does not buffer them.
"""

from __future__ import annotations

import collections
import datetime
import errno
import hashlib
import ipaddress
import os
import pty
import pwd
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from iotdev_mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    encode,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "CertAuthority",
    "IssuedCert",
    "Mosquitto",
    "MosquittoClients",
    "OutputWatcher",
    "PacketSocket",
    "WebSocketPacketSocket",
    "find_program",
    "free_ports",
    "in_ci",
    "require_program",
    "unique_name",
]

DEFAULT_TIMEOUT = 5.0
"""Seconds any single wait in these helpers allows before failing the test."""

HOST = "127.0.0.1"

P = TypeVar("P")


# ------------------------------------------------------------------ environment


def in_ci() -> bool:
    """True when ``CI`` is ``true`` or ``1``: missing tools then fail, not skip."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def find_program(
    name: str, extra_dirs: Sequence[str] = ("/usr/sbin", "/usr/local/sbin")
) -> str | None:
    """``name`` on ``PATH``, else in ``extra_dirs`` (Debian puts the broker in /usr/sbin)."""
    found = shutil.which(name)
    if found:
        return found
    for directory in extra_dirs:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def require_program(name: str, hint: str = "apt-get install mosquitto mosquitto-clients") -> str:
    """The path of ``name``; skip the test when it is missing, or fail when in CI."""
    path = find_program(name)
    if path is None:
        message = f"{name} not found on PATH or in /usr/sbin ({hint}, or `make mosquitto`)"
        if in_ci():
            pytest.fail(f"CI={os.environ.get('CI')}: {message}; interop tests must not skip in CI")
        pytest.skip(message)
    return path


def free_ports(count: int, host: str = HOST) -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago (bind to port 0)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(s)
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def unique_name(prefix: str = "iotdev") -> str:
    """A short unique token for client ids and topics, so tests sharing a broker never meet."""
    return f"{prefix}-{os.urandom(6).hex()}"


# ------------------------------------------------------------------ certificates


@dataclass(frozen=True)
class IssuedCert:
    """A certificate and its private key, as files and PEM text."""

    common_name: str
    cert: Path
    key: Path
    cert_pem: str
    key_pem: str
    sha1_thumbprint: str
    """Upper-case hex SHA-1 of the DER certificate (what IoT Hub calls a thumbprint)."""
    sha256_thumbprint: str


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    path.write_text(pem)
    path.chmod(0o600)
    return pem


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "iotdev tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class CertAuthority:
    """A throwaway CA in ``directory`` plus a server certificate for the broker.

    Attributes:
        directory: where every file is written.
        ca_cert, ca_key: the CA certificate and key files.
        ca_cert_pem: the CA certificate as PEM text.
        server_cert, server_key: the broker's certificate (SANs ``localhost`` and
            ``127.0.0.1``, signed by the CA) and key files.
        server_cert_pem, server_key_pem: the same as PEM text.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, name: str = "iotdev test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._now = datetime.datetime.now(datetime.timezone.utc)
        self._key = ec.generate_private_key(ec.SECP256R1())
        public = self._key.public_key()
        self._subject = _name(name)
        self._ca = (
            x509.CertificateBuilder()
            .subject_name(self._subject)
            .issuer_name(self._subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - datetime.timedelta(hours=1))
            .not_valid_after(self._now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_cert = self.directory / "ca.crt"
        self.ca_key = self.directory / "ca.key"
        self.ca_cert_pem = self._ca.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self.ca_cert.write_text(self.ca_cert_pem)
        _write_key(self.ca_key, self._key)

        server = self._issue(
            "localhost",
            "server",
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        self.server_cert = server.cert
        self.server_key = server.key
        self.server_cert_pem = server.cert_pem
        self.server_key_pem = server.key_pem

    def issue_server_cert(
        self,
        common_name: str = "localhost",
        *,
        dns_names: tuple[str, ...] = ("localhost",),
        ips: tuple[str, ...] = ("127.0.0.1",),
        file_stem: str | None = None,
        expired: bool = False,
    ) -> IssuedCert:
        """Another server certificate from this CA (``expired=True``: valid for
        one hour, two days ago)."""
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        stem = file_stem or f"server-{re.sub(r'[^A-Za-z0-9_.-]', '_', common_name)}" + (
            "-expired" if expired else "")
        window: dict[str, datetime.datetime] = {}
        if expired:
            window = {"not_before": self._now - datetime.timedelta(days=2),
                      "not_after": self._now - datetime.timedelta(days=2) +
                      datetime.timedelta(hours=1)}
        return self._issue(common_name, stem, sans=sans,
                           usage=ExtendedKeyUsageOID.SERVER_AUTH, **window)  # type: ignore[arg-type]

    def issue_client_cert(
        self, common_name: str, *, file_stem: str | None = None, self_signed: bool = False
    ) -> IssuedCert:
        """A client certificate (``clientAuth``) for ``common_name``.

        Signed by this CA, or, with ``self_signed=True``, by its own key (the
        IoT Hub "self-signed X.509" case).  Files go to ``<file_stem>.crt/.key``.
        """
        stem = file_stem or f"client-{re.sub(r'[^A-Za-z0-9_.-]', '_', common_name)}"
        return self._issue(
            common_name, stem, sans=None, usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            self_signed=self_signed,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """A client-side context that trusts only this CA and checks host names."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def _issue(
        self,
        common_name: str,
        stem: str,
        *,
        sans: list[x509.GeneralName] | None,
        usage: x509.ObjectIdentifier,
        self_signed: bool = False,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCert:
        key = ec.generate_private_key(ec.SECP256R1())
        public = key.public_key()
        subject = _name(common_name)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self._subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or self._now - datetime.timedelta(hours=1))
            .not_valid_after(not_after or self._now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        )
        if not self_signed:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
                critical=False,
            )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(key if self_signed else self._key, hashes.SHA256())
        cert_path = self.directory / f"{stem}.crt"
        key_path = self.directory / f"{stem}.key"
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        cert_path.write_text(cert_pem)
        key_pem = _write_key(key_path, key)
        der = cert.public_bytes(serialization.Encoding.DER)
        return IssuedCert(
            common_name=common_name,
            cert=cert_path,
            key=key_path,
            cert_pem=cert_pem,
            key_pem=key_pem,
            sha1_thumbprint=hashlib.sha1(der).hexdigest().upper(),
            sha256_thumbprint=hashlib.sha256(der).hexdigest().upper(),
        )


# ------------------------------------------------------------------ the broker


class Mosquitto:
    """One mosquitto process on loopback, configured from a throwaway file.

    Listeners: ``tcp_port`` (MQTT), ``tls_port`` (MQTT over TLS) and ``ws_port``
    (MQTT over WebSocket over TLS), the TLS ones with the CA's server
    certificate; anonymous clients allowed, persistence off.  The ports are
    chosen once and kept by ``restart()``.

    Attributes:
        host, tcp_port, tls_port, ws_port: where to connect.
        ca_cert, server_cert, server_key: the certificate files (Paths).
        directory: the broker's scratch directory.
        config_path: the generated ``mosquitto.conf``.
        log_path: the broker's own log (``log_type all``).
        output_path: its stdout/stderr (start-up errors land here).
        process: the running ``subprocess.Popen``, or None when stopped.
    """

    def __init__(
        self,
        executable: str,
        directory: Path,
        ca: CertAuthority,
        *,
        host: str = HOST,
        extra_config: str = "",
    ) -> None:
        """``extra_config`` is copied verbatim before the listener sections
        (global options, e.g. ``max_inflight_messages 1``)."""
        self.executable = executable
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.ca = ca
        self.ca_cert = ca.ca_cert
        self.server_cert = ca.server_cert
        self.server_key = ca.server_key
        self.extra_config = extra_config
        self.config_path = self.directory / "mosquitto.conf"
        self.log_path = self.directory / "mosquitto.log"
        self.output_path = self.directory / "mosquitto.out"
        self.tcp_port, self.tls_port, self.ws_port = free_ports(3, host)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._version: tuple[int, ...] | None = None

    # -- info

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def version(self) -> tuple[int, ...]:
        """The broker's version from ``mosquitto -h``, e.g. ``(2, 0, 11)``."""
        if self._version is None:
            done = subprocess.run(
                [self.executable, "-h"], capture_output=True, timeout=DEFAULT_TIMEOUT
            )
            text = (done.stdout + done.stderr).decode(errors="replace")
            found = re.search(r"mosquitto version (\d+(?:\.\d+)*)", text)
            if found is None:
                raise RuntimeError(f"no version in `mosquitto -h` output: {text[:200]!r}")
            self._version = tuple(int(n) for n in found.group(1).split("."))
        return self._version

    @property
    def ports(self) -> dict[str, int]:
        return {"tcp": self.tcp_port, "tls": self.tls_port, "ws": self.ws_port}

    def log_text(self) -> str:
        """The broker log followed by its stdout/stderr (what a failing test prints)."""
        parts = []
        for path in (self.log_path, self.output_path):
            try:
                parts.append(f"--- {path}\n{path.read_text(errors='replace')}")
            except FileNotFoundError:
                parts.append(f"--- {path} (missing)")
        return "\n".join(parts)

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def ssl_context(self) -> ssl.SSLContext:
        return self.ca.ssl_context()

    def __repr__(self) -> str:
        return (
            f"<Mosquitto pid={self.pid} {self.host} tcp={self.tcp_port} tls={self.tls_port} "
            f"ws={self.ws_port} log={self.log_path}>"
        )

    # -- life cycle

    def _write_config(self) -> None:
        # When run as root, mosquitto drops to user "mosquitto", which could not
        # read our keys nor write the log in a 0700 temp dir: stay who we are.
        user = pwd.getpwuid(os.getuid()).pw_name
        tls = f"cafile {self.ca_cert}\ncertfile {self.server_cert}\nkeyfile {self.server_key}\n"
        self.config_path.write_text(
            f"# generated by tests/_broker.py\n"
            f"user {user}\n"
            f"per_listener_settings false\n"
            f"allow_anonymous true\n"
            f"persistence false\n"
            f"log_dest file {self.log_path}\n"
            f"log_type all\n"
            f"log_timestamp true\n"
            f"log_timestamp_format %H:%M:%S\n"
            f"connection_messages true\n"
            f"{self.extra_config}\n"
            f"listener {self.tcp_port} {self.host}\n"
            f"protocol mqtt\n"
            f"\n"
            f"listener {self.tls_port} {self.host}\n"
            f"protocol mqtt\n"
            f"{tls}"
            f"\n"
            f"listener {self.ws_port} {self.host}\n"
            f"protocol websockets\n"
            # Without it, 2.0.11's libwebsockets listener ignores the bind address
            # and listens on every interface (IPv6 and IPv4).
            f"socket_domain ipv4\n"
            f"{tls}"
        )

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and return once every listener accepts connections.

        On the very first start a port taken by someone else in the meantime
        is replaced by a fresh one (up to three tries); ``restart()`` keeps them.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        attempts = 3 if self.starts == 0 else 1
        for attempt in range(attempts):
            self._write_config()
            with self.output_path.open("ab") as out:
                self.process = subprocess.Popen(
                    [self.executable, "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_listening(timeout)
            except RuntimeError:
                self.stop()
                text = self.log_text()
                if attempt + 1 < attempts and "in use" in text:
                    self.tcp_port, self.tls_port, self.ws_port = free_ports(3, self.host)
                    continue
                raise
            self.starts += 1
            return

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        for name, port in self.ports.items():
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"mosquitto exited with {self.process.returncode} before its {name} "
                        f"listener on {self.host}:{port} was up\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RuntimeError(
                        f"mosquitto's {name} listener on {self.host}:{port} did not accept "
                        f"connections within {timeout}s\n{self.log_tail()}"
                    )
                try:
                    probe = socket.create_connection((self.host, port), timeout=min(remaining, 1))
                except OSError:
                    # Poll interval: wait on the process itself, so an early exit
                    # is noticed at once instead of after a sleep.
                    try:
                        self.process.wait(timeout=min(0.02, max(remaining, 0.001)))
                    except subprocess.TimeoutExpired:
                        pass
                    continue
                probe.close()
                break

    def stop(self, timeout: float = 5.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL after ``timeout``) and reap it."""
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)

    def restart(self, timeout: float = 10.0) -> None:
        """Stop and start again on the same ports (sessions are lost: persistence is off)."""
        self.stop()
        self.start(timeout)

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- convenience

    def open(self, listener: str = "tcp", *, timeout: float = DEFAULT_TIMEOUT) -> PacketSocket:
        """A ``PacketSocket`` on ``listener``: ``"tcp"``, ``"tls"`` or ``"ws"`` (WSS)."""
        if listener == "tcp":
            return PacketSocket.open(self.host, self.tcp_port, timeout=timeout)
        if listener == "tls":
            return PacketSocket.open(
                self.host, self.tls_port, timeout=timeout, ssl_context=self.ssl_context(),
                server_hostname="localhost",
            )
        if listener == "ws":
            return WebSocketPacketSocket.open(
                self.host, self.ws_port, timeout=timeout, ssl_context=self.ssl_context(),
                server_hostname="localhost",
            )
        raise ValueError(f"unknown listener {listener!r}")


# ------------------------------------------------------------------ raw MQTT sockets


class PacketSocket:
    """A blocking socket speaking MQTT through our codec, for codec-level tests.

    ``send()`` takes packets (encoded with ``encode``) or raw bytes.  Reads
    decode with ``PacketReader(role)``; every wait has a deadline and fails with
    an ``AssertionError`` that lists what did arrive.  Decoded packets not yet
    consumed stay queued; ``received`` keeps them all, in order.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        role: Literal["client", "server"] = "client",
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.sock = sock
        self.timeout = timeout
        self.reader = PacketReader(role)
        self.pending: collections.deque[Packet] = collections.deque()
        self.received: list[Packet] = []
        self.closed_by_peer = False

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> PacketSocket:
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
            return cls._after_connect(sock, host, timeout)
        except BaseException:
            sock.close()
            raise

    @classmethod
    def _after_connect(cls, sock: socket.socket, host: str, timeout: float) -> PacketSocket:
        return cls(sock, timeout=timeout)

    # -- transport (WebSocketPacketSocket overrides these two)

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_bytes(self, timeout: float) -> bytes:
        """Up to 64 KiB; ``b""`` at end of stream; ``socket.timeout`` after ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            return b""

    # -- MQTT

    def send(self, *items: Packet | bytes) -> None:
        self.send_bytes(b"".join(i if isinstance(i, bytes) else encode(i) for i in items))

    def _describe(self) -> str:
        return (
            f"received so far: {self.received!r}; not yet consumed: {list(self.pending)!r}; "
            f"{self.reader.buffered} bytes of an incomplete packet buffered"
        )

    def _fill(self, deadline: float, waiting_for: str) -> None:
        """Read until at least one more packet is queued, or fail."""
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {waiting_for}; {self._describe()}")
            if self.closed_by_peer:
                raise AssertionError(
                    f"connection closed by the peer while waiting for {waiting_for}; "
                    f"{self._describe()}"
                )
            try:
                data = self._recv_bytes(remaining)
            except TimeoutError:
                continue
            if not data:
                self.closed_by_peer = True
                continue
            packets = self.reader.feed(data)
            self.received.extend(packets)
            self.pending.extend(packets)

    def next_packet(self, timeout: float | None = None) -> Packet:
        """The next decoded packet, whatever it is."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(deadline, "any packet")
        return self.pending.popleft()

    def expect(self, kind: type[P], timeout: float | None = None) -> P:
        """The next packet, which must be a ``kind``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._fill(deadline, kind.__name__)
        packet = self.pending.popleft()
        if not isinstance(packet, kind):
            raise AssertionError(
                f"expected {kind.__name__}, got {packet!r}; {self._describe()}"
            )
        return packet

    def read_until(
        self, condition: Callable[[Packet], bool], timeout: float | None = None,
        what: str = "a matching packet",
    ) -> list[Packet]:
        """Packets up to and including the first one for which ``condition`` is true."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out: list[Packet] = []
        while True:
            self._fill(deadline, what)
            packet = self.pending.popleft()
            out.append(packet)
            if condition(packet):
                return out

    def expect_closed(self, timeout: float | None = None) -> bytes:
        """Wait until the peer closes; return the bytes that came first (undecoded)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        before = bytearray()
        while not self.closed_by_peer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"the peer did not close the connection within its deadline; bytes "
                    f"after the last packet: {bytes(before).hex(' ')!r}; {self._describe()}"
                )
            try:
                data = self._recv_bytes(remaining)
            except TimeoutError:
                continue
            if not data:
                self.closed_by_peer = True
            before += data
        return bytes(before)

    def connect_mqtt(self, client_id: str, **fields: Any) -> ConnAck:
        """Send CONNECT; return the CONNACK, which must accept the connection."""
        self.send(Connect(client_id, **fields))
        ack = self.expect(ConnAck)
        assert ack.return_code == 0, f"CONNACK refused the connection: {ack!r}"
        return ack

    def ping(self, timeout: float | None = None) -> None:
        """PINGREQ, then the next packet must be PINGRESP: a round trip that proves
        nothing else was queued in front of it."""
        self.send(PingReq())
        self.expect(PingResp, timeout)

    def disconnect(self) -> None:
        """Send DISCONNECT and wait for the broker to close the socket."""
        self.send(Disconnect())
        self.expect_closed()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebSocketPacketSocket(PacketSocket):
    """``PacketSocket`` over a WebSocket (subprotocol ``mqtt``), framed with wsproto."""

    path = "/mqtt"

    def __init__(self, sock: socket.socket, ws: Any, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(sock, timeout=timeout)
        self.ws = ws
        self._messages: collections.deque[bytes] = collections.deque()

    @classmethod
    def _after_connect(cls, sock: socket.socket, host: str, timeout: float) -> PacketSocket:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, RejectConnection, Request

        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=host, target=cls.path, subprotocols=["mqtt"])))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no WebSocket handshake answer before the deadline")
            sock.settimeout(remaining)
            data = sock.recv(65536)
            if not data:
                raise AssertionError("connection closed during the WebSocket handshake")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    assert event.subprotocol == "mqtt", f"subprotocol {event.subprotocol!r}"
                    self = cls(sock, ws, timeout=timeout)
                    self._take(ws.events())
                    return self
                if isinstance(event, RejectConnection):
                    raise AssertionError(f"WebSocket handshake rejected: {event!r}")

    def _take(self, events: Any) -> None:
        from wsproto.events import BytesMessage, CloseConnection, Ping

        for event in events:
            if isinstance(event, BytesMessage):
                self._messages.append(bytes(event.data))
            elif isinstance(event, Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._messages.append(b"")
                try:
                    self.sock.sendall(self.ws.send(event.response()))
                except Exception:  # the peer may already be gone
                    pass

    def send_bytes(self, data: bytes) -> None:
        from wsproto.events import Message

        self.sock.sendall(self.ws.send(Message(data=data)))

    def _recv_bytes(self, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while not self._messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            data = super()._recv_bytes(remaining)
            if not data:
                return b""
            self.ws.receive_data(data)
            self._take(self.ws.events())
        return self._messages.popleft()


# ------------------------------------------------------------------ subprocess output


class OutputWatcher:
    """Run a command with its stdout and stderr on a pseudo-terminal, so that
    the child line-buffers (``mosquitto_sub -d`` would otherwise hold its output
    until exit); a thread collects the lines for ``wait_for`` with deadlines."""

    def __init__(self, args: Sequence[str]) -> None:
        self.args = list(args)
        master, slave = pty.openpty()
        try:
            self.process = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, close_fds=True
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, name=f"watch {args[0]}", daemon=True)
        self._thread.start()
        self._seen = 0

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError as exc:  # EIO: every writer closed the terminal
                if exc.errno not in (errno.EIO, errno.EBADF):
                    raise
                chunk = b""
            if not chunk:
                break
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                self._queue.put(raw.rstrip(b"\r").decode("utf-8", "replace"))
        if pending:
            self._queue.put(pending.rstrip(b"\r").decode("utf-8", "replace"))
        self._queue.put(None)

    def _describe(self) -> str:
        code = self.process.poll()
        state = "still running" if code is None else f"exited with {code}"
        shown = "\n".join(f"    {line}" for line in self.lines) or "    (nothing)"
        return f"{' '.join(self.args)} ({state}); its output so far:\n{shown}"

    def wait_for(self, match: str | re.Pattern[str] | Callable[[str], bool],
                 timeout: float = DEFAULT_TIMEOUT) -> str:
        """The first line after those already matched that contains ``match``
        (a substring), matches it (a regex, ``search``) or satisfies it."""
        test: Callable[[str], bool]
        if isinstance(match, str):
            text = match
            test = lambda line: text in line  # noqa: E731
        elif isinstance(match, re.Pattern):
            test = lambda line: match.search(line) is not None  # noqa: E731
        else:
            test = match
        deadline = time.monotonic() + timeout
        while True:
            while self._seen < len(self.lines):
                line = self.lines[self._seen]
                self._seen += 1
                if test(line):
                    return line
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {match!r} from "
                                     f"{self._describe()}")
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if item is None:
                self._queue.put(None)  # stay at end of output for later calls
                if self._seen >= len(self.lines):
                    raise AssertionError(f"output ended before {match!r} appeared: "
                                         f"{self._describe()}")
                continue
            self.lines.append(item)

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """The exit code; fails if the process is still running after ``timeout``."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s: {self._describe()}") from None
        self._drain(timeout)
        return code

    def _drain(self, timeout: float) -> None:
        self._thread.join(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is None:
                self._queue.put(None)
                return
            self.lines.append(item)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=3)
        self._thread.join(3)
        try:
            os.close(self._master)
        except OSError:
            pass

    def __enter__(self) -> OutputWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class MosquittoClients:
    """Paths of ``mosquitto_pub`` and ``mosquitto_sub`` and ways to run them."""

    pub: str
    sub: str

    def publish(
        self,
        broker: Mosquitto,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> None:
        """Publish one message on the plain TCP listener (payload via stdin,
        so it may be binary); returns when mosquitto_pub has finished its flow."""
        args = [self.pub, "-h", broker.host, "-p", str(broker.tcp_port), "-t", topic,
                "-q", str(qos), "-i", unique_name("pub"), "-s", *extra]
        if retain:
            args.append("-r")
        try:
            done = subprocess.run(args, input=payload, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"{' '.join(args)} did not finish within {timeout}s") from exc
        assert done.returncode == 0, (
            f"{' '.join(args)} exited with {done.returncode}: "
            f"{(done.stdout + done.stderr).decode(errors='replace')}"
        )

    def subscribe(
        self,
        broker: Mosquitto,
        topic: str,
        *,
        qos: int = 0,
        count: int = 1,
        fmt: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        extra: Sequence[str] = (),
    ) -> OutputWatcher:
        """Start ``mosquitto_sub -d -C count`` (``-v``, or ``-F fmt``) on the TCP
        listener and return once its SUBACK has arrived.  Close it when done."""
        args = [self.sub, "-h", broker.host, "-p", str(broker.tcp_port), "-t", topic,
                "-q", str(qos), "-C", str(count), "-d", "-i", unique_name("sub"),
                "-W", str(max(1, int(timeout * 4))), *extra]
        args += ["-F", fmt] if fmt is not None else ["-v"]
        watcher = OutputWatcher(args)
        try:
            watcher.wait_for("received SUBACK", timeout)
        except BaseException:
            watcher.close()
            raise
        return watcher
