"""File upload on the emulator: the device HTTP API and the blob endpoint on the
device port (``ws_port``, shared with MQTT over WebSocket as on IoT Hub's 443),
driven with the standard library's ``http.client`` over TLS verified with the
hub's CA; then the service API's upload listing and ``iotdev-hub uploads``."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlencode, urlsplit
from xml.etree import ElementTree

import pytest

from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev.emulator import FileUpload, Hub
from iotdev.emulator._blobs import BlobSas, BlobStore, validate_blob_name
from iotdev.emulator._files import MAX_PENDING_UPLOADS
from iotdev.emulator._http import ServiceError
from iotdev.emulator._x509 import DeviceCertificate
from iotdev.mqtt import MQTTClient

TIMEOUT = 10.0
API = "?api-version=2019-10-01"
REPO = Path(__file__).resolve().parent.parent
SAS_RE = re.compile(r"\?sv=2018-03-28&sr=b&sig=[A-Za-z0-9%]+&se=\d{4}-\d\d-\d\dT\d\d%3A\d\d"
                    r"%3A\d\dZ&sp=rw")


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with Hub(hub_name="upload-hub.local", mqtt_port=0, ws_port=0, http_port=0,
             state_dir=tmp_path / "state") as h:
        yield h


@pytest.fixture
def expired_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub whose blob SAS tokens have expired when they are issued."""
    with Hub(hub_name="upload-hub.local", mqtt_port=0, ws_port=0, state_dir=tmp_path / "old",
             upload_sas_ttl=0) as h:
        yield h


class Port:
    """One keep-alive ``http.client`` connection to the hub's device port (or to
    the host and port of a blob URL)."""

    def __init__(self, hub: Hub, *, cert: DeviceCertificate | None = None,
                 host: str = "127.0.0.1", port: int | None = None) -> None:
        self.context = ssl.create_default_context(cafile=str(hub.ca_path))
        if cert is not None:
            self.context.load_cert_chain(cert.cert_file, cert.key_file)
        assert hub.ws_port is not None
        self.conn = http.client.HTTPSConnection(host, port or hub.ws_port,
                                                context=self.context, timeout=TIMEOUT)

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None
                ) -> tuple[int, bytes, http.client.HTTPResponse]:
        self.conn.request(method, target, body=body, headers=headers or {})
        response = self.conn.getresponse()
        return response.status, response.read(), response

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def port(hub: Hub) -> Iterator[Port]:
    client = Port(hub)
    yield client
    client.close()


def _token(hub: Hub, device_id: str, *, ttl: float = 3600, key: str | None = None,
           host: str | None = None) -> str:
    device = hub.store.device(device_id)
    assert device is not None
    uri = device_resource_uri(host or hub.hub_name, device_id)
    return generate_sas_token(uri, key or device.primary_key or "", int(time.time() + ttl))


def _auth(hub: Hub, device_id: str, **kw: Any) -> dict[str, str]:
    return {"Authorization": _token(hub, device_id, **kw)}


def _post(port: Port, path: str, document: Any, headers: dict[str, str]) -> tuple[int, Any]:
    status, data, _ = port.request("POST", path + API, json.dumps(document).encode(),
                                   {"Content-Type": "application/json", **headers})
    return status, json.loads(data) if data else None


def storage_info(port: Port, device_id: str, blob_name: str,
                 headers: dict[str, str]) -> tuple[int, Any]:
    return _post(port, f"/devices/{quote_plus(device_id)}/files", {"blobName": blob_name},
                 headers)


def notify(port: Port, device_id: str, correlation_id: str, headers: dict[str, str], *,
           success: bool = True, code: int = 200, description: str = "ok") -> tuple[int, Any]:
    return _post(port, f"/devices/{quote_plus(device_id)}/files/notifications", {
        "correlationId": correlation_id, "isSuccess": success, "statusCode": code,
        "statusDescription": description}, headers)


@dataclass
class BlobURL:
    """``https://{hostName}/{containerName}/{blobName}{sasToken}``, split."""

    host: str
    port: int
    path: str
    sas: str

    @classmethod
    def of(cls, info: dict[str, Any]) -> BlobURL:
        url = (f"https://{info['hostName']}/{info['containerName']}/"
               f"{quote(info['blobName'])}{info['sasToken']}")
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        return cls(parts.hostname, parts.port, parts.path, parts.query)

    def target(self, sas: str | None = None, **query: str) -> str:
        extra = "&" + urlencode(query) if query else ""
        return f"{self.path}?{self.sas if sas is None else sas}{extra}"


