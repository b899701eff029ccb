"""File upload with iotdev's clients (sync and asyncio) against the emulator:
``get_storage_info_for_blob``, ``notify_blob_upload_status`` and the whole
``upload_blob`` flow (one PUT, Put Block + Put Block List), refused SAS, a
failure notified as such, proxies, shutdown during an upload.

The emulator serves the device HTTPS endpoints and its blob store on the same
port as MQTT over WebSocket (``ws_port``, as IoT Hub serves both on 443); the
clients reach it with ``https_port=hub.ws_port``.  What the hub stored is read
back from its state (``Hub.uploads()`` and the files on disk)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import iotdev.aio
from iotdev import (
    X509,
    ClientError,
    IoTHubDeviceClient,
    OperationCancelled,
    ProxyOptions,
    ServiceError,
)
from iotdev._upload import BLOCK_SIZE
from iotdev.emulator import Hub

from ._proxies import ProxyProcess, TinyProxy, require_proxy_program

HOST = "127.0.0.1"
TIMEOUT = 30.0


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def dev(hub: Hub) -> str:
    device_id = f"up-{uuid.uuid4().hex[:10]}"
    hub.add_device(device_id)
    return device_id


def options(hub: Hub, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = dict(server_verification_cert=hub.ca_pem, port=hub.mqtt_port,
                                https_port=hub.ws_port, operation_timeout=TIMEOUT)
    base.update(kw)
    return base


def client(hub: Hub, device_id: str, **kw: Any) -> IoTHubDeviceClient:
    return IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string(device_id), **options(hub, **kw))


def aclient(hub: Hub, device_id: str, **kw: Any) -> iotdev.aio.IoTHubDeviceClient:
    return iotdev.aio.IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string(device_id), **options(hub, **kw))


def record(hub: Hub, device_id: str, correlation_id: str) -> Any:
    [found] = [u for u in hub.uploads(device_id) if u.correlation_id == correlation_id]
    return found


def stored(upload: Any) -> bytes:
    return Path(upload.path).read_bytes()


# ------------------------------------------------------------------ v2's two calls


def test_storage_info_and_notification(hub: Hub, dev: str) -> None:
    device = client(hub, dev)
    try:
        info = device.get_storage_info_for_blob("report.txt")
        assert set(info) >= {"correlationId", "hostName", "containerName", "blobName",
                             "sasToken"}
        assert info["blobName"] == f"{dev}/report.txt"
        assert info["sasToken"].startswith("?")
        assert not device.connected  # HTTPS only: MQTT is not needed
        assert record(hub, dev, info["correlationId"]).status == "pending"
        device.notify_blob_upload_status(info["correlationId"], False, 500, "gave up")
        done = record(hub, dev, info["correlationId"])
        assert (done.status, done.status_code, done.status_description) == (
            "failed", 500, "gave up")
        with pytest.raises(ServiceError) as refused:  # notified twice
            device.notify_blob_upload_status(info["correlationId"], True, 200, "")
        assert refused.value.status == 400
    finally:
        device.shutdown()


def test_argument_types_are_checked(hub: Hub, dev: str) -> None:
    device = client(hub, dev)
    try:
        with pytest.raises(TypeError, match="blob_name"):
            device.get_storage_info_for_blob(b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="blob_name"):
            device.get_storage_info_for_blob("")
        with pytest.raises(TypeError, match="is_success"):
            device.notify_blob_upload_status("c", 1, 200, "")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="status_code"):
            device.notify_blob_upload_status("c", True, "200", "")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes bytes, a path"):
            device.upload_blob("x", 12)
        with pytest.raises(ValueError, match="cannot read"):
            device.upload_blob("x", "/nonexistent/file")
    finally:
        device.shutdown()
    with pytest.raises(ClientError, match="shut down"):
        device.get_storage_info_for_blob("x")


def test_a_wrong_key_is_refused_with_the_status(hub: Hub, dev: str) -> None:
    bad = hub.connection_string(dev).rsplit("SharedAccessKey=", 1)[0] + \
        "SharedAccessKey=" + "QUJD" * 11
    device = IoTHubDeviceClient.create_from_connection_string(bad, **options(hub))
    try:
        with pytest.raises(ServiceError) as refused:
            device.get_storage_info_for_blob("x")
        assert refused.value.status == 401
        assert "sig=" not in str(refused.value)
    finally:
        device.shutdown()


def test_x509_device_uploads(hub: Hub) -> None:
    device_id = f"up509-{uuid.uuid4().hex[:8]}"
    cert = hub.add_x509_device(device_id)
    device = IoTHubDeviceClient.create_from_x509_certificate(
        X509(str(cert.cert_file), str(cert.key_file)), HOST, device_id, **options(hub))
    try:
        result = device.upload_blob("x509.bin", b"by certificate")
        assert stored(record(hub, device_id, result.correlation_id)) == b"by certificate"
    finally:
        device.shutdown()


# ------------------------------------------------------------------ upload_blob


def test_small_and_empty_uploads(hub: Hub, dev: str) -> None:
    device = client(hub, dev)
    try:
        seen: list[tuple[int, int | None]] = []
        result = device.upload_blob("hello.txt", b"hello world", content_type="text/plain",
                                    progress=lambda sent, total: seen.append((sent, total)))
        assert (result.size, result.blocks, result.status_code) == (11, 0, 201)
        assert result.blob_name == f"{dev}/hello.txt" and "sig=" not in result.url
        up = record(hub, dev, result.correlation_id)
        assert (up.status, up.size) == ("succeeded", 11)
        assert stored(up) == b"hello world"
        assert seen and seen[-1] == (11, 11)
        empty = device.upload_blob("empty.bin", b"")
        assert empty.size == 0
        assert stored(record(hub, dev, empty.correlation_id)) == b""
    finally:
        device.shutdown()


def test_a_large_file_streams_in_blocks_in_constant_memory(
        hub: Hub, dev: str, tmp_path: Path) -> None:
    size = 6 * BLOCK_SIZE + 12345
    path = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with path.open("wb") as out:
        seed = b"iotdev"
        for i in range(size // 65536 + 1):
            chunk = hashlib.sha256(seed + i.to_bytes(4, "big")).digest() * 2048
            chunk = chunk[:min(65536, size - i * 65536)]
            out.write(chunk)
            digest.update(chunk)
    device = client(hub, dev)
    seen: list[int] = []
    tracemalloc.start()
    try:
        result = device.upload_blob("big.bin", path, progress=lambda sent, _: seen.append(sent))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        device.shutdown()
    assert (result.size, result.blocks) == (size, 7)
    up = record(hub, dev, result.correlation_id)
    assert up.status == "succeeded" and up.size == size
    assert hashlib.sha256(stored(up)).hexdigest() == digest.hexdigest()
    assert seen == sorted(seen) and seen[-1] == size and len(seen) > 7
    # the client holds two blocks; the emulator (same process) streams to disk
    assert peak < 4 * BLOCK_SIZE, f"peak {peak} bytes for a {size}-byte file"


def test_a_file_object_of_unknown_size(hub: Hub, dev: str) -> None:
    class Pipe(io.RawIOBase):
        """A non-seekable binary stream that returns short reads."""

        def __init__(self, data: bytes) -> None:
            self.data, self.pos = data, 0

        def readable(self) -> bool:
            return True

        def read(self, n: int = -1) -> bytes:
            n = min(n if n >= 0 else len(self.data), 1000)
            chunk = self.data[self.pos:self.pos + n]
            self.pos += len(chunk)
            return chunk

    data = os.urandom(BLOCK_SIZE + 10)
    device = client(hub, dev)
    try:
        result = device.upload_blob("pipe.bin", Pipe(data))
        assert result.blocks == 2
        assert stored(record(hub, dev, result.correlation_id)) == data
    finally:
        device.shutdown()


def test_a_refused_blob_put_notifies_failure(hub: Hub, dev: str,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A SAS token that storage refuses (tampered on its way to the client):
    ``upload_blob`` raises the storage error and the hub hears ``is_success=False``."""
    from iotdev import _upload

    original = _upload.storage_info

    def tampered(*args: Any) -> Any:
        info = yield from original(*args)
        info["sasToken"] = info["sasToken"].replace("sig=", "sig=AAAA")
        return info

    monkeypatch.setattr(_upload, "storage_info", tampered)
    device = client(hub, dev)
    try:
        with pytest.raises(ServiceError) as refused:
            device.upload_blob("denied.bin", b"nope")
        assert refused.value.status == 403
        assert "sig=" not in str(refused.value)
    finally:
        device.shutdown()
    [up] = [u for u in hub.uploads(dev) if u.blob_name.endswith("denied.bin")]
    assert up.status == "failed" and up.status_code == 403


