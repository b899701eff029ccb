"""``iotdev_mqtt`` is sans-IO and standard-library only.

Importing it pulls in nothing outside the standard library, and no module of
the package imports I/O, concurrency, clock or logging modules.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import iotdev_mqtt

PACKAGE_DIR = Path(iotdev_mqtt.__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
FORBIDDEN = ("socket", "ssl", "select", "selectors", "threading", "asyncio", "time", "logging")

# Runs without ``site`` (-S) so that .pth hooks of the virtualenv (setuptools'
# _distutils_hack, the editable-install finder) do not pollute sys.modules;
# the package is imported from this checkout.
_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
import iotdev_mqtt
print(json.dumps({
    "file": iotdev_mqtt.__file__,
    "modules": sorted(sys.modules),
    "new": sorted(set(sys.modules) - before),
}))
"""


def probe() -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, "-S", "-c", _PROBE, str(REPO_ROOT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    data: dict[str, object] = json.loads(result.stdout)
    return data


def top_level(name: str) -> str:
    return name.split(".", 1)[0]


def test_import_pulls_in_only_the_standard_library() -> None:
    data = probe()
    assert Path(str(data["file"])).resolve().parent == PACKAGE_DIR
    modules = data["modules"]
    assert isinstance(modules, list)
    assert "iotdev_mqtt._reader" in modules  # the probe really imported the package
    outside = [
        m
        for m in modules
        if m != "__main__"
        and top_level(m) not in sys.stdlib_module_names
        and top_level(m) != "iotdev_mqtt"
    ]
    assert outside == [], f"non-stdlib modules after import iotdev_mqtt: {outside}"


def test_import_does_not_load_io_or_clock_modules() -> None:
    new = probe()["new"]
    assert isinstance(new, list)
    loaded = sorted({top_level(m) for m in new} & set(FORBIDDEN))
    assert loaded == [], f"import iotdev_mqtt loaded {loaded}"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every absolute import in ``path`` (any nesting)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(top_level(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(top_level(node.module))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(top_level(node.args[0].value))
    return names


def source_files() -> list[Path]:
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert PACKAGE_DIR / "_reader.py" in files
    return files


def test_no_module_imports_io_concurrency_clock_or_logging() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_modules(path) & set(FORBIDDEN))
        for path in source_files()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"forbidden imports: {offenders}"


# What the type checker alone reads (``if TYPE_CHECKING:`` blocks) never runs:
# typing_extensions gives mypy 3.11 names (dataclass_transform) while it checks
# the package as Python 3.10.  Only that one name is allowed there.
TYPE_CHECKING_ONLY = {"typing_extensions"}


def type_checking_only_imports(path: Path) -> set[str]:
    """Top-level modules imported only inside ``if TYPE_CHECKING:`` blocks."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) \
                and node.test.id == "TYPE_CHECKING":
            for inner in node.body:
                if isinstance(inner, ast.ImportFrom) and inner.level == 0 and inner.module:
                    names.add(top_level(inner.module))
    return names & TYPE_CHECKING_ONLY


def test_source_imports_are_stdlib_only() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(
            m for m in imported_modules(path) - type_checking_only_imports(path)
            if m not in sys.stdlib_module_names
        )
        for path in source_files()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert offenders == {}, f"non-stdlib imports: {offenders}"


def test_import_scanner_sees_imports(tmp_path: Path) -> None:
    """The scanner itself must find imports, or the tests above prove nothing."""
    found = imported_modules(PACKAGE_DIR / "_encode.py")
    assert {"__future__", "collections", "struct"} <= found
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import os.path, socket as s\n"
        "from time import monotonic\n"
        "from . import sibling\n"
        "def f():\n"
        "    import threading\n"
        "    return __import__('ssl'), importlib.import_module('asyncio')\n",
        encoding="utf-8",
    )
    assert imported_modules(sample) == {"os", "socket", "time", "threading", "ssl", "asyncio"}
