"""Seed inputs: the reference vectors, their concatenations, random valid packets.

``vectors.txt`` (beside this file) holds the hex of every valid, semantic and
malformed vector of ``shared/reference/mqtt-3.1.1-vectors.json`` plus its
remaining-length vectors.  ``seed_corpus(rng)`` adds concatenations of valid
vectors (a stream of several packets), hand-written remaining-length edge
cases and the encodings of random valid packets of every type, alone and in
streams.
"""

from __future__ import annotations

import random
from pathlib import Path

from iotdev_mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)

__all__ = ["Vector", "load_vectors", "random_packet", "seed_corpus"]

VECTORS_PATH = Path(__file__).with_name("vectors.txt")

Vector = tuple[str, str, bytes]  # (id, direction, bytes)

# Characters for strings: ASCII, '$', space, BOM, 2/3/4-byte UTF-8, a control char.
_CHARS = "abcxyz019 $-_.é€\U0002a6d4\ufeff\u0001"
_FROM_CLIENT = (Connect, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, Unsubscribe,
                PingReq, Disconnect)
_FROM_SERVER = (ConnAck, Publish, PubAck, PubRec, PubRel, PubComp, SubAck, UnsubAck, PingResp)

# Remaining-length edge cases: non-minimal forms, maximum, 5th byte, truncations.
_EXTRA_HEX = (
    "308000", "30808000", "3080808000", "32808080800100", "30ffffffff7f", "30ff", "30ffff",
    "30ffffff", "c080808000", "c08000", "d08000", "e08000", "4082000001", "20820000",
    "30", "", "00", "ff",
)


def load_vectors(path: Path = VECTORS_PATH) -> list[Vector]:
    """The vectors of ``vectors.txt`` as ``(id, direction, bytes)``."""
    out = []
    for line in path.read_text(encoding="ascii").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        ident, direction, hexdata = line.split()
        out.append((ident, direction, bytes.fromhex(hexdata)))
    return out


def _text(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(_CHARS) for _ in range(rng.randint(lo, hi)))


def _topic(rng: random.Random) -> str:
    levels = [_text(rng, 0, 5) for _ in range(rng.randint(1, 4))]
    topic = "/".join(levels)
    return topic or "t"


def _filter(rng: random.Random) -> str:
    levels = []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        levels.append("+" if roll < 0.25 else _text(rng, 0, 4))
    if rng.random() < 0.3:
        levels.append("#")
    return "/".join(levels) or "f"


def _pid(rng: random.Random) -> int:
    return rng.choice((1, 2, 255, 256, 0x7FFF, 0xFFFF, rng.randint(1, 0xFFFF)))


def _payload(rng: random.Random) -> bytes:
    size = rng.choice((0, 1, 2, rng.randint(0, 40), rng.randint(100, 140), rng.randint(0, 400)))
    return rng.randbytes(size)


def random_packet(rng: random.Random, kind: type[Packet]) -> Packet:
    """A random valid packet of ``kind``, exercising every optional field."""
    if kind is Connect:
        client_id = rng.choice(("", "c", _text(rng, 1, 23)))
        clean = True if not client_id else rng.random() < 0.5
        will = None
        if rng.random() < 0.5:
            will = Will(_topic(rng), _payload(rng), rng.randint(0, 2), rng.random() < 0.5)
        username = _text(rng, 0, 10) if rng.random() < 0.5 else None
        password = None
        if username is not None and rng.random() < 0.6:
            password = rng.randbytes(rng.randint(0, 10))
        return Connect(
            client_id, clean, rng.choice((0, 60, 65535, rng.randint(0, 65535))), username,
            password, will, "MQTT", rng.choice((4, 4, 4, 3, 5, rng.randint(0, 255))),
        )
    if kind is ConnAck:
        code = rng.randint(0, 5)
        return ConnAck(code == 0 and rng.random() < 0.5, code)
    if kind is Publish:
        qos = rng.randint(0, 2)
        return Publish(
            _topic(rng), _payload(rng), qos, rng.random() < 0.5, qos > 0 and rng.random() < 0.5,
            _pid(rng) if qos else None,
        )
    if kind in (PubAck, PubRec, PubRel, PubComp, UnsubAck):
        return kind(_pid(rng))
    if kind is Subscribe:
        subs = tuple((_filter(rng), rng.randint(0, 2)) for _ in range(rng.randint(1, 4)))
        return Subscribe(_pid(rng), subs)
    if kind is SubAck:
        codes = tuple(rng.choice((0, 1, 2, 0x80)) for _ in range(rng.randint(1, 5)))
        return SubAck(_pid(rng), codes)
    if kind is Unsubscribe:
        return Unsubscribe(_pid(rng), tuple(_filter(rng) for _ in range(rng.randint(1, 4))))
    return kind()  # type: ignore[call-arg]


def seed_corpus(rng: random.Random, random_packets: int = 150) -> list[bytes]:
    """Every seed input, deduplicated, in a stable order for a given ``rng`` state."""
    vectors = load_vectors()
    seeds = [data for _, _, data in vectors]
    seeds += [bytes.fromhex(h) for h in _EXTRA_HEX]
    valid = [(direction, data) for ident, direction, data in vectors if ident[0] == "V"]
    for side in ("c2s", "s2c"):
        stream = [data for direction, data in valid if direction in (side, "both")]
        seeds.append(b"".join(stream))
        for _ in range(10):
            seeds.append(b"".join(rng.sample(stream, rng.randint(2, 5))))
    for _ in range(10):
        a, b = rng.choice(valid)[1], rng.choice(valid)[1]
        seeds.append(a + b)
    # A valid packet followed by a malformed one: errors carry the packets before them.
    malformed = [data for ident, _, data in vectors if ident[0] == "M"]
    for _ in range(10):
        seeds.append(rng.choice(valid)[1] + rng.choice(malformed))
    for kinds in (_FROM_CLIENT, _FROM_SERVER):
        encoded = [encode(random_packet(rng, rng.choice(kinds))) for _ in range(random_packets)]
        seeds += encoded
        for _ in range(random_packets // 5):
            seeds.append(b"".join(rng.sample(encoded, rng.randint(2, 6))))
    # One big PUBLISH: a three-byte remaining length.
    seeds.append(encode(Publish("big", bytes(16384), 1, packet_id=7)))
    return list(dict.fromkeys(seeds))
