"""``iotdev-hub`` on bad input: one line on stderr, an exit code, no traceback.

Exit codes: 2 for bad arguments or state (``_cli.EXIT_USAGE``), 3 for a port
that cannot be listened on (``_cli.EXIT_LISTEN``).  The non-root cases run the
CLI as ``nobody`` with ``setpriv`` when the tests run as root (as CI does), or
as the current user when it is not root.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import iotdev
from iotdev.emulator import _cli

CLI = [sys.executable, "-m", "iotdev.emulator"]
KEY_A = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE="  # base64 of 32 bytes
KEY_B = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="
QUIET = ["--mqtt-port", "0", "--ws-port", "-1", "--http-port", "-1"]


def run(args: list[str], *, user: list[str] | None = None, cwd: Path | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*(user or []), *CLI, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("iotdev-hub serve: "), lines[0]
    return lines[0]


def unprivileged() -> list[str]:
    """The prefix that runs a command as a user who is not root."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root without setpriv (util-linux): cannot test as non-root")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary folder the unprivileged user can reach (pytest's is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="iotdev-cli-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_version() -> None:
    result = run(["--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"iotdev-hub {iotdev.__version__}"


def test_help_shows_defaults() -> None:
    result = run(["serve", "--help"])
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "(default: 8883)" in text
    assert "(default: 443)" in text
    assert "(default: iotdev-hub-state)" in text
    assert "--log-level" in text and "-v" in text


@pytest.mark.parametrize(("spec", "reason"), [
    ("bad id!", "invalid device id"),
    ("", "invalid device id"),
    ("dev1:not base64", "not valid base64"),
    ("dev1:QUFB", "decodes to 3 bytes"),
])
def test_bad_device_spec(tmp_path: Path, spec: str, reason: str) -> None:
    line = one_line_error(run(["serve", "--state", str(tmp_path / "s"), "--device", spec,
                               *QUIET]), _cli.EXIT_USAGE)
    assert f"--device {spec!r}" in line and reason in line


def test_state_is_a_file(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.write_text("not a folder")
    line = one_line_error(run(["serve", "--state", str(state), *QUIET]), _cli.EXIT_USAGE)
    assert "is a file, not a folder" in line


def test_state_not_writable(open_tmp: Path) -> None:
    locked = open_tmp / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    line = one_line_error(run(["serve", "--state", str(locked / "hub"), *QUIET],
                              user=unprivileged()), _cli.EXIT_USAGE)
    assert "cannot create the folder: Permission denied" in line


def test_corrupt_state_file(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{ not json")
    line = one_line_error(run(["serve", "--state", str(tmp_path), *QUIET]), _cli.EXIT_USAGE)
    assert "state.json" in line or "state" in line


@pytest.mark.parametrize("option", ["--mqtt-port", "--ws-port", "--http-port"])
def test_port_out_of_range(tmp_path: Path, option: str) -> None:
    line = one_line_error(run(["serve", "--state", str(tmp_path), *QUIET, option, "70000"]),
                          _cli.EXIT_USAGE)
    assert f"{option} 70000" in line


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = one_line_error(run(["serve", "--state", str(tmp_path), *QUIET,
                                   "--mqtt-port", str(port)]), _cli.EXIT_LISTEN)
    assert "cannot listen on 127.0.0.1" in line and "another program uses" in line


def test_privileged_port_as_non_root(open_tmp: Path) -> None:
    state = open_tmp / "hub"
    state.mkdir()
    state.chmod(0o777)
    line = one_line_error(run(["serve", "--state", str(state), *QUIET, "--ws-port", "443"],
                              user=unprivileged()), _cli.EXIT_LISTEN)
    assert "permission denied" in line.lower() and "--ws-port 443" in line and "--ws-port 0" in line


def serve_until_ready(args: list[str]) -> tuple[str, str]:
    """Start ``serve``, wait for its ready line, stop it with SIGINT: (stdout, stderr)."""
    with subprocess.Popen([*CLI, "serve", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "ready" in line:
                break
        else:
            proc.wait(10)
            pytest.fail(f"serve did not start: {proc.stderr.read()}")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        return "".join(lines) + out, err


def test_key_that_disagrees_with_the_stored_one_warns(tmp_path: Path) -> None:
    state = str(tmp_path / "hub")
    out, err = serve_until_ready(["--state", state, *QUIET, "--device", f"dev1:{KEY_A}"])
    assert f"SharedAccessKey={KEY_A}" in out and "warning" not in err
    out, err = serve_until_ready(["--state", state, *QUIET, "--device", f"dev1:{KEY_B}"])
    assert f"SharedAccessKey={KEY_A}" in out  # the stored key stays...
    assert "warning: --device dev1:KEY differs from the key stored" in err  # ...and we say so
    out, err = serve_until_ready(["--state", state, *QUIET, "--device", f"dev1:{KEY_A}"])
    assert "warning" not in err


def test_log_level_flags() -> None:
    assert _cli._parser().parse_args(["serve", "-vv"]).verbose == 2
    assert _cli._parser().parse_args(["serve", "--log-level", "info"]).log_level == "INFO"
    result = run(["serve", "--log-level", "loud"])
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_client_commands_find_the_ca_through_state(tmp_path: Path) -> None:
    result = subprocess.run([*CLI, "devices", "--state", str(tmp_path / "hub")],
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"CA certificate {tmp_path / 'hub' / 'ca.pem'} not found" in result.stderr
    assert "--state it was started with" in result.stderr
