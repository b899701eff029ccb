"""File upload: IoT Hub's two HTTPS calls and the blob upload, as sans-IO flows.

Theory of operation
-------------------
Everything here is a *flow* (``transport/_http.py``): a generator that yields
I/O operations; the sync client runs it with ``run_sync`` in the caller's
thread, the asyncio client with ``run_async`` on its loop.  No sockets, clocks
or threads here; randomness (back-off jitter) comes from the ``Random`` in
``UploadConfig``.

* ``storage_info``: ``POST /devices/{quote_plus(id)}/files?api-version=2019-10-01``
  with ``{"blobName": ...}``, the SAS ``Authorization`` header (none for X.509:
  the TLS client certificate authenticates), ``User-Agent`` and ``Host`` the hub's
  name even when the TCP/TLS target is a gateway (reference 8.1).
* ``notify``: ``POST .../files/notifications`` (reference 8.3).
* ``upload``: storage info, then the blob itself at
  ``https://{hostName}/{containerName}/{blobName}{sasToken}``: up to
  ``block_size`` bytes in one ``PUT`` (``x-ms-blob-type: BlockBlob``); more as
  ``Put Block`` requests of ``block_size`` bytes and one ``Put Block List``,
  reading the source one block ahead (so memory stays at two blocks whatever
  the file's size); then the notification with the real outcome, also when the
  upload failed (``is_success=False``; the hub would otherwise hold the upload
  slot until the SAS expires).  The two hub calls share one kept-alive
  connection.

Retries: a request answered 429, 408 or 5xx, or whose connection failed or
dropped (not a TLS or proxy-credential refusal: those do not heal), is tried
again up to ``retries`` more times after
``min(backoff_max, backoff * 2**n)`` seconds with +-25 % jitter, or after the
service's ``Retry-After`` (seconds or an HTTP date; capped at
``retry_after_max``).  Other statuses raise ``ServiceError`` at once, with the
status, the service's error code and message, and the request without its
query (a SAS token never appears in an error).
"""

from __future__ import annotations

import base64
import email.utils
import json
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import quote, quote_plus, urlsplit

from ._compat import add_note
from ._deps import require
from ._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    CredentialError,
    ServiceError,
    TLSError,
)
from .transport._endpoint import Endpoint

require("h11", "file upload (get_storage_info_for_blob, notify_blob_upload_status, upload_blob)")

from .transport._http import (  # noqa: E402  (after the check: it imports h11)
    Deadline,
    Flow,
    HTTPRequest,
    HTTPResponse,
    HTTPSession,
    Sleep,
)

__all__ = ["BlobUploadResult", "UploadConfig", "notify", "open_source", "storage_info",
           "upload"]

API_VERSION = "2019-10-01"
STORAGE_VERSION = "2019-02-02"
BLOCK_SIZE = 4 * 1024 * 1024
"""Bytes per Put Block (and the largest blob sent in one PUT)."""
MAX_BLOCKS = 50_000
"""Azure Storage's limit of blocks per blob."""
MAX_DESCRIPTION = 1024


@dataclass
class UploadConfig:
    """What the flows need of the client's configuration."""

    hostname: str
    device_id: str
    hub_endpoint: Endpoint
    """Where the hub calls go: the gateway or the hub, its HTTPS port, TLS, proxy."""
    blob_endpoint: Callable[[str, int], Endpoint]
    """The endpoint for a blob host and port (TLS with certifi's roots plus the
    user's ``server_verification_cert``, the same proxy)."""
    authorization: Callable[[], str | None]
    """The ``Authorization`` header value (a fresh SAS token), ``None`` for X.509."""
    user_agent: str
    timeout: float = 120.0
    """Seconds for each whole HTTP exchange (one request and its response)."""
    retries: int = 3
    backoff: float = 1.0
    backoff_max: float = 30.0
    retry_after_max: float = 60.0
    block_size: int = BLOCK_SIZE
    rng: random.Random = field(default_factory=random.Random)


@dataclass(frozen=True)
class BlobUploadResult:
    """What ``upload_blob`` did.

    Attributes:
        blob_name: the blob's name in the container (``{device_id}/{name}``).
        url: the blob's URL, without the SAS token.
        size: bytes uploaded.
        blocks: Put Block requests used (0: one PUT).
        correlation_id: the hub's id for this upload.
        status_code: the storage service's final status (201).
    """

    blob_name: str
    url: str
    size: int
    blocks: int
    correlation_id: str
    status_code: int


