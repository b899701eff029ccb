"""The IoT Edge workload API client: what a module made with
``create_from_edge_environment()`` asks its Edge runtime for, over the Unix
socket of a ``unix:///...`` ``IOTEDGE_WORKLOADURI`` (or plain HTTP for an
``http://host:port`` one), with h11 (``transport/_http.py``'s flows):

* ``GET /trust-bundle?api-version=...``: ``{"certificate": PEM}``, the CAs
  the module trusts for its gateway (edgeHub);
* ``POST /modules/{module}/genid/{genid}/sign?api-version=...`` with
  ``{"keyId": "primary", "algo": "HMACSHA256", "data": base64(text)}``:
  ``{"digest": base64(HMAC-SHA256(module key, text))}``, the signature of each
  SAS token (the module never sees its key), renewals included.

``sign`` blocks (``run_sync``: the runtime is a local daemon, and the sync
face's I/O thread connects blocking anyway); ``sign_async`` lets the asyncio
face sign on its loop ahead of a CONNECT.  Every
failure is an ``IoTEdgeError``, which is an ``OSError`` (v2 raises one when
the trust bundle cannot be had) and a ``ValueError`` (v2's error when a token
cannot be signed at creation), naming the URI and what went wrong."""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from urllib.parse import quote, quote_plus, urlsplit

from ._errors import ClientError, OperationCancelled, OperationTimeout
from .transport._endpoint import Endpoint
from .transport._http import (
    Deadline,
    Flow,
    HTTPConnection,
    HTTPRequest,
    HTTPResponse,
    HTTPSession,
    run_async,
    run_sync,
)

__all__ = ["IoTEdgeError", "Workload", "assemble_token", "build_sas_token", "token_text"]

TIMEOUT = 10.0
"""Seconds for one call of the workload API (connect, request, answer): a
local daemon answers in milliseconds."""
SIGNING = "signing a SAS token"


class IoTEdgeError(OSError, ValueError):
    """The IoT Edge workload API failed: unreachable, an error status, or an
    answer without what was asked for."""