def _blob_port(hub: Hub, url: BlobURL) -> Port:
    return Port(hub, host=url.host, port=url.port)


def _put(blob: Port, target: str, body: bytes, headers: dict[str, str] | None = None
         ) -> tuple[int, bytes, http.client.HTTPResponse]:
    return blob.request("PUT", target, body, headers)


def _put_blob(blob: Port, url: BlobURL, body: bytes, **headers: str) -> int:
    status, data, _ = _put(blob, url.target(), body, {"x-ms-blob-type": "BlockBlob", **headers})
    assert status == 201 or headers, data
    return status


def _block_id(n: int) -> str:
    return base64.b64encode(f"block-{n:06d}".encode()).decode()


def _block_list(*entries: tuple[str, str]) -> bytes:
    items = "".join(f"<{kind}>{block_id}</{kind}>" for kind, block_id in entries)
    return f'<?xml version="1.0" encoding="utf-8"?><BlockList>{items}</BlockList>'.encode()


def _storage_error(data: bytes, response: http.client.HTTPResponse) -> str:
    """The ``<Code>`` of an Azure Storage error (checking its shape)."""
    root = ElementTree.fromstring(data)
    assert root.tag == "Error"
    code = root.findtext("Code")
    assert code and root.findtext("Message")
    assert response.getheader("x-ms-error-code") == code
    assert (response.getheader("content-type") or "").startswith("application/xml")
    return code


def _hub_error(document: Any) -> str:
    """The error name of IoT Hub's ``{"Message": "ErrorCode:<Name>;..."}``."""
    assert set(document) == {"Message", "ExceptionMessage"}, document
    match = re.match(r"ErrorCode:(\w+);", document["Message"])
    assert match, document
    return match.group(1)


def _upload(hub: Hub, correlation_id: str) -> FileUpload:
    (upload,) = [u for u in hub.uploads() if u.correlation_id == correlation_id]
    return upload


# ------------------------------------------------------------------ storage info and whole blobs