# ------------------------------------------------------------------ requests


def _hub_request(config: UploadConfig, method: str, path: str, body: Any) -> HTTPRequest:
    data = json.dumps(body).encode("utf-8")
    headers = [("Accept", "application/json"),
               ("Content-Type", "application/json; charset=utf-8"),
               ("User-Agent", quote_plus(config.user_agent))]
    auth = config.authorization()
    if auth is not None:
        headers.append(("Authorization", auth))
    target = f"/devices/{quote_plus(config.device_id)}{path}?api-version={API_VERSION}"
    return HTTPRequest(method, target, config.hostname, headers, data)


def _call(config: UploadConfig, session: HTTPSession, endpoint: Endpoint,
          make: Callable[[], HTTPRequest], what: str) -> Flow[HTTPResponse]:
    """One request with retries; returns a response below 300 or raises."""
    attempt = 0
    while True:
        request = make()  # fresh each time: a SAS header is regenerated
        yield Deadline(config.timeout, what)
        try:
            response = yield from session.connection(endpoint).request(request)
        except (ConnectionFailedError, ConnectionDroppedError) as exc:
            if attempt >= config.retries or isinstance(exc, TLSError | CredentialError):
                raise  # a certificate or a password does not get better by retrying
            delay = _backoff(config, attempt)
        else:
            if response.status < 300:
                yield Deadline(None)
                return response
            error = _service_error(response, request, what)
            retryable = response.status in (408, 429) or response.status >= 500
            if not retryable or attempt >= config.retries:
                raise error
            delay = _backoff(config, attempt)
            if error.retry_after is not None:
                delay = min(error.retry_after, config.retry_after_max)
        yield Deadline(None)
        yield Sleep(delay)
        attempt += 1


def _backoff(config: UploadConfig, attempt: int) -> float:
    base = min(config.backoff_max, config.backoff * 2.0 ** attempt)
    return base * config.rng.uniform(0.75, 1.25)


def _service_error(response: HTTPResponse, request: HTTPRequest, what: str) -> ServiceError:
    """``ServiceError`` with the status, the service's code and message."""
    code, text = "", ""
    body = response.body[:4096].decode("utf-8", "replace")
    if body.lstrip().startswith("{"):
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if isinstance(document, dict):
            message = str(document.get("Message") or document.get("message") or "")
            if message.startswith("ErrorCode:") and ";" in message:
                code, _, message = message[len("ErrorCode:"):].partition(";")
            text = message or str(document.get("ExceptionMessage") or "")
            code = code or str(document.get("errorCode") or document.get("code") or "")
    elif "<Error>" in body:  # Azure Storage
        code = _xml_text(body, "Code")
        text = _xml_text(body, "Message")
    text = " ".join(text.split())[:300]
    retry_after = _retry_after(response.header("retry-after"))
    detail = f"{response.status} {response.reason}".strip()
    if code:
        detail += f" ({code})"
    if text:
        detail += f": {text}"
    return ServiceError(f"{what}: {request.label} returned {detail}", status=response.status,
                        code=code, retry_after=retry_after)