@dataclass(frozen=True)
class Workload:
    """The workload API of one module (from its ``IOTEDGE_*`` environment).

    Args:
        uri: ``IOTEDGE_WORKLOADURI`` (``unix:///path`` or ``http://host:port``).
        module_id: ``IOTEDGE_MODULEID``.
        generation_id: ``IOTEDGE_MODULEGENERATIONID``.
        api_version: ``IOTEDGE_APIVERSION``.
        user_agent: sent with each request.

    Raises:
        IoTEdgeError: a URI that is neither.
    """

    uri: str
    module_id: str
    generation_id: str
    api_version: str
    user_agent: str = "iotdev"

    def __post_init__(self) -> None:
        self._target()  # refuse a bad URI at once

    def _target(self) -> tuple[str | None, str, int, str]:
        """``(unix path or None, host, port, path prefix)``."""
        if self.uri.startswith("unix://"):
            path = self.uri[len("unix://"):].rstrip("/") or ""
            if not path.startswith("/"):
                raise IoTEdgeError(f"IOTEDGE_WORKLOADURI {self.uri!r}: a unix:// URI needs "
                                   "an absolute socket path")
            return path, "localhost", 80, ""
        parts = urlsplit(self.uri)
        if parts.scheme != "http" or not parts.hostname:
            raise IoTEdgeError(f"IOTEDGE_WORKLOADURI {self.uri!r}: expected unix:///path or "
                               "http://host:port")
        try:
            port = parts.port or 80
        except ValueError:
            raise IoTEdgeError(f"IOTEDGE_WORKLOADURI {self.uri!r}: bad port") from None
        return None, parts.hostname, port, parts.path.rstrip("/")

    def _exchange(self, method: str, path: str, body: bytes,
                  what: str) -> tuple[Flow[HTTPResponse], HTTPSession]:
        """The flow of one request (run it with ``run_sync`` / ``run_async``)."""
        unix_path, host, port, prefix = self._target()
        session = HTTPSession(read_timeout=TIMEOUT, max_body=256 * 1024)
        target = f"{prefix}{path}?api-version={quote_plus(self.api_version)}"
        headers = [("User-Agent", quote(self.user_agent, safe=""))]
        if body:
            headers.append(("Content-Type", "application/json"))
        request = HTTPRequest(method, target, host, headers, body)

        def flow() -> Flow[HTTPResponse]:
            yield Deadline(TIMEOUT, f"{what} (IoT Edge workload API)")
            conn: HTTPConnection = (session.unix_connection(unix_path) if unix_path else
                                    session.connection(Endpoint(host=host, port=port)))
            return (yield from conn.request(request))

        return flow(), session

    def _failed(self, what: str, exc: BaseException) -> IoTEdgeError:
        error = IoTEdgeError(f"{what}: the IoT Edge workload API at {self.uri} could not "
                             f"be reached: {exc}")
        error.__cause__ = exc
        return error

    def _answer(self, response: HTTPResponse, method: str, path: str,
                what: str) -> dict[str, object]:
        if response.status >= 300:
            detail = response.body[:300].decode("utf-8", "replace").strip()
            raise IoTEdgeError(f"{what}: the IoT Edge workload API at {self.uri} answered "
                               f"{response.status} {response.reason} to {method} {path}"
                               + (f": {detail}" if detail else ""))
        try:
            document = json.loads(response.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            document = None
        if not isinstance(document, dict):
            raise IoTEdgeError(f"{what}: the IoT Edge workload API at {self.uri} answered "
                               f"{method} {path} with something that is not a JSON object")
        return document

    def _call(self, method: str, path: str, body: bytes, what: str) -> dict[str, object]:
        flow, session = self._exchange(method, path, body, what)
        try:
            response = run_sync(flow, session)
        except (ClientError, OperationTimeout, OperationCancelled) as exc:
            raise self._failed(what, exc) from exc
        return self._answer(response, method, path, what)

    def trust_bundle(self) -> str:
        """The PEM certificates the module trusts for its gateway.

        Raises:
            IoTEdgeError: see the class.
        """
        document = self._call("GET", "/trust-bundle", b"", "getting the trust bundle")
        certificate = document.get("certificate")
        if not isinstance(certificate, str) or not certificate:
            raise IoTEdgeError(f"the trust bundle from {self.uri} has no certificate")
        return certificate

    def _sign_request(self, text: str) -> tuple[str, bytes]:
        path = (f"/modules/{quote(self.module_id, safe='')}/genid/"
                f"{quote(self.generation_id, safe='')}/sign")
        body = json.dumps({"keyId": "primary", "algo": "HMACSHA256",
                           "data": base64.b64encode(text.encode("utf-8")).decode("ascii")})
        return path, body.encode("utf-8")

    def _digest(self, document: dict[str, object]) -> str:
        digest = document.get("digest")
        if not isinstance(digest, str) or not digest:
            raise IoTEdgeError(f"the workload API at {self.uri} signed without a digest")
        return digest

    def sign(self, text: str) -> str:
        """The module's HMAC-SHA256 signature of ``text`` (base64), blocking.

        Raises:
            IoTEdgeError: see the class.
        """
        path, body = self._sign_request(text)
        return self._digest(self._call("POST", path, body, SIGNING))

    async def sign_async(self, text: str) -> str:
        """As ``sign``, on the running loop.

        Raises:
            IoTEdgeError: see the class.
        """
        path, body = self._sign_request(text)
        flow, session = self._exchange("POST", path, body, SIGNING)
        try:
            response = await run_async(flow, session)
        except (ClientError, OperationTimeout, OperationCancelled) as exc:
            raise self._failed(SIGNING, exc) from exc
        return self._digest(self._answer(response, "POST", path, SIGNING))


def token_text(resource_uri: str, ttl: int) -> tuple[str, int]:
    """What a SAS token for ``resource_uri`` living ``ttl`` seconds signs, and
    its expiry."""
    expiry = int(time.time() + ttl)
    return f"{quote(resource_uri, safe='')}\n{expiry}", expiry


def assemble_token(text: str, signature: str, expiry: int) -> str:
    """The token of ``text`` (``token_text``) and its signature, byte for byte
    as v2's ``RenewableSasToken``."""
    encoded = text.split("\n", 1)[0]
    return f"SharedAccessSignature sr={encoded}&sig={quote(signature, safe='')}&se={expiry}"


def build_sas_token(resource_uri: str, workload: Workload, ttl: int) -> tuple[str, float]:
    """A SAS token for ``resource_uri`` living ``ttl`` seconds, signed by the
    workload API (blocking); and its expiry.

    Raises:
        IoTEdgeError: the signature could not be had.
    """
    text, expiry = token_text(resource_uri, ttl)
    return assemble_token(text, workload.sign(text), expiry), float(expiry)
