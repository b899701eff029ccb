"""Hand-made bytes: packets our encoder would refuse to write.

The encoder (``iotdev_mqtt.encode``) checks every sender rule, so illegal
packets are assembled here field by field, with the codec's own
``encode_remaining_length`` for the framing.
"""

from __future__ import annotations

from iotdev_mqtt import encode_remaining_length

__all__ = ["connect_bytes", "frame", "hexbytes", "string"]


def hexbytes(text: str) -> bytes:
    """``"30 07 00 03"`` -> bytes."""
    return bytes.fromhex(text.replace(" ", ""))


def string(raw: bytes | str) -> bytes:
    """A length-prefixed field (the bytes are not checked: that is the point)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    return len(data).to_bytes(2, "big") + data


def frame(first: int, body: bytes, *, remaining_length: bytes | None = None) -> bytes:
    """Fixed header (``first`` byte, remaining length) + ``body``.

    ``remaining_length`` overrides the encoded length (to lie, or to use a
    non-minimal form)."""
    rl = encode_remaining_length(len(body)) if remaining_length is None else remaining_length
    return bytes((first,)) + rl + body


def connect_bytes(client_id: str | bytes, *, flags: int = 0x02, level: int = 4,
                  name: bytes = b"MQTT", keep_alive: int = 60, rest: bytes = b"",
                  first: int = 0x10) -> bytes:
    """A CONNECT with any flags, level and protocol name; ``rest`` follows the
    client id verbatim (Will, user name, password fields, or garbage)."""
    body = (string(name) + bytes((level, flags)) + keep_alive.to_bytes(2, "big")
            + string(client_id) + rest)
    return frame(first, body)
