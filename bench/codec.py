"""Figure ``codec``: encode + decode of one telemetry PUBLISH, no sockets.

The message is what an Azure IoT Hub device sends most: a QoS 1 PUBLISH, packet
identifier 7, to ``devices/dev1/messages/events/%24.ct=application%2Fjson``
with a 200-byte JSON payload (261 bytes on the wire).  One operation is one
encode plus one decode of it.

**Ours** (``iotdev_mqtt``): ``reader.feed(encode(packet))`` with a prebuilt
``Publish`` and one ``PacketReader("client")``.  ``encode`` runs every sender
check (type of each field, QoS, packet identifier, the topic name rules -- the
last through the codec's per-topic cache); ``feed`` frames the bytes, checks the
fixed header against the role and parses topic (to ``str``), packet identifier
and payload into a frozen ``Publish``, returned in a list.

**paho-mqtt 1.6.1** has no separate codec: its packet code lives in private
``Client`` methods, and this figure drives those real methods on a ``Client``
(MQTT 3.1.1, default settings, no logger, no ``on_log``) whose socket is a stub.
Per operation it does exactly this:

1. ``client._send_publish(7, topic_bytes, payload, 1, False, False)`` -- the
   method ``Client.publish`` calls to build a PUBLISH: first byte, the
   ``_easy_log`` debug-log check, ``_pack_remaining_length``, ``_pack_str16``
   (topic), ``struct.pack`` of the packet identifier, the payload, then
   ``_packet_queue`` (a dict appended to ``_out_packet``).  The client is in
   paho's documented external-event-loop mode (``on_socket_register_write`` set
   and already registered), so ``_packet_queue`` does not try to write to the
   socket; the bench takes the bytes off ``_out_packet`` with ``popleft()``.
   ``topic_bytes`` is the topic already UTF-8 encoded, as ``_send_publish``
   requires; paho's public ``publish()`` work in front of it (topic checks,
   message id, ``MQTTMessageInfo``, ``_out_messages`` bookkeeping, locks) is
   *not* counted.
2. The stub socket's ``recv`` is pointed at ``io.BytesIO(those_bytes).read`` (C
   code, cheaper than the ``recv`` system calls it stands for) and
   ``client._packet_read()`` runs: it reads the command byte and the remaining
   length one byte at a time through ``_sock_recv`` and ``struct.unpack``, then
   the body, and calls ``_packet_handle`` -> ``_handle_publish``, which builds an
   ``MQTTMessage``, takes dup/QoS/retain from the first byte, splits topic and
   body with ``struct.unpack``, decodes the topic from UTF-8 (paho does this on
   every message, for its debug line), unpacks the packet identifier, keeps the
   payload, checks ``_easy_log`` and stamps ``message.timestamp``.  Then
   ``_packet_read`` resets ``_in_packet`` and stamps ``_last_msg_in`` under
   ``_msgtime_mutex``.  These two time stamps and the ``_packet_queue`` dict of
   step 1 are connection bookkeeping that our codec does not do; they are part
   of paho's code paths and cannot be taken out without rewriting them.
3. Two instance attributes replace the handler's hand-offs to the rest of the
   client, as the comparison is codec against codec:
   ``_handle_on_message`` becomes ``deque(maxlen=1).append`` (C code: it
   keeps the last message, as ours keeps the returned list; paho's
   callback-matching and ``on_message`` dispatch are not counted), and
   ``_send_puback`` becomes a function returning ``MQTT_ERR_SUCCESS`` (the
   PUBACK is the protocol engine's answer, which ours does not build here
   either).

Not counted on either side: building the ``Publish``/arguments (prebuilt), the
payload (shared), sockets.  paho's ``message.topic`` is ``bytes`` until a
callback reads the property (another UTF-8 decode, not counted); ours hands
over a ``str``.

Both sides compute in this one thread and never wait, so the figure is timed
with the process's CPU time (``clock="cpu"``), which leaves out the time the
process spends descheduled on a busy machine.

Before timing, ``setup`` checks that both sides really do the work: paho builds
byte-for-byte the bytes ``encode`` builds, paho's handler produced a message
with the same topic, packet identifier, QoS, flags and payload as the
``Publish`` ours decodes, each side decodes the other's bytes, and no PUBACK or
other packet is left queued.  Every timed run ends by checking its last decoded
message.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import io
from collections import deque
from collections.abc import Callable
from typing import Any

from iotdev_mqtt import Packet, PacketReader, Publish, encode

from .harness import Contestant, Figure, Session, Skip, register

__all__ = ["FIGURE", "MID", "PAYLOAD", "TOPIC"]

TOPIC = "devices/dev1/messages/events/%24.ct=application%2Fjson"
MID = 7
_PAYLOAD_HEAD = b'{"deviceId":"dev1","seq":4711,"temperature":21.5,"humidity":48.2,"pad":"'
PAYLOAD = _PAYLOAD_HEAD + b"x" * (200 - len(_PAYLOAD_HEAD) - 2) + b'"}'
assert len(PAYLOAD) == 200


class _ReplaySocket:
    """The stub socket paho reads from: ``recv`` serves the bytes being decoded."""

    __slots__ = ("recv",)

    def __init__(self) -> None:
        self.recv: Callable[[int], bytes] = io.BytesIO().read

    def close(self) -> None:
        """paho closes its socket when the client is collected; nothing to do."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(f"codec figure: {what}")


