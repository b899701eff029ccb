"""Proxy handshakes as sans-IO layers: HTTP ``CONNECT`` (with h11), SOCKS4/4a
and SOCKS5 (written by hand), and ``ProxyOptions`` as in azure-iot-device v2.

Each layer sits at the bottom of a ``Stack``: ``start()`` queues the first
bytes of the handshake, ``receive_data()`` parses the proxy's answer however it
is split (down to one byte at a time) and, once the tunnel is up, returns the
bytes that arrived after the answer (the start of the TLS server hello, say)
and from then on passes everything through unchanged.  Bytes given to
``send()`` before the tunnel is up are held back and follow the handshake.

Failures raise ``ProxyError`` (``status``: the HTTP status or the SOCKS reply
code; ``reason``: the proxy's reason phrase or the code's meaning),
``ProxyAuthenticationError`` for HTTP 407 (and 401) and refused SOCKS5
credentials, and
``ConnectionDroppedError`` when the proxy closes the connection before the
tunnel is up.  A failed layer stays failed: later calls raise the same error.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Final, NoReturn

from .._deps import require
from .._errors import ConnectionDroppedError, ProxyAuthenticationError, ProxyError
from ._layer import Layer

__all__ = [
    "SOCKS4_REPLIES",
    "SOCKS5_REPLIES",
    "HttpConnectLayer",
    "ProxyOptions",
    "Socks4Layer",
    "Socks5Layer",
    "proxy_layer",
]

# PySocks' constants, which v2 accepted before it took strings.
_SOCKS4: Final = 1
_SOCKS5: Final = 2
_HTTP: Final = 3
_TYPE_BY_NAME: Final[dict[str, int]] = {"HTTP": _HTTP, "SOCKS4": _SOCKS4, "SOCKS5": _SOCKS5}
_NAME_BY_TYPE: Final[dict[int, str]] = {v: k for k, v in _TYPE_BY_NAME.items()}

#: SOCKS4 reply codes (CD field) and their meaning.
SOCKS4_REPLIES: Final[dict[int, str]] = {
    0x5A: "request granted",
    0x5B: "request rejected or failed",
    0x5C: "request rejected because the proxy cannot connect to identd on the client",
    0x5D: "request rejected because the client program and identd report different user-ids",
}

#: SOCKS5 reply codes (REP field, RFC 1928 section 6) and their meaning.
SOCKS5_REPLIES: Final[dict[int, str]] = {
    0: "succeeded",
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}

_SOCKS5_METHODS: Final[dict[int, str]] = {
    0x00: "no authentication",
    0x01: "GSSAPI",
    0x02: "username/password",
    0xFF: "no acceptable methods",
}


# ------------------------------------------------------------------ options


class ProxyOptions:
    """Where and how to reach a proxy, as ``azure.iot.device.ProxyOptions`` (v2).

    Args:
        proxy_type: ``"HTTP"``, ``"SOCKS4"`` or ``"SOCKS5"`` (upper case, as
            v2 requires), or for backward compatibility PySocks' constants 3, 1
            and 2.
        proxy_addr: the proxy's host name or IP address.
        proxy_port: the proxy's port; anything ``int()`` accepts.
        proxy_username: Basic-auth user name (HTTP), user id (SOCKS4) or RFC 1929
            user name (SOCKS5); ``None`` for none.
        proxy_password: the password (HTTP and SOCKS5; SOCKS4 has none).

    Raises:
        ValueError: ``"Invalid Proxy Type"`` for an unknown ``proxy_type``; a
            ``proxy_port`` that is not an integer in 1..65535 (the message names
            the option).
        TypeError: ``proxy_addr``, ``proxy_username`` or ``proxy_password`` of
            the wrong type.
        MissingDependencyError: an HTTP proxy without h11 installed (SOCKS
            proxies need no third-party package).

    As v2, ``"http"`` is refused; unlike v2 a ``bool`` is not taken for
    PySocks' ``SOCKS4`` (``True == 1``).  ``repr()`` never shows the password.
    """

    __slots__ = ("_addr", "_password", "_port", "_type", "_username")

    def __init__(
        self,
        proxy_type: str | int,
        proxy_addr: str,
        proxy_port: int | str,
        proxy_username: str | None = None,
        proxy_password: str | None = None,
    ) -> None:
        self._type = _proxy_type_name(proxy_type)
        if self._type == "HTTP":
            require("h11", "ProxyOptions(proxy_type='HTTP')")
        if not isinstance(proxy_addr, str) or not proxy_addr:
            raise TypeError(f"proxy_addr must be a non-empty str, not {proxy_addr!r}")
        self._addr = proxy_addr
        try:
            port = int(proxy_port)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Invalid proxy_port {proxy_port!r}: not an integer") from exc
        if not 0 < port < 65536:
            raise ValueError(f"Invalid proxy_port {proxy_port!r}: not in 1..65535")
        self._port = port
        for name, value in (("proxy_username", proxy_username),
                            ("proxy_password", proxy_password)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{name} must be a str or None, not {type(value).__name__}")
        self._username = proxy_username
        self._password = proxy_password

    @property
    def proxy_type(self) -> str:
        """``"HTTP"``, ``"SOCKS4"`` or ``"SOCKS5"``."""
        return self._type

    @property
    def proxy_type_socks(self) -> int:
        """PySocks' constant for the type (``SOCKS4`` 1, ``SOCKS5`` 2, ``HTTP`` 3)."""
        return _TYPE_BY_NAME[self._type]

    @property
    def proxy_address(self) -> str:
        return self._addr

    @property
    def proxy_port(self) -> int:
        return self._port

    @property
    def proxy_username(self) -> str | None:
        return self._username

    @property
    def proxy_password(self) -> str | None:
        return self._password

    def __repr__(self) -> str:
        password = "" if self._password is None else ", proxy_password='***'"
        return (f"ProxyOptions(proxy_type={self._type!r}, proxy_addr={self._addr!r}, "
                f"proxy_port={self._port!r}, proxy_username={self._username!r}{password})")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProxyOptions):
            return NotImplemented
        return (self._type, self._addr, self._port, self._username, self._password) == (
            other._type, other._addr, other._port, other._username, other._password)

    def __hash__(self) -> int:
        return hash((self._type, self._addr, self._port, self._username))


