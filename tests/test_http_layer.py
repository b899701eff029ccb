"""The HTTP layer (``iotdev.transport._http``) and the upload flows' retry and
error handling, against scripted servers on loopback that answer well, badly or
with hostile bytes.  Every server runs on a thread of its own, every wait has a
timeout, and no test asserts on wall time: a hang fails through the runner's
join timeout instead."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iotdev import OperationCancelled, OperationTimeout, ServiceError
from iotdev._errors import ConnectionDroppedError, ConnectionFailedError
from iotdev._upload import UploadConfig, notify, open_source, storage_info, upload
from iotdev.transport._endpoint import Endpoint
from iotdev.transport._http import (
    Deadline,
    HTTPRequest,
    HTTPSession,
    MalformedResponseError,
    run_async,
    run_sync,
)

WAIT = 20.0

Script = Callable[[socket.socket, int], None]


def read_request(sock: socket.socket) -> tuple[bytes, bytes]:
    """One request's head and body (``Content-Length`` bodies only)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("the client closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("the client closed mid-body")
        body += chunk
    return head, body


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and runs ``script(sock, index)`` for each."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._run, daemon=True)
        self._accept.start()

    def _run(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stop.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            index = self.connections
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(sock, index), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket, index: int) -> None:
        try:
            with sock:
                self.script(sock, index)
        except (EOFError, OSError):
            pass
        except BaseException as exc:  # pragma: no cover - shown by close()
            self.errors.append(exc)

    def close(self) -> None:
        self.stop.set()
        self.listener.close()
        self._accept.join(WAIT)
        for thread in self._threads:
            thread.join(WAIT)
        assert not self.errors, self.errors

    def endpoint(self) -> Endpoint:
        return Endpoint(host="127.0.0.1", port=self.port, transport="tcp",
                        connect_timeout=5.0)


@pytest.fixture
def serve() -> Iterator[Callable[[Script], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: Script) -> ScriptedServer:
        server = ScriptedServer(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def response(status: int = 200, body: bytes = b"", headers: str = "",
             reason: str = "OK") -> bytes:
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
            .encode() + body)


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on a thread and wait at most WAIT seconds (a hang fails)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the call hung"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def get(server: ScriptedServer, *, count: int = 1, read_timeout: float = 5.0,
        deadline: float | None = 10.0, max_body: int = 1 << 20) -> list[Any]:
    session = HTTPSession(read_timeout=read_timeout, max_body=max_body)

    def flow() -> Any:
        yield Deadline(deadline, "the test request")
        out = []
        for i in range(count):
            request = HTTPRequest("POST", f"/r/{i}?sig=SECRET", "hub.example", [], b'{"a": 1}')
            out.append((yield from session.connection(server.endpoint()).request(request)))
        return out

    return in_thread(lambda: run_sync(flow(), session))  # type: ignore[no-any-return]


# ------------------------------------------------------------------ good answers


