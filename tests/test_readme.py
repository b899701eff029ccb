"""Every code block of README.md runs here.  The convention, by the fence's info
string:

``python``
    A complete program: written to a file in a fresh temporary folder and run
    with this interpreter (the development install); it must exit 0 within
    ``TIMEOUT``.  A block right after ``<!-- readme-test: mosquitto -->`` runs
    against a throwaway mosquitto (``tests/_broker.py``): its CA is ``ca.pem``
    in the folder, and ``port=8883`` (TLS) / ``port=8081`` (WebSocket over
    TLS) in the code are replaced by the broker's free ports.
``python FILE``
    Not run by itself: written to ``FILE`` in the console folder (below), for
    the console blocks that run it.
``console``
    A shell session, run for real: every ``$ `` line is a bash command; the
    lines under it are its output as the reader will see it, checked in order
    against what it printed (``...`` inside a line matches anything, a line
    that is only ``...`` matches any number of lines).  All console blocks run
    in order in one folder, with the exported variables carried from command
    to command, in a *fresh venv with nothing installed* first on ``PATH``
    (``pip`` there finds the freshly built wheel, ``tests/_artefact.py``), so
    the README's own ``pip install`` line installs what the rest uses, as for
    a reader.  A command ending in ``# runs until Ctrl-C`` is started in the
    background; the next command waits until the output shown under it has
    appeared; it is stopped after the last block.
``text``
    Output, usage lines, trees and diagrams: never run.

Any other info string fails the test, so every block is one of these.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._artefact import ROOT, pip_env, venv

README = ROOT / "README.md"
TIMEOUT = 120.0
BACKGROUND = "# runs until Ctrl-C"
FIXTURE = re.compile(r"<!-- readme-test: (\w+) -->")


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    arg: str
    text: str
    fixture: str | None

    @property
    def name(self) -> str:
        return f"README.md:{self.line}"


def blocks() -> list[Block]:
    found = []
    lines = README.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            info = lines[i][3:].strip().split(maxsplit=1)
            start = i
            i += 1
            body = []
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            previous = lines[start - 1] if start else ""
            match = FIXTURE.fullmatch(previous.strip())
            found.append(Block(start + 1, info[0] if info else "",
                               info[1] if len(info) > 1 else "", "\n".join(body) + "\n",
                               match.group(1) if match else None))
        i += 1
    return found


BLOCKS = blocks()
PROGRAMS = [b for b in BLOCKS if b.lang == "python" and not b.arg]


def test_every_block_follows_the_convention() -> None:
    for block in BLOCKS:
        assert block.lang in ("python", "console", "text"), \
            f"{block.name}: ```{block.lang}: use python, console or text (see this file)"
        assert block.lang == "python" or not block.fixture, \
            f"{block.name}: a fixture comment before a non-python block"
        if block.lang == "console":
            assert block.text.startswith("$ "), f"{block.name}: a console block starts with $"
    assert len(PROGRAMS) >= 5 and any(b.lang == "console" for b in BLOCKS)


@pytest.mark.parametrize("block", PROGRAMS, ids=[b.name for b in PROGRAMS])
def test_python_block(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code = block.text
    if block.fixture == "mosquitto":
        broker = request.getfixturevalue("mosquitto")
        (tmp_path / "ca.pem").write_bytes(Path(broker.ca_cert).read_bytes())
        code = code.replace("port=8883", f"port={broker.tls_port}")
        code = code.replace("port=8081", f"port={broker.ws_port}")
    else:
        assert block.fixture is None, f"{block.name}: unknown fixture {block.fixture!r}"
    (tmp_path / "block.py").write_text(code)
    result = subprocess.run([sys.executable, "block.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout}\n{result.stderr}"


# ------------------------------------------------------------------ console


def parse_session(block: Block) -> list[tuple[str, list[str]]]:
    """``[(command, expected output lines)]``."""
    steps: list[tuple[str, list[str]]] = []
    for line in block.text.rstrip("\n").split("\n"):
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return steps


def pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split("...")))


def missing_output(expected: list[str], output: str) -> str | None:
    """The first expected line not found (in order) in ``output``, else None."""
    lines = output.splitlines()
    position = 0
    for want in expected:
        if want.strip() == "...":
            continue
        regex = pattern(want)
        while position < len(lines) and not regex.fullmatch(lines[position]):
            position += 1
        if position == len(lines):
            return want
        position += 1
    return None


class Session:
    """Commands run one by one in ``folder``; exports carried in a file."""

    def __init__(self, folder: Path, bin_dir: Path) -> None:
        self.folder = folder
        self.env = pip_env(bin_dir)
        self.state = folder / ".readme-exports"
        self.state.write_text("")
        self.background: list[tuple[subprocess.Popen[bytes], Path]] = []

    def script(self, command: str) -> str:
        return f". {self.state}\n{command}\n"

    def run(self, where: str, command: str, expected: list[str]) -> None:
        if command.rstrip().endswith(BACKGROUND):
            self.start(where, command.rstrip()[: -len(BACKGROUND)], expected)
            return
        result = subprocess.run(
            ["bash", "-c", "set -e\n" + self.script(command) + f"export -p > {self.state}\n"],
            cwd=self.folder, env=self.env, capture_output=True, text=True, timeout=TIMEOUT,
            stdin=subprocess.DEVNULL)
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{where}: `{command}` exited {result.returncode}:\n" \
                                       f"{output}{self.background_logs()}"
        missing = missing_output(expected, output)
        assert missing is None, f"{where}: `{command}` did not print {missing!r}:\n{output}"

    def start(self, where: str, command: str, expected: list[str]) -> None:
        log = self.folder / f".background-{len(self.background)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(["bash", "-c", self.script("exec " + command)],
                                    cwd=self.folder, env=self.env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.background.append((proc, log))
        deadline = time.monotonic() + TIMEOUT
        while (missing := missing_output(expected, log.read_text(errors="replace"))):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{where}: `{command}` never printed {missing!r} "
                            f"(exit code {proc.poll()}):\n{log.read_text(errors='replace')}")
            time.sleep(0.05)  # polling a log file: there is no event to wait on

    def background_logs(self) -> str:
        return "".join(f"\n--- background {proc.args!r}:\n{log.read_text(errors='replace')}"
                       for proc, log in self.background)

    def stop(self) -> None:
        for proc, _log in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()


def test_console_blocks_in_installed_wheel(tmp_path: Path) -> None:
    """The README's shell sessions, in order, on the built wheel as a reader
    installs it (``make wheel-smoke`` runs this on the oldest and newest
    Python)."""
    for block in BLOCKS:
        if block.lang == "python" and block.arg:
            (tmp_path / block.arg).write_text(block.text)
    session = Session(tmp_path, venv("bare"))
    try:
        for block in BLOCKS:
            if block.lang == "console":
                for command, expected in parse_session(block):
                    session.run(block.name, command, expected)
    finally:
        session.stop()


def test_output_matching_can_fail() -> None:
    assert missing_output(["a ... c", "...", "z"], "x\na b c\ny\nz\n") is None
    assert missing_output(["a ... c", "z"], "z\na b c\n") == "z"
    assert missing_output(["nothing"], "") == "nothing"
