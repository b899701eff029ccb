"""Every script in samples/ runs against the emulator, as a user runs it.

Each sample is a subprocess (``python SAMPLE.py``, cwd ``samples/``) with the
environment a user sets (``IOTHUB_DEVICE_CONNECTION_STRING``,
``IOTHUB_CA_FILE``, ``IOTHUB_PORT``...); the hub side (C2D, method calls,
desired patches) is driven with the ``Hub`` API once the sample says it is
waiting, and the test checks what the hub received.  A sample that does not
finish in time is killed and the test fails with its output.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotdev.emulator import Hub
from tests._proxies import Socks4aRelay

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
TIMEOUT = 60.0
DEVICE = "sample-device"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        running.add_device(DEVICE)
        yield running


def sample_env(hub: Hub, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("IOTHUB_", "PROXY_", "X509_"))}
    env.update(IOTHUB_DEVICE_CONNECTION_STRING=hub.connection_string(DEVICE),
               IOTHUB_CA_FILE=str(hub.ca_path), IOTHUB_PORT=str(hub.mqtt_port),
               PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


class Sample:
    """A running sample; its output lines arrive on a queue (a reader thread)."""

    def __init__(self, name: str, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, name, *args], cwd=SAMPLES, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str) -> None:
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                self.fail(f"no {text!r} within {TIMEOUT:g} s")
            if line is None:
                self.fail(f"exited before printing {text!r}")
            self.output.append(line)
            if text in line:
                return

    def interrupt(self) -> None:
        """Ctrl-C."""
        self.proc.send_signal(signal.SIGINT)

    def finish(self) -> str:
        """Wait for a successful exit; all the output."""
        try:
            self.proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.fail(f"still running after {TIMEOUT:g} s")
        while (line := self.lines.get(timeout=TIMEOUT)) is not None:
            self.output.append(line)
        if self.proc.returncode != 0:
            self.fail(f"exit code {self.proc.returncode}")
        return "".join(self.output)

    def fail(self, why: str) -> None:
        self.proc.kill()
        self.proc.wait()
        while True:
            try:
                line = self.lines.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.output.append(line)
        pytest.fail(f"{self.proc.args[1]}: {why}; output:\n{''.join(self.output)}")


def run_sample(name: str, *args: str, env: dict[str, str]) -> str:
    return Sample(name, *args, env=env).finish()


@pytest.mark.parametrize(("name", "count"), [("send_message.py", 5),
                                             ("send_message_async.py", 10)])
def test_send_message(hub: Hub, name: str, count: int) -> None:
    before = len(hub.telemetry(DEVICE))
    output = run_sample(name, env=sample_env(hub))
    assert output.count("sent message #") == count
    received = hub.wait_for_telemetry(DEVICE, before + count, timeout=TIMEOUT)[before:]
    assert len(received) == count
    if name == "send_message.py":
        assert received[0].properties.get("tornado-warning") == "yes"


@pytest.mark.parametrize("name", ["receive_message.py", "receive_message_async.py"])
def test_receive_message(hub: Hub, name: str) -> None:
    sample = Sample(name, "2", env=sample_env(hub))
    sample.wait_for("waiting for messages")
    hub.send_c2d(DEVICE, "hello", properties={"k": "v"})
    hub.send_c2d(DEVICE, "world")
    output = sample.finish()
    assert "message received: hello {'k': 'v'}" in output
    assert "message received: world" in output


@pytest.mark.parametrize("name", ["receive_direct_method.py", "receive_direct_method_async.py"])
def test_receive_direct_method(hub: Hub, name: str) -> None:
    sample = Sample(name, "2", env=sample_env(hub))
    sample.wait_for("waiting for method calls")
    ok = hub.invoke_method(DEVICE, "reboot", {"delay": 5}, timeout=30)
    unknown = hub.invoke_method(DEVICE, "selfDestruct", timeout=30)
    output = sample.finish()
    assert ok.status == 200 and ok.payload["result"] is True
    assert unknown.status == 400
    assert "method reboot called with {'delay': 5}" in output


def reported(hub: Hub) -> dict[str, object]:
    return dict(hub.get_twin(DEVICE)["properties"]["reported"])


# The twin samples also get the whole desired document once after connecting
# (ensure_desired_properties, as in v2), so how many "patches" arrive depends
# on timing: these run until Ctrl-C, as a user stops them.


def test_receive_twin_desired_properties_patch(hub: Hub) -> None:
    sample = Sample("receive_twin_desired_properties_patch.py", env=sample_env(hub))
    sample.wait_for("waiting for desired property patches")
    hub.patch_desired(DEVICE, {"rate": 5})
    sample.wait_for("reported: {'rate': 5}")
    sample.interrupt()
    sample.finish()
    assert reported(hub)["rate"] == 5


def test_update_twin_reported_properties(hub: Hub) -> None:
    output = run_sample("update_twin_reported_properties.py", env=sample_env(hub))
    assert "reported: {" in output
    assert reported(hub)["firmware"] == "1.2.0"


def test_twin_async(hub: Hub) -> None:
    sample = Sample("twin_async.py", env=sample_env(hub))
    sample.wait_for("waiting for desired property patches")
    hub.patch_desired(DEVICE, {"interval": 30})
    sample.wait_for("reported: {'interval': 30}")
    sample.interrupt()
    sample.finish()
    assert reported(hub)["interval"] == 30


def test_upload_to_blob(hub: Hub) -> None:
    assert hub.ws_port is not None
    output = run_sample("upload_to_blob.py", env=sample_env(
        hub, IOTHUB_HTTPS_PORT=str(hub.ws_port)))
    size = (SAMPLES / "upload_to_blob.py").stat().st_size
    assert f"uploaded {size} bytes" in output
    upload = hub.uploads(DEVICE)[-1]
    assert (upload.status, upload.size) == ("succeeded", size)


def test_send_message_x509(hub: Hub) -> None:
    cert = hub.add_x509_device("x509-sample")
    env = sample_env(hub, HOSTNAME=hub.host, DEVICE_ID="x509-sample",
                     X509_CERT_FILE=str(cert.cert_file), X509_KEY_FILE=str(cert.key_file))
    del env["IOTHUB_DEVICE_CONNECTION_STRING"]
    output = run_sample("send_message_x509.py", env=env)
    assert "sent a message with X.509 authentication" in output
    assert hub.wait_for_telemetry("x509-sample", 1, timeout=TIMEOUT)[0].body == \
        b"hello from an X.509 device"


def test_send_message_via_websockets(hub: Hub) -> None:
    before = len(hub.telemetry(DEVICE))
    output = run_sample("send_message_via_websockets_proxy.py",
                        env=sample_env(hub, IOTHUB_PORT=str(hub.ws_port)))
    assert "sent a message over MQTT/WebSocket" in output
    hub.wait_for_telemetry(DEVICE, before + 1, timeout=TIMEOUT)


def test_send_message_via_websockets_and_socks_proxy(hub: Hub) -> None:
    relay = Socks4aRelay()
    try:
        output = run_sample("send_message_via_websockets_proxy.py", env=sample_env(
            hub, IOTHUB_PORT=str(hub.ws_port), PROXY_TYPE="SOCKS4", PROXY_ADDR=relay.host,
            PROXY_PORT=str(relay.port)))
    finally:
        relay.close()
    assert "via SOCKS4 proxy" in output
    assert [(host, port) for _, host, port in relay.requests] == [(hub.host, hub.ws_port)]
    assert relay.errors == []


def test_every_sample_is_tested() -> None:
    text = Path(__file__).read_text()
    for path in SAMPLES.glob("*.py"):
        if path.name != "client_options.py":
            assert f'"{path.name}"' in text, f"samples/{path.name} has no test"
