"""Proxy layers: ``ProxyOptions``, HTTP CONNECT (h11), SOCKS4/4a, SOCKS5.

Part 1 drives the layers sans-IO with canned proxy answers, fed whole, one
byte at a time and cut in two at every position, and checks the exact bytes
each layer writes.  Part 2 opens real tunnels to the session's mosquitto
through tinyproxy and danted (and, for SOCKS4a, which danted does not
implement, through a small relay in ``tests/_proxies.py``), plain and with TLS
on top, and speaks MQTT through them with ``iotdev_mqtt.ClientConnection``.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from iotdev._errors import (
    ClientError,
    ConnectionDroppedError,
    CredentialError,
    ProxyAuthenticationError,
    ProxyError,
)
from iotdev.transport import Layer, Stack, TLSLayer, make_client_context
from iotdev.transport._proxy import (
    SOCKS5_REPLIES,
    HttpConnectLayer,
    ProxyOptions,
    Socks4Layer,
    Socks5Layer,
    proxy_layer,
)
from iotdev_mqtt import (
    ClientConnection,
    Connected,
    Event,
    MessageReceived,
    PublishAcked,
    Subscribed,
)
from tests._broker import CertAuthority, Mosquitto, free_ports, in_ci, unique_name
from tests._proxies import (
    Danted,
    ProxyProcess,
    Socks4aRelay,
    TinyProxy,
    require_proxy_program,
)

TIMEOUT = 10.0
PROXY = "127.0.0.1:8888"
USER, PASSWORD = "alice", "s3cret"
BASIC_ALICE = b"YWxpY2U6czNjcmV0"  # base64("alice:s3cret"), worked out by hand
SOCKS_USER, SOCKS_PASSWORD = "iotdev-proxy", "pr0xy-pass"

L = TypeVar("L", bound=Layer)


# ============================================================ sans-IO helpers


def splits(data: bytes) -> list[list[bytes]]:
    """``data`` whole, one byte at a time, and cut in two at every position."""
    out = [[data], [data[i:i + 1] for i in range(len(data))]]
    out += [[data[:i], data[i:]] for i in range(1, len(data))]
    return out


def started(make: Callable[[], L]) -> tuple[L, bytes]:
    layer = make()
    assert layer.data_to_send() == b"", "nothing may be written before start()"
    assert not layer.established
    layer.start()
    return layer, layer.data_to_send()


def handshake(make: Callable[[], Layer], answer: bytes, trailing: bytes) -> bytes:
    """Feed ``answer + trailing`` in every split; the tunnel must come up exactly
    after the last byte of ``answer`` and hand up exactly ``trailing``.  Returns
    everything the layer wrote (the same for every split)."""
    written: bytes | None = None
    for pieces in splits(answer + trailing):
        layer, out = started(make)
        up = bytearray()
        fed = 0
        for piece in pieces:
            assert not layer.established or fed >= len(answer)
            up += layer.receive_data(piece)
            fed += len(piece)
            out += layer.data_to_send()
            assert layer.established == (fed >= len(answer)), (
                f"established={layer.established} after {fed} of {len(answer)} answer bytes "
                f"(split {[len(p) for p in pieces]})"
            )
        assert bytes(up) == trailing, f"split {[len(p) for p in pieces]}"
        assert not layer.closed
        if written is None:
            written = out
        assert out == written, f"split {[len(p) for p in pieces]} wrote {out!r}"
    assert written is not None
    return written


def refusal(make: Callable[[], Layer], answer: bytes, *, exact: bool = True) -> ClientError:
    """Feed ``answer`` in every split: the same error must come each time, and
    again on any later call.  Returns it.  ``exact=False`` lets the detail after
    the last ``": "`` differ (h11 words some errors by how much it has seen)."""
    first: ClientError | None = None
    for pieces in splits(answer):
        layer, _ = started(make)
        with pytest.raises(ClientError) as info:
            for piece in pieces:
                layer.receive_data(piece)
                layer.data_to_send()
        error = info.value
        assert not layer.established
        with pytest.raises(type(error)):
            layer.receive_data(b"more")
        if first is None:
            first = error
        else:
            text, first_text = str(error), str(first)
            if not exact:
                text, first_text = text.split(": ", 1)[0], first_text.split(": ", 1)[0]
            assert (type(error), text) == (type(first), first_text)
            assert isinstance(error, ProxyError) == isinstance(first, ProxyError)
            if isinstance(error, ProxyError) and isinstance(first, ProxyError):
                assert (error.status, error.reason) == (first.status, first.reason)
    assert first is not None
    return first


def eof_everywhere(make: Callable[[], Layer], answer: bytes) -> None:
    """End of stream after every proper prefix of a good answer (including
    none of it): ``ConnectionDroppedError``, and ``closed`` is set."""
    for cut in range(len(answer)):
        layer, _ = started(make)
        for i in range(cut):
            layer.receive_data(answer[i:i + 1])
            layer.data_to_send()
        with pytest.raises(ConnectionDroppedError, match="closed the connection"):
            layer.receive_data(b"")
        assert layer.closed and not layer.established


def passes_through(layer: Layer) -> None:
    """Once established a layer is transparent both ways and sees EOF."""
    assert layer.established
    layer.send(b"\x10up")
    assert layer.data_to_send() == b"\x10up"
    assert layer.receive_data(b"\x20down") == b"\x20down"
    assert not layer.closed
    assert layer.receive_data(b"") == b""
    assert layer.closed


# ============================================================ ProxyOptions


@pytest.mark.parametrize(
    ("given", "name", "socks"),
    [("HTTP", "HTTP", 3), ("SOCKS4", "SOCKS4", 1), ("SOCKS5", "SOCKS5", 2), (3, "HTTP", 3),
     (1, "SOCKS4", 1), (2, "SOCKS5", 2)],
)
def test_proxy_options_types(given: Any, name: str, socks: int) -> None:
    options = ProxyOptions(given, "proxy.example", 3128, "u", "p")
    assert (options.proxy_type, options.proxy_type_socks) == (name, socks)
    assert (options.proxy_address, options.proxy_port) == ("proxy.example", 3128)
    assert (options.proxy_username, options.proxy_password) == ("u", "p")


@pytest.mark.parametrize("given", ["HTTPS", "SOCKS", "socks4a", "", 0, 4, True, None, 3.0, b"HTTP"])
def test_proxy_options_invalid_type(given: Any) -> None:
    with pytest.raises(ValueError) as info:
        ProxyOptions(given, "proxy.example", 8080)
    assert str(info.value) == "Invalid Proxy Type"


@pytest.mark.parametrize("given", ["http", "socks4", "Socks5", " HTTP"])
def test_proxy_options_type_names_are_upper_case_as_in_v2(given: str) -> None:
    with pytest.raises(ValueError, match=r"Invalid Proxy Type .*upper case"):
        ProxyOptions(given, "proxy.example", 8080)


def test_proxy_options_port_is_converted_with_int() -> None:
    assert ProxyOptions("HTTP", "h", "8080").proxy_port == 8080
    assert ProxyOptions("HTTP", "h", 8080.0).proxy_port == 8080  # type: ignore[arg-type]
    for bad in ("eighty", None, "", [8080]):
        with pytest.raises(ValueError, match="proxy_port"):
            ProxyOptions("HTTP", "h", bad)  # type: ignore[arg-type]
    for out_of_range in (0, 65536, -1):
        with pytest.raises(ValueError, match=r"proxy_port .*1\.\.65535"):
            ProxyOptions("HTTP", "h", out_of_range)
    with pytest.raises(TypeError, match="proxy_addr"):
        ProxyOptions("HTTP", None, 80)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="proxy_password"):
        ProxyOptions("HTTP", "h", 80, "u", b"p")  # type: ignore[arg-type]


def test_proxy_options_repr_hides_the_password() -> None:
    options = ProxyOptions("SOCKS5", "10.0.0.1", 1080, "bob", "hunter2-secret")
    for text in (repr(options), str(options), f"{options}", repr([options])):
        assert "hunter2" not in text
        assert "bob" in text and "10.0.0.1" in text and "SOCKS5" in text and "1080" in text
    assert "proxy_password" not in repr(ProxyOptions("HTTP", "h", 1))


def test_proxy_layer_picks_the_layer() -> None:
    http = proxy_layer(ProxyOptions("HTTP", "10.0.0.1", 3128, USER, PASSWORD), "hub", 443)
    assert isinstance(http, HttpConnectLayer) and http.proxy == "10.0.0.1:3128"
    http.start()
    assert b"Proxy-Authorization: Basic " + BASIC_ALICE + b"\r\n" in http.data_to_send()

    socks4 = proxy_layer(ProxyOptions(1, "10.0.0.1", 1080, "joe", "ignored"), "1.2.3.4", 8883)
    assert isinstance(socks4, Socks4Layer) and socks4.proxy == "10.0.0.1:1080"
    socks4.start()
    assert socks4.data_to_send() == b"\x04\x01\x22\xb3\x01\x02\x03\x04joe\x00"

    socks5 = proxy_layer(ProxyOptions("SOCKS5", "::1", 1080, "joe", "pw"), "hub", 8883)
    assert isinstance(socks5, Socks5Layer) and socks5.proxy == "[::1]:1080"
    socks5.start()
    assert socks5.data_to_send() == b"\x05\x02\x00\x02"


# ============================================================ HTTP CONNECT


def http(host: str = "localhost", port: int = 8883, user: str | None = None,
         password: str | None = None) -> Callable[[], HttpConnectLayer]:
    return lambda: HttpConnectLayer(host, port, user, password, proxy=PROXY)


def test_http_connect_request_bytes() -> None:
    _, out = started(http())
    assert out == b"CONNECT localhost:8883 HTTP/1.1\r\nHost: localhost:8883\r\n\r\n"
    _, out = started(http(user=USER, password=PASSWORD))
    assert out == (b"CONNECT localhost:8883 HTTP/1.1\r\nHost: localhost:8883\r\n"
                   b"Proxy-Authorization: Basic " + BASIC_ALICE + b"\r\n\r\n")
    _, out = started(http("2001:db8::1", 443))
    assert out == b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n"
    _, out = started(http("bücher.example", 443))
    assert out.startswith(b"CONNECT xn--bcher-kva.example:443 HTTP/1.1\r\n"
                          b"Host: xn--bcher-kva.example:443\r\n")
    _, out = started(http("10.1.2.3", 443, user="bob"))  # no password: empty
    assert out.endswith(b"Proxy-Authorization: Basic Ym9iOg==\r\n\r\n")  # base64("bob:")


def test_http_connect_writes_nothing_more_until_established() -> None:
    layer, _ = started(http())
    layer.send(b"early")
    assert layer.data_to_send() == b""
    assert layer.receive_data(b"HTTP/1.1 200 OK\r\n\r\n") == b""
    assert layer.data_to_send() == b"early"
    passes_through(layer)


@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 200 Connection established\r\n\r\n",
     b"HTTP/1.0 200 Connection established\r\nProxy-agent: tinyproxy/1.11.1\r\n\r\n",
     b"HTTP/1.1 200\r\nContent-Length: 12\r\n\r\n",  # ignored for a 2xx to CONNECT
     b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
    ids=["1.1", "1.0-headers", "content-length", "100-then-204"],
)
def test_http_connect_established_with_trailing_bytes(answer: bytes) -> None:
    trailing = b"\x16\x03\x03\x00\x02HTTP/1.1 200 OK\r\n\r\n"  # must not be parsed
    assert handshake(http(), answer, trailing) == (
        b"CONNECT localhost:8883 HTTP/1.1\r\nHost: localhost:8883\r\n\r\n")
    layer, _ = started(http())
    assert layer.receive_data(answer + b"x") == b"x"
    passes_through(layer)


@pytest.mark.parametrize(
    ("answer", "kind", "status", "reason", "line"),
    [(b"HTTP/1.1 403 Forbidden\r\n\r\n", ProxyError, 403, "Forbidden", "403 Forbidden"),
     (b"HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"x\"\r\n"
      b"Connection: close\r\n\r\n<html>...</html>", ProxyAuthenticationError, 407,
      "Proxy Authentication Required", "407 Proxy Authentication Required"),
     (b"HTTP/1.0 401 Unauthorized\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\r\n",
      ProxyAuthenticationError, 401, "Unauthorized", "401 Unauthorized"),
     (b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\n\r\nbad", ProxyError, 502,
      "Bad Gateway", "502 Bad Gateway"),
     (b"HTTP/1.1 503\r\n\r\n", ProxyError, 503, "", "503"),
     (b"HTTP/1.1 301 Moved Permanently\r\nLocation: /\r\n\r\n", ProxyError, 301,
      "Moved Permanently", "301 Moved Permanently")],
    ids=["403", "407", "401", "502", "503-no-reason", "301"],
)
def test_http_connect_refused(
    answer: bytes, kind: type[ProxyError], status: int, reason: str, line: str
) -> None:
    error = refusal(http(), answer)
    assert type(error) is kind
    assert isinstance(error, ProxyError)
    assert str(error) == f"HTTP proxy 127.0.0.1:8888 refused CONNECT localhost:8883: {line}"
    assert (error.status, error.reason) == (status, reason)
    assert isinstance(error, CredentialError) == (status in (401, 407))


@pytest.mark.parametrize(
    "answer",
    [b"SSH-2.0-OpenSSH_9.2p1\r\n\r\n",
     b"HTTP/1.1 2000 OK\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20000,  # over h11's 16 KiB header limit
     b"\x05\x00\x00\x01\x7f\x00\x00\x01\x22\xb3\r\n\r\n"],  # a SOCKS5 answer
    ids=["ssh-banner", "bad-status", "bad-header", "headers-too-long", "socks"],
)
def test_http_connect_malformed_answer(answer: bytes) -> None:
    layer, _ = started(http())
    with pytest.raises(ProxyError) as info:
        layer.receive_data(answer)
    error = info.value
    assert type(error) is ProxyError
    assert str(error).startswith(
        "HTTP proxy 127.0.0.1:8888 sent a malformed answer while asked for localhost:8883: ")
    assert error.status is None
    if len(answer) < 200:
        assert type(refusal(http(), answer, exact=False)) is ProxyError


def test_http_connect_eof_during_handshake() -> None:
    eof_everywhere(http(), b"HTTP/1.1 200 Connection established\r\n\r\n")
    layer, _ = started(lambda: HttpConnectLayer("localhost", 8883))
    with pytest.raises(ConnectionDroppedError) as info:
        layer.receive_data(b"")
    assert str(info.value) == (
        "HTTP proxy closed the connection during the handshake for localhost:8883")


def test_http_connect_bad_arguments() -> None:
    with pytest.raises(ValueError, match="':'"):
        HttpConnectLayer("h", 1, "a:b", "c")
    with pytest.raises(ValueError, match="CONNECT"):
        HttpConnectLayer("evil\r\nX-Injected: 1", 443)
    for port in (0, 65536, True):
        with pytest.raises(ValueError, match="port"):
            HttpConnectLayer("h", port)
    with pytest.raises(ValueError, match="host"):
        HttpConnectLayer("", 443)


def test_stack_hands_trailing_bytes_up_and_carries_data() -> None:
    stack = Stack([HttpConnectLayer("localhost", 8883, proxy=PROXY)])
    stack.start()
    assert stack.data_to_send().startswith(b"CONNECT localhost:8883 ")
    assert not stack.established
    assert stack.receive_data(b"HTTP/1.1 200 OK\r\n\r\n\x20\x02\x00\x00") == b"\x20\x02\x00\x00"
    assert stack.established
    stack.send(b"\xe0\x00")
    assert stack.data_to_send() == b"\xe0\x00"


# ============================================================ SOCKS4 / SOCKS4a


def socks4(host: str = "127.0.0.1", port: int = 8883,
           user: str | None = None) -> Callable[[], Socks4Layer]:
    return lambda: Socks4Layer(host, port, user, proxy=PROXY)


OK4 = b"\x00\x5a\x00\x00\x00\x00\x00\x00"


def test_socks4_request_bytes() -> None:
    assert started(socks4())[1] == b"\x04\x01\x22\xb3\x7f\x00\x00\x01\x00"
    assert started(socks4(user="alice"))[1] == b"\x04\x01\x22\xb3\x7f\x00\x00\x01alice\x00"
    assert started(socks4("10.20.30.40", 1))[1] == b"\x04\x01\x00\x01\x0a\x14\x1e\x28\x00"


def test_socks4a_request_bytes() -> None:
    assert started(socks4("localhost"))[1] == (
        b"\x04\x01\x22\xb3\x00\x00\x00\x01\x00localhost\x00")
    assert started(socks4("myhub.azure-devices.net", 443, "joe"))[1] == (
        b"\x04\x01\x01\xbb\x00\x00\x00\x01joe\x00myhub.azure-devices.net\x00")


@pytest.mark.parametrize("answer", [OK4, b"\x00\x5a\x22\xb3\x7f\x00\x00\x01",
                                    b"\x04\x5a\x00\x00\x00\x00\x00\x00"],
                         ids=["zeros", "bound-address", "version-4"])
def test_socks4_established_with_trailing_bytes(answer: bytes) -> None:
    assert handshake(socks4("localhost"), answer, b"\x20\x02\x00\x00") == (
        b"\x04\x01\x22\xb3\x00\x00\x00\x01\x00localhost\x00")
    handshake(socks4(), answer, b"")
    layer, _ = started(socks4())
    layer.send(b"early")
    assert layer.data_to_send() == b""
    assert layer.receive_data(answer) == b""
    assert layer.data_to_send() == b"early"
    passes_through(layer)


@pytest.mark.parametrize(
    ("code", "reason"),
    [(0x5B, "request rejected or failed"),
     (0x5C, "request rejected because the proxy cannot connect to identd on the client"),
     (0x5D, "request rejected because the client program and identd report different "
            "user-ids")],
)
def test_socks4_refused(code: int, reason: str) -> None:
    error = refusal(socks4("localhost"), bytes([0, code, 0, 0, 0, 0, 0, 0]))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert (error.status, error.reason) == (code, reason)
    assert str(error) == (f"SOCKS4 proxy 127.0.0.1:8888 refused CONNECT localhost:8883: "
                          f"{reason} (reply 0x{code:02x})")
    # the refusal is known from the second byte: the rest need not come
    layer, _ = started(socks4())
    with pytest.raises(ProxyError):
        layer.receive_data(bytes([0, code]))


@pytest.mark.parametrize(
    ("answer", "detail"),
    [(b"\x05\x00", "version byte 0x05 instead of 0x00"),
     (b"HTTP/1.1 400 Bad Request\r\n\r\n", "version byte 0x48 instead of 0x00 (is it an HTTP"),
     (b"\x00\x42\x00\x00\x00\x00\x00\x00", "unknown reply code 0x42"),
     (b"\x00\x00\x00\x00\x00\x00\x00\x00", "unknown reply code 0x00")],
    ids=["socks5-answer", "http-answer", "code-0x42", "code-0"],
)
def test_socks4_malformed_answer(answer: bytes, detail: str) -> None:
    error = refusal(socks4(), answer)
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert error.status is None
    assert str(error).startswith(
        "SOCKS4 proxy 127.0.0.1:8888 sent a malformed answer while asked for 127.0.0.1:8883: "
        + detail)


def test_socks4_eof_during_handshake() -> None:
    eof_everywhere(socks4("localhost"), OK4)


def test_socks4_bad_arguments() -> None:
    with pytest.raises(ValueError, match="IPv6"):
        Socks4Layer("::1", 8883)
    with pytest.raises(ValueError, match="NUL"):
        Socks4Layer("localhost", 8883, "a\x00b")
    with pytest.raises(ValueError, match="255"):
        Socks4Layer("localhost", 8883, "u" * 256)
    with pytest.raises(ValueError, match="host name"):
        Socks4Layer("h" * 256, 8883)


# ============================================================ SOCKS5


def socks5(host: str = "localhost", port: int = 8883, user: str | None = None,
           password: str | None = None) -> Callable[[], Socks5Layer]:
    return lambda: Socks5Layer(host, port, user, password, proxy=PROXY)


GREETING = b"\x05\x01\x00"
GREETING_AUTH = b"\x05\x02\x00\x02"
AUTH_ALICE = b"\x01\x05alice\x06s3cret"
REQ_LOCALHOST = b"\x05\x01\x00\x03\x09localhost\x22\xb3"
REPLY_V4 = b"\x05\x00\x00\x01\x7f\x00\x00\x01\xd4\x31"
REPLY_V6 = b"\x05\x00\x00\x04" + bytes(15) + b"\x01\xd4\x31"
REPLY_NAME = b"\x05\x00\x00\x03\x0bproxy.local\xd4\x31"


def test_socks5_greeting_and_request_bytes() -> None:
    assert started(socks5())[1] == GREETING
    assert started(socks5(user=USER, password=PASSWORD))[1] == GREETING_AUTH
    cases = {
        "localhost": REQ_LOCALHOST,
        "127.0.0.1": b"\x05\x01\x00\x01\x7f\x00\x00\x01\x22\xb3",
        "2001:db8::7": b"\x05\x01\x00\x04\x20\x01\x0d\xb8" + bytes(11) + b"\x07\x22\xb3",
        "[::1]": b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x22\xb3",
    }
    for host, request in cases.items():
        layer, _ = started(socks5(host))
        assert layer.receive_data(b"\x05") == b""
        assert layer.data_to_send() == b"", "the request waits for the method choice"
        assert layer.receive_data(b"\x00") == b""
        assert layer.data_to_send() == request, host


def test_socks5_username_password_bytes() -> None:
    layer, _ = started(socks5(user=USER, password=PASSWORD))
    layer.receive_data(b"\x05\x02")
    assert layer.data_to_send() == AUTH_ALICE
    layer.receive_data(b"\x01")
    assert layer.data_to_send() == b"", "the request waits for the authentication status"
    layer.receive_data(b"\x00")
    assert layer.data_to_send() == REQ_LOCALHOST
    layer, _ = started(socks5(user="bob"))  # no password: empty
    layer.receive_data(b"\x05\x02")
    assert layer.data_to_send() == b"\x01\x03bob\x00"


@pytest.mark.parametrize("reply", [REPLY_V4, REPLY_V6, REPLY_NAME], ids=["ipv4", "ipv6", "name"])
def test_socks5_established_with_trailing_bytes(reply: bytes) -> None:
    trailing = b"\x20\x02\x00\x00\x05\x00"
    assert handshake(socks5(), b"\x05\x00" + reply, trailing) == GREETING + REQ_LOCALHOST
    assert handshake(socks5(user=USER, password=PASSWORD), b"\x05\x02\x01\x00" + reply,
                     trailing) == GREETING_AUTH + AUTH_ALICE + REQ_LOCALHOST
    # credentials offered, but the proxy needs none
    assert handshake(socks5(user=USER, password=PASSWORD), b"\x05\x00" + reply,
                     b"") == GREETING_AUTH + REQ_LOCALHOST
    # some servers answer the RFC 1929 exchange with version 5
    handshake(socks5(user=USER, password=PASSWORD), b"\x05\x02\x05\x00" + reply, b"")
    layer, _ = started(socks5())
    layer.send(b"early")
    layer.receive_data(b"\x05\x00")
    assert layer.data_to_send() == REQ_LOCALHOST
    assert layer.receive_data(reply + b"x") == b"x"
    assert layer.data_to_send() == b"early"
    passes_through(layer)


@pytest.mark.parametrize("code", [*range(1, 10), 0xFF])
def test_socks5_refused(code: int) -> None:
    meanings = {
        1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
        3: "network unreachable", 4: "host unreachable", 5: "connection refused",
        6: "TTL expired", 7: "command not supported", 8: "address type not supported",
    }
    meaning = meanings.get(code, "unassigned reply code")
    assert SOCKS5_REPLIES.get(code, "unassigned reply code") == meaning
    error = refusal(socks5(), b"\x05\x00\x05" + bytes([code]) + b"\x00\x01" + bytes(6))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert (error.status, error.reason) == (code, meaning)
    assert str(error) == (f"SOCKS5 proxy 127.0.0.1:8888 refused CONNECT localhost:8883: "
                          f"{meaning} (reply {code})")
    # known from the second byte of the reply: the bound address need not come
    assert type(refusal(socks5(), b"\x05\x00\x05" + bytes([code]))) is ProxyError


def test_socks5_authentication_refused() -> None:
    error = refusal(socks5(user=USER, password="wrong"), b"\x05\x02\x01\x01")
    assert type(error) is ProxyAuthenticationError
    assert isinstance(error, ProxyAuthenticationError) and isinstance(error, CredentialError)
    assert (error.status, error.reason) == (1, "authentication failed")
    assert str(error) == ("SOCKS5 proxy 127.0.0.1:8888 refused the username/password for "
                          "localhost:8883 (status 0x01)")


@pytest.mark.parametrize("credentials", [False, True], ids=["no-credentials", "credentials"])
def test_socks5_no_acceptable_method(credentials: bool) -> None:
    make = socks5(user=USER, password=PASSWORD) if credentials else socks5()
    error = refusal(make, b"\x05\xff")
    assert type(error) is ProxyAuthenticationError
    assert isinstance(error, ProxyError)
    assert (error.status, error.reason) == (0xFF, "no acceptable methods")
    offered = "no authentication, username/password" if credentials else "no authentication"
    assert str(error) == (f"SOCKS5 proxy 127.0.0.1:8888 accepts none of the offered "
                          f"authentication methods ({offered}) for localhost:8883")


@pytest.mark.parametrize(("method", "name"), [(2, "username/password"), (1, "GSSAPI"),
                                              (0x80, "method 0x80")])
def test_socks5_method_not_offered(method: int, name: str) -> None:
    error = refusal(socks5(), bytes([5, method]))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert error.status == method
    assert str(error) == (f"SOCKS5 proxy 127.0.0.1:8888 chose {name}, which was not offered "
                          f"(no authentication), for localhost:8883")


@pytest.mark.parametrize(
    ("answer", "detail"),
    [(b"\x04\x00", "version byte 0x04 instead of 0x05"),
     (b"HTTP/1.1 400 Bad Request\r\n\r\n", "version byte 0x48 instead of 0x05 (is it an HTTP"),
     (b"\x05\x00\x04\x00\x00\x01" + bytes(6), "version byte 0x04 instead of 0x05 in the reply"),
     (b"\x05\x00\x05\x00\x00\x07" + bytes(8), "unknown address type 7 in the reply"),
     (b"\x05\x02\x02\x00", "authentication version byte 0x02 instead of 0x01")],
    ids=["greeting-version", "http-answer", "reply-version", "reply-atyp", "auth-version"],
)
def test_socks5_malformed_answer(answer: bytes, detail: str) -> None:
    make = socks5(user=USER, password=PASSWORD) if b"auth" in detail.encode() else socks5()
    error = refusal(make, answer)
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert error.status is None
    assert str(error).startswith(
        "SOCKS5 proxy 127.0.0.1:8888 sent a malformed answer while asked for localhost:8883: "
        + detail)


def test_socks5_eof_during_handshake() -> None:
    for reply in (REPLY_V4, REPLY_V6, REPLY_NAME):
        eof_everywhere(socks5(), b"\x05\x00" + reply)
        eof_everywhere(socks5(user=USER, password=PASSWORD), b"\x05\x02\x01\x00" + reply)


def test_socks5_bad_arguments() -> None:
    with pytest.raises(ValueError, match="user name"):
        Socks5Layer("h", 1, "", "p")
    with pytest.raises(ValueError, match="user name"):
        Socks5Layer("h", 1, "u" * 256, "p")
    with pytest.raises(ValueError, match="password"):
        Socks5Layer("h", 1, "u", "p" * 256)
    with pytest.raises(ValueError, match="host name"):
        Socks5Layer("h" * 256, 1)
    assert started(lambda: Socks5Layer("h" * 255, 1))[0].established is False


def test_socks5_idna_host_name() -> None:
    layer, _ = started(socks5("bücher.example", 443))
    layer.receive_data(b"\x05\x00")
    name = b"xn--bcher-kva.example"
    assert layer.data_to_send() == b"\x05\x01\x00\x03" + bytes([len(name)]) + name + b"\x01\xbb"


# ============================================================ real proxies: fixtures


def _run(proxy: ProxyProcess) -> Iterator[ProxyProcess]:
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture(scope="session")
def tinyproxy_executable() -> str:
    return require_proxy_program("tinyproxy", "tinyproxy")


@pytest.fixture(scope="session")
def danted_executable() -> str:
    return require_proxy_program("danted", "dante-server")


@pytest.fixture(scope="session")
def tinyproxy(tinyproxy_executable: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[ProxyProcess]:
    """tinyproxy, no authentication, CONNECT to any port."""
    yield from _run(TinyProxy(tinyproxy_executable, tmp_path_factory.mktemp("tinyproxy")))


@pytest.fixture(scope="session")
def tinyproxy_auth(tinyproxy_executable: str, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[ProxyProcess]:
    """tinyproxy requiring Basic auth alice / s3cret."""
    yield from _run(TinyProxy(tinyproxy_executable, tmp_path_factory.mktemp("tinyproxy-auth"),
                              basic_auth=(USER, PASSWORD)))


@pytest.fixture(scope="session")
def tinyproxy_443_only(tinyproxy_executable: str, tmp_path_factory: pytest.TempPathFactory
                       ) -> Iterator[ProxyProcess]:
    """tinyproxy that allows CONNECT to port 443 only."""
    yield from _run(TinyProxy(tinyproxy_executable, tmp_path_factory.mktemp("tinyproxy-443"),
                              connect_ports=(443,)))


@pytest.fixture(scope="session")
def danted(danted_executable: str, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[ProxyProcess]:
    """danted, SOCKS4 and SOCKS5 without authentication."""
    yield from _run(Danted(danted_executable, tmp_path_factory.mktemp("danted")))


@pytest.fixture(scope="session")
def danted_auth(danted_executable: str, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ProxyProcess]:
    """danted requiring SOCKS5 username/password (a throwaway account, see
    ``tests/_proxies.py``)."""
    why = Danted.usable_with_users()
    if why is not None:
        message = f"danted with username/password {why}"
        if in_ci():
            pytest.fail(f"CI={os.environ.get('CI')}: {message}")
        pytest.skip(message)
    yield from _run(Danted(danted_executable, tmp_path_factory.mktemp("danted-auth"),
                           users={SOCKS_USER: SOCKS_PASSWORD}))


@pytest.fixture
def socks4a_relay() -> Iterator[Socks4aRelay]:
    relay = Socks4aRelay()
    try:
        yield relay
    finally:
        relay.close()


# ============================================================ real proxies: driving


class Tunnel:
    """A blocking socket to a proxy with a ``Stack`` on it (tests only)."""

    def __init__(self, proxy_address: str, layers: list[Layer]) -> None:
        host, port = proxy_address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stack = Stack(layers)
        self.received = bytearray()

    def _flush(self) -> None:
        out = self.stack.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self, deadline: float) -> bool:
        """One read (until ``deadline``); app bytes go to ``received``.  False
        if nothing came in time."""
        self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            data = b""
        self.received += self.stack.receive_data(data)
        self._flush()
        return True

    def open(self) -> None:
        """Run every handshake to its end (or its error)."""
        deadline = time.monotonic() + TIMEOUT
        self.stack.start()
        self._flush()
        while not self.stack.established:
            if time.monotonic() >= deadline:
                raise AssertionError(f"handshake incomplete after {TIMEOUT}s; pending layer "
                                     f"{self.stack.pending_layer!r}")
            self.pump(deadline)

    def send(self, data: bytes) -> None:
        if data:
            self.stack.send(data)
            self._flush()

    def close(self) -> None:
        self.sock.close()


def opened(proxy: ProxyProcess | Socks4aRelay, layers: list[Layer]) -> Tunnel:
    """A tunnel whose handshakes succeeded; on failure the proxy's log is shown."""
    tunnel = Tunnel(proxy.address, layers)
    try:
        tunnel.open()
    except (ClientError, AssertionError) as exc:
        tunnel.close()
        log = proxy.log_tail() if isinstance(proxy, ProxyProcess) else f"{proxy.errors}"
        raise AssertionError(f"tunnel through {proxy!r} failed: {exc!r}\n{log}") from exc
    return tunnel