def _proxy_type_name(proxy_type: object) -> str:
    if isinstance(proxy_type, str):
        if proxy_type in _TYPE_BY_NAME:
            return proxy_type
        if proxy_type.strip().upper() in _TYPE_BY_NAME:  # refused, as by v2
            raise ValueError(f"Invalid Proxy Type {proxy_type!r}: use "
                             f"{proxy_type.strip().upper()!r} (upper case, as azure-iot-device)")
    elif isinstance(proxy_type, int) and not isinstance(proxy_type, bool):
        if proxy_type in _NAME_BY_TYPE:
            return _NAME_BY_TYPE[proxy_type]
    raise ValueError("Invalid Proxy Type")


def proxy_layer(options: ProxyOptions, host: str, port: int) -> Layer:
    """The handshake layer that asks the proxy in ``options`` for a tunnel to
    ``host:port`` (to be the bottom layer of the connection's ``Stack``)."""
    label = _authority(options.proxy_address, options.proxy_port)
    if options.proxy_type == "HTTP":
        return HttpConnectLayer(host, port, options.proxy_username, options.proxy_password,
                                proxy=label)
    if options.proxy_type == "SOCKS4":
        return Socks4Layer(host, port, options.proxy_username, proxy=label)
    return Socks5Layer(host, port, options.proxy_username, options.proxy_password, proxy=label)


# ------------------------------------------------------------------ helpers


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if ``host`` is an IP literal (IPv6 with or without brackets)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _authority(host: str, port: int) -> str:
    """``host:port``, with brackets around an IPv6 literal."""
    address = _ip(host)
    if isinstance(address, ipaddress.IPv6Address):
        return f"[{address.compressed}]:{port}"
    return f"{host}:{port}"