def test_shutdown_cancels_an_upload_in_another_thread(hub: Hub, dev: str) -> None:
    """The cancel is forced to land mid-upload (the old test also passed
    when the upload finished first): the progress callback, which runs in the
    uploading thread after the first piece of the first block is written,
    holds the upload there until ``shutdown()`` has returned.  The upload
    must then end with ``OperationCancelled`` and no blob be stored."""
    device = client(hub, dev)
    started = threading.Event()
    shut = threading.Event()
    box: dict[str, BaseException] = {}
    reports: list[int] = []

    def progress(sent: int, total: int | None) -> None:
        reports.append(sent)
        started.set()
        assert shut.wait(TIMEOUT), "shutdown() did not return"

    def run() -> None:
        try:
            device.upload_blob("cancelled.bin", b"x" * (3 * BLOCK_SIZE), progress=progress)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(TIMEOUT)
    device.shutdown()  # the upload is parked in its first progress report
    shut.set()
    thread.join(TIMEOUT)
    assert not thread.is_alive()
    assert isinstance(box.get("error"), OperationCancelled), box
    assert len(reports) == 1 and reports[0] < 3 * BLOCK_SIZE, reports  # mid-upload
    stored = [u for u in hub.uploads(dev) if u.blob_name.endswith("cancelled.bin")]
    assert all(u.status != "succeeded" and u.size is None for u in stored), stored


