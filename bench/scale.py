"""Figures ``scale-100``, ``scale-1000``, ``scale-5000``, ``scale-10000``: how
many devices one process (and one box) can hold.

N ``iotdev.aio.IoTHubDeviceClient`` instances on one event loop connect over
TLS to the IoT Hub emulator (``iotdev.emulator.Hub``) running in a process of
its own (``bench/_fleet_hub.py``: ``127.0.0.150:8883``, N devices registered
in memory, SAS keys checked on every CONNECT), then each sends one 200-byte
message per second (QoS 1, awaited to its PUBACK) for a few seconds.  Every
sample is a fresh process (``bench/_fleet.py``, whose docstring details the
measurement); the harness runs ours and azure-iot-device's asyncio client in
alternation where both can run.

* sample: **RSS per device**, KB: (VmRSS at the end of the send window - VmRSS
  after the imports) / devices connected; client objects, TLS state, sockets'
  user-space buffers and allocator overhead included.
* ``connect_s``: wall time to create and connect the whole fleet (64 connects
  in flight at most; the emulator's listen backlog is 100).
* ``cpu_us``: the client process's CPU time over the send window / window /
  devices, in microseconds of CPU per second per device (1,000 us/s per device
  = one core per 1,000 devices).
* ``msgs_per_s``: sends acknowledged in the window / window (N when every
  device keeps its one message per second); ``send_p99_ms``: the 99th
  percentile of send-to-PUBACK times.
* ``threads``: the client process's threads at the end.
* ``hub_cpu_pct``: the emulator process's CPU over the same window, in % of
  one core (100 % means the emulator, not the clients, is the limit).
* ``wait_pct`` / ``hub_wait_pct``: how long the client process / the emulator
  was runnable but waiting for a CPU, in % of the window
  (``/proc/<pid>/task/*/schedstat``): large values mean the machine was busy
  with other work and the send rate says more about it than about the client.
* ``connected``: devices connected.

azure-iot-device starts two threads per asyncio client plus its shared pools,
and each client's paho-mqtt 1.6 loop watches its sockets with ``select()``,
which cannot take file descriptors of 1,024 and above: ``scale-100`` compares it
with ours; in ``scale-1000`` it is probed once (with a time cap) to show how
far it gets, and it is not run at 5,000.

The fleet's addresses: all clients dial one address and port, so each
connection takes one ephemeral port of the client side (28,231 on a default
Linux); 10,000 devices fit, and the runs' TIME_WAIT sockets too (Linux reuses
them for loopback connections).  Both processes raise RLIMIT_NOFILE to the hard
limit.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from queue import Empty, Queue
from typing import Any, ClassVar

from ._broker import check_bindable
from .harness import Contestant, Figure, Metric, Session, Skip, Target, Value, register

HUB_ADDRESS = "127.0.0.150"
HUB_PORT = 8883  # azure-iot-device dials 8883 only
FLEET_KEY = base64.b64encode(b"iotdev bench fleet key, 32 bytes").decode("ascii")
PREFIX = "fleet-"
REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 64
AZURE_PROBE_CAP = 15.0  # seconds azure-iot-device gets to connect 1,000 clients

OURS = "iotdev asyncio"
AZURE = "azure-iot-device asyncio"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _reader(stream: Any, queue: Queue[str | None]) -> None:
    for line in stream:
        queue.put(line.rstrip("\n"))
    queue.put(None)


class FleetHub:
    """The emulator process shared by the scale figures (restarted with more
    devices when a figure needs more)."""

    instance: ClassVar[FleetHub | None] = None

    def __init__(self, devices: int) -> None:
        self.devices = devices
        self.directory = Path(tempfile.mkdtemp(prefix="iotdev-bench-fleet-"))
        self.stderr = (self.directory / "hub.err").open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench._fleet_hub", "--host", HUB_ADDRESS, "--port",
             str(HUB_PORT), "--devices", str(devices), "--prefix", PREFIX, "--key", FLEET_KEY,
             "--state", str(self.directory / "state")],
            cwd=REPO, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.stderr, text=True, bufsize=1)
        self.lines: Queue[str | None] = Queue()
        assert self.process.stdout is not None
        threading.Thread(target=_reader, args=(self.process.stdout, self.lines),
                         name="bench fleet hub", daemon=True).start()
        line = self._line(60.0)
        if not line.startswith("ready "):
            self.stop()
            raise RuntimeError(f"the fleet hub did not start: {line!r}\n{self.log()}")
        _, _port, ca = line.split(" ", 2)
        self.ca_file = ca

    def _line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except Empty:
            raise RuntimeError(f"the fleet hub said nothing for {timeout:g} s\n"
                               f"{self.log()}") from None
        if line is None:
            raise RuntimeError(f"the fleet hub exited\n{self.log()}")
        return line

    def log(self) -> str:
        self.stderr.flush()
        return (self.directory / "hub.err").read_text(errors="replace")[-2000:]

    @classmethod
    def get(cls, devices: int) -> FleetHub:
        hub = cls.instance
        if hub is not None and (hub.devices < devices or hub.process.poll() is not None):
            hub.stop()
            hub = cls.instance = None
        if hub is None:
            check_bindable(HUB_ADDRESS, HUB_PORT)
            hub = cls.instance = cls(devices)
            atexit.register(hub.stop)
        return hub

    def stats(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("stats\n")
        self.process.stdin.flush()
        result: dict[str, Any] = json.loads(self._line(30.0))
        return result

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.close()
                self.process.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)
        self.stderr.close()
        if FleetHub.instance is self:
            FleetHub.instance = None


def fleet_run(hub: FleetHub, kind: str, devices: int, *, window: float,
              connect_cap: float) -> dict[str, Any]:
    """One fleet process; its result plus the hub's CPU over the send window."""
    err = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench._fleet", "--kind", kind, "--devices", str(devices),
         "--host", HUB_ADDRESS, "--port", str(HUB_PORT), "--ca", hub.ca_file, "--key",
         FLEET_KEY, "--prefix", PREFIX, "--window", str(window), "--connect-cap",
         str(connect_cap), "--concurrency", str(CONCURRENCY)],
        cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=err, text=True)
    assert proc.stdout is not None
    marks: dict[str, dict[str, Any]] = {}
    result: dict[str, Any] | None = None
    try:
        for line in proc.stdout:
            line = line.strip()
            if line in ("window-start", "window-end"):
                marks[line] = hub.stats()
            elif line.startswith("{"):
                result = json.loads(line)
        proc.wait(timeout=connect_cap + window + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        err.seek(0)
        raise RuntimeError(f"the {kind} fleet of {devices} exited with {proc.returncode} "
                           f"and no result:\n{err.read()[-2000:]}")
    err.close()
    start, end = marks.get("window-start"), marks.get("window-end")
    if start and end and end["time"] > start["time"]:
        span = end["time"] - start["time"]
        result["hub_cpu_pct"] = (end["cpu"] - start["cpu"]) / span * 100.0
        result["hub_msgs_per_s"] = (end["telemetry"] - start["telemetry"]) / span
        result["hub_wait_pct"] = (end["run_delay"] - start["run_delay"]) / span * 100.0
    return result


def _value(result: dict[str, Any]) -> Value:
    connected = result["connected"]
    if connected == 0:
        raise RuntimeError(f"no {result['kind']} device connected: {result['errors']}")
    wall = result["wall_s"]
    extra = {
        "connect_s": result["connect_s"],
        "cpu_us": result["cpu_s"] / wall / connected * 1e6,
        "msgs_per_s": result["sent"] / wall,
        "send_p99_ms": result["send_p99_ms"],
        "threads": float(result["threads"]),
        "connected": float(connected),
        "wait_pct": result["run_delay_s"] / wall * 100.0,
    }
    if "hub_cpu_pct" in result:
        extra["hub_cpu_pct"] = result["hub_cpu_pct"]
        extra["hub_wait_pct"] = result["hub_wait_pct"]
    rss_kb = (result["rss1_kb"] - result["rss0_kb"]) / connected
    return Value(rss_kb, extra)


def _runner(session: Session, hub: FleetHub, kind: str, window: float,
            cap: float) -> Callable[[int], Value]:
    def run(devices: int) -> Value:
        result = fleet_run(hub, kind, devices, window=window, connect_cap=cap)
        if result["connected"] < devices or result["error_count"]:
            session.note(f"{kind}, {devices:,} devices: {result['connected']:,} connected in "
                         f"{result['connect_s']:.1f} s"
                         + (" (time cap)" if result["connect_capped"] else "")
                         + f"; {result['error_count']} errors, e.g. {result['errors'][:2]}")
        if result.get("hub_msgs_per_s") is not None:
            expected = result["connected"]
            got = result["hub_msgs_per_s"]
            if expected >= 100 and got < 0.95 * expected:
                session.note(
                    f"{kind}, {devices:,} devices: the emulator received {got:,.0f} msgs/s of "
                    f"the {expected:,} due; in that window the emulator used "
                    f"{result.get('hub_cpu_pct', 0):.0f} % of a core and waited for a CPU "
                    f"{result.get('hub_wait_pct', 0):.0f} % of the time, the clients used "
                    f"{result['cpu_s'] / result['wall_s'] * 100:.0f} % and waited "
                    f"{result['run_delay_s'] / result['wall_s'] * 100:.0f} %; 1-minute load "
                    f"average {os.getloadavg()[0]:.1f}")
        return _value(result)

    return run


def _setup(devices: int, window: float, with_azure: bool,
           probe_azure: bool) -> Callable[[Session], list[Contestant]]:
    def setup(session: Session) -> list[Contestant]:
        if not Path("/proc/self/status").exists():
            raise Skip("reads /proc/self/status (Linux only)")
        n = session.work
        hub = FleetHub.get(max(n, FleetHub.instance.devices if FleetHub.instance else 0))
        win = window if not session.quick else 1.0
        contestants = [Contestant(OURS, _runner(session, hub, "iotdev", win, 300.0),
                                  ours=True)]
        azure = _azure_available()
        if with_azure and azure:
            contestants.append(Contestant(AZURE, _runner(session, hub, "azure", win, 120.0)))
        elif with_azure:
            session.note(f"azure-iot-device is not installed ({azure!r}): ours alone")
        if probe_azure and azure and not session.quick:
            result = fleet_run(hub, "azure", n, window=3.0, connect_cap=AZURE_PROBE_CAP)
            connected = result["connected"]
            session.note(
                f"azure-iot-device asyncio, probed once with {n:,} devices: {connected:,} "
                f"connected within {result['connect_s']:.0f} s"
                + (" (time cap; the rest never connected)" if result["connect_capped"] else "")
                + f", {result['threads_connected']:,} threads, "
                f"{(result['rss1_kb'] - result['rss0_kb']) / max(1, connected):,.0f} KB RSS "
                f"per connected device, "
                f"{result['cpu_s'] / max(result['wall_s'], 1e-9) / max(1, connected) * 1e6:,.0f}"
                " us CPU/s per device.  Each client's paho-mqtt 1.6 loop calls select(), "
                "which refuses file descriptors >= 1024 (FD_SETSIZE), and each client holds "
                "3 (its socket and paho's wake-up socket pair), so one process stops near "
                "340 clients whatever RLIMIT_NOFILE says")
        return contestants

    return setup


def _azure_available() -> bool:
    try:
        import azure.iot.device.aio  # noqa: F401
    except ImportError:
        return False
    return True


METRICS = (
    Metric("connect_s", "s", title="fleet connect time"),
    Metric("cpu_us", "us CPU/s per device", title="CPU per device"),
    Metric("msgs_per_s", "msgs/s", higher_is_better=True, title="msgs/s acknowledged"),
    Metric("send_p99_ms", "ms", title="send p99"),
    Metric("threads", "threads", title="threads"),
    Metric("connected", "devices", higher_is_better=True, title="connected", compare=False),
    Metric("hub_cpu_pct", "% of a core", title="emulator CPU", compare=False),
    Metric("wait_pct", "% of the window", title="clients waiting for a CPU", compare=False),
    Metric("hub_wait_pct", "% of the window", title="emulator waiting for a CPU",
           compare=False),
)

for _n, _window, _rounds, _azure, _probe, _quick in (
    (100, 4.0, 3, True, False, 10),
    (1000, 5.0, 2, False, True, 20),
    (5000, 6.0, 2, False, False, 30),
    (10000, 4.0, 1, False, False, 40),
):
    _targets: tuple[Target, ...] = ()
    if _n == 5000:
        _targets = (
            Target("5,000 asyncio devices connected in one process", OURS, metric="connected",
                   at_least=5000),
            Target("5,000 devices sending 1 msg/s each (>= 4,950 msgs/s acknowledged)", OURS,
                   metric="msgs_per_s", at_least=4950),
            Target("RSS per TLS device < 50 KB", OURS, at_most=50),
        )
    if _n == 10000:
        _targets = (
            Target("10,000 asyncio devices connected in one process", OURS, metric="connected",
                   at_least=10000),
            Target("RSS per TLS device < 45 KB with 10,000 devices", OURS, at_most=45),
        )
    register(Figure(
        name=f"scale-{_n}",
        title=f"{_n:,} asyncio device clients in one process, TLS to the emulator, "
        "1 msg/s each: RSS per device",
        unit="KB/device", setup=_setup(_n, _window, _azure, _probe), work=_n,
        quick_work=_quick, kind="value", higher_is_better=False, rounds=_rounds, warmup=False,
        metrics=METRICS, targets=_targets, description=__doc__ or ""))
