"""``iotdev-hub dps ...``: enrollments in the state folder, and ``dps serve``
(a subprocess) assigning to a hub through its service API."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from iotdev import ProvisioningDeviceClient, derive_device_key
from iotdev.emulator import Hub
from iotdev.emulator._cli import main
from iotdev.emulator._enrollments import EnrollmentStore

KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_enrollments_add_list_disable_remove(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    state = str(tmp_path)
    code, out, _ = run(capsys, "dps", "enroll", "dev-1", "--key", KEY, "--state", state)
    assert code == 0 and json.loads(out)["primary_key"] == KEY
    code, out, _ = run(capsys, "dps", "group", "fleet", "--state", state)
    assert code == 0 and json.loads(out)["group_id"] == "fleet"
    assert run(capsys, "dps", "disable", "fleet", "--state", state)[0] == 0
    code, out, _ = run(capsys, "dps", "list", "--state", state)
    assert out.splitlines() == ["enrollment dev-1 -> dev-1 (symmetric key)",
                                "group fleet (disabled)"]
    store = EnrollmentStore(tmp_path)
    assert store.enrollments["dev-1"].primary_key == KEY and not store.groups["fleet"].enabled
    assert run(capsys, "dps", "remove", "dev-1", "--state", state)[0] == 0
    code, _, err = run(capsys, "dps", "remove", "dev-1", "--state", state)
    assert code == 2 and "no enrollment" in err
    code, _, err = run(capsys, "dps", "enroll", "bad id!", "--state", state)
    assert code == 2 and "registration id" in err
    code, out, _ = run(capsys, "dps", "device-key", KEY, "dev-9")
    assert out.strip() == derive_device_key(KEY, "dev-9")


def test_dps_serve_assigns_through_the_service_api(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    with Hub(mqtt_port=0, ws_port=None, http_port=0, state_dir=tmp_path) as hub:
        run(capsys, "dps", "group", "fleet", "--key", KEY, "--state", str(tmp_path))
        proc = subprocess.Popen(
            [sys.executable, "-m", "iotdev.emulator", "dps", "serve", "--state", str(tmp_path),
             "--mqtt-port", "0", "--ws-port", "-1", "--id-scope", "0neCLI",
             "--url", f"https://127.0.0.1:{hub.http_port}", "--retry-after", "0"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            match = re.search(r"MQTT/TLS on 127\.0\.0\.1:(\d+)", line)
            assert match, line
            key = derive_device_key(KEY, "cli-dev")
            client = ProvisioningDeviceClient.create_from_symmetric_key(
                "127.0.0.1", "cli-dev", "0neCLI", key, port=int(match.group(1)),
                server_verification_cert=hub.ca_pem)
            client.provisioning_payload = {"modelId": "dtmi:a:b;1"}
            state = client.register(timeout=30).registration_state
            assert state is not None and state.device_id == "cli-dev"
            device = hub.store.device("cli-dev")
            assert device is not None and device.primary_key == key
        finally:
            proc.terminate()
            proc.wait(10)
        code, out, _ = run(capsys, "dps", "list", "--state", str(tmp_path))
        assert code == 0
        assert "registration cli-dev -> cli-dev on 127.0.0.1 (1x" in out
        assert "model dtmi:a:b;1" in out