def test_asyncio_client_uploads(hub: Hub, dev: str) -> None:
    async def main() -> None:
        device = aclient(hub, dev)
        try:
            seen: list[int] = []

            async def progress(sent: int, total: int | None) -> None:
                seen.append(sent)

            info = await device.get_storage_info_for_blob("a.txt")
            await device.notify_blob_upload_status(info["correlationId"], True, 200, "done")
            assert record(hub, dev, info["correlationId"]).status == "succeeded"
            data = os.urandom(BLOCK_SIZE * 2 + 1)
            result = await device.upload_blob("async.bin", io.BytesIO(data), progress=progress)
            assert result.blocks == 3 and seen[-1] == len(data)
            assert stored(record(hub, dev, result.correlation_id)) == data
        finally:
            await device.shutdown()

    asyncio.run(asyncio.wait_for(main(), 120))


# ------------------------------------------------------------------ proxies


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    proxy = TinyProxy(require_proxy_program("tinyproxy", "tinyproxy"),
                      tmp_path_factory.mktemp("tinyproxy-upload"))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_upload_through_an_http_proxy(hub: Hub, dev: str, tinyproxy: ProxyProcess) -> None:
    before = tinyproxy.log_text().count("CONNECT")
    device = client(hub, dev, proxy_options=ProxyOptions("HTTP", tinyproxy.host,
                                                         tinyproxy.port))
    try:
        result = device.upload_blob("proxied.txt", b"via tinyproxy")
        assert stored(record(hub, dev, result.correlation_id)) == b"via tinyproxy"
    finally:
        device.shutdown()
    assert tinyproxy.log_text().count("CONNECT") > before


def test_upload_through_a_gateway_host_name(hub: Hub, dev: str) -> None:
    """``gateway_hostname``: TCP and TLS go to the gateway (here the emulator's
    address), the SAS token and ``Host`` name the hub."""
    device = hub.store.device(dev)
    assert device is not None and device.primary_key
    client_ = IoTHubDeviceClient.create_from_symmetric_key(
        device.primary_key, hub.hub_name, dev, gateway_hostname=HOST, **options(hub))
    try:
        result = client_.upload_blob("via-gateway.txt", b"gateway")
        assert stored(record(hub, dev, result.correlation_id)) == b"gateway"
    finally:
        client_.shutdown()
