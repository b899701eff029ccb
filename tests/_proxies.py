"""Real proxies for the proxy tests: tinyproxy (HTTP CONNECT) and danted
(SOCKS4/SOCKS5), each a process of the test's own on a free loopback port with
a throwaway config, stopped by its process group id; plus a small SOCKS4a relay
written here, because danted does not implement SOCKS4a.

* ``TinyProxy(executable, directory, basic_auth=None, connect_ports=())``:
  ``basic_auth=(user, password)`` makes it answer 407 without them;
  ``connect_ports`` restricts CONNECT to those ports (403 for others).
* ``Danted(executable, directory, users=None)``: without ``users`` it allows
  SOCKS4 and SOCKS5 without authentication; with ``{name: password}`` it
  requires RFC 1929 username/password.  danted checks those against the system
  accounts (``getpwnam``/``getspnam``), so the process runs in a private mount
  namespace (``unshare --mount``) where a throwaway ``/etc/passwd`` and
  ``/etc/shadow`` holding only root, nobody and the test users are bind-mounted
  over the real ones: the host's account files are never touched.  That needs
  root (``usable_with_users()`` says why not, if not).
* ``Socks4aRelay``: a thread that serves SOCKS4/4a CONNECT and relays bytes.

Every wait has a deadline; readiness is a TCP connect that succeeds, polled
while waiting on the process itself (an early exit is seen at once).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests._broker import DEFAULT_TIMEOUT, find_program, free_ports, in_ci

__all__ = ["Danted", "ProxyProcess", "Socks4aRelay", "TinyProxy", "require_proxy_program"]

HOST = "127.0.0.1"


def require_proxy_program(name: str, package: str) -> str:
    """The path of ``name``; skip when it is missing, or fail when in CI."""
    path = find_program(name, ("/usr/sbin", "/usr/local/sbin", "/usr/bin"))
    if path is None:
        message = (f"{name} not found on PATH or in /usr/sbin (apt-get install {package}, "
                   f"or `make proxies` as root)")
        if in_ci():
            pytest.fail(f"CI={os.environ.get('CI')}: {message}; proxy tests must not skip in CI")
        pytest.skip(message)
    return path


class ProxyProcess:
    """One proxy process on ``host:port`` with its output in ``log_path``."""

    name = "proxy"

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        (self.port,) = free_ports(1, self.host)
        self.config_path = self.directory / f"{self.name}.conf"
        self.log_path = self.directory / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port``, as the layers name the proxy in their errors."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"({self.log_path} missing)"

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def start(self, timeout: float = 10.0) -> None:
        """Start the proxy; return once its port accepts connections.  A port
        taken by someone else meanwhile is replaced (up to three tries)."""
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        for attempt in range(3):
            self.write_config()
            with self.log_path.open("ab") as out:
                self.process = subprocess.Popen(
                    self.command(), stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            try:
                self._wait_listening(timeout)
            except RuntimeError:
                self.stop()
                text = self.log_text().lower()
                if attempt < 2 and ("in use" in text or "could not bind" in text):
                    (self.port,) = free_ports(1, self.host)
                    continue
                raise
            return

    def _wait_listening(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} before "
                                   f"listening on {self.address}\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(f"{self.name} did not accept connections on {self.address} "
                                   f"within {timeout}s\n{self.log_tail()}")
            try:
                probe = socket.create_connection((self.host, self.port),
                                                 timeout=min(remaining, 1))
            except OSError:
                try:  # poll interval: wait on the process, so an early exit shows at once
                    self.process.wait(timeout=min(0.02, max(remaining, 0.001)))
                except subprocess.TimeoutExpired:
                    pass
                continue
            probe.close()
            return

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM to the process group we started (danted forks helpers), then
        SIGKILL after ``timeout``; reap the leader."""
        proc, self.process = self.process, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # helpers that outlived the leader

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"<{type(self).__name__} pid={pid} {self.address} log={self.log_path}>"