def _xml_text(body: str, tag: str) -> str:
    start = body.find(f"<{tag}>")
    end = body.find(f"</{tag}>", start)
    return body[start + len(tag) + 2:end] if start >= 0 and end > start else ""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(response: HTTPResponse, what: str) -> Any:
    try:
        return json.loads(response.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ServiceError(f"{what}: the hub's answer is not JSON: {exc}",
                           status=response.status) from None


# ------------------------------------------------------------------ hub calls


def check_blob_name(blob_name: object) -> str:
    if not isinstance(blob_name, str):
        raise TypeError(f"blob_name must be a str, not {type(blob_name).__name__}")
    if not blob_name or len(blob_name) > 1024:
        raise ValueError("blob_name must be 1 to 1024 characters long")
    return blob_name


def storage_info(config: UploadConfig, session: HTTPSession,
                 blob_name: str) -> Flow[dict[str, Any]]:
    """``get_storage_info_for_blob``: the hub's JSON as a dict."""
    check_blob_name(blob_name)
    what = "get_storage_info_for_blob"
    response = yield from _call(
        config, session, config.hub_endpoint,
        lambda: _hub_request(config, "POST", "/files", {"blobName": blob_name}), what)
    info = _json(response, what)
    missing = [k for k in ("correlationId", "hostName", "containerName", "blobName", "sasToken")
               if not isinstance(info, dict) or not isinstance(info.get(k), str)]
    if missing:
        raise ServiceError(f"{what}: the hub's answer lacks {', '.join(missing)}",
                           status=response.status)
    result: dict[str, Any] = info
    return result


def check_notification(correlation_id: object, is_success: object, status_code: object,
                       status_description: object) -> None:
    if not isinstance(correlation_id, str) or not correlation_id:
        raise TypeError("correlation_id must be a non-empty str")
    if not isinstance(is_success, bool):
        raise TypeError(f"is_success must be a bool, not {type(is_success).__name__}")
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        raise TypeError(f"status_code must be an int, not {type(status_code).__name__}")
    if not isinstance(status_description, str):
        raise TypeError("status_description must be a str, not "
                        f"{type(status_description).__name__}")


def notify(config: UploadConfig, session: HTTPSession, correlation_id: str, is_success: bool,
           status_code: int, status_description: str) -> Flow[None]:
    """``notify_blob_upload_status``."""
    check_notification(correlation_id, is_success, status_code, status_description)
    body = {"correlationId": correlation_id, "isSuccess": is_success,
            "statusCode": status_code, "statusDescription": status_description}
    yield from _call(config, session, config.hub_endpoint,
                     lambda: _hub_request(config, "POST", "/files/notifications", body),
                     "notify_blob_upload_status")


# ------------------------------------------------------------------ the blob


class Source:
    """What ``upload_blob`` reads: bytes, a path, or a binary file object; read
    in blocks (``size`` when known beforehand)."""

    def __init__(self, stream: IO[bytes] | None, data: bytes | None, size: int | None,
                 label: str, owned: bool) -> None:
        self._stream, self._data, self.size = stream, data, size
        self.label, self._owned = label, owned
        self._offset = 0

    def read(self, n: int) -> bytes:
        if self._data is not None:
            chunk = self._data[self._offset:self._offset + n]
            self._offset += len(chunk)
            return chunk
        assert self._stream is not None
        parts: list[bytes] = []
        want = n
        while want > 0:  # a pipe or socket may return short reads
            chunk = self._stream.read(want)
            if chunk is None:
                raise ClientError(f"{self.label} is a non-blocking stream with no data ready")
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"{self.label} must be opened in binary mode (read() returned "
                                f"{type(chunk).__name__})")
            if not chunk:
                break
            parts.append(bytes(chunk))
            want -= len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self._owned and self._stream is not None:
            self._stream.close()


def open_source(data: object) -> Source:
    """A ``Source`` for ``upload_blob``'s ``data``: ``bytes``-like (the content),
    ``str`` or ``os.PathLike`` (a file's path), or a binary file object."""
    if isinstance(data, bytes | bytearray | memoryview):
        content = bytes(data)
        return Source(None, content, len(content), "the data", False)
    if isinstance(data, str | os.PathLike):
        path = os.fspath(data)
        try:
            stream = open(path, "rb")  # closed by Source.close
        except OSError as exc:
            raise ValueError(f"cannot read {path!r}: {exc.strerror or exc}") from exc
        try:
            size: int | None = os.fstat(stream.fileno()).st_size
        except OSError:
            size = None
        return Source(stream, None, size, repr(path), True)
    if hasattr(data, "read"):
        size = None
        try:
            if data.seekable():  # type: ignore[attr-defined]
                here = data.tell()  # type: ignore[attr-defined]
                size = data.seek(0, os.SEEK_END) - here  # type: ignore[attr-defined]
                data.seek(here)  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            size = None
        return Source(data, None, size, "the file object", False)  # type: ignore[arg-type]
    raise TypeError("upload_blob() takes bytes, a path (str or os.PathLike) or a binary "
                    f"file object, not {type(data).__name__}")


def _blocks(source: Source, block_size: int) -> Iterator[bytes]:
    while True:
        chunk = source.read(block_size)
        if not chunk:
            return
        yield chunk