def test_keep_alive_reuses_one_connection(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        for _ in range(3):
            head, body = read_request(sock)
            server.requests.append((head, body))
            sock.sendall(response(200, b'{"ok": true}', "Content-Type: application/json\r\n"))

    server = serve(script)
    answers = get(server, count=3)
    assert [a.status for a in answers] == [200, 200, 200]
    assert json.loads(answers[0].body) == {"ok": True}
    assert answers[0].header("Content-Type") == "application/json"
    assert server.connections == 1
    head, body = server.requests[0]
    assert head.startswith(b"POST /r/0?sig=SECRET HTTP/1.1\r\n")
    assert b"\r\nhost: hub.example" in head.lower()
    assert body == b'{"a": 1}'


def test_a_closed_keep_alive_connection_is_replaced(
        serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(response(200, b"x"))  # keep-alive promised, then closed

    server = serve(script)
    answers = get(server, count=3)
    assert [a.body for a in answers] == [b"x", b"x", b"x"]
    assert server.connections == 3


def test_connection_close_is_honoured(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(response(200, b"", "Connection: close\r\n"))

    server = serve(script)
    assert [a.status for a in get(server, count=2)] == [200, 200]
    assert server.connections == 2


def test_interim_100_continue_is_skipped(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" + response(201, b"made", reason="Created"))

    [answer] = get(serve(script))
    assert (answer.status, answer.reason, answer.body) == (201, "Created", b"made")


# ------------------------------------------------------------------ hostile answers


@pytest.mark.parametrize("raw", [
    b"HTTP/1.1 abc OK\r\n\r\n",
    b"SMTP ready\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header Line\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_a_malformed_response_is_a_typed_error(
        serve: Callable[[Script], ScriptedServer], raw: bytes) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(raw)
        server.stop.wait(WAIT)

    server = serve(script)
    with pytest.raises(MalformedResponseError, match=r"bad response from 127\.0\.0\.1"):
        get(server)
    server.stop.set()


def test_an_oversize_head_is_refused(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        try:
            for _ in range(10_000):  # 10 MB of headers, never ending the head
                sock.sendall(b"X-Filler: " + b"a" * 1000 + b"\r\n")
        except OSError:
            pass

    with pytest.raises(MalformedResponseError, match="over our limit of 65536"):
        get(serve(script))


def test_an_oversize_body_is_refused(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(response(200, b"y" * 5000))

    with pytest.raises(MalformedResponseError, match="5000 bytes of body"):
        get(serve(script), max_body=1000)


def test_an_oversize_chunked_body_is_refused(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(1000):
                sock.sendall(b"400\r\n" + b"z" * 1024 + b"\r\n")
        except OSError:
            pass

    with pytest.raises(MalformedResponseError, match="over our limit of 10000 bytes"):
        get(serve(script), max_body=10_000)


def test_a_truncated_body_is_a_typed_error(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten..")

    with pytest.raises(MalformedResponseError,
                       match="ended before the response was complete"):
        get(serve(script))


def test_a_silent_server_times_out(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        server.stop.wait(WAIT)

    server = serve(script)
    with pytest.raises(OperationTimeout, match="no progress waiting for data from"):
        get(server, read_timeout=0.3)
    server.stop.set()


def test_a_slow_drip_hits_the_deadline(serve: Callable[[Script], ScriptedServer]) -> None:
    """One byte every 50 ms never trips the 5 s idle timeout, but the exchange's
    deadline ends it."""
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        sock.sendall(b"HTTP/1.1 200 OK\r\n")
        while not server.stop.wait(0.05):
            sock.sendall(b"X")

    server = serve(script)
    with pytest.raises(OperationTimeout, match="the test request did not complete within 1 s"):
        get(server, read_timeout=5.0, deadline=1.0)
    server.stop.set()


def test_connection_refused_is_a_connection_failure() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    endpoint = Endpoint(host="127.0.0.1", port=port, transport="tcp", connect_timeout=5.0)
    session = HTTPSession()
    flow = session.connection(endpoint).request(HTTPRequest("GET", "/", "h"))
    with pytest.raises(ConnectionFailedError, match=f"127.0.0.1:{port}"):
        in_thread(lambda: run_sync(flow, session))


def test_cancel_from_another_thread_ends_a_blocked_read(
        serve: Callable[[Script], ScriptedServer]) -> None:
    arrived = threading.Event()

    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)
        arrived.set()
        server.stop.wait(WAIT)

    server = serve(script)
    session = HTTPSession(read_timeout=60.0)
    flow = session.connection(server.endpoint()).request(HTTPRequest("GET", "/", "h"))
    box: dict[str, BaseException] = {}

    def call() -> None:
        try:
            run_sync(flow, session)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    assert arrived.wait(WAIT)
    session.cancel("shutdown() was called")
    thread.join(WAIT)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), OperationCancelled)
    assert all(c.handle is None for c in session.connections.values())
    server.stop.set()


def test_async_driver_reads_and_times_out(serve: Callable[[Script], ScriptedServer]) -> None:
    def good(sock: socket.socket, index: int) -> None:
        for _ in range(2):
            read_request(sock)
            sock.sendall(response(200, b"async"))

    def silent(sock: socket.socket, index: int) -> None:
        read_request(sock)
        bad.stop.wait(WAIT)

    ok, bad = serve(good), serve(silent)

    async def main() -> None:
        session = HTTPSession()

        def flow() -> Any:
            conn = session.connection(ok.endpoint())
            first = yield from conn.request(HTTPRequest("GET", "/", "h"))
            second = yield from conn.request(HTTPRequest("GET", "/", "h"))
            return first.body + second.body

        assert await asyncio.wait_for(run_async(flow(), session), WAIT) == b"asyncasync"
        assert ok.connections == 1
        session = HTTPSession(read_timeout=0.3)
        with pytest.raises(OperationTimeout):
            await asyncio.wait_for(run_async(
                session.connection(bad.endpoint()).request(HTTPRequest("GET", "/", "h")),
                session), WAIT)
        bad.stop.set()

    asyncio.run(main())


# ------------------------------------------------------------------ upload flows


def config_for(server: ScriptedServer, **kw: Any) -> UploadConfig:
    def blob_endpoint(host: str, port: int) -> Endpoint:
        return Endpoint(host=host, port=port, transport="tcp", connect_timeout=5.0)

    options: dict[str, Any] = dict(backoff=0.01, backoff_max=0.05, rng=random.Random(7))
    options.update(kw)
    return UploadConfig(hostname="hub.example", device_id="dev 1/x",
                        hub_endpoint=server.endpoint(), blob_endpoint=blob_endpoint,
                        authorization=lambda: "SharedAccessSignature sr=x&sig=TOPSECRET&se=1",
                        user_agent="iotdev/test(3.11)", **options)


INFO = {"correlationId": "c1", "hostName": "h", "containerName": "c", "blobName": "d/f",
        "sasToken": "?sig=s"}


def test_storage_info_request_shape(serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        server.requests.append(read_request(sock))
        sock.sendall(response(200, json.dumps(INFO).encode()))

    server = serve(script)
    session = HTTPSession()
    info = in_thread(lambda: run_sync(storage_info(config_for(server), session, "f"), session))
    assert info == INFO
    head, body = server.requests[0]
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /devices/dev+1%2Fx/files?api-version=2019-10-01 HTTP/1.1"
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    assert headers["host"] == "hub.example"
    assert headers["authorization"] == "SharedAccessSignature sr=x&sig=TOPSECRET&se=1"
    assert headers["user-agent"] == "iotdev%2Ftest%283.11%29"
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert json.loads(body) == {"blobName": "f"}


def test_retries_on_503_and_429_then_succeeds(serve: Callable[[Script], ScriptedServer]) -> None:
    answers = [response(503, b"{}", reason="Service Unavailable"),
               response(429, b"{}", "Retry-After: 0\r\n", reason="Too Many Requests"),
               response(204, reason="No Content")]

    def script(sock: socket.socket, index: int) -> None:
        while answers:
            server.requests.append(read_request(sock))
            sock.sendall(answers.pop(0))

    server = serve(script)
    session = HTTPSession()
    in_thread(lambda: run_sync(notify(config_for(server), session, "c1", True, 201, "ok"),
                               session))
    assert len(server.requests) == 3
    assert json.loads(server.requests[0][1]) == {
        "correlationId": "c1", "isSuccess": True, "statusCode": 201, "statusDescription": "ok"}


def test_a_4xx_is_not_retried_and_names_the_service_code(
        serve: Callable[[Script], ScriptedServer]) -> None:
    error = {"Message": "ErrorCode:IotHubUnauthorizedAccess;Unauthorized", "ExceptionMessage": ""}

    def script(sock: socket.socket, index: int) -> None:
        while True:
            server.requests.append(read_request(sock))
            sock.sendall(response(401, json.dumps(error).encode(), reason="Unauthorized"))

    server = serve(script)
    session = HTTPSession()
    with pytest.raises(ServiceError) as info:
        in_thread(lambda: run_sync(storage_info(config_for(server), session, "f"), session))
    assert info.value.status == 401
    assert info.value.code == "IotHubUnauthorizedAccess"
    assert "401 Unauthorized (IotHubUnauthorizedAccess): Unauthorized" in str(info.value)
    assert "TOPSECRET" not in str(info.value) and "api-version" not in str(info.value)
    assert len(server.requests) == 1


def test_throttling_that_persists_is_a_throttled_service_error(
        serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        while True:
            server.requests.append(read_request(sock))
            sock.sendall(response(429, b"{}", "Retry-After: 0\r\n", reason="Too Many Requests"))

    server = serve(script)
    session = HTTPSession()
    with pytest.raises(ServiceError) as info:
        in_thread(lambda: run_sync(storage_info(config_for(server, retries=2), session, "f"),
                                   session))
    assert info.value.throttled and info.value.retry_after == 0.0
    assert len(server.requests) == 3


def test_dropped_connections_are_retried_then_reported(
        serve: Callable[[Script], ScriptedServer]) -> None:
    def script(sock: socket.socket, index: int) -> None:
        read_request(sock)  # and close without answering

    server = serve(script)
    session = HTTPSession()
    with pytest.raises(ConnectionDroppedError):
        in_thread(lambda: run_sync(storage_info(config_for(server, retries=2), session, "f"),
                                   session))
    assert server.connections == 3


def test_a_failed_blob_put_is_notified_as_a_failure(
        serve: Callable[[Script], ScriptedServer]) -> None:
    """The hub (storage info, notification) and a storage service that refuses
    the SAS with Azure Storage's XML error, on one scripted server."""
    xml = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code>'
           b"<Message>Signature did not match</Message></Error>")

    def script(sock: socket.socket, index: int) -> None:
        while True:
            head, body = read_request(sock)
            server.requests.append((head, body))
            if b"/files?" in head.split(b"\r\n")[0]:
                info = dict(INFO, hostName=f"127.0.0.1:{server.port}")
                sock.sendall(response(200, json.dumps(info).encode()))
            elif head.startswith(b"PUT"):
                sock.sendall(response(403, xml, reason="Forbidden"))
            else:
                sock.sendall(response(204, reason="No Content"))

    server = serve(script)
    session = HTTPSession()
    source = open_source(b"payload")
    with pytest.raises(ServiceError) as info:
        in_thread(lambda: run_sync(upload(config_for(server), session, "f", source, None),
                                   session))
    assert info.value.status == 403 and info.value.code == "AuthenticationFailed"
    assert "sig=s" not in str(info.value)
    lines = [h.split(b"\r\n")[0] for h, _ in server.requests]
    assert lines[1] == b"PUT /c/d/f?sig=s HTTP/1.1"
    notification = json.loads(server.requests[-1][1])
    assert notification["isSuccess"] is False and notification["statusCode"] == 403
    assert "AuthenticationFailed" in notification["statusDescription"]
