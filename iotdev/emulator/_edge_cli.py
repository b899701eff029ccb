"""The command line's module and Edge parts: ``serve --module/--edge/--route``
and ``edge-env``.

    iotdev-hub serve --edge edge-1 --module edge-1/filter --module edge-1/sink \\
        --route 'toSink=FROM /messages/modules/filter/outputs/out1 INTO BrokeredEndpoint("/modules/sink/inputs/in1")' \\
        --route 'up=FROM /messages/modules/sink/* INTO $upstream'
    eval "$(iotdev-hub edge-env edge-1/filter)"    # then start the module unmodified

``edge-env`` reads the state folder (``state.json``, ``edge.json``), so it
works whether or not the emulator runs; the emulator must run for the module
to connect.
"""  # noqa: E501 (a command line)

from __future__ import annotations

import argparse
import json
import shlex
import sys

from ._edge import edge_environment, load_edge_config
from ._hub import Hub
from ._store import Store

__all__ = ["edge_env", "print_modules", "register_modules"]


def _fail(message: str) -> int:
    print(f"iotdev-hub: {message}", file=sys.stderr)
    return 2


def register_modules(hub: Hub, args: argparse.Namespace) -> int:
    """Apply ``--edge``, ``--module`` and ``--route`` to the hub (before start).

    Returns:
        0, or 2 after printing what is wrong.
    """
    try:
        for device_id in args.edge:
            hub.add_edge_device(device_id)
        for spec in args.module:
            identity, _, key = spec.partition(":")
            device_id, sep, module_id = identity.partition("/")
            if not sep or not device_id or not module_id:
                return _fail(f"--module {spec!r}: expected DEVICE/MODULE[:KEY]")
            if hub.store.device(device_id) is None:
                hub.add_device(device_id)
            existing = hub.store.module(device_id, module_id)
            if existing is None:
                hub.add_module(device_id, module_id, primary_key=key or None)
            elif key and key != existing.primary_key:
                print(f"iotdev-hub: warning: module {identity} keeps its stored key "
                      "(remove the state folder to change it)", file=sys.stderr)
        routes: dict[str, dict[str, str]] = {}
        for spec in args.route:
            head, sep, text = spec.partition("=")
            device_id, colon, name = head.rpartition(":")
            if not colon:
                if len(args.edge) != 1:
                    return _fail(f"--route {spec!r}: name the Edge device (DEVICE:NAME=ROUTE) "
                                 "unless exactly one --edge is given")
                device_id = args.edge[0]
            if not sep or not name:
                return _fail(f"--route {spec!r}: expected [DEVICE:]NAME=ROUTE")
            if device_id not in hub.edge.devices:
                return _fail(f"--route {spec!r}: {device_id!r} is not an --edge device")
            routes.setdefault(device_id, {})[name] = text
        for device_id, table in routes.items():
            hub.set_routes(device_id, table)
    except (ValueError, LookupError) as exc:
        return _fail(str(exc.args[0]) if exc.args else str(exc))
    return 0


def print_modules(hub: Hub, args: argparse.Namespace) -> None:
    """Print each module's connection string, or how to start an Edge module."""
    for module in hub.store.modules():
        name = f"{module.device_id}/{module.module_id}"
        if module.device_id in hub.edge.devices:
            print(f"iotdev-hub: {name} (Edge): eval \"$(iotdev-hub edge-env {name} "
                  f"--state {shlex.quote(str(args.state))})\"")
        elif module.primary_key:
            print(f"iotdev-hub: {name}: "
                  f"{hub.connection_string(module.device_id, module_id=module.module_id)}")
    for device in hub.edge.devices.values():
        for route_name, text in device.routes.items():
            print(f"iotdev-hub: route {device.device_id}:{route_name}: {text}")


def edge_env(args: argparse.Namespace) -> int:
    """``iotdev-hub edge-env DEVICE/MODULE``: print the module's environment.

    Returns:
        0, or 2 (the message printed) for a bad spec or state folder.
    """
    device_id, sep, module_id = args.module.partition("/")
    if not sep or not device_id or not module_id:
        return _fail(f"edge-env {args.module!r}: expected DEVICE/MODULE")
    if not (args.state / "state.json").is_file():
        return _fail(f"{args.state}: no emulator state here (--state names the folder "
                     "`iotdev-hub serve --state` uses)")
    try:
        config = load_edge_config(args.state)
        module = Store(args.state).module(device_id, module_id)
    except ValueError as exc:
        return _fail(str(exc))
    edge = config["devices"].get(device_id)
    if edge is None:
        return _fail(f"{device_id!r} is not an Edge device (serve --edge {device_id})")
    if module is None:
        return _fail(f"no module {module_id!r} on {device_id!r} (serve --module "
                     f"{device_id}/{module_id})")
    from pathlib import Path

    env = edge_environment(config["hub_name"], config["gateway_host"], module,
                           Path(edge["workload_socket"]))
    if args.json:
        print(json.dumps(env, indent=2))
    else:
        for name, value in env.items():
            print(f"export {name}={shlex.quote(value)}")
    return 0
