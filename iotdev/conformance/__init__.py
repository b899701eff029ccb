"""An MQTT 3.1.1 conformance checker for brokers, and a fake broker for clients.

Broker side::

    from iotdev.conformance import Target, run_checks, report_table
    report = run_checks(Target("127.0.0.1", 1883))
    print(report_table(report))

Each check names the normative statements (``[MQTT-x.y.z-n]``, OASIS
mqtt-v3.1.1-os) it exercises and ends ``passed``, ``failed`` (with the bytes
exchanged and the statement broken), ``optional`` (the broker's choice where
the spec allows several) or ``skipped``.  The same runs as the console script
``iotdev-mqtt-check HOST[:PORT]``.

Client side: ``FakeBroker`` (see its docstring) serves scripted scenarios to a
client under test and records what the client did.
"""

from __future__ import annotations

from collections.abc import Callable

from ._context import Profile, Target
from ._fakebroker import SCENARIOS, FakeBroker, Peer, Scenario, ScenarioResult
from ._model import CHECKS, Check, CheckResult, Exchange, Outcome
from ._report import (
    compare_profiles,
    coverage_table,
    report_json,
    report_junit,
    report_profile,
    report_table,
)
from ._runner import Coverage, Report, run_checks, select_checks
from ._statements import STATEMENTS

__all__ = [
    "CHECKS",
    "SCENARIOS",
    "STATEMENTS",
    "Check",
    "CheckResult",
    "Coverage",
    "Exchange",
    "FakeBroker",
    "Outcome",
    "Peer",
    "Profile",
    "Report",
    "Scenario",
    "ScenarioResult",
    "Target",
    "compare_profiles",
    "coverage_table",
    "iothub_profile",
    "report_json",
    "report_junit",
    "report_profile",
    "report_table",
    "run_checks",
    "select_checks",
]

_BY_DESIGN = {
    "any-client-id": "IoT Hub: the client id must be a registered device id",
    "qos2": "IoT Hub supports QoS 0 and 1 only",
    "retain": "IoT Hub does not store retained messages",
    "any-topic": "IoT Hub devices may only use their own devices/{id}/... and $iothub/ topics",
    "wildcards": "IoT Hub devices may only subscribe to their own topics",
    "will": "IoT Hub Will messages go to the device's telemetry topic only",
    "dollar-topics": "IoT Hub devices cannot publish to arbitrary '$' topics",
}


def iothub_profile(
    device_ids: tuple[str, ...],
    credentials: Callable[[str], tuple[str | None, bytes | None]],
) -> Profile:
    """The IoT Hub profile: topics, QoS 2, retain and wildcards restricted by design.

    Args:
        device_ids: registered devices to connect as (two or more let the
            take-over and session checks run).
        credentials: ``device_id -> (user name, password)``, e.g. the
            ``{hub}/{device}/?api-version=...`` user name and a SAS token.

    Returns:
        A ``Profile`` that skips checks needing a restricted feature and marks
        them "by design", so they are not counted as defects.
    """
    return Profile(
        name="iothub",
        unsupported=dict(_BY_DESIGN),
        client_ids=tuple(device_ids),
        credentials=credentials,
        publish_topic="devices/{client_id}/messages/events/",
        subscribe_filter="devices/{client_id}/messages/devicebound/#",
    )
