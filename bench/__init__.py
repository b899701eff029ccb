"""``python -m bench``: how iotdev compares with paho-mqtt and azure-iot-device
(``make bench``: about five minutes on two cores).

Layout (one module per group of figures; the machinery is shared; every
module not starting with ``_`` is imported by ``harness.load_figures``, so a new
figure is a new module that calls ``harness.register``):

``bench/harness.py``
    Figures, contestants, targets, the registry, alternating rounds,
    statistics, the terminal report, ``bench-results.json``,
    ``bench-results.md`` and the README block.
``bench/codec.py`` -- ``codec``
    Encode + decode of a 200-byte QoS 1 PUBLISH: ``iotdev_mqtt`` against
    paho-mqtt 1.6.1's own packet code.
``bench/engine_pair.py`` -- ``engine-pair``, ``engine-pair-sync``
    QoS 1 publish-and-ack through a client engine paired in memory with a
    server engine (no peer).
``bench/publish.py`` -- ``tls-1by1``, ``tls-pipelined``, ``wss-1by1``, ``wss-pipelined``
    QoS 1 publishes over TLS and TLS WebSocket to mosquitto: our MQTT and device
    clients (sync, asyncio) against paho-mqtt, azure-iot-device 2.14 and
    ``mosquitto_pub``.
``bench/device.py`` -- ``c2d-latency``, ``import``, ``rss-threads``
    C2D delivery latency (median, p99), import time and modules, RSS and
    threads after connect; the helpers the publish figures share.
``bench/scale.py`` -- ``scale-100``, ``scale-1000``, ``scale-5000``, ``scale-10000``
    N asyncio device clients in one process against the emulator in another:
    connect time, RSS, CPU per device, 1 msg/s each.
``bench/module.py`` -- ``module-outputs``
    IoT Edge module outputs routed to another module's input on the emulator:
    our module client against azure-iot-device 2.14's, end to end.
``bench/_broker.py``, ``bench/_fleet.py``, ``bench/_fleet_hub.py``, ``bench/_chart.py``
    The benchmark's mosquitto, one fleet process, the emulator process, the PNG.

A figure whose broker or peer package is missing raises ``harness.Skip`` from
its ``setup``.  The peers run in the project's virtual environment: their pins
(azure-iot-device 2.14 needs paho-mqtt < 2) do not conflict with ours.
"""

from __future__ import annotations

# Display order of the figures; registered figures not listed here come after.
FIGURE_ORDER: tuple[str, ...] = (
    "codec", "engine-pair", "engine-pair-sync", "tls-1by1", "tls-pipelined", "wss-1by1",
    "wss-pipelined", "c2d-latency", "import", "rss-threads", "scale-100", "scale-1000",
    "scale-5000", "scale-10000",
)

# Figures that are planned but may not exist yet: ``--only NAME`` on one of
# them explains where it will live instead of saying "unknown figure".
PLANNED_FIGURES: dict[str, str] = {}
