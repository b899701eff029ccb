"""Figures ``engine-pair`` and ``engine-pair-sync``: QoS 1 publish-and-ack
through a ``ClientConnection`` paired in memory with a ``ServerConnection``.

Each message: the client engine validates and queues it, allocates a packet id
and encodes the PUBLISH; the server engine decodes it, reports
``MessageReceived`` and encodes the PUBACK; the client engine decodes the PUBACK,
frees the id and reports ``PublishAcked``.  No sockets: this is the protocol cost
the I/O layer adds to the codec.  ``engine-pair`` publishes 100 messages before
shuttling the bytes (pipelined, as a busy client does); ``engine-pair-sync``
shuttles after each message (one at a time).  There is no peer: paho-mqtt has
no server role to pair with.
"""

from __future__ import annotations

from collections.abc import Callable

from iotdev_mqtt import ClientConnection, PublishAcked, ServerConnection

from .harness import Contestant, Figure, Session, register

TOPIC = "devices/dev1/messages/events/"
PAYLOAD = b"x" * 200


def _pair() -> tuple[ClientConnection, ServerConnection]:
    client = ClientConnection(max_inflight=1000)
    server = ServerConnection(now=0.0)
    client.connect("dev1", now=0.0)
    server.receive_data(client.data_to_send(), now=0.0)
    server.accept(now=0.0)
    client.receive_data(server.data_to_send(), now=0.0)
    return client, server


def _runner(batch: int) -> Callable[[int], int]:
    client, server = _pair()

    def run(work: int) -> int:
        acked = 0
        publish = client.publish
        for _ in range(work // batch):
            for _ in range(batch):
                publish(TOPIC, PAYLOAD, 1, now=0.0)
            server.receive_data(client.data_to_send(), now=0.0)
            events = client.receive_data(server.data_to_send(), now=0.0)
            acked += len(events)
        if acked != (work // batch) * batch or not isinstance(events[-1], PublishAcked):
            raise RuntimeError(f"engine pair acked {acked} of {work}")
        return acked

    return run


def _setup(batch: int) -> Callable[[Session], list[Contestant]]:
    def setup(session: Session) -> list[Contestant]:
        return [Contestant("iotdev_mqtt engines", _runner(batch), ours=True)]

    return setup


register(
    Figure(
        name="engine-pair",
        title="QoS 1 publish + PUBACK through paired engines, 100 in flight (no sockets)",
        unit="msgs/s",
        setup=_setup(100),
        work=50_000,
        quick_work=2_000,
        clock="cpu",
        description=__doc__ or "",
    )
)
register(
    Figure(
        name="engine-pair-sync",
        title="QoS 1 publish + PUBACK through paired engines, one at a time (no sockets)",
        unit="msgs/s",
        setup=_setup(1),
        work=50_000,
        quick_work=2_000,
        clock="cpu",
        description=__doc__ or "",
    )
)
