"""Default trust: the operating system's store (as azure-iot-device v2's
``load_default_certs()``) plus certifi's bundle.

OpenSSL reads the OS store from ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when they
are set, so a child process with ``SSL_CERT_FILE`` naming the emulator's CA
stands in for a machine whose administrator installed a private root: the
device connects with no ``server_verification_cert``.  Without it the same
connection is refused, so the test can fail.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import certifi
import pytest

from iotdev.emulator import Hub
from iotdev.transport import make_client_context

DEVICE = "trusting-device"
CONNECT = """
import sys
from iotdev import IoTHubDeviceClient, TLSVerificationError
client = IoTHubDeviceClient.create_from_connection_string(
    sys.argv[1], port=int(sys.argv[2]), connection_retry=False, operation_timeout=30)
try:
    client.connect()
    print("connected")
except TLSVerificationError as exc:
    print("refused:", exc.reason)
finally:
    client.shutdown()
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path_factory.mktemp("hub")) as running:
        running.add_device(DEVICE)
        yield running


def connect(hub: Hub, tmp_path: Path, **env: str) -> str:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT_")}
    child_env.update(env)
    result = subprocess.run([sys.executable, "-c", CONNECT, hub.connection_string(DEVICE),
                             str(hub.mqtt_port)], env=child_env, capture_output=True,
                            text=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_a_root_in_the_os_store_is_trusted(hub: Hub, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert connect(hub, tmp_path, SSL_CERT_FILE=str(hub.ca_path),
                   SSL_CERT_DIR=str(empty)) == "connected"


def test_an_untrusted_root_is_refused(hub: Hub, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = connect(hub, tmp_path, SSL_CERT_FILE=str(empty / "none.pem"), SSL_CERT_DIR=str(empty))
    assert out.startswith("refused:"), out


def test_certifi_roots_are_trusted_too() -> None:
    ctx = make_client_context()
    subjects = {repr(cert["subject"]) for cert in ctx.get_ca_certs()}
    certifi_ctx = ssl.create_default_context(cafile=certifi.where())
    certifi_subjects = {repr(cert["subject"]) for cert in certifi_ctx.get_ca_certs()}
    assert certifi_subjects and certifi_subjects <= subjects


def test_server_verification_cert_replaces_the_default_trust(hub: Hub) -> None:
    ctx = make_client_context(server_verification_cert=hub.ca_pem)
    assert len(ctx.get_ca_certs()) == 1
