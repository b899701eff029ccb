"""A stand-in IoT Edge workload API for the module client tests: h11 on a Unix
socket (or TCP, for ``http://`` URIs), answering the statuses a test asks for
(the emulator's workload API never fails), signing with a key it is given, and
holding signatures until a test lets them go."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import threading
from pathlib import Path
from typing import Any

import h11

TIMEOUT = 15.0


class FakeWorkload:
    """A workload API on a Unix socket answering ``statuses[path]`` (200 with
    ``bodies[path]``), written with h11: the error statuses the emulator's
    workload API never gives."""

    def __init__(self, path: Path | None, statuses: dict[str, int],
                 bodies: dict[str, Any] | None = None, key: str | None = None) -> None:
        self.statuses, self.bodies, self.key = statuses, bodies or {}, key
        if path is None:  # http://127.0.0.1:{port}
            self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.server.bind(("127.0.0.1", 0))
        else:
            self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.server.bind(str(path))
        self.server.listen()
        self.requests: list[tuple[str, bytes]] = []
        self.gate = threading.Event()  # a signature is answered once it is set
        self.gate.set()
        self.signing = threading.Event()  # a signature request arrived
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.server.accept()
            except OSError:
                return
            with sock:
                conn = h11.Connection(h11.SERVER)
                request, data = None, b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(sock.recv(65536))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        data += event.data
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
                assert request is not None
                self.requests.append((request.target.decode(), data))
                path = request.target.decode().split("?")[0]
                key = "sign" if path.endswith("/sign") else "/" + path.split("/")[-1]
                status = self.statuses.get(key, 200)
                answer = self.bodies.get(key, {"message": "no"})
                if key == "sign":
                    self.signing.set()
                    self.gate.wait(TIMEOUT)
                if key == "sign" and self.key is not None:
                    text = base64.b64decode(json.loads(data)["data"])
                    answer = {"digest": base64.b64encode(hmac.new(
                        base64.b64decode(self.key), text, hashlib.sha256).digest()).decode()}
                body = json.dumps(answer).encode()
                sock.sendall(conn.send(h11.Response(status_code=status, headers=[
                    ("Content-Length", str(len(body))), ("Connection", "close")])))
                sock.sendall(conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))

    def close(self) -> None:
        self.server.close()
