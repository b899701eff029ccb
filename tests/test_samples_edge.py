"""The module client's README block and ``samples/edge/`` run: the README's
"The module client" section block (emulator on free ports), and the Edge
filter/sink pair in one command (``samples/edge/run.py``: the emulator on
8883/443 of ``127.0.0.155``, shared with ``test_module_client.py``; pytest runs
the two modules one after the other)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## The module client"
ADDRESS = "127.0.0.155"
_IN_CI = os.environ.get("CI", "").lower() in ("true", "1")


def _section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start:] if end < 0 else text[start:end]


def test_readme_module_client_block_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) == 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue().splitlines() == ["alerts b'35.4'"]


def test_edge_sample_runs_in_one_command() -> None:
    for port in (8883, 443):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ADDRESS, port))
            except OSError as exc:
                if _IN_CI:
                    pytest.fail(f"cannot bind {ADDRESS}:{port}: {exc}", pytrace=False)
                pytest.skip(f"cannot bind {ADDRESS}:{port}: {exc}")
    done = subprocess.run([sys.executable, str(ROOT / "samples" / "edge" / "run.py"),
                           "--address", ADDRESS, "--timeout", "60"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    # the sink may not have taken every alert when it answers
    assert lines[0].startswith("filter: forwarded 3 of 7 readings; sink stats -> "
                               "{'status': 200, 'payload': {'alerts': "), lines
    assert "sink: 3 alerts sent upstream" in lines
    upstream = [line for line in lines if line.startswith("hub: from sink: ")]
    assert [line.split("'temperature': ")[1].split("}")[0] for line in upstream] == [
        "31.2", "35.4", "33.3"]
    assert all("'input': 'alerts', 'from': 'filter'" in line for line in upstream)
    assert "filter twin reported: {'forwarded': 3, 'threshold': 30" in done.stdout
