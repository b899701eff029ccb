"""The README's "Provisioning (DPS) and Plug and Play" section: its Python
code block runs, and prints what it says."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Provisioning (DPS) and Plug and Play"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(HEADING)
    end = text.find("\n## ", start + len(HEADING))
    return text[start:] if end < 0 else text[start:end]


def test_readme_provisioning_sample_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section(), re.S)
    assert len(blocks) == 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert out.getvalue().splitlines() == ["b'{\"temperature\": 21.5}'",
                                           "dtmi:com:example:Thermostat;1"]