def refused(proxy: ProxyProcess, layer: Layer) -> ClientError:
    """The error a tunnel through ``proxy`` fails with."""
    tunnel = Tunnel(proxy.address, [layer])
    try:
        with pytest.raises(ClientError) as info:
            tunnel.open()
    finally:
        tunnel.close()
    return info.value


def mqtt_round_trip(tunnel: Tunnel) -> None:
    """CONNECT, SUBSCRIBE, PUBLISH QoS 1 to ourselves (PUBACK and the message
    back), DISCONNECT and the broker's close, all through the tunnel."""
    conn = ClientConnection()
    events: list[Event] = []

    def until(done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not done():
            tunnel.send(conn.data_to_send())
            if time.monotonic() >= deadline:
                raise AssertionError(f"no {what} within {TIMEOUT}s; events: {events}")
            assert not tunnel.stack.closed, f"closed while waiting for {what}; events: {events}"
            if tunnel.pump(deadline) and tunnel.received:
                data = bytes(tunnel.received)
                tunnel.received.clear()
                events.extend(conn.receive_data(data, now=time.monotonic()))
            events.extend(conn.tick(time.monotonic()))

    events.extend(conn.connect(unique_name("proxy"), now=time.monotonic(), keep_alive=30))
    until(lambda: any(isinstance(e, Connected) for e in events), "CONNACK")
    topic = unique_name("iotdev/proxy")
    sub = conn.subscribe(topic, 1, now=time.monotonic())
    until(lambda: any(isinstance(e, Subscribed) and e.packet_id == sub for e in events),
          "SUBACK")
    payload = os.urandom(300)
    token = conn.publish(topic, payload, 1, now=time.monotonic())
    until(lambda: any(isinstance(e, PublishAcked) and e.token == token for e in events)
          and any(isinstance(e, MessageReceived) and e.payload == payload for e in events),
          "PUBACK and our message")
    conn.disconnect(now=time.monotonic())
    tunnel.send(conn.data_to_send())
    deadline = time.monotonic() + TIMEOUT
    while not tunnel.stack.closed:  # the broker closes after DISCONNECT
        assert time.monotonic() < deadline, "the broker did not close after DISCONNECT"
        tunnel.pump(deadline)
    tunnel.close()


def layers_for(proxy: Layer, tls: bool, ca: CertAuthority) -> list[Layer]:
    if not tls:
        return [proxy]
    context = make_client_context(server_verification_cert=ca.ca_cert_pem)
    return [proxy, TLSLayer(context, "localhost")]


def target_port(broker: Mosquitto, tls: bool) -> int:
    return broker.tls_port if tls else broker.tcp_port


def closed_port() -> int:
    """A loopback port nobody listens on (it was free a moment ago)."""
    return free_ports(1)[0]


TLS = pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])


