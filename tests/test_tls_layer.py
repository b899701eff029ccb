"""``TLSLayer`` in memory (client and server layers pumped into each other):
the handshake, application data both ways, and ``max_record`` (the cap on
plaintext per TLS record used under WebSocket), checked on the record headers
of the bytes that would go on the wire."""

from __future__ import annotations

import os
import ssl

import pytest

from iotdev.transport._tls import TLSLayer, make_client_context
from tests._broker import CertAuthority


def pair(test_ca: CertAuthority, **client_kw: object) -> tuple[TLSLayer, TLSLayer]:
    cert = test_ca.issue_server_cert()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert, cert.key)
    client = TLSLayer(make_client_context(server_verification_cert=test_ca.ca_cert_pem),
                      "localhost", **client_kw)  # type: ignore[arg-type]
    server = TLSLayer(server_ctx, None, server_side=True)
    client.start()
    server.start()
    for _ in range(10):
        if client.established and server.established:
            break
        server.receive_data(client.data_to_send())
        client.receive_data(server.data_to_send())
    assert client.established and server.established
    return client, server


def record_lengths(wire: bytes) -> list[int]:
    lengths, pos = [], 0
    while pos < len(wire):
        assert wire[pos] == 0x17, "an application-data record"
        length = int.from_bytes(wire[pos + 3:pos + 5], "big")
        lengths.append(length)
        pos += 5 + length
    assert pos == len(wire)
    return lengths


@pytest.mark.parametrize("max_record", [None, 4096, 1000])
def test_records_are_capped_and_data_arrives_whole(test_ca: CertAuthority,
                                                   max_record: int | None) -> None:
    client, server = pair(test_ca, max_record=max_record)
    data = os.urandom(40_000)
    client.send(data)
    wire = client.data_to_send()
    lengths = record_lengths(wire)
    if max_record is None:
        assert max(lengths) > 16_000  # OpenSSL's own 16 KB records
    else:
        assert max(lengths) <= max_record + 256  # the plaintext cap plus AEAD overhead
        assert len(lengths) >= len(data) // max_record
    assert server.receive_data(wire) == data
    server.send(b"back")
    assert client.receive_data(server.data_to_send()) == b"back"
