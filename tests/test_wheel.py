"""What users install works: the built sdist and wheel, installed in fresh
venvs (no editable install, no test extra), run from outside the checkout.

* the wheel holds every package of the source tree, ``py.typed``, the licence
  and the metadata a packager expects; the sdist holds what its tests need;
* ``pip install 'iotdev[emulator]'``: ``iotdev-hub demo``, and a device round
  trip (samples/send_message.py against ``iotdev-hub serve``), both from the
  installed console script and library;
* ``pip install iotdev``: the device client without cryptography, and
  ``iotdev-hub serve`` saying which extra it needs;
* ``pip install --no-deps iotdev`` (standard library only): ``iotdev_mqtt``
  and the README's codec example, and a ``MissingDependencyError`` naming the
  option for each feature that needs a missing package.

The interpreter is ``IOTDEV_SMOKE_PYTHON`` (``make wheel-smoke`` runs the
oldest and newest this machine has), default the one running the tests.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import iotdev
from tests._artefact import ROOT, pip_env, sdist, venv, wheel

TIMEOUT = 120


def run_in(bin_dir: Path, args: list[str], cwd: Path, **kw: object) -> str:
    result = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                            text=True, timeout=TIMEOUT, env=pip_env(bin_dir),
                            stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    assert result.returncode == 0, f"{args}: {result.returncode}\n{result.stdout}\n" \
                                   f"{result.stderr}"
    return str(result.stdout + result.stderr)


def python_in(bin_dir: Path, code: str, cwd: Path) -> str:
    return run_in(bin_dir, ["python", "-c", textwrap.dedent(code)], cwd)


def source_packages() -> set[str]:
    return {str(p.parent.relative_to(ROOT)).replace("/", ".")
            for top in ("iotdev", "iotdev_mqtt") for p in (ROOT / top).rglob("__init__.py")}


def test_wheel_contents() -> None:
    with zipfile.ZipFile(wheel()) as zf:
        names = set(zf.namelist())
        metadata = Parser().parsestr(zf.read(next(n for n in names
                                                  if n.endswith(".dist-info/METADATA"))).decode())
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names
                if n.endswith("/__init__.py")}
    assert packages == source_packages()
    assert {"iotdev/py.typed", "iotdev_mqtt/py.typed"} <= names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "fuzz/", "bench/", "samples/")) for n in names)
    assert metadata["Version"] == iotdev.__version__
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    classifiers = metadata.get_all("Classifier")
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3.10" in classifiers
    requires = metadata.get_all("Requires-Dist")
    assert not [r for r in requires if r.startswith("cryptography") and "extra" not in r]


def test_sdist_contents() -> None:
    with tarfile.open(sdist()) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for needed in ("LICENSE", "README.md", "pyproject.toml", "Makefile", "tests/conftest.py",
                   "tests/_broker.py", "tests/data/mqtt-3.1.1-vectors.json", "fuzz/vectors.txt",
                   "samples/send_message.py", "iotdev/transport/_tls.py",
                   "iotdev/emulator/_cli.py"):
        assert needed in names, f"{needed} is not in the sdist"


def test_installed_emulator_demo_and_round_trip(tmp_path: Path) -> None:
    bin_dir = venv("emulator")
    where = python_in(bin_dir, "import iotdev; print(iotdev.__file__)", tmp_path)
    assert str(bin_dir.parent) in where and str(ROOT) not in where
    assert f"iotdev-hub {iotdev.__version__}" in run_in(bin_dir, ["iotdev-hub", "--version"],
                                                       tmp_path)
    demo = run_in(bin_dir, ["iotdev-hub", "demo"], tmp_path)
    assert "received telemetry" in demo
    # the device round trip: the installed emulator and library, a sample as a user runs it
    state = tmp_path / "hub"
    serve = subprocess.Popen(
        [str(bin_dir / "iotdev-hub"), "serve", "--state", str(state), "--device", "dev1",
         "--mqtt-port", "0", "--ws-port", "-1", "--http-port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=pip_env(bin_dir), stdin=subprocess.DEVNULL)
    try:
        assert serve.stdout is not None
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if "ready" in line:
                break
        text = "".join(lines)
        port = re.search(r"MQTT/TLS on 127\.0\.0\.1:(\d+)", text)
        conn = re.search(r"dev1: (HostName=\S+)", text)
        api = re.search(r"service API on (https://\S+)", text)
        assert port and conn and api, text
        env = {**pip_env(bin_dir), "IOTHUB_DEVICE_CONNECTION_STRING": conn.group(1),
               "IOTHUB_CA_FILE": str(state / "ca.pem"), "IOTHUB_PORT": port.group(1)}
        sent = subprocess.run([str(bin_dir / "python"), str(ROOT / "samples/send_message.py")],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        telemetry = run_in(bin_dir, ["iotdev-hub", "telemetry", "dev1", "--url", api.group(1),
                                     "--ca", str(state / "ca.pem")], tmp_path)
        assert telemetry.count('"deviceId": "dev1"') == 5
    finally:
        serve.terminate()
        serve.wait(30)


def test_installed_without_extras(tmp_path: Path) -> None:
    bin_dir = venv("plain")
    python_in(bin_dir, """
        import importlib.util
        assert importlib.util.find_spec("cryptography") is None
        from iotdev import IoTHubDeviceClient, ProxyOptions
        from iotdev.aio import IoTHubDeviceClient as AsyncClient
        conn = "HostName=h.example;DeviceId=d;SharedAccessKey=" + "QUFB" * 11
        IoTHubDeviceClient.create_from_connection_string(conn, websockets=True).shutdown()
        ProxyOptions("HTTP", "proxy.example", 3128)
        import iotdev.emulator  # the package itself loads without cryptography
        try:
            from iotdev.emulator import Hub  # noqa: F401
        except iotdev.MissingDependencyError as exc:
            assert exc.name == "cryptography" and "iotdev[emulator]" in str(exc), exc
        else:
            raise AssertionError("the emulator without cryptography did not raise")
    """, tmp_path)
    assert run_in(bin_dir, ["iotdev-hub", "--help"], tmp_path).startswith("usage: iotdev-hub")
    result = subprocess.run([str(bin_dir / "iotdev-hub"), "serve"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=TIMEOUT,
                            env=pip_env(bin_dir), stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "pip install 'iotdev[emulator]'" in result.stderr
    assert "Traceback" not in result.stderr


def readme_codec_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The codec", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_installed_no_deps(tmp_path: Path) -> None:
    bin_dir = venv("no-deps")
    (tmp_path / "codec.py").write_text(readme_codec_example())
    run_in(bin_dir, ["python", "codec.py"], tmp_path)
    python_in(bin_dir, """
        import importlib.util
        for name in ("h11", "wsproto", "certifi", "cryptography"):
            assert importlib.util.find_spec(name) is None, name
        import iotdev, iotdev_mqtt, iotdev.aio
        from iotdev import IoTHubDeviceClient, MissingDependencyError, ProxyOptions
        conn = "HostName=h.example;DeviceId=d;SharedAccessKey=" + "QUFB" * 11
        IoTHubDeviceClient.create_from_connection_string(conn).shutdown()  # TLS: stdlib only
        ProxyOptions("SOCKS5", "proxy.example", 1080)                      # SOCKS: no h11
        for call, option, package in [
            (lambda: IoTHubDeviceClient.create_from_connection_string(conn, websockets=True),
             "websockets=True", "wsproto"),
            (lambda: ProxyOptions("HTTP", "proxy.example", 3128),
             "ProxyOptions(proxy_type='HTTP')", "h11"),
        ]:
            try:
                call()
            except MissingDependencyError as exc:
                assert exc.name == package and option in str(exc), exc
                assert "pip install" in str(exc), exc
            else:
                raise AssertionError(f"{option} without {package} did not raise")
        client = IoTHubDeviceClient.create_from_connection_string(conn)
        try:
            client.get_storage_info_for_blob("x")
        except MissingDependencyError as exc:
            assert exc.name == "h11" and "file upload" in str(exc), exc
        else:
            raise AssertionError("file upload without h11 did not raise")
        finally:
            client.shutdown()
        print("ok")
    """, tmp_path)
    # The CLI's help needs nothing beyond the standard library.
    assert run_in(bin_dir, ["iotdev-hub", "--help"], tmp_path).startswith("usage: iotdev-hub")


@pytest.mark.parametrize("kind", ["plain"])
def test_installed_package_is_typed(tmp_path: Path, kind: str) -> None:
    bin_dir = venv(kind)
    out = python_in(bin_dir, """
        import importlib.resources
        print(importlib.resources.files("iotdev").joinpath("py.typed").is_file(),
              importlib.resources.files("iotdev_mqtt").joinpath("py.typed").is_file())
    """, tmp_path)
    assert out.split() == ["True", "True"]