# ============================================================ real proxies: HTTP


@pytest.mark.mosquitto
@TLS
def test_http_connect_through_tinyproxy(
    tinyproxy: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority, tls: bool
) -> None:
    options = ProxyOptions("HTTP", tinyproxy.host, str(tinyproxy.port))
    layer = proxy_layer(options, "localhost", target_port(mosquitto, tls))
    mqtt_round_trip(opened(tinyproxy, layers_for(layer, tls, test_ca)))


@pytest.mark.mosquitto
@TLS
def test_http_connect_basic_auth_through_tinyproxy(
    tinyproxy_auth: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority, tls: bool
) -> None:
    options = ProxyOptions("HTTP", tinyproxy_auth.host, tinyproxy_auth.port, USER, PASSWORD)
    layer = proxy_layer(options, "localhost", target_port(mosquitto, tls))
    mqtt_round_trip(opened(tinyproxy_auth, layers_for(layer, tls, test_ca)))


@pytest.mark.mosquitto
@pytest.mark.parametrize(
    ("password", "line"),
    [(None, "407 Proxy Authentication Required"),
     ("wrong", "401 Unauthorized")],  # tinyproxy's answer to wrong credentials
    ids=["no-credentials", "wrong-password"],
)
def test_http_connect_auth_refused_by_tinyproxy(
    tinyproxy_auth: ProxyProcess, mosquitto: Mosquitto, password: str | None, line: str
) -> None:
    user = USER if password else None
    port = mosquitto.tls_port
    error = refused(tinyproxy_auth, HttpConnectLayer("localhost", port, user, password,
                                                     proxy=tinyproxy_auth.address))
    assert type(error) is ProxyAuthenticationError
    assert isinstance(error, ProxyAuthenticationError)
    assert f"{error.status} {error.reason}" == line
    assert str(error) == (f"HTTP proxy {tinyproxy_auth.address} refused CONNECT "
                          f"localhost:{port}: {line}")


