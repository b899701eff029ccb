"""The local IoT Hub emulator: run and test device code with no cloud account.

    from iotdev.emulator import Hub

    with Hub(mqtt_port=0, ws_port=0) as hub:          # free ports; 8883 / 443 by default
        hub.add_device("dev1")
        print(hub.connection_string("dev1"), hub.ca_pem)
        ...                                          # run the device, then:
        hub.wait_for_telemetry("dev1", 1)
        hub.invoke_method("dev1", "reboot", {"delay": 5})
        hub.patch_desired("dev1", {"rate": 5})
        hub.send_c2d("dev1", b"hello")
        hub.add_module("dev1", "filter")               # module identities and twins
        hub.add_edge_device("edge-1", routes={"up": "FROM /messages/* INTO $upstream"})
        hub.add_observer(my_observer)                  # see and steer the protocol (tests)

Command line: ``iotdev-hub serve`` / ``python -m iotdev.emulator serve``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._dps import Dps
    from ._edge import EdgeDevice
    from ._files import FileUpload
    from ._hub import Hub, MethodResult
    from ._observer import HubConnection, HubObserver, Verdict
    from ._store import C2DMessage, Device, Module, TelemetryMessage, Twin

__all__ = ["C2DMessage", "Device", "Dps", "EdgeDevice", "FileUpload", "Hub", "HubConnection",
           "HubObserver", "MethodResult", "Module", "TelemetryMessage", "Twin", "Verdict"]

# Loaded on first use, so that ``iotdev-hub --help`` (and the CLI's service
# commands) work on an install without the emulator's packages, and so that a
# missing one is a ``MissingDependencyError`` naming ``iotdev[emulator]``
# rather than a ``ModuleNotFoundError`` from deep inside.
_WHERE = {"Dps": "_dps", "EdgeDevice": "_edge", "FileUpload": "_files", "Hub": "_hub",
          "MethodResult": "_hub", "HubConnection": "_observer", "HubObserver": "_observer",
          "Verdict": "_observer", "C2DMessage": "_store", "Device": "_store",
          "Module": "_store", "TelemetryMessage": "_store", "Twin": "_store"}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .._deps import require

    for package in ("cryptography", "h11", "wsproto"):
        require(package, "the emulator (iotdev.emulator)")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
