"""Installed size of each iotdev variant against its peers (``make sizes``).

Each variant is installed with pip into a fresh venv of this interpreter; its
size is what the install added to site-packages (bytes on disk, bytecode
included, as pip leaves it), so pip and setuptools of the empty venv are not
counted.  The iotdev variants come from the wheel in ``--dist`` (``make
wheel``), the peers from the package index.  Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

VARIANTS = [
    ("`pip install --no-deps iotdev` (standard library only)", ["--no-deps", "iotdev"]),
    ("`pip install iotdev` (h11, wsproto, certifi)", ["iotdev"]),
    ("`pip install 'iotdev[emulator]'` (+ cryptography)", ["iotdev[emulator]"]),
    ("azure-iot-device 2.14.0", ["azure-iot-device==2.14.0"]),
    ("paho-mqtt 1.6.1", ["paho-mqtt==1.6.1"]),
    ("paho-mqtt 2.1.0", ["paho-mqtt==2.1.0"]),
]


def site_packages(venv: Path) -> Path:
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def tree_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            total += os.lstat(os.path.join(root, name)).st_size
    return total


def measure(args: list[str], dist: Path, work: Path, n: int) -> tuple[int, list[str]]:
    venv = work / f"v{n}"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = site_packages(venv)
    before = tree_size(site)
    names_before = {p.name for p in site.iterdir()}
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--find-links", str(dist), *args], check=True)
    added = sorted(p.name for p in site.iterdir() if p.name not in names_before
                   and p.name.endswith((".dist-info",)))
    return tree_size(site) - before, [a.removesuffix(".dist-info") for a in added]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dist", type=Path, required=True, help="folder with the iotdev wheel")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="iotdev-sizes-") as tmp:
        for n, (label, pip_args) in enumerate(VARIANTS):
            size, added = measure(pip_args, args.dist.resolve(), Path(tmp), n)
            rows.append((label, size, ", ".join(added)))
    version = sysconfig.get_python_version()
    print(f"Installed size on CPython {version} ({sys.platform}), fresh venv, "
          "site-packages growth incl. bytecode:\n")
    print("| install | size | distributions |")
    print("|---|---:|---|")
    for label, size, added in rows:
        print(f"| {label} | {size / 1e6:.2f} MB | {added} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