@pytest.mark.mosquitto
def test_http_connect_403_from_tinyproxy(
    tinyproxy_443_only: ProxyProcess, mosquitto: Mosquitto
) -> None:
    proxy = tinyproxy_443_only
    port = mosquitto.tls_port
    error = refused(proxy, HttpConnectLayer("localhost", port, proxy=proxy.address))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert error.status == 403
    assert str(error) == (f"HTTP proxy {proxy.address} refused CONNECT localhost:{port}: "
                          f"403 {error.reason}")
    assert error.reason  # tinyproxy's phrase ("Access violation")


def test_http_connect_to_a_closed_port_through_tinyproxy(tinyproxy: ProxyProcess) -> None:
    port = closed_port()
    error = refused(tinyproxy, HttpConnectLayer("127.0.0.1", port, proxy=tinyproxy.address))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert error.status is not None and 500 <= error.status < 600
    assert str(error).startswith(
        f"HTTP proxy {tinyproxy.address} refused CONNECT 127.0.0.1:{port}: {error.status} ")


# ============================================================ real proxies: SOCKS


@pytest.mark.mosquitto
@TLS
@pytest.mark.parametrize("user", [None, "iotdev"], ids=["no-userid", "userid"])
def test_socks4_through_danted(
    danted: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority, tls: bool,
    user: str | None,
) -> None:
    options = ProxyOptions("SOCKS4", danted.host, danted.port, user)
    layer = proxy_layer(options, "127.0.0.1", target_port(mosquitto, tls))
    mqtt_round_trip(opened(danted, layers_for(layer, tls, test_ca)))


