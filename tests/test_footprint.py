"""What importing the packages loads: the footprint a small board pays at start.

``import iotdev`` (the sync device client) must not load TLS, hashing, dates,
HTTP, WebSocket, asyncio, the outbox or the MQTT server role: those load when
a connection, a SAS signature or a feature needs them.  ``import iotdev_mqtt``
must not load ``dataclasses`` (and with it ``inspect``, ``ast``, ``dis``).  Each probe runs in
a fresh interpreter without ``site`` so that nothing was imported before.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
before = set(sys.modules)
exec(sys.argv[2])
print(json.dumps(sorted(set(sys.modules) - before)))
"""

# Deferred until used: never loaded by the import itself.
NOT_ON_IMPORT = {
    "iotdev_mqtt": {"dataclasses", "inspect", "ast", "dis", "logging", "threading", "socket",
                    "iotdev_mqtt._server"},
    "iotdev": {
        "ssl", "_ssl", "hashlib", "_hashlib", "hmac", "base64", "datetime", "asyncio", "h11",
        "wsproto", "cryptography", "certifi", "sqlite3", "email", "http", "http.client",
        "urllib.request", "concurrent.futures", "iotdev.aio", "iotdev.transport._tls",
        "iotdev.transport._ws", "iotdev.transport._proxy", "iotdev.transport._http",
        "iotdev._upload", "iotdev._outbox", "iotdev.emulator", "iotdev_mqtt._server",
        "dataclasses", "inspect", "ast", "dis", "uuid", "platform", "pathlib", "ctypes",
        "importlib.util",
    },
}


def loaded_by(statement: str) -> set[str]:
    done = subprocess.run([sys.executable, "-S", "-c", _PROBE, str(REPO), statement],
                          capture_output=True, text=True, check=True, timeout=60)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("package", sorted(NOT_ON_IMPORT))
def test_import_defers_what_it_can(package: str) -> None:
    loaded = loaded_by(f"import {package}")
    assert package in loaded  # the probe imported this checkout's package
    assert loaded & NOT_ON_IMPORT[package] == set()


def test_the_device_client_is_not_lazy() -> None:
    """``import iotdev`` loads the client itself: the import figure is honest."""
    loaded = loaded_by("import iotdev")
    assert {"iotdev._sync_client", "iotdev.transport._thread", "iotdev_mqtt._client"} <= loaded
    assert loaded_by("from iotdev import IoTHubDeviceClient") == loaded


def test_server_role_loads_on_first_use() -> None:
    loaded = loaded_by("import iotdev_mqtt\nfrom iotdev_mqtt import ServerConnection\n"
                       "assert iotdev_mqtt.ServerConnection is ServerConnection")
    assert "iotdev_mqtt._server" in loaded
    assert loaded_by("from iotdev_mqtt import *\nServerConnection") >= {"iotdev_mqtt._server"}


def test_deferred_modules_load_when_needed() -> None:
    """Signing a SAS token loads the hashing modules; a datetime expiry is
    still recognised once ``datetime`` is loaded (by the user)."""
    loaded = loaded_by(
        "from iotdev._auth import generate_sas_token\n"
        "generate_sas_token('hub/devices/d', 'a2V5', 100)\n"
        "import datetime\n"
        "from iotdev import Message\n"
        "from iotdev._hub_topics import d2c_system_pairs\n"
        "m = Message('x'); m.expiry_time_utc = datetime.datetime(2024, 1, 2, 3, 4, 5)\n"
        "assert d2c_system_pairs(m) == [('$.exp', '2024-01-02T03:04:05')], d2c_system_pairs(m)\n"
    )
    assert {"hashlib", "hmac", "base64"} <= loaded


def test_fleets_give_free_heap_back() -> None:
    """The connection that completes a batch schedules one ``malloc_trim`` on
    the loop (glibc), later ones wait for it; a lone client never loads ctypes."""
    statement = (
        "import asyncio, platform, sys\n"
        "from iotdev.transport import _memory\n"
        "async def main():\n"
        "    loop = asyncio.get_running_loop()\n"
        "    early = [_memory.connection_made(loop) for _ in range(_memory.BATCH - 1)]\n"
        "    assert early == [None] * (_memory.BATCH - 1) and 'ctypes' not in sys.modules\n"
        "    handle = _memory.connection_made(loop)\n"
        "    assert handle is not None and _memory.connection_made(loop) is None\n"
        "    assert abs(handle.when() - loop.time() - _memory.DELAY) < 0.5\n"
        "    glibc = platform.libc_ver()[0] == 'glibc'\n"
        "    assert _memory.release_free_memory() == glibc and ('ctypes' in sys.modules) == glibc\n"
        "    handle.cancel()\n"
        "asyncio.run(main())\n"
    )
    loaded_by(statement)  # CalledProcessError when an assertion fails