def _check_target(host: str, port: int) -> None:
    if not isinstance(host, str) or not host:
        raise ValueError(f"the target host must be a non-empty str, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"the target port must be an int in 1..65535, not {port!r}")


def _host_name_bytes(host: str) -> bytes:
    """A host name as sent to a SOCKS proxy: ASCII, or IDNA for other names."""
    try:
        name = host.encode("ascii")
    except UnicodeEncodeError:
        try:
            name = host.encode("idna")
        except UnicodeError as exc:
            raise ValueError(f"cannot encode the host name {host!r}: {exc}") from exc
    if not 0 < len(name) < 256 or b"\x00" in name:
        raise ValueError(f"the host name {host!r} must be 1..255 bytes without NUL")
    return name


def _credential(name: str, value: str | None, *, allow_empty: bool) -> bytes:
    if value is None:
        return b""
    data = value.encode("utf-8")
    if len(data) > 255 or (not data and not allow_empty):
        raise ValueError(f"the proxy {name} must be {0 if allow_empty else 1}..255 bytes "
                         f"in UTF-8, got {len(data)}")
    return data


class _HandshakeLayer(Layer):
    """What the three proxy layers share: queues, pass-through once
    established, sticky failure, EOF during the handshake."""

    _kind = "proxy"

    def __init__(self, host: str, port: int, proxy: str | None) -> None:
        _check_target(host, port)
        self.host = host
        self.port = port
        self.proxy = proxy
        self.established = False
        self.closed = False
        self._out = bytearray()
        self._held = bytearray()  # sent by the layer above before the tunnel was up
        self._error: Exception | None = None

    # -- naming in messages

    @property
    def _who(self) -> str:
        return f"{self._kind} proxy {self.proxy}" if self.proxy else f"{self._kind} proxy"

    @property
    def _target(self) -> str:
        return _authority(self.host, self.port)

    def _fail(self, error: Exception) -> NoReturn:
        self._error = error
        raise error

    def _malformed(self, what: str) -> NoReturn:
        self._fail(ProxyError(f"{self._who} sent a malformed answer while asked for "
                              f"{self._target}: {what}", None, "malformed answer"))

    # -- Layer

    def receive_data(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        if self.established:
            if not data:
                self.closed = True
            return data
        if not data:
            self.closed = True
            self._fail(ConnectionDroppedError(
                f"{self._who} closed the connection during the handshake for {self._target}"))
        rest = self._handshake_data(data)
        if rest is None:
            return b""
        self.established = True
        if self._held:
            self._out += self._held
            self._held.clear()
        return rest

    def _handshake_data(self, data: bytes) -> bytes | None:
        """Parse handshake bytes; the bytes after the handshake once it is
        complete, else ``None``.  Raises on refusal."""
        raise NotImplementedError

    def send(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        if self.established:
            self._out += data
        else:
            self._held += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out


# ------------------------------------------------------------------ HTTP CONNECT


class HttpConnectLayer(_HandshakeLayer):
    """An HTTP ``CONNECT host:port`` tunnel, written and parsed with h11.

    Args:
        host, port: where the tunnel should lead (an IPv6 literal is sent in
            brackets, a non-ASCII name in IDNA form).
        username, password: when ``username`` is given, ``Proxy-Authorization:
            Basic base64(user:password)`` (UTF-8; a missing password is empty)
            goes with the request.  A user name may not contain ``:``.
        proxy: ``"addr:port"`` of the proxy, for error messages only.

    A 2xx answer establishes the tunnel (informational 1xx answers are skipped);
    any other raises ``ProxyError`` with the status line in the message and
    ``status``/``reason`` set; 407, and 401 (which tinyproxy sends for wrong
    credentials), raise ``ProxyAuthenticationError``.  An answer h11
    cannot parse, or a header block over h11's limit (16 KiB), raises
    ``ProxyError`` too.

    Raises (constructor):
        ValueError: a target or credentials that cannot go into the request.
    """

    _kind = "HTTP"

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        proxy: str | None = None,
    ) -> None:
        super().__init__(host, port, proxy)
        authority = self._target
        if _ip(host) is None and not host.isascii():
            authority = f"{_host_name_bytes(host).decode('ascii')}:{port}"  # IDNA
        headers = [("Host", authority)]
        if username is not None:
            if ":" in username:
                raise ValueError("an HTTP Basic user name cannot contain ':'")
            token = f"{username}:{password or ''}".encode()
            headers.append(("Proxy-Authorization", "Basic " + base64.b64encode(token).decode()))
        import h11  # only HTTP proxies need it (ProxyOptions checked it is there)

        self._h11 = h11.Connection(h11.CLIENT)
        try:
            request = self._h11.send(h11.Request(method="CONNECT", target=authority,
                                                 headers=headers))
            self._h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError as exc:
            raise ValueError(f"cannot send CONNECT {authority!r}: {exc}") from exc
        assert request is not None
        self._request = request

    def start(self) -> None:
        self._out += self._request

    def _handshake_data(self, data: bytes) -> bytes | None:
        import h11

        conn = self._h11
        response: h11.Response | None = None
        try:
            conn.receive_data(data)
            while response is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    return None
                if isinstance(event, h11.Response):
                    response = event
                elif not isinstance(event, h11.InformationalResponse):  # pragma: no cover
                    self._malformed(f"unexpected {event!r}")  # h11 yields no other event here
        except h11.RemoteProtocolError as exc:
            self._malformed(str(exc))
        status = response.status_code
        reason = response.reason.decode("latin-1")
        if 200 <= status < 300:
            rest, _closed = conn.trailing_data
            return bytes(rest)
        line = f"{status} {reason}".rstrip()
        message = f"{self._who} refused CONNECT {self._target}: {line}"
        if status in (401, 407):  # an answer to CONNECT is the proxy's own: tinyproxy
            # says 407 when credentials are missing and 401 when they are wrong
            self._fail(ProxyAuthenticationError(message, status, reason))
        self._fail(ProxyError(message, status, reason))


# ------------------------------------------------------------------ SOCKS4 / SOCKS4a


class Socks4Layer(_HandshakeLayer):
    """SOCKS4 ``CONNECT`` for an IPv4 literal, SOCKS4a (address 0.0.0.1 and the
    name after the user id; the proxy resolves it) for a host name.

    Args:
        host, port: where the tunnel should lead (IPv6 is not possible).
        username: the USERID field (UTF-8, at most 255 bytes); empty if ``None``.
        proxy: ``"addr:port"`` of the proxy, for error messages only.

    Reply code 0x5A establishes the tunnel; 0x5B..0x5D raise ``ProxyError``
    with ``status`` the code and ``reason`` its meaning.  Version byte 0 is
    expected (4 is tolerated, as some servers send it).

    Raises (constructor):
        ValueError: an IPv6 target, or a name or user id that does not fit.
    """

    _kind = "SOCKS4"
    _REPLY_SIZE: Final = 8

    def __init__(
        self, host: str, port: int, username: str | None = None, *, proxy: str | None = None
    ) -> None:
        super().__init__(host, port, proxy)
        user = _credential("user id", username, allow_empty=True)
        if b"\x00" in user:
            raise ValueError("a SOCKS4 user id cannot contain NUL")
        address = _ip(host)
        head = b"\x04\x01" + port.to_bytes(2, "big")
        if isinstance(address, ipaddress.IPv6Address):
            raise ValueError(f"SOCKS4 cannot reach the IPv6 address {host}; use SOCKS5")
        if address is not None:
            self._request = head + address.packed + user + b"\x00"
        else:  # SOCKS4a
            self._request = head + b"\x00\x00\x00\x01" + user + b"\x00" + \
                _host_name_bytes(host) + b"\x00"
        self._buffer = bytearray()

    def start(self) -> None:
        self._out += self._request

    def _handshake_data(self, data: bytes) -> bytes | None:
        buf = self._buffer
        buf += data
        if buf[0] not in (0x00, 0x04):
            hint = " (is it an HTTP proxy?)" if buf[:1] == b"H" else ""
            self._malformed(f"version byte 0x{buf[0]:02x} instead of 0x00{hint}")
        if len(buf) < 2:
            return None
        code = buf[1]
        if code != 0x5A:
            if code not in SOCKS4_REPLIES:
                self._malformed(f"unknown reply code 0x{code:02x}")
            meaning = SOCKS4_REPLIES[code]
            self._fail(ProxyError(
                f"{self._who} refused CONNECT {self._target}: {meaning} (reply 0x{code:02x})",
                code, meaning))
        if len(buf) < self._REPLY_SIZE:
            return None
        rest = bytes(buf[self._REPLY_SIZE:])
        buf.clear()
        return rest


# ------------------------------------------------------------------ SOCKS5


class Socks5Layer(_HandshakeLayer):
    """SOCKS5 (RFC 1928) ``CONNECT``, with username/password authentication
    (RFC 1929) offered when ``username`` is given.

    Args:
        host, port: where the tunnel should lead: IPv4 and IPv6 literals go as
            addresses (ATYP 1 and 4), names as names (ATYP 3; the proxy resolves
            them).
        username, password: RFC 1929 credentials (UTF-8, user name 1..255 bytes,
            password 0..255 bytes, a missing password is empty).  With them the
            greeting offers methods 0 and 2, without them only 0.
        proxy: ``"addr:port"`` of the proxy, for error messages only.

    Errors: reply codes 1..8 raise ``ProxyError`` with ``status`` the code and
    ``reason`` its RFC 1928 meaning (other codes: "unassigned"); a refused
    authentication, or no acceptable method (0xFF, e.g. the proxy wants
    credentials we do not have), raises ``ProxyAuthenticationError``; a method
    we did not offer or a malformed reply raises ``ProxyError``.  The reply's
    bound address (of any type and length) is skipped; bytes after it are
    handed up.

    Raises (constructor):
        ValueError: a name or credentials that do not fit their fields.
    """

    _kind = "SOCKS5"

    # parser states
    _METHOD: Final = 0
    _AUTH: Final = 1
    _REPLY: Final = 2

    def __init__(
        self,
        host: str,
        port: int,
        username: str | None = None,
        password: str | None = None,
        *,
        proxy: str | None = None,
    ) -> None:
        super().__init__(host, port, proxy)
        self._auth: bytes | None = None
        if username is not None:
            user = _credential("user name", username, allow_empty=False)
            secret = _credential("password", password, allow_empty=True)
            self._auth = bytes([1, len(user)]) + user + bytes([len(secret)]) + secret
            self._greeting = b"\x05\x02\x00\x02"
        else:
            self._greeting = b"\x05\x01\x00"
        address = _ip(host)
        if isinstance(address, ipaddress.IPv4Address):
            dest = b"\x01" + address.packed
        elif isinstance(address, ipaddress.IPv6Address):
            dest = b"\x04" + address.packed
        else:
            name = _host_name_bytes(host)
            dest = b"\x03" + bytes([len(name)]) + name
        self._request = b"\x05\x01\x00" + dest + port.to_bytes(2, "big")
        self._state = self._METHOD
        self._buffer = bytearray()

    def start(self) -> None:
        self._out += self._greeting

    def _handshake_data(self, data: bytes) -> bytes | None:
        buf = self._buffer
        buf += data
        while True:
            if self._state == self._METHOD:
                if not self._method(buf):
                    return None
            elif self._state == self._AUTH:
                if not self._auth_status(buf):
                    return None
            else:
                return self._reply(buf)

    def _method(self, buf: bytearray) -> bool:
        if not buf:
            return False
        if buf[0] != 0x05:
            hint = " (is it an HTTP proxy?)" if buf[:1] == b"H" else ""
            self._malformed(f"version byte 0x{buf[0]:02x} instead of 0x05{hint}")
        if len(buf) < 2:
            return False
        method = buf[1]
        del buf[:2]
        offered = "no authentication" + (", username/password" if self._auth else "")
        if method == 0xFF:
            self._fail(ProxyAuthenticationError(
                f"{self._who} accepts none of the offered authentication methods "
                f"({offered}) for {self._target}", 0xFF, "no acceptable methods"))
        if method == 0x00:
            self._out += self._request
            self._state = self._REPLY
        elif method == 0x02 and self._auth is not None:
            self._out += self._auth
            self._state = self._AUTH
        else:
            name = _SOCKS5_METHODS.get(method, f"method 0x{method:02x}")
            self._fail(ProxyError(
                f"{self._who} chose {name}, which was not offered ({offered}), "
                f"for {self._target}", method, "authentication method not offered"))
        return True

    def _auth_status(self, buf: bytearray) -> bool:
        if not buf:
            return False
        if len(buf) < 2:
            if buf[0] not in (0x01, 0x05):
                self._malformed(f"authentication version byte 0x{buf[0]:02x} instead of 0x01")
            return False
        version, status = buf[0], buf[1]
        if version not in (0x01, 0x05):  # RFC 1929 says 1; some servers answer 5
            self._malformed(f"authentication version byte 0x{version:02x} instead of 0x01")
        del buf[:2]
        if status != 0x00:
            self._fail(ProxyAuthenticationError(
                f"{self._who} refused the username/password for {self._target} "
                f"(status 0x{status:02x})", status, "authentication failed"))
        self._out += self._request
        self._state = self._REPLY
        return True

    def _reply(self, buf: bytearray) -> bytes | None:
        if not buf:
            return None
        if buf[0] != 0x05:
            self._malformed(f"version byte 0x{buf[0]:02x} instead of 0x05 in the reply")
        if len(buf) < 2:
            return None
        code = buf[1]
        if code != 0:
            meaning = SOCKS5_REPLIES.get(code, "unassigned reply code")
            self._fail(ProxyError(
                f"{self._who} refused CONNECT {self._target}: {meaning} (reply {code})",
                code, meaning))
        if len(buf) < 5:
            return None
        atyp = buf[3]
        if atyp == 0x01:
            size = 4 + 4 + 2
        elif atyp == 0x04:
            size = 4 + 16 + 2
        elif atyp == 0x03:
            size = 4 + 1 + buf[4] + 2
        else:
            self._malformed(f"unknown address type {atyp} in the reply")
        if len(buf) < size:
            return None
        rest = bytes(buf[size:])
        buf.clear()
        return rest
