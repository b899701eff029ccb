"""``python -m bench``: how iotdev compares with paho-mqtt and azure-iot-device.

Layout (one module per figure; the machinery is shared):

``bench/harness.py``
    Figures, contestants, the registry, alternating rounds, statistics, the
    terminal report, ``bench-results.json`` and ``bench-results.md``.
``bench/codec.py`` -- figure ``codec``
    Encode + decode of a 200-byte QoS 1 telemetry PUBLISH: ``iotdev_mqtt``
    against paho-mqtt 1.6.1's own packet code.
``bench/engine_pair.py`` -- figures ``engine-pair`` and ``engine-pair-sync``
    QoS 1 publish-and-ack through a client engine paired in memory with a
    server engine, pipelined and one at a time.  Every module of this package
    is imported by ``harness.load_figures``: a new figure is a new module that
    calls ``harness.register``.

Later figures (publish over TLS and WebSocket against mosquitto, C2D latency,
import time and RSS, fleet scale) follow the same pattern; a figure whose broker
or peer package is missing raises ``harness.Skip`` from its ``setup``.
"""

from __future__ import annotations

# Display order of the figures; registered figures not listed here come after.
FIGURE_ORDER: tuple[str, ...] = (
    "codec", "engine-pair", "engine-pair-sync", "tls-sync-1by1", "tls-pipelined-sync",
    "tls-pipelined-asyncio", "wss-pipelined-asyncio", "device-send-sync", "device-send-asyncio",
    "c2d-latency", "import", "rss-threads",
)

# Figures that are planned but may not exist yet: ``--only NAME`` on one of
# them explains where it will live instead of saying "unknown figure".
PLANNED_FIGURES: dict[str, str] = {}
