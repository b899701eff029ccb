"""Secrets never leak: device keys, SAS signatures, proxy passwords and X.509
pass phrases stay out of logs (every logger at DEBUG), ``repr()``, exception
messages and formatted tracebacks, through a whole session against the
emulator (SAS and X.509 devices, a password-protected proxy, telemetry, twin,
file upload, refused credentials, SAS renewal by ``update_sastoken``).  Also:
every TLS context the clients build verifies certificates and host names and
refuses anything below TLS 1.2."""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

import iotdev.aio
from iotdev import (
    X509,
    ClientError,
    CredentialError,
    IoTHubDeviceClient,
    Message,
    ProxyOptions,
    ServiceError,
)
from iotdev._auth import ConnectionString, device_resource_uri, generate_sas_token
from iotdev._hubclient import build_config
from iotdev.emulator import Hub

from ._proxies import ProxyProcess, TinyProxy, require_proxy_program

HOST = "127.0.0.1"
PROXY_USER, PROXY_PASSWORD = "carol", "Pr0xyPa55-w0rd"
PASS_PHRASE = "x509-Pass-Phrase-42"
WRONG_KEY = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3Jvbmc="
SIG = re.compile(r"sig(?:=|%3D)([A-Za-z0-9%+/=]{20,})")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    process = TinyProxy(require_proxy_program("tinyproxy", "tinyproxy"),
                        tmp_path_factory.mktemp("tinyproxy-secrets"),
                        basic_auth=(PROXY_USER, PROXY_PASSWORD))
    process.start()
    try:
        yield process
    finally:
        process.stop()