def _blob_location(info: dict[str, Any]) -> tuple[str, int, str, str]:
    """(host, port, path, query) of the blob URL the hub gave."""
    host_port = info["hostName"]
    parts = urlsplit(f"https://{host_port}")
    if not parts.hostname or parts.path or parts.query:
        raise ServiceError(f"the hub's hostName {host_port!r} is not a host name")
    try:
        port = parts.port or 443
    except ValueError:
        raise ServiceError(f"the hub's hostName {host_port!r} has a bad port") from None
    path = "/" + quote(info["containerName"], safe="") + "/" + quote(info["blobName"], safe="/")
    query = info["sasToken"]
    if query and not query.startswith("?"):
        query = "?" + query
    return parts.hostname, port, path, query


def upload(config: UploadConfig, session: HTTPSession, blob_name: str, source: Source,
           content_type: str | None) -> Flow[BlobUploadResult]:
    """``upload_blob``: storage info, the blob, the notification."""
    info = yield from storage_info(config, session, blob_name)
    correlation_id = info["correlationId"]
    try:
        result = yield from _put_blob(config, session, info, source, content_type)
    except Exception as exc:
        status = exc.status if isinstance(exc, ServiceError) and exc.status else 500
        description = f"{type(exc).__name__}: {exc}"[:MAX_DESCRIPTION]
        try:
            yield from notify(config, session, correlation_id, False, status, description)
        except Exception as notify_exc:
            add_note(exc, f"notifying the hub of the failure failed too: {notify_exc}")
        raise
    yield from notify(config, session, correlation_id, True, result.status_code,
                      f"uploaded {result.size} bytes")
    return result


def _put_blob(config: UploadConfig, session: HTTPSession, info: dict[str, Any],
              source: Source, content_type: str | None) -> Flow[BlobUploadResult]:
    host, port, path, query = _blob_location(info)
    endpoint = config.blob_endpoint(host, port)
    host_header = host if port == 443 else f"{host}:{port}"
    block_size = config.block_size
    if source.size is not None and source.size > block_size * MAX_BLOCKS:
        block_size = -(-source.size // MAX_BLOCKS)
    content_type = content_type or "application/octet-stream"
    url = f"https://{host_header}{path}"
    total = source.size
    blocks = _blocks(source, block_size)
    block: bytes | None = next(blocks, b"")
    following = next(blocks, None)  # one block ahead: is there more than one?

    def put(target: str, body: bytes, headers: list[tuple[str, str]], what: str,
            sent: int) -> Flow[HTTPResponse]:
        request = HTTPRequest("PUT", target, host_header,
                              [("x-ms-version", STORAGE_VERSION), *headers], body,
                              progress=(sent, total))
        return _call(config, session, endpoint, lambda: request, what)

    if following is None:  # one PUT
        assert block is not None
        response = yield from put(path + query, block,
                                  [("x-ms-blob-type", "BlockBlob"),
                                   ("Content-Type", content_type)], "upload_blob (PUT)", 0)
        return BlobUploadResult(info["blobName"], url, len(block), 0, info["correlationId"],
                                response.status)
    sep = "&" if query else "?"
    ids: list[str] = []
    sent = 0
    while block is not None:
        if len(ids) >= MAX_BLOCKS:
            raise ValueError(f"the data is over {MAX_BLOCKS} blocks of {block_size} bytes "
                             "(Azure Storage's limit)")
        block_id = base64.b64encode(f"iotdev-{len(ids):08d}".encode()).decode("ascii")
        ids.append(block_id)
        yield from put(f"{path}{query}{sep}comp=block&blockid={quote(block_id, safe='')}",
                       block, [], f"upload_blob (Put Block {len(ids)})", sent)
        sent += len(block)
        block, following = following, (next(blocks, None) if following is not None else None)
    xml = "".join(f"<Latest>{block_id}</Latest>" for block_id in ids)
    body = f'<?xml version="1.0" encoding="utf-8"?><BlockList>{xml}</BlockList>'.encode()
    request = HTTPRequest("PUT", f"{path}{query}{sep}comp=blocklist", host_header,
                          [("x-ms-version", STORAGE_VERSION),
                           ("x-ms-blob-content-type", content_type),
                           ("Content-Type", "application/xml")], body)
    response = yield from _call(config, session, endpoint, lambda: request,
                                "upload_blob (Put Block List)")
    return BlobUploadResult(info["blobName"], url, sent, len(ids), info["correlationId"],
                            response.status)