def test_storage_info_whole_put_and_notification(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    auth = _auth(hub, "dev1")
    status, info = storage_info(port, "dev1", "logs/2024 day 1.txt", auth)
    assert status == 200, info
    assert set(info) == {"correlationId", "hostName", "containerName", "blobName", "sasToken"}
    assert info["hostName"] == f"127.0.0.1:{hub.ws_port}"
    assert info["containerName"] == hub.upload_container == "device-uploads"
    assert info["blobName"] == "dev1/logs/2024 day 1.txt"
    assert SAS_RE.fullmatch(info["sasToken"]), info["sasToken"]
    (upload,) = hub.uploads("dev1")
    assert (upload.device_id, upload.blob_name, upload.correlation_id, upload.status) == (
        "dev1", "dev1/logs/2024 day 1.txt", info["correlationId"], "pending")
    assert (upload.size, upload.path, upload.status_code) == (None, None, None)
    assert 3599 < upload.expires - upload.created <= 3600  # the SAS lives an hour

    url = BlobURL.of(info)
    body = b"hello world\n" * 1000
    blob = _blob_port(hub, url)
    try:
        status, data, response = _put(blob, url.target(), body, {
            "x-ms-blob-type": "BlockBlob", "Content-Type": "text/plain",
            "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode()})
        assert (status, data) == (201, b"")
        assert response.getheader("etag", "").startswith('"0x')
        assert response.getheader("last-modified", "").endswith(" GMT")
        assert response.getheader("content-md5") == base64.b64encode(
            hashlib.md5(body).digest()).decode()
        assert response.getheader("x-ms-request-id")
    finally:
        blob.close()
    upload = _upload(hub, info["correlationId"])
    assert upload.status == "pending" and upload.size == len(body)
    assert upload.path == hub.state_dir / "blobs" / "device-uploads" / "dev1" / "logs" / (
        "2024 day 1.txt")
    assert upload.path.read_bytes() == body

    status, answer = notify(port, "dev1", info["correlationId"], auth, description="done")
    assert (status, answer) == (204, None)
    upload = _upload(hub, info["correlationId"])
    assert (upload.status, upload.status_code, upload.status_description) == (
        "succeeded", 200, "done")
    assert upload.notified is not None and upload.size == len(body)
    status, error = notify(port, "dev1", info["correlationId"], auth)
    assert status == 400 and _hub_error(error) == "ArgumentInvalid"
    assert "succeeded already" in error["Message"]
    assert not list((hub.state_dir / "blobs" / ".tmp").glob("*.part"))


def test_storage_info_with_an_x509_certificate(hub: Hub) -> None:
    cert = hub.add_x509_device("cam-1")
    hub.add_x509_device("cam-2")
    hub.add_device("sas-1")
    port = Port(hub, cert=cert)
    try:
        status, info = storage_info(port, "cam-1", "frame.jpg", {})
        assert status == 200, info
        assert info["blobName"] == "cam-1/frame.jpg"
        status, answer = notify(port, "cam-1", info["correlationId"], {})
        assert status == 204, answer
        for other in ("cam-2", "sas-1"):  # the certificate is cam-1's
            status, error = storage_info(port, other, "frame.jpg", {})
            assert status == 403 and "cam-1" in error["Message"], (other, error)
        status, error = storage_info(port, "nobody", "frame.jpg", {})
        assert status == 403
    finally:
        port.close()
    plain = Port(hub)
    try:
        status, error = storage_info(plain, "cam-1", "frame.jpg", {})
        assert status == 401 and _hub_error(error) == "IotHubUnauthorizedAccess"
        assert "no TLS client certificate" in error["Message"]
    finally:
        plain.close()
    assert [u.status for u in hub.uploads("cam-1")] == ["succeeded"]


@pytest.mark.parametrize("case", ["wrong-key", "expired", "other-hub", "unknown-device",
                                  "disabled", "malformed", "none"])
def test_bad_device_credentials_get_401(hub: Hub, port: Port, case: str) -> None:
    hub.add_device("dev1", enabled=case != "disabled")
    other = hub.add_device("dev2")
    headers = {
        "wrong-key": _auth(hub, "dev1", key=other.primary_key),
        "expired": _auth(hub, "dev1", ttl=-10),
        "other-hub": _auth(hub, "dev1", host="another-hub.example.net"),
        "unknown-device": {},
        "disabled": _auth(hub, "dev1"),
        "malformed": {"Authorization": "Bearer abc"},
        "none": {},
    }[case]
    device_id = "ghost" if case == "unknown-device" else "dev1"
    if case == "unknown-device":
        headers = {"Authorization": generate_sas_token(
            device_resource_uri(hub.hub_name, "ghost"), other.primary_key or "",
            int(time.time() + 60))}
    status, error = storage_info(port, device_id, "a.txt", headers)
    assert status == 401 and _hub_error(error) == "IotHubUnauthorizedAccess", error
    status, error = notify(port, device_id, "whatever", headers)
    assert status == 401, error
    assert hub.uploads() == []


def test_another_devices_sas_token_gets_403(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    hub.add_device("dev2")
    status, info = storage_info(port, "dev1", "a.txt", _auth(hub, "dev1"))
    assert status == 200
    status, error = storage_info(port, "dev2", "a.txt", _auth(hub, "dev1"))
    assert status == 403 and _hub_error(error) == "IotHubUnauthorizedAccess"
    assert "'dev1'" in error["Message"] and "'dev2'" in error["Message"]
    status, error = notify(port, "dev2", info["correlationId"], _auth(hub, "dev1"))
    assert status == 403
    # dev2's own token does not reach dev1's upload either.
    status, error = notify(port, "dev2", info["correlationId"], _auth(hub, "dev2"))
    assert status == 400 and "not one of device 'dev2'" in error["Message"]
    assert [u.status for u in hub.uploads()] == ["pending"]


def test_the_sas_tokens_host_may_be_any_of_the_hubs_names(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    for host in ("upload-hub.local", "localhost", "127.0.0.1"):
        status, info = storage_info(port, "dev1", f"{host}.txt", _auth(hub, "dev1", host=host))
        assert status == 200, (host, info)


def test_large_and_chunked_bodies_stream_to_disk(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    status, info = storage_info(port, "dev1", "big.bin", _auth(hub, "dev1"))
    url = BlobURL.of(info)
    body = os.urandom(3 * 1024 * 1024 + 17)  # over the buffered 1 MiB limit
    blob = _blob_port(hub, url)
    try:
        assert _put_blob(blob, url, body) == 201
        assert _upload(hub, info["correlationId"]).size == len(body)
        chunks = [body[i:i + 100_000] for i in range(0, len(body), 100_000)]
        status, data, _ = _put(blob, url.target(), iter(chunks),  # type: ignore[arg-type]
                               {"x-ms-blob-type": "BlockBlob"})  # no length: chunked
        assert status == 201, data
    finally:
        blob.close()
    path = _upload(hub, info["correlationId"]).path
    assert path is not None and path.read_bytes() == body


def test_empty_blobs(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    for name in ("empty-put", "empty-list"):
        status, info = storage_info(port, "dev1", name, _auth(hub, "dev1"))
        url = BlobURL.of(info)
        blob = _blob_port(hub, url)
        try:
            if name == "empty-put":
                assert _put_blob(blob, url, b"") == 201
            else:
                status, data, _ = _put(blob, url.target(comp="blocklist"), _block_list())
                assert status == 201, data
        finally:
            blob.close()
        upload = _upload(hub, info["correlationId"])
        assert upload.size == 0 and upload.path is not None
        assert upload.path.read_bytes() == b""


# ------------------------------------------------------------------ blocks


def test_blocks_and_block_lists(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    status, info = storage_info(port, "dev1", "video.bin", _auth(hub, "dev1"))
    url = BlobURL.of(info)
    parts = [os.urandom(1000 + n) for n in range(4)]
    blob = _blob_port(hub, url)
    try:
        for n, part in enumerate(parts):
            status, data, response = _put(blob, url.target(comp="block", blockid=_block_id(n)),
                                          b"stale" if n == 1 else part)
            assert status == 201, data
            assert response.getheader("content-md5")
        status, _, _ = _put(blob, url.target(comp="block", blockid=_block_id(1)), parts[1])
        assert status == 201  # the same id again replaces the block
        assert _upload(hub, info["correlationId"]).size is None  # nothing committed yet
        status, data, response = _put(blob, url.target(comp="blocklist"), _block_list(
            ("Latest", _block_id(0)), ("Uncommitted", _block_id(1)), ("Latest", _block_id(2))))
        assert status == 201, data
        assert response.getheader("etag")
        first = b"".join(parts[:3])  # block 3 was not listed: dropped
        assert _upload(hub, info["correlationId"]).size == len(first)
        path = hub.state_dir / "blobs" / "device-uploads" / "dev1" / "video.bin"
        assert path.read_bytes() == first

        # A new commit may reuse committed blocks, in another order, with new ones.
        status, _, _ = _put(blob, url.target(comp="block", blockid=_block_id(9)), b"tail")
        assert status == 201
        status, data, _ = _put(blob, url.target(comp="blocklist"), _block_list(
            ("Committed", _block_id(2)), ("Latest", _block_id(0)), ("Latest", _block_id(9))))
        assert status == 201, data
        assert path.read_bytes() == parts[2] + parts[0] + b"tail"

        # Unknown blocks, the dropped block 3, and block 1 (committed before, not
        # in the last list) make the list invalid.
        for entries in ([("Latest", _block_id(3))], [("Uncommitted", _block_id(2))],
                        [("Committed", _block_id(1))], [("Latest", _block_id(77))]):
            status, data, response = _put(blob, url.target(comp="blocklist"),
                                          _block_list(*entries))
            assert status == 400 and _storage_error(data, response) == "InvalidBlockList", (
                entries, data)
        assert path.read_bytes() == parts[2] + parts[0] + b"tail"
    finally:
        blob.close()


def test_block_errors(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    status, info = storage_info(port, "dev1", "x.bin", _auth(hub, "dev1"))
    url = BlobURL.of(info)
    blob = _blob_port(hub, url)
    try:
        cases: list[tuple[str, bytes, dict[str, str], str]] = [
            (url.target(), b"x", {}, "MissingRequiredHeader"),
            (url.target(), b"x", {"x-ms-blob-type": "PageBlob"}, "InvalidBlobType"),
            (url.target(), b"x", {"x-ms-blob-type": "BlockBlob", "Content-MD5": "AAAA"},
             "Md5Mismatch"),
            (url.target(comp="appendblock"), b"x", {}, "InvalidQueryParameterValue"),
            (url.target(comp="block"), b"x", {}, "InvalidBlockId"),
            (url.target(comp="block", blockid="not base64!"), b"x", {}, "InvalidBlockId"),
            (url.target(comp="block", blockid=base64.b64encode(b"x" * 65).decode()), b"x", {},
             "InvalidBlockId"),
            (url.target(comp="blocklist"), b"<BlockList><Latest>", {}, "InvalidXmlDocument"),
            (url.target(comp="blocklist"), b"<Other/>", {}, "InvalidXmlDocument"),
            (url.target(comp="blocklist"), b"<BlockList><Oldest>AA==</Oldest></BlockList>", {},
             "InvalidXmlDocument"),
            (url.target(comp="blocklist"),
             b'<!DOCTYPE x [<!ENTITY a "b">]><BlockList><Latest>&a;</Latest></BlockList>', {},
             "InvalidXmlDocument"),
        ]
        for target, body, headers, code in cases:
            status, data, response = _put(blob, target, body, headers)
            assert status == 400 and _storage_error(data, response) == code, (target, data)
        status, _, _ = _put(blob, url.target(comp="block", blockid=_block_id(1)), b"x")
        assert status == 201
        status, data, response = _put(blob, url.target(comp="block", blockid="QUJD"), b"x")
        assert status == 400 and _storage_error(data, response) == "InvalidBlobOrBlock"
        status, _, response = blob.request("GET", url.target())
        assert status == 405 and response.getheader("allow") == "PUT"
    finally:
        blob.close()
    assert _upload(hub, info["correlationId"]).size is None


# ------------------------------------------------------------------ blob SAS


def test_blob_sas_refusals(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    hub.add_device("dev2")
    _, info = storage_info(port, "dev1", "a.txt", _auth(hub, "dev1"))
    _, other = storage_info(port, "dev1", "b.txt", _auth(hub, "dev1"))
    _, foreign = storage_info(port, "dev2", "a.txt", _auth(hub, "dev2"))
    url = BlobURL.of(info)
    sig = re.search(r"sig=([^&]+)", url.sas).group(1)  # type: ignore[union-attr]
    flipped = ("B" if sig[0] == "A" else "A") + sig[1:]
    later = re.sub(r"se=(\d{4})", lambda m: f"se={int(m.group(1)) + 1}", url.sas)
    refused = {
        "no SAS": "",
        "tampered sig": url.sas.replace(sig, flipped),
        "no sig": re.sub(r"&sig=[^&]+", "", url.sas),
        "later expiry": later,
        "read only": url.sas.replace("sp=rw", "sp=r"),
        "other blob's": BlobURL.of(other).sas,
        "other device's": BlobURL.of(foreign).sas,
        "another version": url.sas.replace("sv=2018-03-28", "sv=2020-02-10"),
    }
    blob = _blob_port(hub, url)
    try:
        for case, sas in refused.items():
            for target in (url.target(sas), url.target(sas, comp="block",
                                                       blockid=_block_id(1))):
                status, data, response = _put(blob, target, b"x",
                                              {"x-ms-blob-type": "BlockBlob"})
                assert status == 403, (case, data)
                assert _storage_error(data, response) == "AuthenticationFailed", case
                assert b"<AuthenticationErrorDetail>" in data
        # Refused on the head: the answer comes before any body byte.
        blob.conn.putrequest("PUT", url.target(refused["tampered sig"]))
        blob.conn.putheader("x-ms-blob-type", "BlockBlob")
        blob.conn.putheader("Content-Length", str(200 * 1024 * 1024))
        blob.conn.endheaders()
        response = blob.conn.getresponse()
        assert response.status == 403 and response.getheader("connection") == "close"
        response.read()
        blob.close()
        assert _put_blob(blob, url, b"fine") == 201  # http.client reconnects
    finally:
        blob.close()
    assert not (hub.state_dir / "blobs" / "device-uploads" / "dev1" / "b.txt").exists()
    assert not (hub.state_dir / "blobs" / "device-uploads" / "dev2").exists()


def test_an_expired_blob_sas_is_refused(expired_hub: Hub) -> None:
    hub = expired_hub
    hub.add_device("dev1")
    port = Port(hub)
    try:
        status, info = storage_info(port, "dev1", "late.txt", _auth(hub, "dev1"))
        assert status == 200
        url = BlobURL.of(info)
        blob = _blob_port(hub, url)
        try:
            status, data, response = _put(blob, url.target(), b"x",
                                          {"x-ms-blob-type": "BlockBlob"})
            assert status == 403 and _storage_error(data, response) == "AuthenticationFailed"
            assert b"has passed" in data
        finally:
            blob.close()
        # An expired upload holds no quota slot and takes no notification.
        assert [u.status for u in hub.uploads()] == ["expired"]
        status, error = notify(port, "dev1", info["correlationId"], _auth(hub, "dev1"))
        assert status == 400 and "expired" in error["Message"]
        for n in range(MAX_PENDING_UPLOADS + 1):
            assert storage_info(port, "dev1", f"{n}", _auth(hub, "dev1"))[0] == 200
    finally:
        port.close()


def test_blob_sas_is_pure_and_bound_to_time() -> None:
    sas = BlobSas(b"k" * 32)
    token = sas.token("c1c", "dev/a", 2_000_000_000)
    query = dict(p.split("=", 1) for p in token[1:].split("&"))
    query = {k: v.replace("%3A", ":").replace("%2B", "+").replace("%2F", "/")
             .replace("%3D", "=") for k, v in query.items()}
    sas.check(query, "c1c", "dev/a", permission="w", now=1_999_999_999)
    for container, blob, now in (("c1c", "dev/a", 2_000_000_000), ("c1c", "dev/b", 0),
                                 ("c2c", "dev/a", 0)):
        with pytest.raises(ServiceError) as info:
            sas.check(query, container, blob, permission="w", now=now)
        assert info.value.status == 403
    with pytest.raises(ServiceError):
        BlobSas(b"x" * 32).check(query, "c1c", "dev/a", permission="w", now=0)


# ------------------------------------------------------------------ names and paths


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "a//b", "./a", "a/.", "a/",
                                  "a\\..\\b", "nul\x00", "tab\tname", "x" * 1100,
                                  "s" * 256 + "/a"])
def test_bad_blob_names_get_no_storage_info(hub: Hub, port: Port, name: str) -> None:
    hub.add_device("dev1")
    status, error = storage_info(port, "dev1", name, _auth(hub, "dev1"))
    assert status == 400 and _hub_error(error) == "ArgumentInvalid", error
    assert hub.uploads() == []


def test_path_traversal_on_the_blob_endpoint(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    _, info = storage_info(port, "dev1", "a.txt", _auth(hub, "dev1"))
    url = BlobURL.of(info)
    outside = hub.state_dir.parent
    before = sorted(p.name for p in outside.iterdir())
    blob = _blob_port(hub, url)
    try:
        for path in ("/device-uploads/dev1/a.txt/../../../../x.txt",
                     "/device-uploads/dev1/%2E%2E/%2e%2e/%2E%2E/x.txt",
                     "/device-uploads/..%2F..%2F..%2Fx.txt",
                     "/device-uploads/dev1%2F..%2F..%2F..%2Fx.txt",
                     "/device-uploads/dev1/a.txt%00"):
            status, data, response = _put(blob, f"{path}?{url.sas}", b"escaped",
                                          {"x-ms-blob-type": "BlockBlob"})
            assert status == 403, (path, data)
            assert _storage_error(data, response) == "AuthenticationFailed"
    finally:
        blob.close()
    assert sorted(p.name for p in outside.iterdir()) == before
    assert not any(p.read_bytes() == b"escaped" for p in outside.rglob("*") if p.is_file())


def test_blob_names_map_inside_the_container(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "blobs", "uploads")
    assert store.blob_path("dev1/a/b.txt") == tmp_path / "blobs" / "uploads" / "dev1" / "a" / (
        "b.txt")
    assert validate_blob_name("dev1/..a/b..") == ("dev1", "..a", "b..")
    for name in ("..", "dev1/..", "/abs", "dev1//x", "", "a\\b", "a/\x7f"):
        with pytest.raises(ValueError):
            store.blob_path(name)
    for container in ("ab", "Upper", "a--b", "-ab", "devices", "a" * 64):
        with pytest.raises(ValueError):
            BlobStore(tmp_path / "other", container)


# ------------------------------------------------------------------ notifications and quota


def test_failure_notifications_and_bad_ones(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    auth = _auth(hub, "dev1")
    _, info = storage_info(port, "dev1", "broken.bin", auth)
    status, answer = notify(port, "dev1", info["correlationId"], auth, success=False,
                            code=500, description="disk full on the device")
    assert (status, answer) == (204, None)
    upload = _upload(hub, info["correlationId"])
    assert (upload.status, upload.status_code, upload.status_description, upload.size) == (
        "failed", 500, "disk full on the device", None)
    status, error = notify(port, "dev1", "no-such-id", auth)
    assert status == 400 and _hub_error(error) == "ArgumentInvalid"
    assert "'no-such-id' is not one of device 'dev1'" in error["Message"]
    path = "/devices/dev1/files/notifications"
    for document in ({"isSuccess": True}, {"correlationId": "x"},
                     {"correlationId": "x", "isSuccess": "yes"},
                     {"correlationId": "x", "isSuccess": True, "statusCode": "200"},
                     {"correlationId": "x", "isSuccess": True, "statusDescription": 5}, [1]):
        status, error = _post(port, path, document, auth)
        assert status == 400 and _hub_error(error) == "ArgumentInvalid", document
    status, data, _ = port.request("POST", path + API, b"{not json", auth)
    assert status == 400 and b"not valid JSON" in data
    for document in ({}, {"blobName": ""}, {"blobName": 5}):
        status, error = _post(port, "/devices/dev1/files", document, auth)
        assert status == 400, document
    status, data, response = port.request("POST", "/devices/dev1/files" + API,
                                          b"x" * (64 * 1024 + 1), auth)
    assert status == 413 and response.getheader("connection") == "close"


def test_at_most_ten_uploads_pending_per_device(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    hub.add_device("dev2")
    auth = _auth(hub, "dev1")
    ids = []
    for n in range(MAX_PENDING_UPLOADS):
        status, info = storage_info(port, "dev1", f"f{n}.txt", auth)
        assert status == 200, (n, info)
        ids.append(info["correlationId"])
    assert len(set(ids)) == MAX_PENDING_UPLOADS == 10
    status, error = storage_info(port, "dev1", "one-more.txt", auth)
    assert status == 403 and _hub_error(error) == "IotHubQuotaExceeded"
    assert "403006" in error["Message"]
    assert storage_info(port, "dev2", "mine.txt", _auth(hub, "dev2"))[0] == 200
    assert notify(port, "dev1", ids[3], auth, success=False, code=400)[0] == 204
    assert storage_info(port, "dev1", "one-more.txt", auth)[0] == 200
    assert storage_info(port, "dev1", "two-more.txt", auth)[0] == 403
    assert [u.status for u in hub.uploads("dev1")].count("pending") == 10


# ------------------------------------------------------------------ the shared port


def test_mqtt_over_websocket_and_http_share_the_device_port(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    client = MQTTClient(
        "localhost", hub.ws_port, client_id="dev1", transport="websockets",
        ws_path="/$iothub/websocket",
        username=f"{hub.hub_name}/dev1/?api-version=2021-04-12",
        password=_token(hub, "dev1"), server_verification_cert=hub.ca_pem,
        clean_session=False, reconnect=False, connect_timeout=TIMEOUT)
    try:
        client.connect(timeout=TIMEOUT)
        status, _ = storage_info(port, "dev1", "while-connected.txt", _auth(hub, "dev1"))
        assert status == 200
        client.publish("devices/dev1/messages/events/", b"uploaded", 1).result(TIMEOUT)
        assert hub.is_connected("dev1")
    finally:
        client.shutdown()
    assert hub.wait_for_telemetry("dev1", 1)[0].body == b"uploaded"
    # The upgrade path with no upgrade: the WebSocket layer's refusal, not HTTP's 404.
    with socket.create_connection(("127.0.0.1", hub.ws_port), TIMEOUT) as raw, \
            port.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /$iothub/websocket HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 4"), answer
    assert b"WebSocket" in answer or b"websocket" in answer


def test_the_service_api_is_not_on_the_device_port(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    for method, path in (("GET", "/devices"), ("GET", "/devices/dev1"), ("GET", "/files"),
                         ("GET", "/twins/dev1"), ("GET", "/messages/events"),
                         ("PUT", "/devices/dev2"), ("GET", "/devices/dev1/files")):
        status, data, _ = port.request(method, path + API, b"{}" if method == "PUT" else None)
        assert status in (404, 405), (method, path, data)
        assert b"dev1" not in data or b"NotFound" in data or b"MethodNotAllowed" in data
    assert hub.store.device("dev2") is None


def test_garbage_and_pipelined_requests_on_the_device_port(hub: Hub) -> None:
    hub.add_device("dev1")
    context = ssl.create_default_context(cafile=str(hub.ca_path))
    with socket.create_connection(("127.0.0.1", hub.ws_port), TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"this is not HTTP\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    body = json.dumps({"blobName": "p.txt"}).encode()
    request = (f"POST /devices/dev1/files{API} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: {_token(hub, 'dev1')}\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    with socket.create_connection(("127.0.0.1", hub.ws_port), TIMEOUT) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(request * 2 + b"GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 ") == 2 and answer.count(b"HTTP/1.1 404 ") == 1
    assert len(hub.uploads("dev1")) == 2


def test_stop_closes_device_port_connections(tmp_path: Path) -> None:
    hub = Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path).start()
    try:
        context = ssl.create_default_context(cafile=str(hub.ca_path))
        with socket.create_connection(("127.0.0.1", hub.ws_port), TIMEOUT) as raw1, \
                socket.create_connection(("127.0.0.1", hub.ws_port), TIMEOUT) as raw2, \
                context.wrap_socket(raw1, server_hostname="127.0.0.1") as idle, \
                context.wrap_socket(raw2, server_hostname="127.0.0.1") as http_conn:
            http_conn.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
            assert http_conn.recv(65536).startswith(b"HTTP/1.1 404 ")
            hub.stop()
            assert idle.recv(65536) == b""
            while http_conn.recv(65536):
                pass
    finally:
        hub.stop()


# ------------------------------------------------------------------ service side


def test_service_api_lists_uploads(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    hub.add_device("dev2")
    _, one = storage_info(port, "dev1", "one.txt", _auth(hub, "dev1"))
    _, two = storage_info(port, "dev2", "two.txt", _auth(hub, "dev2"))
    url = BlobURL.of(one)
    blob = _blob_port(hub, url)
    try:
        _put_blob(blob, url, b"12345")
    finally:
        blob.close()
    notify(port, "dev1", one["correlationId"], _auth(hub, "dev1"), description="fine")
    assert hub.http_port is not None
    service = http.client.HTTPSConnection(
        "127.0.0.1", hub.http_port, context=ssl.create_default_context(cafile=str(hub.ca_path)),
        timeout=TIMEOUT)
    try:
        service.request("GET", "/devices/dev1/files" + API)
        response = service.getresponse()
        assert response.status == 200
        (document,) = json.loads(response.read())
        assert document["deviceId"] == "dev1" and document["blobName"] == "dev1/one.txt"
        assert document["correlationId"] == one["correlationId"]
        assert (document["status"], document["statusCode"], document["statusDescription"]) == (
            "succeeded", 200, "fine")
        assert document["size"] == 5 and Path(document["path"]).read_bytes() == b"12345"
        assert document["containerName"] == "device-uploads"
        assert document["createdTimeUtc"].endswith("Z") and document["notifiedTimeUtc"]
        service.request("GET", "/files" + API)
        response = service.getresponse()
        documents = json.loads(response.read())
        assert [(d["deviceId"], d["status"], d["size"]) for d in documents] == [
            ("dev1", "succeeded", 5), ("dev2", "pending", None)]
        assert documents[1]["correlationId"] == two["correlationId"]
        service.request("GET", "/devices/nobody/files" + API)
        response = service.getresponse()
        assert response.status == 404 and b"DeviceNotFound" in response.read()
    finally:
        service.close()


def _cli(hub: Hub, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run(
        [sys.executable, "-m", "iotdev.emulator", "uploads", *args, "--url",
         f"https://127.0.0.1:{hub.http_port}", "--ca", str(hub.ca_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_cli_uploads(hub: Hub, port: Port) -> None:
    hub.add_device("dev1")
    hub.add_device("dev2")
    done = _cli(hub)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["CREATED", "DEVICE", "STATUS", "CODE", "SIZE", "BLOB"]
    _, one = storage_info(port, "dev1", "logs/one.txt", _auth(hub, "dev1"))
    storage_info(port, "dev2", "two.txt", _auth(hub, "dev2"))
    url = BlobURL.of(one)
    blob = _blob_port(hub, url)
    try:
        _put_blob(blob, url, b"abc")
    finally:
        blob.close()
    notify(port, "dev1", one["correlationId"], _auth(hub, "dev1"), success=False, code=503)
    done = _cli(hub)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert re.fullmatch(r"\S+Z\s+dev1\s+failed\s+503\s+3\s+dev1/logs/one\.txt", lines[1])
    assert re.fullmatch(r"\S+Z\s+dev2\s+pending\s+-\s+-\s+dev2/two\.txt", lines[2])
    done = _cli(hub, "dev2", "--json")
    assert done.returncode == 0, done.stderr
    (line,) = done.stdout.splitlines()
    assert json.loads(line)["blobName"] == "dev2/two.txt"
    done = _cli(hub, "nobody")
    assert done.returncode == 1 and "DeviceNotFound" in done.stderr
