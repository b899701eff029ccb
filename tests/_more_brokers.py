"""Other MQTT brokers for the conformance tests: amqtt (PyPI) and aedes (npm).

``make brokers`` installs them (amqtt into the venv as a test dependency,
aedes into ``.npm-brokers/``).  A missing one skips the test, or fails it when
``CI`` is true.  Each broker runs as a child process on a free port of
127.0.0.154 and is stopped by its fixture.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests._broker import free_ports, in_ci

__all__ = ["HOST", "BrokerProcess", "require_aedes", "require_amqtt"]

HOST = "127.0.0.154"
ROOT = Path(__file__).resolve().parent.parent
NPM_MODULES = ROOT / ".npm-brokers" / "node_modules"


def _missing(message: str) -> None:
    if in_ci():
        pytest.fail(f"CI={os.environ.get('CI')}: {message}; broker tests must not skip in CI")
    pytest.skip(message)


def require_amqtt() -> list[str]:
    """The command that runs amqtt's broker with this interpreter."""
    script = Path(sys.executable).with_name("amqtt")
    if not script.exists():
        _missing("amqtt is not installed (pip install amqtt, or `make brokers`)")
    return [str(script)]


def require_aedes() -> list[str]:
    """``node tests/_aedes_broker.js`` with aedes from ``.npm-brokers/``."""
    node = shutil.which("node")
    if node is None or not (NPM_MODULES / "aedes").is_dir():
        _missing("node or aedes missing (`make brokers` installs aedes into .npm-brokers/)")
    return [str(node), str(ROOT / "tests" / "_aedes_broker.js")]


class BrokerProcess:
    """A broker child process listening on ``(HOST, port)``."""

    def __init__(self, name: str, args: list[str], directory: Path, *,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = free_ports(1, HOST)[0]
        self.directory = directory
        self.log_path = directory / f"{name}.log"
        self.args = [a.format(host=HOST, port=self.port, dir=directory) for a in args]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> BrokerProcess:
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env,
                                        cwd=self.directory)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                socket.create_connection((HOST, self.port), timeout=0.5).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not listen on {HOST}:{self.port} "
                                       f"within {timeout} s") from None
                # wait on the socket with a bounded poll (no event to wait on)
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