def test_socks4_to_a_closed_port_through_danted(danted: ProxyProcess) -> None:
    port = closed_port()
    error = refused(danted, Socks4Layer("127.0.0.1", port, proxy=danted.address))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert (error.status, error.reason) == (0x5B, "request rejected or failed")


@pytest.mark.mosquitto
@TLS
def test_socks4a_through_relay(
    socks4a_relay: Socks4aRelay, mosquitto: Mosquitto, test_ca: CertAuthority, tls: bool
) -> None:
    # danted 1.4 has no SOCKS4a (it tries to connect to 0.0.0.1), hence the relay.
    port = target_port(mosquitto, tls)
    layer = Socks4Layer("localhost", port, "dev1", proxy=socks4a_relay.address)
    mqtt_round_trip(opened(socks4a_relay, layers_for(layer, tls, test_ca)))
    assert socks4a_relay.requests == [(b"dev1", "localhost", port)]
    assert socks4a_relay.errors == []


@pytest.mark.mosquitto
@pytest.mark.parametrize(
    ("host", "tls"), [("localhost", False), ("localhost", True), ("127.0.0.1", False)],
    ids=["name-tcp", "name-tls", "ipv4-tcp"],
)
def test_socks5_through_danted(
    danted: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority, host: str, tls: bool
) -> None:
    options = ProxyOptions("SOCKS5", danted.host, danted.port)
    layer = proxy_layer(options, host, target_port(mosquitto, tls))
    mqtt_round_trip(opened(danted, layers_for(layer, tls, test_ca)))