class TinyProxy(ProxyProcess):
    """tinyproxy in the foreground (``-d``) with its own config."""

    name = "tinyproxy"

    def __init__(
        self,
        executable: str,
        directory: Path,
        *,
        basic_auth: tuple[str, str] | None = None,
        connect_ports: Sequence[int] = (),
    ) -> None:
        super().__init__(executable, directory)
        self.basic_auth = basic_auth
        self.connect_ports = tuple(connect_ports)

    def command(self) -> list[str]:
        return [self.executable, "-d", "-c", str(self.config_path)]

    def write_config(self) -> None:
        lines = [
            "# generated by tests/_proxies.py",
            f"Port {self.port}",
            f"Listen {self.host}",
            f"Allow {self.host}",
            "Timeout 30",
            "MaxClients 64",
            "LogLevel Info",
            "DisableViaHeader Yes",
        ]
        if self.basic_auth is not None:
            lines.append(f"BasicAuth {self.basic_auth[0]} {self.basic_auth[1]}")
        # Without ConnectPort lines tinyproxy allows CONNECT to every port.
        lines += [f"ConnectPort {port}" for port in self.connect_ports]
        self.config_path.write_text("\n".join(lines) + "\n")


class Danted(ProxyProcess):
    """danted (Dante 1.4) in the foreground with one process set (``-N 1``)."""

    name = "danted"

    def __init__(
        self, executable: str, directory: Path, *, users: dict[str, str] | None = None
    ) -> None:
        super().__init__(executable, directory)
        self.users = dict(users or {})
        self.passwd_path = self.directory / "passwd"
        self.shadow_path = self.directory / "shadow"

    @staticmethod
    def usable_with_users() -> str | None:
        """Why username/password danted cannot run here, or ``None`` if it can."""
        if os.geteuid() != 0:
            return "needs root to give danted a private /etc/passwd and /etc/shadow"
        for tool in ("unshare", "mount", "openssl"):
            if find_program(tool) is None:
                return f"needs {tool} (util-linux / openssl)"
        return None

    def command(self) -> list[str]:
        danted = [self.executable, "-f", str(self.config_path), "-N", "1"]
        if not self.users:
            return danted
        unshare, mount = find_program("unshare"), find_program("mount")
        assert unshare is not None and mount is not None
        script = ('"$1" --bind "$2" /etc/passwd && "$1" --bind "$3" /etc/shadow && '
                  'shift 3 && exec "$@"')
        return [unshare, "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
                "sh", mount, str(self.passwd_path), str(self.shadow_path), *danted]

    def _write_accounts(self) -> None:
        openssl = find_program("openssl")
        assert openssl is not None
        passwd = [":".join(str(f) for f in (
            e.pw_name, "x", e.pw_uid, e.pw_gid, e.pw_gecos, e.pw_dir, e.pw_shell))
            for e in (pwd.getpwnam("root"), pwd.getpwnam("nobody"))]
        shadow = ["root:*:19000:0:99999:7:::", "nobody:*:19000:0:99999:7:::"]
        for uid, (user, password) in enumerate(sorted(self.users.items()), start=64900):
            done = subprocess.run(
                [openssl, "passwd", "-6", "-stdin"], input=password.encode(),
                capture_output=True, timeout=DEFAULT_TIMEOUT, check=True,
            )
            passwd.append(f"{user}:x:{uid}:{uid}:iotdev proxy test:/nonexistent:/usr/sbin/nologin")
            shadow.append(f"{user}:{done.stdout.decode().strip()}:19000:0:99999:7:::")
        self.passwd_path.write_text("\n".join(passwd) + "\n")
        self.passwd_path.chmod(0o644)
        self.shadow_path.touch(mode=0o600)
        self.shadow_path.write_text("\n".join(shadow) + "\n")

    def write_config(self) -> None:
        method = "username" if self.users else "none"
        users = ""
        if os.geteuid() == 0:
            # root reads the shadow file for "username"; children drop to nobody
            users = "user.privileged: root\nuser.unprivileged: nobody\n"
        if self.users:
            self._write_accounts()
        self.config_path.write_text(
            "# generated by tests/_proxies.py\n"
            "logoutput: stderr\n"
            f"internal: {self.host} port = {self.port}\n"
            f"external: {self.host}\n"
            "clientmethod: none\n"
            f"socksmethod: {method}\n"
            f"{users}"
            "client pass {\n"
            f"  from: {self.host}/32 to: 0.0.0.0/0\n"
            "  log: error connect disconnect\n"
            "}\n"
            "socks pass {\n"
            f"  from: {self.host}/32 to: 0.0.0.0/0\n"
            "  command: connect\n"
            "  log: error connect disconnect\n"
            "}\n"
        )


