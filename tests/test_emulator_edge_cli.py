"""``iotdev-hub serve --edge`` end to end, as a module author runs it: the
emulator in one process, two unmodified azure-iot-device Edge modules (a
filter in its own process, a sink here) started from the environment
``iotdev-hub edge-env`` prints, wired by routes given on the command line; then
``iotdev-hub invoke --module`` and ``twin --module`` against them.

Shares ``127.0.0.151`` (ports 8883/443, what azure-iot-device dials) with
``test_emulator_edge.py``; pytest runs the two modules one after the other.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

try:
    import azure.iot.device as azure_device
except ImportError as exc:
    if _IN_CI:
        raise
    pytest.skip(f"azure-iot-device is not installed: {exc}", allow_module_level=True)

ADDRESS = "127.0.0.151"
TIMEOUT = 30.0
CLI = [sys.executable, "-m", "iotdev.emulator"]

FILTER = '''
import sys
from azure.iot.device import IoTHubModuleClient, Message

client = IoTHubModuleClient.create_from_edge_environment(connection_retry=False)
client.connect()
for n in range(3):
    message = Message(f'{{"temperature": {20 + 10 * n}}}', content_type="application/json")
    message.custom_properties = {"hot": "yes" if n == 2 else "no"}
    client.send_message_to_output(message, "readings")
client.shutdown()
print("filter done")
'''

pytestmark = pytest.mark.filterwarnings(  # azure-iot-device's own ssl.SSLContext(TLSv1_2)
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")

ROUTES = [
    "--route", 'hot=FROM /messages/modules/filter/outputs/readings WHERE hot = \'yes\' '
               'INTO BrokeredEndpoint("/modules/sink/inputs/alerts")',
    "--route", "up=FROM /messages/modules/sink/* INTO $upstream",
]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    for port in (8883, 443):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ADDRESS, port))
            except OSError as exc:
                if _IN_CI:
                    pytest.fail(f"cannot bind {ADDRESS}:{port}: {exc}")
                pytest.skip(f"cannot bind {ADDRESS}:{port}: {exc}")
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [*CLI, "serve", "--host", ADDRESS, "--mqtt-port", "8883", "--ws-port", "443",
         "--http-port", "0", "--state", str(state), "--edge", "edge-1",
         "--module", "edge-1/filter", "--module", "edge-1/sink", *ROUTES],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while not any("route edge-1:up" in line for line in lines):
            assert time.monotonic() < deadline, lines
            line = proc.stdout.readline()
            assert line, f"serve exited early: {lines}"
            lines.append(line)
        (api,) = [line.split(" on ", 1)[1].split()[0] for line in lines
                  if "service API on" in line]
        yield state, api, lines
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=TIMEOUT)


def _environment(state: Path, module: str) -> dict[str, str]:
    done = _cli("edge-env", module, "--state", str(state))
    assert done.returncode == 0, done.stderr
    env: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0]
    return env


def test_edge_modules_started_from_the_printed_environment(
        serve: tuple[Path, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    state, api, lines = serve
    assert any("edge-1/filter (Edge): eval" in line for line in lines), lines
    env = _environment(state, "edge-1/sink")
    assert env["IOTEDGE_MODULEID"] == "sink" and env["IOTEDGE_GATEWAYHOSTNAME"] == ADDRESS
    assert json.loads(_cli("edge-env", "edge-1/sink", "--state", str(state), "--json").stdout
                      ) == env
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    sink: Any = azure_device.IoTHubModuleClient.create_from_edge_environment(
        connection_retry=False)
    alerts: list[Any] = []
    arrived = threading.Event()

    def on_message(message: Any) -> None:
        alerts.append(message)
        sink.send_message(f"forwarded {message.data.decode()}")
        arrived.set()

    def on_method(request: Any) -> None:
        sink.send_method_response(azure_device.MethodResponse.create_from_method_request(
            request, 200, {"alerts": len(alerts)}))

    sink.on_message_received = on_message
    sink.on_method_request_received = on_method
    try:
        sink.connect()
        filter_env = {**os.environ, **_environment(state, "edge-1/filter")}
        done = subprocess.run([sys.executable, "-c", FILTER], env=filter_env,
                              capture_output=True, text=True, timeout=TIMEOUT)
        assert done.returncode == 0 and "filter done" in done.stdout, done.stderr[-3000:]
        assert arrived.wait(TIMEOUT)
        assert [(m.input_name, m.data) for m in alerts] == [("alerts",
                                                             b'{"temperature": 40}')]
        client = ["--url", api, "--ca", str(state / "ca.pem")]
        called = _cli("invoke", "edge-1", "count", "--module", "sink", *client)
        assert called.returncode == 0, called.stderr
        assert json.loads(called.stdout) == {"status": 200, "payload": {"alerts": 1}}
        deadline = time.monotonic() + TIMEOUT
        while True:
            telemetry = _cli("telemetry", "edge-1", *client)
            bodies = [json.loads(line) for line in telemetry.stdout.splitlines()]
            if bodies or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [(b["moduleId"], b["body"]) for b in bodies] == [
            ("sink", 'forwarded {"temperature": 40}')], telemetry.stdout
        twin = _cli("twin", "edge-1", "--module", "filter", *client)
        assert json.loads(twin.stdout)["moduleId"] == "filter", twin.stderr
    finally:
        sink.shutdown()


def test_edge_env_refuses_what_it_cannot_answer(tmp_path: Path) -> None:
    missing = _cli("edge-env", "e/m", "--state", str(tmp_path))
    assert missing.returncode == 2 and "no emulator state here" in missing.stderr
    bad = _cli("edge-env", "just-a-device", "--state", str(tmp_path))
    assert bad.returncode == 2 and "DEVICE/MODULE" in bad.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--module", "no-slash"], "expected DEVICE/MODULE[:KEY]"),
    (["--module", "d/m:not base64!"], "not valid base64"),
    (["--route", "up=FROM /messages/* INTO $upstream"], "unless exactly one --edge"),
    (["--edge", "e", "--route", "bad=FROM /messages/* INTO nowhere"], "unknown sink"),
    (["--edge", "e", "--route", "x:up=FROM /messages/* INTO $upstream"],
     "'x' is not an --edge device"),
])
def test_serve_refuses_bad_module_and_edge_arguments(tmp_path: Path, args: list[str],
                                                     message: str) -> None:
    done = _cli("serve", "--mqtt-port", "0", "--ws-port", "-1", "--http-port", "-1",
                "--state", str(tmp_path / "s"), *args)
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_edge_env_names_an_absolute_socket_for_a_relative_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``serve --state hub`` (relative) used to store a relative socket path,
    and modules refuse ``unix://hub/...`` (the README's Edge walkthrough)."""
    from iotdev.emulator import Hub

    monkeypatch.chdir(tmp_path)
    hub = Hub(state_dir="hub", mqtt_port=0, ws_port=None)
    hub.add_device("edge-1")
    hub.add_edge_device("edge-1")
    hub.add_module("edge-1", "sink")
    env = _environment(Path("hub"), "edge-1/sink")
    assert env["IOTEDGE_WORKLOADURI"] == f"unix://{tmp_path}/hub/edge/edge-1/workload.sock"