def test_socks5_to_a_closed_port_through_danted(danted: ProxyProcess) -> None:
    port = closed_port()
    error = refused(danted, Socks5Layer("localhost", port, proxy=danted.address))
    assert type(error) is ProxyError
    assert isinstance(error, ProxyError)
    assert (error.status, error.reason) == (5, "connection refused")
    assert str(error) == (f"SOCKS5 proxy {danted.address} refused CONNECT localhost:{port}: "
                          f"connection refused (reply 5)")


@pytest.mark.mosquitto
@TLS
def test_socks5_username_password_through_danted(
    danted_auth: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority, tls: bool
) -> None:
    options = ProxyOptions("SOCKS5", danted_auth.host, danted_auth.port, SOCKS_USER,
                           SOCKS_PASSWORD)
    layer = proxy_layer(options, "localhost", target_port(mosquitto, tls))
    mqtt_round_trip(opened(danted_auth, layers_for(layer, tls, test_ca)))


@pytest.mark.mosquitto
def test_socks5_wrong_password_refused_by_danted(
    danted_auth: ProxyProcess, mosquitto: Mosquitto
) -> None:
    layer = Socks5Layer("localhost", mosquitto.tcp_port, SOCKS_USER, "not-" + SOCKS_PASSWORD,
                        proxy=danted_auth.address)
    error = refused(danted_auth, layer)
    assert type(error) is ProxyAuthenticationError
    assert isinstance(error, ProxyAuthenticationError)
    assert error.reason == "authentication failed"
    assert error.status != 0


