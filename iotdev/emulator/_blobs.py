"""The emulator's blob endpoint: the part of Azure Blob Storage's REST API a
device uses to upload a file (Put Blob, Put Block, Put Block List), behind the
blob SAS the hub hands out with the storage info.

Theory of operation
-------------------
One ``BlobStore`` holds one container (the hub's upload container) in a
folder, ``state_dir/blobs/{container}/{blob name}`` (each ``/``-separated
segment of the name is a folder level, so that ``dev1/logs/a.txt`` is where
one expects it).  Its route, ``PUT /{container}/{blob name...}``, is served by
the device API on the hub's device port (``_files.py``), with Azure Storage's
shapes: answers 201 with ``ETag``, ``Last-Modified`` (and ``Content-MD5``) and
errors as ``<Error><Code>..</Code><Message>..</Message></Error>`` with
``x-ms-error-code``.

Every request must carry the blob SAS the hub issued for that container and
blob (``BlobSas``): ``sv``, ``sr=b``, ``se`` (expiry, ISO 8601 UTC), ``sp``
(permissions) and ``sig``, the base64 HMAC-SHA256 under a random per-hub
secret of ``sp``, ``se``, ``/{container}/{blob}``, ``sv`` and ``sr`` (one a
line).  A missing, tampered, expired or other blob's SAS gets 403
``AuthenticationFailed`` before any body byte is read.  The secret lives in
memory only: SAS tokens die with the hub (a restart also drops the
uncommitted blocks, whose SAS could not be used any more).

Bodies are never held in memory (but for the block list, at most
``MAX_BLOCK_LIST_SIZE`` bytes): the route streams them (``_http.BodySink``)
into ``blobs/.tmp/`` and only a complete body is moved into place
(``os.replace``), so a reader never sees half a blob.  Uncommitted blocks wait
in ``blobs/.tmp/blocks/{sha256 of container/blob}/{hex of block id}``; Put
Block List assembles the listed blocks, in order, on a worker thread, into a
new file that replaces the blob.  ``Latest`` picks the uncommitted block with
that id, else the committed one; ``Committed`` and ``Uncommitted`` only look
at one list (the committed list of a blob is known until the hub restarts).
A commit, like a Put Blob, drops the blob's uncommitted blocks.

Blob names are checked (``validate_blob_name``) where the hub issues a SAS and
again here: no empty, ``.`` or ``..`` segment, no backslash or control
character, at most ``MAX_BLOB_NAME`` characters and ``MAX_SEGMENT_BYTES``
bytes a segment; a path is built from checked segments only, so a name cannot
leave the container's folder.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import email.utils
import hashlib
import hmac
import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO
from urllib.parse import quote
from xml.etree import ElementTree
from xml.sax.saxutils import escape

from ._http import HTTPAPI, Request, Response, ServiceError

_UTC = datetime.timezone.utc

__all__ = [
    "BLOB_SAS_VERSION",
    "MAX_BLOB_NAME",
    "MAX_BLOCKS",
    "MAX_BLOCK_LIST_SIZE",
    "MAX_BLOCK_SIZE",
    "MAX_PUT_BLOB_SIZE",
    "BlobSas",
    "BlobStore",
    "storage_error_response",
    "validate_blob_name",
    "validate_container_name",
]

BLOB_SAS_VERSION = "2018-03-28"
"""The ``sv`` of the SAS tokens the hub issues (what IoT Hub sends)."""
MAX_PUT_BLOB_SIZE = 256 * 1024 * 1024
"""The largest body of one Put Blob (Azure's limit for ``sv=2018-03-28``)."""
MAX_BLOCK_SIZE = 256 * 1024 * 1024
"""The largest block of one Put Block."""
MAX_BLOCK_LIST_SIZE = 8 * 1024 * 1024
"""The largest Put Block List body (50,000 entries fit)."""
MAX_BLOCKS = 50_000
"""The most blocks a committed blob has (Azure's limit)."""
MAX_UNCOMMITTED_BLOCKS = 100_000
"""The most uncommitted blocks a blob has (Azure's limit)."""
MAX_BLOCK_ID_BYTES = 64
"""The longest block id, decoded (Azure's limit)."""
MAX_BLOB_NAME = 1024
MAX_SEGMENT_BYTES = 255
SAS_PERMISSIONS = "rw"
XML_TYPE = "application/xml"

_CONTAINER_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
_SE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_AUTH_MESSAGE = ("Server failed to authenticate the request. Make sure the value of "
                 "Authorization header is formed correctly including the signature.")
_LIST_KINDS = frozenset({"Latest", "Committed", "Uncommitted"})
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# ------------------------------------------------------------------ names


def validate_container_name(name: str) -> None:
    """Azure's container name rules: 3 to 63 lower-case letters, digits and
    single hyphens, starting and ending with a letter or digit.

    Raises:
        ValueError: ``name`` breaks them (or is ``devices``, the hub's own path).
    """
    if not _CONTAINER_RE.fullmatch(name) or name == "devices":
        raise ValueError(f"container name {name!r}: expected 3 to 63 lower-case letters, "
                         "digits and single hyphens (not 'devices')")


def validate_blob_name(name: str) -> tuple[str, ...]:
    """Check a blob name; its ``/``-separated segments.

    Raises:
        ValueError: the name is empty or over ``MAX_BLOB_NAME`` characters, or
            a segment is empty, ``.`` or ``..``, holds a backslash or a control
            character, or is over ``MAX_SEGMENT_BYTES`` bytes of UTF-8.
    """
    if not name or len(name) > MAX_BLOB_NAME:
        raise ValueError(f"a blob name has 1 to {MAX_BLOB_NAME} characters, not {len(name)}")
    segments = tuple(name.split("/"))
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ValueError(f"blob name {name!r}: empty, '.' and '..' path segments "
                             "are not allowed")
        if "\\" in segment or any(ord(c) < 0x20 or ord(c) == 0x7F for c in segment):
            raise ValueError(f"blob name {name!r}: backslashes and control characters "
                             "are not allowed")
        try:
            size = len(segment.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(f"blob name {name!r} is not valid Unicode") from None
        if size > MAX_SEGMENT_BYTES:
            raise ValueError(f"blob name {name!r}: a path segment is over "
                             f"{MAX_SEGMENT_BYTES} bytes")
    return segments


# ------------------------------------------------------------------ SAS


class BlobSas:
    """Issues and checks blob SAS tokens (pure: time is an argument).

    Args:
        secret: the signing key (random bytes, kept by the hub).
    """

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def token(self, container: str, blob: str, expiry: int,
              permissions: str = SAS_PERMISSIONS) -> str:
        """The SAS query string (with its ``?``) for ``container/blob`` until
        ``expiry`` (seconds since the epoch)."""
        se = datetime.datetime.fromtimestamp(expiry, _UTC).strftime(_SE_FORMAT)
        sig = self._sign(container, blob, se, permissions, BLOB_SAS_VERSION)
        return (f"?sv={BLOB_SAS_VERSION}&sr=b&sig={quote(sig, safe='')}"
                f"&se={quote(se, safe='')}&sp={permissions}")

    def check(self, query: Mapping[str, str], container: str, blob: str, *,
              permission: str, now: float) -> None:
        """Check the SAS in ``query`` (decoded parameters) for a request on
        ``container/blob`` that needs ``permission`` (``"w"``).

        Raises:
            ServiceError: 403 ``AuthenticationFailed`` (missing, malformed, not
                signed for this blob, expired) or ``AuthorizationPermissionMismatch``.
        """
        fields = {name: query.get(name) for name in ("sv", "sr", "se", "sp", "sig")}
        missing = [name for name, value in fields.items() if not value]
        if missing:
            raise _auth_failed(f"no SAS (missing {', '.join(missing)}): this blob needs the "
                               "sasToken of the hub's storage info")
        sv, sr, se, sp, sig = (str(fields[n]) for n in ("sv", "sr", "se", "sp", "sig"))
        expected = self._sign(container, blob, se, sp, sv)
        if sr != "b" or not hmac.compare_digest(expected.encode(), sig.encode("utf-8",
                                                                               "replace")):
            raise _auth_failed(f"Signature did not match: the SAS was not issued for "
                               f"/{container}/{blob}")
        try:
            expiry = datetime.datetime.strptime(se, _SE_FORMAT).replace(tzinfo=_UTC)
        except ValueError:
            raise _auth_failed(f"se={se!r} is not a time") from None
        if now >= expiry.timestamp():
            raise _auth_failed(f"Signed expiry time [{email.utils.format_datetime(expiry, True)}]"
                               " has passed")
        if permission not in sp:
            raise ServiceError(403, "AuthorizationPermissionMismatch",
                               f"This request is not authorized to perform this operation "
                               f"using this permission (sp={sp!r} has no {permission!r}).")

    def _sign(self, container: str, blob: str, se: str, sp: str, sv: str) -> str:
        text = "\n".join((sp, se, f"/{container}/{blob}", sv, "b"))
        digest = hmac.new(self._secret, text.encode("utf-8", "surrogatepass"),
                          hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")


def _auth_failed(detail: str) -> ServiceError:
    return ServiceError(403, "AuthenticationFailed", detail)


def storage_error_response(error: ServiceError) -> Response:
    """Azure Storage's error shape: XML ``<Error>`` with ``Code`` and
    ``Message`` (and ``AuthenticationErrorDetail``), ``x-ms-error-code``."""
    request_id = str(uuid.uuid4())
    stamp = datetime.datetime.now(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    if error.code == "AuthenticationFailed":
        message, detail = _AUTH_MESSAGE, error.message
    else:
        message, detail = error.message, None
    body = (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{_xml(error.code)}</Code>'
            f"<Message>{_xml(message)}\nRequestId:{request_id}\nTime:{stamp}</Message>")
    if detail is not None:
        body += f"<AuthenticationErrorDetail>{_xml(detail)}</AuthenticationErrorDetail>"
    body += "</Error>"
    headers = [("x-ms-error-code", error.code), ("x-ms-request-id", request_id),
               ("x-ms-version", BLOB_SAS_VERSION), *error.headers]
    return Response(error.status, body.encode("utf-8"), XML_TYPE, headers)


def _xml(text: str) -> str:
    """``text`` escaped for XML 1.0 (control characters, which XML cannot
    carry even escaped, become ``\\xNN``)."""
    return escape(_NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


# ------------------------------------------------------------------ bodies


class _FileSink:
    """A body streamed to a file in ``blobs/.tmp`` (opened on the first byte),
    with its size and MD5; ``take`` moves it into place."""

    def __init__(self, path: Path, limit: int) -> None:
        self.path = path
        self.limit = limit
        self.size = 0
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._file: IO[bytes] | None = None
        self._done = False

    def write(self, data: bytes) -> None:
        if self._file is None:
            self._file = open(self.path, "xb")
        self._file.write(data)
        self._md5.update(data)
        self.size += len(data)

    def close(self) -> None:
        if self._file is None:
            self._file = open(self.path, "xb")
        self._file.close()

    @property
    def md5(self) -> bytes:
        return self._md5.digest()

    def take(self, dest: Path) -> None:
        """Move the complete body to ``dest`` (replacing it)."""
        os.replace(self.path, dest)
        self._done = True

    def abort(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        if not self._done:
            self._done = True
            self.path.unlink(missing_ok=True)


class _MemorySink:
    """A small body (a block list) kept in memory."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.data = bytearray()


# ------------------------------------------------------------------ the store


class BlobStore:
    """One container's blobs and uncommitted blocks under ``root`` (see the
    module docstring).

    Args:
        root: the blob folder (``state_dir/blobs``); its ``.tmp`` is emptied.
        container: the container name (``validate_container_name``).
        secret: the SAS key (random when ``None``).
        on_write: called as ``on_write(blob_name, size, path)`` once a blob is
            stored (Put Blob, Put Block List).

    Raises:
        ValueError: a bad container name.
    """

    def __init__(self, root: Path, container: str, *, secret: bytes | None = None,
                 on_write: Callable[[str, int, Path], None] | None = None) -> None:
        validate_container_name(container)
        self.root = Path(root)
        self.container = container
        self.sas = BlobSas(secret if secret is not None else secrets.token_bytes(32))
        self.on_write = on_write
        self._tmp = self.root / ".tmp"
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._committed: dict[str, tuple[tuple[str, int], ...]] = {}  # id, size
        self._uncommitted: dict[str, dict[str, int]] = {}  # block id -> size

    def add_routes(self, api: HTTPAPI) -> None:
        """Serve ``PUT /{container}/{blob...}`` on ``api``."""
        api.add_route("PUT", f"/{self.container}/{{blob*}}", self.put,
                      open_body=self.open_put, render_error=storage_error_response)

    def blob_path(self, blob: str) -> Path:
        """Where the blob ``blob`` lives.

        Raises:
            ValueError: ``blob`` is not a valid name (``validate_blob_name``).
        """
        segments = validate_blob_name(blob)
        path = self.root.joinpath(self.container, *segments)
        folder = os.path.join(os.path.normpath(self.root / self.container), "")
        if not os.path.normpath(path).startswith(folder):  # cannot happen: checked segments
            raise ValueError(f"blob name {blob!r} leaves the container")
        return path

    # ------------------------------------------------------------ requests

    def open_put(self, request: Request) -> _FileSink | _MemorySink:
        """Check a PUT before its body: the SAS, the name, the operation."""
        blob = request.params["blob"]
        self.sas.check(request.query, self.container, blob, permission="w", now=time.time())
        self._path_or_400(blob)
        comp = request.query.get("comp")
        if comp is None:
            blob_type = request.header("x-ms-blob-type")
            if blob_type is None:
                raise ServiceError(400, "MissingRequiredHeader",
                                   "An HTTP header that's mandatory for this request is not "
                                   "specified: x-ms-blob-type")
            if blob_type != "BlockBlob":
                raise ServiceError(400, "InvalidBlobType",
                                   f"x-ms-blob-type {blob_type!r}: only block blobs "
                                   "(BlockBlob) are emulated")
            return _FileSink(self._incoming(), MAX_PUT_BLOB_SIZE)
        if comp == "block":
            self._check_new_block(blob, _block_id(request.query.get("blockid")))
            return _FileSink(self._incoming(), MAX_BLOCK_SIZE)
        if comp == "blocklist":
            return _MemorySink(MAX_BLOCK_LIST_SIZE)
        raise ServiceError(400, "InvalidQueryParameterValue",
                           f"comp={comp!r} is not emulated (Put Blob, comp=block, "
                           "comp=blocklist)")

    async def put(self, request: Request) -> Response:
        blob = request.params["blob"]
        sink = request.sink
        comp = request.query.get("comp")
        if comp == "blocklist":
            assert isinstance(sink, _MemorySink)
            return await self._put_block_list(blob, bytes(sink.data))
        assert isinstance(sink, _FileSink)
        _check_md5(request, sink.md5)
        if comp == "block":
            return self._put_block(blob, _block_id(request.query.get("blockid")), sink)
        path = self._path_or_400(blob)
        self._place(sink.take, path)
        self._committed[self._key(blob)] = ()
        self._drop_blocks(blob)
        self._written(blob, sink.size, path)
        return _created(sink.md5)

    def _put_block(self, blob: str, block_id: str, sink: _FileSink) -> Response:
        self._check_new_block(blob, block_id)
        folder = self._block_folder(blob)
        folder.mkdir(parents=True, exist_ok=True)
        sink.take(folder / _block_file(block_id))
        self._uncommitted.setdefault(self._key(blob), {})[block_id] = sink.size
        response = _created(sink.md5)
        response.headers = [h for h in response.headers if h[0] not in ("etag", "last-modified")]
        return response

    async def _put_block_list(self, blob: str, body: bytes) -> Response:
        entries = parse_block_list(body)
        if len(entries) > MAX_BLOCKS:
            raise ServiceError(400, "InvalidBlockList",
                               f"{len(entries)} blocks: a blob has at most {MAX_BLOCKS}")
        key = self._key(blob)
        path = self._path_or_400(blob)
        uncommitted = self._uncommitted.get(key, {})
        committed: dict[str, tuple[int, int]] = {}  # id -> offset, size
        offset = 0
        for block_id, size in self._committed.get(key, ()):
            committed[block_id] = (offset, size)
            offset += size
        folder = self._block_folder(blob)
        plan: list[tuple[Path, int, int]] = []  # file, offset, size
        blocks: list[tuple[str, int]] = []
        for kind, block_id in entries:
            if kind != "Committed" and block_id in uncommitted:
                size = uncommitted[block_id]
                plan.append((folder / _block_file(block_id), 0, size))
            elif kind != "Uncommitted" and block_id in committed:
                start, size = committed[block_id]
                plan.append((path, start, size))
            else:
                where = {"Latest": "uncommitted or committed", "Committed": "committed",
                         "Uncommitted": "uncommitted"}[kind]
                raise ServiceError(400, "InvalidBlockList",
                                   f"The specified block list is invalid: block {block_id!r} "
                                   f"({kind}) is not among the blob's {where} blocks")
            blocks.append((block_id, size))
        out = self._incoming()
        try:
            total = await asyncio.to_thread(_assemble, plan, out)
        except FileNotFoundError:
            out.unlink(missing_ok=True)
            raise ServiceError(400, "InvalidBlockList", "The specified block list is "
                               "invalid: a block went away during the commit") from None
        except BaseException:
            out.unlink(missing_ok=True)
            raise
        sink = _FileSink(out, MAX_PUT_BLOB_SIZE)
        try:
            self._place(sink.take, path)
        finally:
            sink.abort()
        self._committed[key] = tuple(blocks)
        self._drop_blocks(blob)
        self._written(blob, total, path)
        return _created(None)

    # ------------------------------------------------------------ helpers

    def _key(self, blob: str) -> str:
        return f"{self.container}/{blob}"

    def _path_or_400(self, blob: str) -> Path:
        try:
            return self.blob_path(blob)
        except ValueError as exc:
            raise ServiceError(400, "InvalidResourceName", str(exc)) from None

    def _incoming(self) -> Path:
        self._tmp.mkdir(parents=True, exist_ok=True)
        return self._tmp / f"{uuid.uuid4().hex}.part"

    def _block_folder(self, blob: str) -> Path:
        digest = hashlib.sha256(self._key(blob).encode("utf-8", "surrogatepass")).hexdigest()
        return self._tmp / "blocks" / digest

    def _check_new_block(self, blob: str, block_id: str) -> None:
        blocks = self._uncommitted.get(self._key(blob), {})
        if blocks and block_id not in blocks:
            if len(next(iter(blocks))) != len(block_id):
                raise ServiceError(400, "InvalidBlobOrBlock",
                                   "The specified blob or block content is invalid: every "
                                   "block id of a blob must have the same length")
            if len(blocks) >= MAX_UNCOMMITTED_BLOCKS:
                raise ServiceError(409, "BlockCountExceedsLimit",
                                   f"the blob has {MAX_UNCOMMITTED_BLOCKS} uncommitted "
                                   "blocks already")

    def _place(self, move: Callable[[Path], None], path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            move(path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise ServiceError(409, "PathConflict",
                               f"blob {path.relative_to(self.root / self.container)} "
                               "conflicts with another blob's path (a name that is "
                               "another's folder)") from None

    def _drop_blocks(self, blob: str) -> None:
        self._uncommitted.pop(self._key(blob), None)
        shutil.rmtree(self._block_folder(blob), ignore_errors=True)

    def _written(self, blob: str, size: int, path: Path) -> None:
        if self.on_write is not None:
            self.on_write(blob, size, path)


# ------------------------------------------------------------------ helpers


def _block_id(text: str | None) -> str:
    """A block id as given (base64 of 1 to 64 bytes).

    Raises:
        ServiceError: 400 ``InvalidBlockId``.
    """
    try:
        raw = base64.b64decode(text or "", validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw or len(raw) > MAX_BLOCK_ID_BYTES or text is None:
        raise ServiceError(400, "InvalidBlockId",
                           f"The specified block ID is invalid ({text!r}): it must be "
                           f"base64 of 1 to {MAX_BLOCK_ID_BYTES} bytes")
    return text


def _block_file(block_id: str) -> str:
    return base64.b64decode(block_id).hex()


def parse_block_list(body: bytes) -> list[tuple[str, str]]:
    """``<BlockList><Latest>id</Latest>...</BlockList>`` -> ``[(kind, id)]``.

    Raises:
        ServiceError: 400 ``InvalidXmlDocument`` (not that document, or a DTD),
            ``InvalidBlockId``.
    """
    if re.search(rb"<!DOCTYPE|<!ENTITY", body, re.IGNORECASE):
        raise ServiceError(400, "InvalidXmlDocument", "XML with a DTD is not accepted")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise ServiceError(400, "InvalidXmlDocument",
                           f"The XML specified is not syntactically valid: {exc}") from None
    if root.tag != "BlockList":
        raise ServiceError(400, "InvalidXmlDocument",
                           f"expected a <BlockList> document, not <{root.tag}>")
    entries: list[tuple[str, str]] = []
    for child in root:
        if child.tag not in _LIST_KINDS:
            raise ServiceError(400, "InvalidXmlDocument",
                               f"<{child.tag}> in a block list (expected Latest, Committed "
                               "or Uncommitted)")
        entries.append((child.tag, _block_id((child.text or "").strip())))
    return entries


def _assemble(plan: list[tuple[Path, int, int]], out: Path) -> int:
    """Copy the planned slices, in order, into the new file ``out``; its size."""
    total = 0
    with open(out, "xb") as target:
        for source, offset, size in plan:
            with open(source, "rb") as block:
                block.seek(offset)
                left = size
                while left:
                    chunk = block.read(min(left, 1024 * 1024))
                    if not chunk:
                        raise FileNotFoundError(f"{source} is shorter than expected")
                    target.write(chunk)
                    left -= len(chunk)
            total += size
    return total


def _check_md5(request: Request, md5: bytes) -> None:
    given = request.header("content-md5")
    if given is not None and given.strip() != base64.b64encode(md5).decode("ascii"):
        raise ServiceError(400, "Md5Mismatch",
                           "The MD5 value specified in the request did not match with the "
                           f"MD5 value calculated by the server ({given!r} given)")


def _created(md5: bytes | None) -> Response:
    now = time.time()
    headers = [
        ("etag", f'"0x{time.time_ns():X}"'),
        ("last-modified", email.utils.formatdate(now, usegmt=True)),
        ("date", email.utils.formatdate(now, usegmt=True)),
        ("x-ms-request-id", str(uuid.uuid4())),
        ("x-ms-version", BLOB_SAS_VERSION),
        ("x-ms-request-server-encrypted", "true"),
    ]
    if md5 is not None:
        headers.append(("content-md5", base64.b64encode(md5).decode("ascii")))
    return Response(201, b"", None, headers)
