"""The emulator runs on Python 3.10 (issue 13: Ubuntu 22.04, Yocto kirkstone):
no names that appeared in 3.11.  A static check over ``iotdev/emulator``; the
3.10 interpreter runs in ``make test`` where the machine offers it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

EMULATOR = Path(__file__).resolve().parent.parent / "iotdev" / "emulator"

# module attribute -> what to use on 3.10
NEW_IN_311 = {
    ("datetime", "UTC"): "datetime.timezone.utc",
    ("asyncio", "timeout"): "asyncio.wait_for",
    ("asyncio", "timeout_at"): "asyncio.wait_for",
    ("asyncio", "TaskGroup"): "asyncio.gather",
    ("asyncio", "Runner"): "asyncio.run",
    ("typing", "Self"): "a TypeVar",
    ("typing", "LiteralString"): "str",
    ("typing", "Never"): "NoReturn",
    ("enum", "StrEnum"): "(str, Enum)",
}
NEW_MODULES = {"tomllib"}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                (node.value.id, node.attr) in NEW_IN_311:
            found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr} (use "
                         f"{NEW_IN_311[node.value.id, node.attr]})")
        elif isinstance(node, ast.ImportFrom) and node.module in {m for m, _ in NEW_IN_311}:
            for alias in node.names:
                if (node.module, alias.name) in NEW_IN_311:
                    found.append(f"{path.name}:{node.lineno}: from {node.module} import "
                                 f"{alias.name}")
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""]
            found += [f"{path.name}:{node.lineno}: import {n}" for n in names
                      if n.split(".")[0] in NEW_MODULES]
        elif type(node).__name__ == "TryStar":
            found.append(f"{path.name}:{node.lineno}: except*")
    return found


@pytest.mark.parametrize("path", sorted(EMULATOR.glob("*.py")), ids=lambda p: p.name)
def test_no_names_newer_than_python_310(path: Path) -> None:
    assert _problems(path) == []


def test_the_check_finds_what_it_looks_for(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import datetime, asyncio, tomllib\nfrom typing import Self\n"
                   "x = datetime.UTC\nasync def f():\n    async with asyncio.timeout(1):\n"
                   "        pass\n")
    assert len(_problems(bad)) == 4