@pytest.mark.mosquitto
def test_socks5_without_credentials_refused_by_danted(
    danted_auth: ProxyProcess, mosquitto: Mosquitto
) -> None:
    error = refused(danted_auth, Socks5Layer("localhost", mosquitto.tcp_port,
                                             proxy=danted_auth.address))
    assert type(error) is ProxyAuthenticationError
    assert isinstance(error, ProxyAuthenticationError)
    assert (error.status, error.reason) == (0xFF, "no acceptable methods")


# ------------------------------------------ the generic clients through proxies


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", ["tls", "websockets"])
def test_sync_client_through_http_proxy(
    tinyproxy_auth: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority, transport: str
) -> None:
    from iotdev.mqtt import MQTTClient

    got: list[bytes] = []
    arrived = threading.Event()
    topic = unique_name("iotdev/proxy/sync")
    client = MQTTClient(
        "localhost", mosquitto.tls_port if transport == "tls" else mosquitto.ws_port,
        client_id=unique_name("via-http"), transport=transport,  # type: ignore[arg-type]
        server_verification_cert=test_ca.ca_cert_pem, connect_timeout=10,
        proxy_options=ProxyOptions("HTTP", tinyproxy_auth.host, tinyproxy_auth.port,
                                   "alice", "s3cret"),
        on_message=lambda m: (got.append(m.payload), arrived.set()))
    try:
        client.connect(timeout=10)
        client.subscribe(topic, 1, timeout=10)
        client.publish(topic, b"through tinyproxy", 1).result(10)
        assert arrived.wait(10)
    finally:
        client.shutdown()
    assert got == [b"through tinyproxy"]