# ------------------------------------------------------------------ SOCKS4a relay


class Socks4aRelay:
    """A minimal SOCKS4/SOCKS4a server on a loopback port, in a thread.

    It accepts connections one after another, checks the request strictly
    (version 4, command CONNECT, NUL-terminated user id and name), records it
    in ``requests`` as ``(user_id, host, port)``, connects to the target,
    answers 0x5A (or 0x5B if that fails) and relays bytes both ways until
    either side closes.  ``errors`` collects anything that went wrong.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.host, self.port = self.listener.getsockname()[:2]
        self.requests: list[tuple[bytes, str, int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="socks4a relay", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _serve(self) -> None:
        self.listener.settimeout(0.1)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with client:
                try:
                    self._handle(client)
                except Exception as exc:  # reported through errors, checked by tests
                    self.errors.append(repr(exc))

    @staticmethod
    def _read_until_nul(sock: socket.socket, buf: bytearray, start: int, deadline: float) -> int:
        while True:
            end = buf.find(b"\x00", start)
            if end >= 0:
                return end
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("incomplete SOCKS4 request")
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError(f"client closed mid-request after {bytes(buf)!r}")
            buf += chunk

    def _handle(self, client: socket.socket) -> None:
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        buf = bytearray()
        while len(buf) < 8:
            client.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = client.recv(4096)
            if not chunk:
                raise ConnectionError(f"client closed mid-request after {bytes(buf)!r}")
            buf += chunk
        if buf[0] != 4 or buf[1] != 1:
            raise ValueError(f"not a SOCKS4 CONNECT: {bytes(buf[:2])!r}")
        port = int.from_bytes(buf[2:4], "big")
        ip = bytes(buf[4:8])
        end = self._read_until_nul(client, buf, 8, deadline)
        user = bytes(buf[8:end])
        if ip[:3] == b"\x00\x00\x00" and ip[3] != 0:  # SOCKS4a: the name follows
            name_end = self._read_until_nul(client, buf, end + 1, deadline)
            host = buf[end + 1:name_end].decode("ascii")
            after = name_end + 1
        else:
            host = str(ipaddress.IPv4Address(ip))
            after = end + 1
        self.requests.append((user, host, port))
        extra = bytes(buf[after:])
        try:
            upstream = socket.create_connection((host, port), timeout=DEFAULT_TIMEOUT)
        except OSError:
            client.sendall(b"\x00\x5b" + bytes(6))
            return
        with upstream:
            client.sendall(b"\x00\x5a" + port.to_bytes(2, "big") + ip)
            if extra:
                upstream.sendall(extra)
            self._relay(client, upstream)

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        with selectors.DefaultSelector() as sel:
            for s in (a, b):
                s.setblocking(True)
                s.settimeout(DEFAULT_TIMEOUT)
                sel.register(s, selectors.EVENT_READ)
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.1):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        with contextlib.suppress(OSError):
                            peer[src].shutdown(socket.SHUT_WR)
                        return
                    peer[src].sendall(data)

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(DEFAULT_TIMEOUT)
