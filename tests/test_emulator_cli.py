"""The emulator's command line: ``demo`` end to end, ``serve`` until SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from iotdev._auth import ConnectionString

TIMEOUT = 60.0


def test_demo_runs_end_to_end() -> None:
    done = subprocess.run([sys.executable, "-m", "iotdev.emulator", "demo"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for expected in ("received telemetry", "direct method setMode -> status 200",
                     "device reported:", "cloud-to-device message: 'please recalibrate'",
                     "stopped."):
        assert expected in out, out
    assert "SharedAccessKey=<hidden>" in out


def test_serve_prints_connection_strings_and_stops_on_sigterm(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-m", "iotdev.emulator", "serve", "--mqtt-port", "0", "--ws-port",
         "0", "--http-port", "-1", "--state", str(state), "--device", "dev1", "--device",
         "dev2:" + "a2V5LWZvci1kZXYyLXRoYXQtaXMtMzItYnl0ZXMhIQ=="],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + TIMEOUT
        while sum("HostName=" in line for line in lines) < 2:
            assert time.monotonic() < deadline, lines
            line = proc.stdout.readline()
            assert line, f"serve exited early: {lines}"
            lines.append(line)
        strings = [ConnectionString.parse(line.split(": ", 2)[2].strip())
                   for line in lines if "HostName=" in line]
        assert {s.device_id for s in strings} == {"dev1", "dev2"}
        assert (state / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(TIMEOUT) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