class Collector(logging.Handler):
    """Every record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logs() -> Iterator[Collector]:
    collector = Collector()
    root = logging.getLogger()
    old = root.level
    root.addHandler(collector)
    root.setLevel(logging.DEBUG)
    try:
        yield collector
    finally:
        root.removeHandler(collector)
        root.setLevel(old)


def leaks(text: str, secrets: list[str]) -> list[str]:
    found = [s for s in secrets if s and s in text]
    found += [m for m in SIG.findall(text)]
    return found


def encrypted_key(path: Path, target: Path) -> Path:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    target.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(PASS_PHRASE.encode())))
    return target


def test_no_secret_in_logs_reprs_or_errors(hub: Hub, proxy: ProxyProcess, logs: Collector,
                                           tmp_path: Path) -> None:
    dev = f"sec-{uuid.uuid4().hex[:8]}"
    hub.add_device(dev)
    conn_str = hub.connection_string(dev)
    key = ConnectionString.parse(conn_str).shared_access_key
    assert key
    secrets = [key, WRONG_KEY, PROXY_PASSWORD, PASS_PHRASE]
    texts: list[str] = []
    common: dict[str, Any] = dict(server_verification_cert=hub.ca_pem, port=hub.mqtt_port,
                                  https_port=hub.ws_port, operation_timeout=20)
    proxy_options = ProxyOptions("HTTP", proxy.host, proxy.port, PROXY_USER, PROXY_PASSWORD)

    # 1. a SAS device through the password-protected proxy: MQTT and HTTPS
    client = IoTHubDeviceClient.create_from_connection_string(
        conn_str, proxy_options=proxy_options, **common)
    try:
        client.connect()
        client.send_message(Message("hello", message_id="m1"))
        client.patch_twin_reported_properties({"fw": "1"})
        texts.append(repr(client.get_twin()))
        texts.append(repr(client.upload_blob("secret-test.txt", b"data")))
        texts += [repr(client), repr(client._config), repr(proxy_options)]
    finally:
        client.shutdown()

    # 2. refusals: a wrong key over MQTT and over HTTPS, a wrong proxy password
    wrong = conn_str.replace(key, WRONG_KEY)
    bad = IoTHubDeviceClient.create_from_connection_string(wrong, **common)
    for call in (bad.connect, lambda: bad.get_storage_info_for_blob("x")):
        with pytest.raises((CredentialError, ServiceError)) as refused:
            call()
        texts.append("".join(traceback.format_exception(refused.value)))
    bad.shutdown()
    bad_proxy = IoTHubDeviceClient.create_from_connection_string(
        conn_str, proxy_options=ProxyOptions("HTTP", proxy.host, proxy.port, PROXY_USER,
                                             PROXY_PASSWORD + "x"),
        connection_retry=False, **common)
    with pytest.raises(ClientError) as refused:
        bad_proxy.connect()
    texts.append("".join(traceback.format_exception(refused.value)))
    bad_proxy.shutdown()

    # 3. a token-made client, renewed with update_sastoken (asyncio)
    device_key = key

    async def token_client() -> None:
        token = generate_sas_token(device_resource_uri(HOST, dev), device_key,
                                   int(time.time() + 600))
        aclient = iotdev.aio.IoTHubDeviceClient.create_from_sastoken(token, **common)
        try:
            await aclient.connect()
            await aclient.update_sastoken(generate_sas_token(
                device_resource_uri(HOST, dev), device_key, int(time.time() + 900)))
            await aclient.send_message("after renewal")
            texts.append(repr(aclient))
        finally:
            await aclient.shutdown()

    asyncio.run(asyncio.wait_for(token_client(), 60))

    # 4. an X.509 device whose key is protected by a pass phrase
    x_dev = f"sec509-{uuid.uuid4().hex[:8]}"
    cert = hub.add_x509_device(x_dev)
    x509 = X509(str(cert.cert_file), str(encrypted_key(cert.key_file, tmp_path / "k.pem")),
                PASS_PHRASE)
    x_client = IoTHubDeviceClient.create_from_x509_certificate(x509, HOST, x_dev, **common)
    try:
        x_client.connect()
        x_client.send_message("by certificate")
        texts += [repr(x509), repr(x_client._config)]
    finally:
        x_client.shutdown()
    wrong_phrase = X509(x509.cert_file, x509.key_file, PASS_PHRASE + "?")
    with pytest.raises((ValueError, ClientError)) as refused:
        IoTHubDeviceClient.create_from_x509_certificate(
            wrong_phrase, HOST, x_dev, **common).connect()
    texts.append("".join(traceback.format_exception(refused.value)))

    # 5. malformed connection strings that carry a key
    for text in (f"HostName=h;DeviceId=d;SharedAccessKey={key};Bogus=1",
                 f"HostName=h;SharedAccessKey={key}",
                 f"DeviceId=d;SharedAccessKey={key};SharedAccessKey={key}"):
        with pytest.raises(ValueError) as refused:
            IoTHubDeviceClient.create_from_connection_string(text)
        texts.append("".join(traceback.format_exception(refused.value)))

    logged = "\n".join(logs.lines)
    for name in ("iotdev.transport._thread", "iotdev.transport._asyncio",
                 "iotdev.transport._http", "iotdev.emulator"):
        assert any(line.startswith(name) for line in logs.lines), f"no {name} log lines"
    assert not leaks(logged, secrets), leaks(logged, secrets)
    for text in texts:
        assert not leaks(text, secrets), (leaks(text, secrets), text[:2000])


def test_every_tls_context_verifies(hub: Hub) -> None:
    config = build_config(hostname="hub.example", device_id="d",
                          symmetric_key="QUJDRA==", server_verification_cert=hub.ca_pem)
    upload = config.upload_config()
    contexts = [config.endpoint().tls_context, upload.hub_endpoint.tls_context,
                upload.blob_endpoint("storage.example", 443).tls_context]
    for ctx in contexts:
        assert isinstance(ctx, ssl.SSLContext)
        assert ctx.verify_mode is ssl.CERT_REQUIRED
        assert ctx.check_hostname is True
        assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_clients_share_one_verifying_context_unless_they_carry_a_certificate(
        hub: Hub, tmp_path: Path) -> None:
    """Thousands of clients in one process hold one TLS context (trust anchors
    parsed once); a context with a client certificate is each client's own."""
    def config(**kw: Any) -> Any:
        return build_config(hostname="hub.example", device_id="d",
                            server_verification_cert=hub.ca_pem, **kw)

    first = config(symmetric_key="QUJDRA==").endpoint().tls_context
    second = config(symmetric_key="RUZHSA==").endpoint().tls_context
    assert first is second and first.verify_mode is ssl.CERT_REQUIRED
    assert config(symmetric_key="QUJDRA==", cipher="ECDHE-RSA-AES128-GCM-SHA256"
                  ).endpoint().tls_context is not first
    cert = hub.add_x509_device(f"ctx-{uuid.uuid4().hex[:6]}")
    x509 = X509(str(cert.cert_file), str(cert.key_file))
    assert config(x509=x509).endpoint().tls_context is not config(x509=x509).endpoint(
    ).tls_context
