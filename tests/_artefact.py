"""The artefact users install: the sdist and wheel built from this checkout
(``python -m build``: the wheel is built from the sdist, so a file missing from
the sdist breaks the wheel too), and fresh virtual environments with the wheel
installed from a folder, as ``pip install iotdev`` would.

``IOTDEV_SMOKE_PYTHON`` picks the interpreter of those environments (default:
the one running the tests); ``make wheel-smoke`` runs the checks with the
oldest and newest Python this machine has.  Each build and environment is made
once per test process and removed at exit.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT = 600


def smoke_python() -> str:
    return os.environ.get("IOTDEV_SMOKE_PYTHON") or sys.executable


@functools.cache
def _workdir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="iotdev-artefact-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def _run(args: list[str | Path], **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                            timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@functools.cache
def dist() -> Path:
    """The folder holding the freshly built ``iotdev-*.tar.gz`` and ``.whl``."""
    out = _workdir() / "dist"
    _run([sys.executable, "-m", "build", "--outdir", out, ROOT])
    return out


def wheel() -> Path:
    (found,) = dist().glob("iotdev-*.whl")
    return found


def sdist() -> Path:
    (found,) = dist().glob("iotdev-*.tar.gz")
    return found


@functools.cache
def venv(kind: str) -> Path:
    """A fresh venv on ``smoke_python()`` with the wheel installed; its ``bin``.

    ``kind``: ``"emulator"`` (``pip install 'iotdev[emulator]'``: the extra a
    device-plus-emulator user installs), ``"plain"`` (``pip install iotdev``),
    ``"no-deps"`` (``pip install --no-deps iotdev``: standard library only) or
    ``"bare"`` (nothing installed: the README's own ``pip install`` does it).
    """
    path = _workdir() / f"venv-{kind}"
    _run([smoke_python(), "-m", "venv", path])
    bin_dir = path / "bin"
    if kind == "bare":
        return bin_dir
    requirement = {"emulator": "iotdev[emulator]", "plain": "iotdev",
                   "no-deps": "iotdev"}[kind]
    extra = ["--no-deps"] if kind == "no-deps" else []
    _run([bin_dir / "python", "-m", "pip", "install", "-q", *extra, "--find-links", dist(),
          requirement], env=pip_env())
    return bin_dir


def pip_env(bin_dir: Path | None = None) -> dict[str, str]:
    """The environment of a shell in a venv: its ``bin`` first on ``PATH``,
    ``pip`` finding the fresh wheel first, nothing of the checkout on
    ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_FIND_LINKS"] = " ".join(filter(None, [str(dist()), env.get("PIP_FIND_LINKS")]))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(bin_dir.parent)
    return env
