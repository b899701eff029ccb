"""Plug and Play: the model id in the CONNECT user name, on the emulator's
twin, and the convention helpers (``iotdev.pnp``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import iotdev
from iotdev import pnp
from iotdev._auth import build_username, parse_username
from iotdev.emulator import Hub

MODEL = "dtmi:com:example:Thermostat;1"


def test_model_id_in_the_user_name() -> None:
    name = build_username("h", "d", user_agent="ua", model_id=MODEL)
    assert name == "h/d/?api-version=2020-09-30&DeviceClientType=ua&model-id=" \
        "dtmi%3Acom%3Aexample%3AThermostat%3B1"
    # v2's spelling: product_info="dtmi:..." gives the same user name
    assert build_username("h", "d", user_agent="ua", product_info=MODEL) == name
    # with model_id, product_info stays in DeviceClientType
    assert parse_username(build_username("h", "d", user_agent="ua", product_info="/x",
                                         model_id=MODEL))[2] == {
        "api-version": "2020-09-30", "DeviceClientType": "ua/x", "model-id": MODEL}
    with pytest.raises(ValueError, match="DTMI"):
        build_username("h", "d", model_id="com:example")


def test_model_id_option_is_validated() -> None:
    key = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
    with pytest.raises(ValueError, match="DTMI"):
        iotdev.IoTHubDeviceClient.create_from_symmetric_key(key, "h", "d", model_id="x")
    with pytest.raises(TypeError):
        iotdev.IoTHubDeviceClient.create_from_symmetric_key(key, "h", "d", model_id=5)


@pytest.mark.parametrize("spelling", ["model_id", "product_info"])
def test_emulator_twin_shows_the_model_id_and_component_telemetry(
        tmp_path: Path, spelling: str) -> None:
    with Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path) as hub:
        hub.add_device("thermo")
        client = iotdev.IoTHubDeviceClient.create_from_connection_string(
            hub.connection_string("thermo"), server_verification_cert=hub.ca_pem,
            port=hub.mqtt_port, **{spelling: MODEL})
        try:
            client.connect()
            client.send_message(pnp.telemetry({"temperature": 21.5}, component="thermostat1"))
            message = hub.wait_for_telemetry("thermo", 1)[0]
            assert json.loads(message.body) == {"temperature": 21.5}
            assert message.system_properties["$.sub"] == "thermostat1"
            assert hub.get_twin("thermo")["modelId"] == MODEL
        finally:
            client.shutdown()
        hub.add_device("plain")
        plain = iotdev.IoTHubDeviceClient.create_from_connection_string(
            hub.connection_string("plain"), server_verification_cert=hub.ca_pem,
            port=hub.mqtt_port)
        try:
            plain.connect()
            assert hub.get_twin("plain")["modelId"] == ""
        finally:
            plain.shutdown()


def test_convention_helpers() -> None:
    assert pnp.model_payload(MODEL) == {"modelId": MODEL}
    with pytest.raises(ValueError):
        pnp.model_payload("nope")
    assert pnp.reported_properties({"a": 1}) == {"a": 1}
    assert pnp.reported_properties({"a": 1}, "c1") == {"c1": {"__t": "c", "a": 1}}
    assert pnp.writable_property_ack("rate", 5, ac=200, av=3, component="c1") == \
        {"c1": {"__t": "c", "rate": {"value": 5, "ac": 200, "av": 3}}}
    assert pnp.writable_property_ack("rate", 1, ac=203, av=0, ad="default") == \
        {"rate": {"value": 1, "ac": 203, "av": 0, "ad": "default"}}
    patch = {"$version": 4, "rate": 2, "c1": {"__t": "c", "target": 30}, "c2": {"x": 1}}
    assert list(pnp.writable_properties(patch)) == [
        (None, "rate", 2), ("c1", "target", 30), (None, "c2", {"x": 1})]
    assert list(pnp.writable_properties(patch, {"c1", "c2"})) == [
        (None, "rate", 2), ("c1", "target", 30), ("c2", "x", 1)]
    assert pnp.command_name("reboot") == "reboot"
    assert pnp.command_name("getMaxMinReport", "thermostat1") == "thermostat1*getMaxMinReport"
    assert pnp.split_command_name("thermostat1*getMaxMinReport") == \
        ("thermostat1", "getMaxMinReport")
    assert pnp.split_command_name("reboot") == (None, "reboot")
    message = pnp.telemetry({"t": 1})
    assert (message.content_type, message.content_encoding) == ("application/json", "utf-8")
    assert "$.sub" not in message.custom_properties