@pytest.mark.mosquitto
def test_sync_client_proxy_refusal_is_typed(
    tinyproxy_auth: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority
) -> None:
    from iotdev._errors import ProxyAuthenticationError
    from iotdev.mqtt import MQTTClient

    client = MQTTClient(
        "localhost", mosquitto.tls_port, client_id="x", transport="tls",
        server_verification_cert=test_ca.ca_cert_pem, connect_timeout=10,
        proxy_options=ProxyOptions("HTTP", tinyproxy_auth.host, tinyproxy_auth.port))
    try:
        with pytest.raises(ProxyAuthenticationError) as info:
            client.connect(timeout=10)
        assert info.value.status == 407
    finally:
        client.shutdown()


@pytest.mark.mosquitto
def test_async_client_through_socks5(
    danted: ProxyProcess, mosquitto: Mosquitto, test_ca: CertAuthority
) -> None:
    import asyncio

    from iotdev.aio import MQTTClient

    async def main() -> bytes:
        topic = unique_name("iotdev/proxy/aio")
        async with MQTTClient(
            "localhost", mosquitto.tls_port, client_id=unique_name("via-socks"),
            transport="tls", server_verification_cert=test_ca.ca_cert_pem, connect_timeout=10,
            proxy_options=ProxyOptions("SOCKS5", danted.host, danted.port),
        ) as client:
            stream = client.messages()
            await client.subscribe(topic, 1, timeout=10)
            await asyncio.wait_for(client.publish(topic, b"through danted", 1), 10)
            message = await asyncio.wait_for(anext(stream), 10)
            return message.payload

    assert asyncio.run(main()) == b"through danted"