def _check_paho_message(message: Any, where: str) -> None:
    _check(message.topic == TOPIC, f"{where}: paho topic is {message.topic!r}")
    _check(message.mid == MID, f"{where}: paho packet id is {message.mid!r}")
    _check(message.qos == 1, f"{where}: paho QoS is {message.qos!r}")
    _check(not message.retain and not message.dup, f"{where}: paho retain/dup set")
    _check(bytes(message.payload) == PAYLOAD, f"{where}: paho payload differs")


def _ours(packet: Publish) -> Callable[[int], int]:
    reader = PacketReader("client", 1 << 20)
    expected: list[Packet] = [packet]
    _check(reader.feed(encode(packet)) == expected, "ours does not round-trip the PUBLISH")

    def run(work: int) -> int:
        feed = reader.feed
        got: list[Packet] = []
        for _ in range(work):
            got = feed(encode(packet))
        _check(got == expected, "ours: last decoded packet differs")
        return work

    return run


def _paho_client(session: Session) -> tuple[Any, Any, _ReplaySocket, deque[Any]]:
    try:
        version = importlib.metadata.version("paho-mqtt")
        mqtt: Any = importlib.import_module("paho.mqtt.client")
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        raise Skip(f"paho-mqtt is not installed ({exc})") from None
    if not version.startswith("1."):
        raise Skip(f"drives paho-mqtt 1.x internals; found paho-mqtt {version}")
    session.note(f"peer: paho-mqtt {version}, private Client methods (see 'What is measured')")

    client = mqtt.Client(client_id="bench-codec", protocol=mqtt.MQTTv311)
    sock = _ReplaySocket()
    client._sock = sock  # _send_publish refuses to work without a socket
    session.stack.callback(setattr, client, "_sock", None)
    # External event loop mode: _packet_queue leaves the packet on _out_packet.
    client._on_socket_register_write = lambda *_args: None
    client._registered_write = True
    messages: deque[Any] = deque(maxlen=1)
    client._handle_on_message = messages.append
    success: int = mqtt.MQTT_ERR_SUCCESS

    def no_puback(mid: int) -> int:
        return success

    client._send_puback = no_puback
    return mqtt, client, sock, messages


def _paho(session: Session, wire: bytes) -> tuple[Callable[[int], int], bytes]:
    mqtt, client, sock, messages = _paho_client(session)
    topic_bytes = TOPIC.encode("utf-8")
    out = client._out_packet

    # One operation by hand, checking each step.
    _check(
        client._send_publish(MID, topic_bytes, PAYLOAD, 1, False, False) == mqtt.MQTT_ERR_SUCCESS,
        "paho _send_publish failed",
    )
    _check(len(out) == 1, f"paho queued {len(out)} packets, expected 1")
    queued = out.popleft()
    _check(queued["command"] == mqtt.PUBLISH, "paho queued something else than a PUBLISH")
    paho_wire = bytes(queued["packet"])
    _check(paho_wire == wire, "paho's PUBLISH bytes differ from ours")
    sock.recv = io.BytesIO(queued["packet"]).read
    _check(client._packet_read() == mqtt.MQTT_ERR_SUCCESS, "paho _packet_read failed")
    _check(len(messages) == 1, "paho's publish handler delivered no message")
    _check_paho_message(messages[0], "paho's own bytes")
    _check(not out, "paho queued a packet while reading (PUBACK not suppressed?)")
    _check(client._in_packet["command"] == 0, "paho did not finish the packet")
    # paho decodes our bytes too (the same bytes, but do not rely on that above).
    messages.clear()
    sock.recv = io.BytesIO(wire).read
    _check(client._packet_read() == mqtt.MQTT_ERR_SUCCESS, "paho cannot read our bytes")
    _check_paho_message(messages[0], "our bytes")

    def run(work: int) -> int:
        send = client._send_publish
        popleft = out.popleft
        read = client._packet_read
        replay = io.BytesIO
        messages.clear()
        for _ in range(work):
            send(MID, topic_bytes, PAYLOAD, 1, False, False)
            sock.recv = replay(popleft()["packet"]).read
            read()
        _check(len(messages) == 1 and not out, "paho: the run did not decode its messages")
        _check_paho_message(messages[0], "paho, last message of the run")
        return work

    return run, paho_wire


def setup(session: Session) -> list[Contestant]:
    packet = Publish(TOPIC, PAYLOAD, qos=1, packet_id=MID)
    wire = encode(packet)
    _check(len(wire) == 261, f"the PUBLISH is {len(wire)} bytes, expected 261")
    ours = _ours(packet)
    paho, paho_wire = _paho(session, wire)
    _check(PacketReader("client").feed(paho_wire) == [packet], "ours cannot read paho's bytes")
    return [Contestant("iotdev_mqtt", ours, ours=True), Contestant("paho-mqtt", paho)]


FIGURE = register(
    Figure(
        name="codec",
        title="encode + decode of a 200-byte QoS 1 PUBLISH (no sockets)",
        unit="ops/s",
        setup=setup,
        work=50_000,
        quick_work=2_000,
        clock="cpu",  # pure computation in this thread: CPU time is the steadier clock
        description=__doc__ or "",
    )
)
