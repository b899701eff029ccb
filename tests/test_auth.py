"""Connection strings, SAS tokens and MQTT user names (reference sections 1.3, 2, 3).

The SAS vectors are those of reference 2.2 (V1-V5), the user names the worked
examples of 1.3; connection-string error messages are v2's, and none may
contain the key.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import itertools
import platform
import re
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

import iotdev
from iotdev import _auth
from iotdev._auth import (
    ConnectionString,
    SasToken,
    SasTokenBadSignature,
    SasTokenError,
    SasTokenExpired,
    SasTokenMalformed,
    SasTokenWrongResource,
    build_username,
    decode_symmetric_key,
    default_user_agent,
    derive_device_key,
    device_resource_uri,
    generate_sas_token,
    make_client_id,
    parse_device_resource_uri,
    parse_sas_token,
    parse_username,
    verify_sas_token,
)

K1 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
K2 = "5BjORxDEm7X9lRIVucKhUEWeCSlR6RlA4ZGkGh+pthE="
HUB = "myhub.azure-devices.net"
DEV1_URI = f"{HUB}/devices/device1"


def test_keys_are_what_the_reference_says() -> None:
    assert base64.b64decode(K1) == bytes(range(32))
    assert base64.b64decode(K2) == hashlib.sha256(b"iothub-test-key").digest()


# ---------------------------------------------------------------------------
# SAS vectors (reference 2.2)
# ---------------------------------------------------------------------------

SAS_VECTORS: list[dict[str, Any]] = [
    {
        "id": "V1-device",
        "uri": DEV1_URI,
        "key": K1,
        "expiry": 1700000000,
        "skn": None,
        "to_sign": "myhub.azure-devices.net%2Fdevices%2Fdevice1\n1700000000",
        "signature": "gFSfLGMXDOvf906/iaX3KwzLLNFHgaFZyCbsGjxtd1Y=",
        "token": "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice1"
        "&sig=gFSfLGMXDOvf906%2FiaX3KwzLLNFHgaFZyCbsGjxtd1Y%3D&se=1700000000",
    },
    {
        "id": "V2-module-with-space",
        "uri": f"{HUB}/devices/dev-01/modules/filter module",
        "key": K2,
        "expiry": 1735689600,
        "skn": None,
        "to_sign": "myhub.azure-devices.net%2Fdevices%2Fdev-01%2Fmodules%2Ffilter%20module"
        "\n1735689600",
        "signature": "OJFc/5ZysAVO+yPDYFHGQvmQS6nT+tPINUEJmAdTUDs=",
        "token": "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-01"
        "%2Fmodules%2Ffilter%20module&sig=OJFc%2F5ZysAVO%2ByPDYFHGQvmQS6nT%2BtPINUEJmAdTUDs%3D"
        "&se=1735689600",
    },
    {
        "id": "V3-policy-skn",
        "uri": DEV1_URI,
        "key": K2,
        "expiry": 1700003600,
        "skn": "device",
        "to_sign": "myhub.azure-devices.net%2Fdevices%2Fdevice1\n1700003600",
        "signature": "QHyuucq5qJ8b2kLC4dxGy/URVawLq2peJzvfuu11xmw=",
        "token": "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdevice1"
        "&sig=QHyuucq5qJ8b2kLC4dxGy%2FURVawLq2peJzvfuu11xmw%3D&se=1700003600&skn=device",
    },
    {
        "id": "V4-dps",
        "uri": "0ne000ABCDE/registrations/my-reg-01",
        "key": K1,
        "expiry": 1700000000,
        "skn": None,
        "to_sign": "0ne000ABCDE%2Fregistrations%2Fmy-reg-01\n1700000000",
        "signature": "UGTDL5EiQSl8GHnDXkSxR7riavLs2L+lPKHMkJekAx4=",
        "token": "SharedAccessSignature sr=0ne000ABCDE%2Fregistrations%2Fmy-reg-01"
        "&sig=UGTDL5EiQSl8GHnDXkSxR7riavLs2L%2BlPKHMkJekAx4%3D&se=1700000000",
    },
]


def _vector_id(row: dict[str, Any]) -> str:
    return str(row["id"])


@pytest.mark.parametrize("row", SAS_VECTORS, ids=_vector_id)
def test_sas_vector_string_to_sign_and_signature(row: dict[str, Any]) -> None:
    # The reference's string to sign is quote(uri) + "\n" + expiry ...
    assert f"{quote(row['uri'], safe='')}\n{row['expiry']}" == row["to_sign"]
    # ... and its signature is the HMAC of it (re-check recipe of 2.2).
    digest = hmac.new(base64.b64decode(row["key"]), row["to_sign"].encode(), hashlib.sha256)
    assert base64.b64encode(digest.digest()).decode() == row["signature"]


@pytest.mark.parametrize("row", SAS_VECTORS, ids=_vector_id)
def test_generate_sas_token_is_byte_exact(row: dict[str, Any]) -> None:
    token = generate_sas_token(row["uri"], row["key"], row["expiry"], row["skn"])
    assert token == row["token"]


@pytest.mark.parametrize("row", SAS_VECTORS, ids=_vector_id)
def test_generate_sas_token_accepts_bytes_key(row: dict[str, Any]) -> None:
    token = generate_sas_token(row["uri"], row["key"].encode(), row["expiry"], row["skn"])
    assert token == row["token"]


@pytest.mark.parametrize("row", SAS_VECTORS, ids=_vector_id)
def test_parse_sas_token_vectors(row: dict[str, Any]) -> None:
    assert parse_sas_token(row["token"]) == SasToken(
        resource_uri=row["uri"],
        signature=row["signature"],
        expiry=row["expiry"],
        policy_name=row["skn"],
    )


@pytest.mark.parametrize("row", SAS_VECTORS, ids=_vector_id)
def test_verify_sas_token_vectors(row: dict[str, Any]) -> None:
    token = verify_sas_token(
        row["token"], row["key"], resource_uri=row["uri"], now=row["expiry"] - 10
    )
    assert token.expiry == row["expiry"]
    assert token.policy_name == row["skn"]


def test_v5_group_enrollment_derived_key() -> None:
    assert derive_device_key(K2, "my-reg-01") == "Tr5jOlThcYcp0WortKAKb7Y7zO7UaV/9iTIhD71KX98="


def test_empty_policy_name_is_no_skn() -> None:
    assert generate_sas_token(DEV1_URI, K1, 1700000000, "") == SAS_VECTORS[0]["token"]


def test_policy_name_with_ampersand_is_refused() -> None:
    with pytest.raises(ValueError, match="must not contain '&'"):
        generate_sas_token(DEV1_URI, K1, 1700000000, "a&b")


@pytest.mark.parametrize("expiry", [1700000000.0, True, "1700000000", None])
def test_expiry_must_be_int(expiry: object) -> None:
    with pytest.raises(TypeError, match="expiry must be an int"):
        generate_sas_token(DEV1_URI, K1, expiry)  # type: ignore[arg-type]


def test_resource_uri_is_quoted_as_utf8_with_case_kept() -> None:
    token = generate_sas_token(f"{HUB}/devices/Dévice~X", K1, 1)
    assert token.startswith(
        "SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2FD%C3%A9vice~X&sig="
    )


# ---------------------------------------------------------------------------
# Key decoding like v2
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "noisy",
    [
        " AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
        "AAEC AwQF\tBgcI\r\nCQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=é",
        "AAECAwQFBgcICQoLDA0ODxAREh*MUFRYXGBkaGxwdHh8=",
    ],
)
def test_key_decoding_drops_characters_outside_the_alphabet(noisy: str) -> None:
    assert decode_symmetric_key(noisy) == bytes(range(32))
    assert generate_sas_token(DEV1_URI, noisy, 1700000000) == SAS_VECTORS[0]["token"]


@pytest.mark.parametrize(
    "bad",
    ["AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", "abcde", "a", "\ud800abcd", 12345],
)
def test_bad_key_is_invalid_symmetric_key(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        generate_sas_token(DEV1_URI, bad, 1700000000)  # type: ignore[arg-type]
    assert str(info.value) == "Invalid Symmetric Key"
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__


def test_empty_key_is_accepted_like_v2() -> None:
    assert decode_symmetric_key("") == b""


# ---------------------------------------------------------------------------
# Parsing tokens (reference 2.3)
# ---------------------------------------------------------------------------

V1 = SAS_VECTORS[0]
V3 = SAS_VECTORS[2]


def _v3_fields() -> list[str]:
    return str(V3["token"]).removeprefix("SharedAccessSignature ").split("&")


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_parse_sas_token_accepts_any_field_order(order: tuple[int, ...]) -> None:
    fields = _v3_fields()
    text = "SharedAccessSignature " + "&".join(fields[i] for i in order)
    assert parse_sas_token(text) == parse_sas_token(V3["token"])
    # The signature is over sr and se, whatever the order of the fields.
    verify_sas_token(text, K2, resource_uri=DEV1_URI, now=0)


def test_parse_sas_token_strips_blanks_like_v2() -> None:
    text = "  SharedAccessSignature sr = myhub.azure-devices.net%2Fdevices%2Fdevice1 & sig= " + (
        "gFSfLGMXDOvf906%2FiaX3KwzLLNFHgaFZyCbsGjxtd1Y%3D&se=1700000000 \n"
    )
    assert parse_sas_token(text) == parse_sas_token(V1["token"])
    verify_sas_token(text, K1, resource_uri=DEV1_URI, now=0)


def test_parse_sas_token_unquotes_with_unquote_not_unquote_plus() -> None:
    token = parse_sas_token("SharedAccessSignature sr=a%20b+c&sig=x+y%2B%3D&se=5")
    assert token == SasToken(resource_uri="a b+c", signature="x+y+=", expiry=5)


MALFORMED_TOKENS = [
    ("", "Not a SasToken"),
    ("sr=a&sig=b&se=1", "Not a SasToken"),
    ("SharedAccessSignaturesr=a&sig=b&se=1", "Not a SasToken"),
    ("Bearer SharedAccessSignature sr=a&sig=b&se=1", "Not a SasToken"),
    ("SharedAccessSignature sr=a&sig=SharedAccessSignature b&se=1", "Not a SasToken"),
    ("sharedaccesssignature sr=a&sig=b&se=1", "Not a SasToken"),
    ("SharedAccessSignature sr=a&sig=b&se=1&", "Incorrectly formatted"),
    ("SharedAccessSignature sr=a&sig&se=1", "Incorrectly formatted"),
    ("SharedAccessSignature sr=a&sig=b&se=1&foo=2", "Unexpected fields"),
    ("SharedAccessSignature sr=a&sig=b&se=1&SR=a", "Unexpected fields"),
    ("SharedAccessSignature sr=a&sig=b&se=1&sr=a", "appears twice"),
    ("SharedAccessSignature sr=a&sig=b&se=1&skn=x&skn=y", "appears twice"),
    ("SharedAccessSignature sr=&sig=b&se=1", "'sr' is empty"),
    ("SharedAccessSignature sr=a&sig=b&se=1&skn=", "'skn' is empty"),
    ("SharedAccessSignature sig=b&se=1", "missing sr"),
    ("SharedAccessSignature sr=a&se=1", "missing sig"),
    ("SharedAccessSignature sr=a&sig=b", "missing se"),
    ("SharedAccessSignature skn=x", "missing sr, sig, se"),
    ("SharedAccessSignature sr=a&sig=b&se=abc", "ASCII digits"),
    ("SharedAccessSignature sr=a&sig=b&se=-1", "ASCII digits"),
    ("SharedAccessSignature sr=a&sig=b&se=+5", "ASCII digits"),
    ("SharedAccessSignature sr=a&sig=b&se=1_0", "ASCII digits"),
    ("SharedAccessSignature sr=a&sig=b&se=1.5", "ASCII digits"),
    ("SharedAccessSignature sr=a&sig=b&se=\u0661\u0662", "ASCII digits"),
    ("SharedAccessSignature sr=a&sig=b&se=" + "9" * 5000, "ASCII digits"),
]


@pytest.mark.parametrize(("text", "message"), MALFORMED_TOKENS)
def test_parse_sas_token_malformed(text: str, message: str) -> None:
    with pytest.raises(SasTokenMalformed, match=re.escape(message)) as info:
        parse_sas_token(text)
    assert isinstance(info.value, ValueError)
    assert info.value.reason == str(info.value)
    # The same text fails verification the same way.
    with pytest.raises(SasTokenMalformed, match=re.escape(message)):
        verify_sas_token(text, K1, resource_uri="a", now=0)


@pytest.mark.parametrize("value", [None, b"SharedAccessSignature sr=a&sig=b&se=1", 5])
def test_parse_sas_token_non_str_is_malformed(value: object) -> None:
    with pytest.raises(SasTokenMalformed):
        parse_sas_token(value)  # type: ignore[arg-type]


@given(st.text())
def test_parse_sas_token_raises_only_malformed(text: str) -> None:
    try:
        parse_sas_token(text)
    except SasTokenMalformed:
        pass
    try:
        parse_sas_token("SharedAccessSignature " + text)
    except SasTokenMalformed:
        pass


# ---------------------------------------------------------------------------
# Verification (emulator side)
# ---------------------------------------------------------------------------


def test_verify_boundary_of_expiry_is_v2s() -> None:
    # v2: "already expired" when expiry < now; at expiry it is still good.
    verify_sas_token(V1["token"], K1, resource_uri=DEV1_URI, now=1700000000)
    with pytest.raises(SasTokenExpired, match="expired at 1700000000") as info:
        verify_sas_token(V1["token"], K1, resource_uri=DEV1_URI, now=1700000000.5)
    assert isinstance(info.value, SasTokenError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "resource",
    [
        f"{HUB}/devices/device2",
        f"{HUB}/devices/device10",  # string prefix of the token's is not enough
        f"{HUB}/devices/devic",
        f"{HUB}/devices/Device1",  # device ids are case-sensitive
        f"{HUB}/Devices/device1",
        f"{HUB}/devices",  # the token is narrower than the resource
        HUB,
        "other.azure-devices.net/devices/device1",
        f"{HUB}.evil/devices/device1",
        f"{HUB}/devices/device1x/modules/m",
    ],
)
def test_verify_wrong_resource(resource: str) -> None:
    with pytest.raises(SasTokenWrongResource, match="does not cover") as info:
        verify_sas_token(V1["token"], K1, resource_uri=resource, now=0)
    assert isinstance(info.value, SasTokenError)


@pytest.mark.parametrize(
    "resource",
    [
        DEV1_URI,
        "MyHub.Azure-Devices.NET/devices/device1",  # host names compare without case
        f"{HUB}/devices/device1/modules/m1",  # per-segment prefix
    ],
)
def test_verify_resource_covered(resource: str) -> None:
    verify_sas_token(V1["token"], K1, resource_uri=resource, now=0)


@pytest.mark.parametrize("token_uri", [HUB, f"{HUB}/devices", HUB.upper()])
def test_verify_policy_scoped_token_covers_devices(token_uri: str) -> None:
    token = generate_sas_token(token_uri, K2, 1700003600, "iothubowner")
    parsed = verify_sas_token(token, K2, resource_uri=f"{HUB}/devices/anything", now=0)
    assert parsed.policy_name == "iothubowner"


def test_verify_bad_signature_wrong_key() -> None:
    with pytest.raises(SasTokenBadSignature, match="does not match") as info:
        verify_sas_token(V1["token"], K2, resource_uri=DEV1_URI, now=0)
    assert isinstance(info.value, SasTokenError)
    assert K2 not in str(info.value)
    assert str(V1["signature"]) not in str(info.value)
    assert "gFSfLGMX" not in str(info.value)


def test_verify_bad_signature_extended_expiry() -> None:
    forged = str(V1["token"]).replace("se=1700000000", "se=1900000000")
    with pytest.raises(SasTokenBadSignature):
        verify_sas_token(forged, K1, resource_uri=DEV1_URI, now=0)


def test_verify_bad_signature_other_resource() -> None:
    forged = str(V1["token"]).replace("device1", "device2")
    with pytest.raises(SasTokenBadSignature):
        verify_sas_token(forged, K1, resource_uri=f"{HUB}/devices/device2", now=0)


def test_verify_bad_signature_truncated_or_garbage() -> None:
    for sig in ("", "gFSfLGMXDOvf906", "é" * 44, "gFSfLGMXDOvf906/iaX3KwzLLNFHgaFZyCbsGjxtd1Y"):
        text = f"SharedAccessSignature sr={quote(DEV1_URI, safe='')}&sig={sig}&se=1700000000"
        with pytest.raises(SasTokenError):
            verify_sas_token(text, K1, resource_uri=DEV1_URI, now=0)


def test_verify_signature_is_over_the_sr_text_as_sent() -> None:
    # A signer that quotes with lower-case hex (as some doc samples do) signs
    # that text; the service checks against the sr as sent.
    sr = "myhub.azure-devices.net%2fdevices%2fdevice1"
    digest = hmac.new(base64.b64decode(K1), f"{sr}\n1700000000".encode(), hashlib.sha256)
    sig = quote(base64.b64encode(digest.digest()).decode(), safe="")
    text = f"SharedAccessSignature sr={sr}&sig={sig}&se=1700000000"
    assert verify_sas_token(text, K1, resource_uri=DEV1_URI, now=0).resource_uri == DEV1_URI
    # v2's token with its sr rewritten to lower-case hex no longer verifies.
    rewritten = str(V1["token"]).replace("%2F", "%2f", 2)
    with pytest.raises(SasTokenBadSignature):
        verify_sas_token(rewritten, K1, resource_uri=DEV1_URI, now=0)


def test_verify_unencoded_plus_in_signature_is_kept() -> None:
    # V2's signature has '+'; sent unencoded it still verifies (unquote, not unquote_plus).
    text = str(SAS_VECTORS[1]["token"]).replace("%2B", "+")
    verify_sas_token(text, K2, resource_uri=str(SAS_VECTORS[1]["uri"]), now=0)


def test_verify_checks_resource_before_signature_and_signature_before_expiry() -> None:
    with pytest.raises(SasTokenWrongResource):
        verify_sas_token(V1["token"], K2, resource_uri=f"{HUB}/devices/x", now=2e9)
    with pytest.raises(SasTokenBadSignature):
        verify_sas_token(V1["token"], K2, resource_uri=DEV1_URI, now=2e9)


def test_verify_uses_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    verify_sas_token(V1["token"], K1, resource_uri=DEV1_URI, now=0)
    assert calls == [(V1["signature"].encode(), V1["signature"].encode())]


def test_verify_with_bad_key_is_invalid_symmetric_key() -> None:
    with pytest.raises(ValueError, match=r"^Invalid Symmetric Key$") as info:
        verify_sas_token(V1["token"], "abcde", resource_uri=DEV1_URI, now=0)
    assert not isinstance(info.value, SasTokenError)


_ID_CHARS = st.characters(codec="utf-8", exclude_characters="/")
_ids = st.text(_ID_CHARS, min_size=1, max_size=20)


@given(
    host=_ids,
    device_id=_ids,
    module_id=st.none() | _ids,
    key=st.binary(max_size=64),
    expiry=st.integers(min_value=0, max_value=2**40),
    skn=st.none() | st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True),
)
def test_generate_parse_verify_round_trip(
    host: str, device_id: str, module_id: str | None, key: bytes, expiry: int, skn: str | None
) -> None:
    uri = device_resource_uri(host, device_id, module_id)
    b64 = base64.b64encode(key).decode()
    text = generate_sas_token(uri, b64, expiry, skn)
    assert parse_sas_token(text) == SasToken(
        resource_uri=uri,
        signature=base64.b64encode(
            hmac.new(key, f"{quote(uri, safe='')}\n{expiry}".encode(), hashlib.sha256).digest()
        ).decode(),
        expiry=expiry,
        policy_name=skn,
    )
    assert verify_sas_token(text, b64, resource_uri=uri, now=expiry).resource_uri == uri
    with pytest.raises(SasTokenBadSignature):
        verify_sas_token(text, base64.b64encode(key + b"x"), resource_uri=uri, now=expiry)


def test_sas_error_classes() -> None:
    for cls in (SasTokenMalformed, SasTokenExpired, SasTokenWrongResource, SasTokenBadSignature):
        assert issubclass(cls, SasTokenError)
    assert issubclass(SasTokenError, ValueError)
    error = SasTokenExpired("why")
    assert error.reason == "why"
    assert str(error) == "why"


def test_sas_token_is_frozen() -> None:
    token = parse_sas_token(V1["token"])
    with pytest.raises(FrozenInstanceError):
        token.expiry = 5  # type: ignore[misc]


# ---------------------------------------------------------------------------
# Connection strings (reference 3)
# ---------------------------------------------------------------------------

SECRET = "c2VjcmV0LWtleS12YWx1ZS1kby1ub3Qtc2hvdw=="
SECRET_SIG = "SharedAccessSignature sr=h&sig=c2VjcmV0LXNpZw%3D%3D&se=1"


def test_parse_device_connection_string() -> None:
    cs = ConnectionString.parse(f"HostName={HUB};DeviceId=device1;SharedAccessKey={SECRET}")
    assert cs == ConnectionString(host_name=HUB, device_id="device1", shared_access_key=SECRET)
    assert cs.module_id is None
    assert cs.gateway_host_name is None
    assert cs.shared_access_key_name is None
    assert cs.x509 is False
    assert cs.shared_access_signature is None
    assert cs.client_id == "device1"
    assert cs.resource_uri == DEV1_URI


def test_parse_module_connection_string_with_gateway_any_order() -> None:
    cs = ConnectionString.parse(
        f"ModuleId=filter;GatewayHostName=edge.local;SharedAccessKey={SECRET};"
        f"DeviceId=dev-01;HostName={HUB}"
    )
    assert cs.module_id == "filter"
    assert cs.gateway_host_name == "edge.local"
    assert cs.host_name == HUB
    assert cs.client_id == "dev-01/filter"
    assert cs.resource_uri == f"{HUB}/devices/dev-01/modules/filter"


def test_values_split_on_first_equals_and_are_not_stripped() -> None:
    cs = ConnectionString.parse(
        f"HostName= {HUB};DeviceId=a=b;SharedAccessKey={SECRET}==;SharedAccessKeyName=device"
    )
    assert cs.host_name == f" {HUB}"
    assert cs.device_id == "a=b"
    assert cs.shared_access_key == SECRET + "=="
    assert cs.shared_access_key_name == "device"


def test_x509_connection_string() -> None:
    cs = ConnectionString.parse(f"HostName={HUB};DeviceId=device1;x509=true")
    assert cs.x509 is True
    assert cs.shared_access_key is None


def test_x509_is_presence_and_empty_x509_is_not_mixed() -> None:
    # v2 tests SharedAccessKey and x509 for truth: "x509=" is not "mixed";
    # its factory then refuses any string in which x509 is present.
    cs = ConnectionString.parse(f"HostName={HUB};DeviceId=d;SharedAccessKey={SECRET};x509=")
    assert cs.x509 is True
    assert cs.shared_access_key == SECRET
    assert ConnectionString.parse(f"HostName={HUB};DeviceId=d;x509=false").x509 is True


def test_empty_optional_values_are_none() -> None:
    cs = ConnectionString.parse(
        f"HostName={HUB};DeviceId=d;SharedAccessKey={SECRET};ModuleId=;GatewayHostName=;"
        "SharedAccessKeyName=;SharedAccessSignature="
    )
    assert cs.module_id is None
    assert cs.gateway_host_name is None
    assert cs.shared_access_key_name is None
    assert cs.shared_access_signature is None
    assert cs.client_id == "d"


def test_shared_access_signature_is_kept_alongside_a_key() -> None:
    cs = ConnectionString.parse(
        f"HostName={HUB};DeviceId=d;SharedAccessKey={SECRET};SharedAccessSignature={SECRET_SIG}"
    )
    assert cs.shared_access_signature == SECRET_SIG


def test_repr_and_str_hide_the_key_and_signature() -> None:
    cs = ConnectionString.parse(
        f"HostName={HUB};DeviceId=d;SharedAccessKey={SECRET};SharedAccessSignature={SECRET_SIG}"
    )
    for text in (repr(cs), str(cs), f"{cs}", f"{cs!r}", repr([cs])):
        assert SECRET not in text
        assert "c2VjcmV0" not in text
        assert "<hidden>" in text
        assert "host_name='myhub.azure-devices.net'" in text
    no_key = ConnectionString.parse(f"HostName={HUB};DeviceId=d;x509=true")
    assert "shared_access_key=None" in repr(no_key)


def test_connection_string_is_frozen() -> None:
    cs = ConnectionString.parse(f"HostName={HUB};DeviceId=d;SharedAccessKey={SECRET}")
    with pytest.raises(FrozenInstanceError):
        cs.device_id = "x"  # type: ignore[misc]


UNABLE = "Invalid Connection String - Unable to parse"
INVALID_KEY = "Invalid Connection String - Invalid Key"
MIXED = "Invalid Connection String - Mixed authentication scheme"
INCOMPLETE = "Invalid Connection String - Incomplete"
GOOD = f"HostName={HUB};DeviceId=d;SharedAccessKey={SECRET}"

CS_ERRORS = [
    ("trailing-semicolon", GOOD + ";", UNABLE),
    ("empty-part", f"HostName={HUB};;DeviceId=d;SharedAccessKey={SECRET}", UNABLE),
    ("part-without-equals", GOOD + ";Oops", UNABLE),
    ("key-as-a-part", f"HostName={HUB};DeviceId=d;{SECRET.rstrip('=')}", UNABLE),
    ("empty-string", "", UNABLE),
    ("duplicate-key", GOOD + f";SharedAccessKey={SECRET}", UNABLE),
    ("duplicate-host", GOOD + ";HostName=other", UNABLE),
    ("duplicate-unknown", GOOD + f";Foo={SECRET};Foo=x", UNABLE),
    ("unable-before-invalid-key", f"Foo=1;{GOOD};Oops", UNABLE),
    ("unknown-key", GOOD + ";Foo=bar", INVALID_KEY),
    ("lower-case-key", f"hostname={HUB};DeviceId=d;SharedAccessKey={SECRET}", INVALID_KEY),
    ("spaced-key", f"HostName={HUB};DeviceId=d; SharedAccessKey={SECRET}", INVALID_KEY),
    ("x509-upper", f"HostName={HUB};DeviceId=d;X509=true", INVALID_KEY),
    ("empty-key-name", GOOD + f";={SECRET}", INVALID_KEY),
    ("mixed", GOOD + ";x509=true", MIXED),
    ("mixed-with-module", GOOD + ";ModuleId=m;x509=yes", MIXED),
    ("no-key", f"HostName={HUB};DeviceId=d", INCOMPLETE),
    ("no-host", f"DeviceId=d;SharedAccessKey={SECRET}", INCOMPLETE),
    ("empty-host", f"HostName=;DeviceId=d;SharedAccessKey={SECRET}", INCOMPLETE),
    ("empty-device", f"HostName={HUB};DeviceId=;SharedAccessKey={SECRET}", INCOMPLETE),
    ("empty-key", f"HostName={HUB};DeviceId=d;SharedAccessKey=", INCOMPLETE),
    ("empty-x509", f"HostName={HUB};DeviceId=d;x509=", INCOMPLETE),
    ("signature-only", f"HostName={HUB};DeviceId=d;SharedAccessSignature={SECRET}", INCOMPLETE),
    ("key-name-and-key-no-host", f"SharedAccessKeyName=x;SharedAccessKey={SECRET}", INCOMPLETE),
    ("module-no-device", f"HostName={HUB};ModuleId=m;SharedAccessKey={SECRET}", INCOMPLETE),
    # v2's parser accepts a hub-level string; its factory then raised KeyError('DeviceId').
    (
        "hub-level",
        f"HostName={HUB};SharedAccessKeyName=iothubowner;SharedAccessKey={SECRET}",
        INCOMPLETE + ": no DeviceId",
    ),
]


@pytest.mark.parametrize(
    ("text", "prefix"), [c[1:] for c in CS_ERRORS], ids=[c[0] for c in CS_ERRORS]
)
def test_connection_string_errors(text: str, prefix: str) -> None:
    with pytest.raises(ValueError) as info:
        ConnectionString.parse(text)
    message = str(info.value)
    assert message.startswith(prefix)
    assert SECRET not in message
    assert SECRET.rstrip("=") not in message
    assert "c2VjcmV0" not in message
    assert info.value.__cause__ is None
    assert info.value.__context__ is None


def test_invalid_key_message_suggests_the_spelling_without_values() -> None:
    with pytest.raises(ValueError) as info:
        ConnectionString.parse(f"HostName={HUB};DeviceId=d;sharedaccesskey={SECRET}")
    assert "did you mean 'SharedAccessKey'?" in str(info.value)
    assert "part 3" in str(info.value)
    with pytest.raises(ValueError) as info:
        ConnectionString.parse(GOOD + f";{SECRET[:10]}={SECRET}")
    assert "did you mean" not in str(info.value)
    assert SECRET[:10] not in str(info.value)


@pytest.mark.parametrize("value", [None, b"HostName=h;DeviceId=d;x509=true", 5, ["a=b"]])
def test_connection_string_must_be_str(value: object) -> None:
    with pytest.raises(TypeError, match=r"^Connection String must be of type str$"):
        ConnectionString.parse(value)  # type: ignore[arg-type]


@given(st.text())
def test_connection_string_parse_raises_only_value_errors_without_secrets(text: str) -> None:
    try:
        ConnectionString.parse(text + f";SharedAccessKey={SECRET}")
    except ValueError as exc:
        assert SECRET not in str(exc)
        assert str(exc).startswith("Invalid Connection String - ")


@given(
    device_id=st.text(st.characters(exclude_characters=";"), min_size=1),
    key=st.text(st.characters(exclude_characters=";"), min_size=1),
)
def test_connection_string_values_round_trip_and_repr_ignores_the_key(
    device_id: str, key: str
) -> None:
    cs = ConnectionString.parse(f"SharedAccessKey={key};HostName={HUB};DeviceId={device_id}")
    assert (cs.device_id, cs.shared_access_key) == (device_id, key)
    # The repr does not depend on the key at all.
    assert repr(cs) == repr(cs.__replace__(shared_access_key="other"))


def test_device_resource_uri() -> None:
    assert device_resource_uri(HUB, "device1") == DEV1_URI
    assert device_resource_uri(HUB, "d", "m") == f"{HUB}/devices/d/modules/m"
    assert device_resource_uri(HUB, "d", "") == f"{HUB}/devices/d"
    assert make_client_id("d") == "d"
    assert make_client_id("d", "m") == "d/m"
    assert make_client_id("d", "") == "d"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (DEV1_URI, (HUB, "device1", None)),
        (f"{HUB}/devices/d/modules/m", (HUB, "d", "m")),
    ],
)
def test_parse_device_resource_uri(uri: str, expected: tuple[str, str, str | None]) -> None:
    assert parse_device_resource_uri(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        HUB,
        f"{HUB}/devices",
        f"{HUB}/devices/",
        f"{HUB}/device/d",
        f"{HUB}/devices/d/modules",
        f"{HUB}/devices/d/module/m",
        f"{HUB}/devices/d/modules/",
        f"{HUB}/devices/d/modules/m/x",
        "0ne000ABCDE/registrations/my-reg-01",
    ],
)
def test_parse_device_resource_uri_invalid(uri: str) -> None:
    with pytest.raises(ValueError, match=r"^Invalid SAS URI"):
        parse_device_resource_uri(uri)


# ---------------------------------------------------------------------------
# MQTT user names (reference 1.3)
# ---------------------------------------------------------------------------

UA = "azure-iot-device-iothub-py/2.14.0(3.11.4;Linux #1 SMP;x86_64)"
UA_Q = "azure-iot-device-iothub-py%2F2.14.0%283.11.4%3BLinux%20%231%20SMP%3Bx86_64%29"

USERNAME_EXAMPLES = [
    (
        "device",
        "device1",
        "",
        f"{HUB}/device1/?api-version=2019-10-01&DeviceClientType={UA_Q}",
    ),
    (
        "product-info",
        "device1",
        "my-product/1.0",
        f"{HUB}/device1/?api-version=2019-10-01&DeviceClientType={UA_Q}my-product%2F1.0",
    ),
    (
        "module",
        "device1/filtermod",
        "",
        f"{HUB}/device1/filtermod/?api-version=2019-10-01&DeviceClientType={UA_Q}",
    ),
    (
        "pnp",
        "device1",
        "dtmi:com:example:Thermostat;1",
        f"{HUB}/device1/?api-version=2020-09-30&DeviceClientType={UA_Q}"
        "&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1",
    ),
]


@pytest.mark.parametrize(
    ("client_id", "product_info", "expected"),
    [e[1:] for e in USERNAME_EXAMPLES],
    ids=[e[0] for e in USERNAME_EXAMPLES],
)
def test_username_worked_examples(client_id: str, product_info: str, expected: str) -> None:
    assert build_username(HUB, client_id, product_info=product_info, user_agent=UA) == expected


@pytest.mark.parametrize(
    ("client_id", "product_info", "expected"),
    [e[1:] for e in USERNAME_EXAMPLES],
    ids=[e[0] for e in USERNAME_EXAMPLES],
)
def test_parse_username_worked_examples(client_id: str, product_info: str, expected: str) -> None:
    host, parsed_client_id, params = parse_username(expected)
    assert (host, parsed_client_id) == (HUB, client_id)
    if product_info.startswith("dtmi"):
        assert params == {
            "api-version": "2020-09-30",
            "DeviceClientType": UA,
            "model-id": product_info,
        }
    else:
        assert params == {"api-version": "2019-10-01", "DeviceClientType": UA + product_info}


def test_username_product_info_is_str_converted() -> None:
    assert build_username("h", "d", product_info=42, user_agent="ua").endswith(
        "DeviceClientType=ua42"
    )


def test_username_dtmi_prefix_is_case_sensitive_startswith() -> None:
    assert "model-id" not in build_username("h", "d", product_info="DTMI:x;1", user_agent="u")
    assert "model-id=dtmix" in build_username("h", "d", product_info="dtmix", user_agent="u")


def test_username_api_version_override() -> None:
    assert build_username("h", "d", user_agent="u", api_version="2021-04-12") == (
        "h/d/?api-version=2021-04-12&DeviceClientType=u"
    )
    pnp = build_username("h", "d", user_agent="u", api_version="X", product_info="dtmi:a;1")
    assert pnp == "h/d/?api-version=X&DeviceClientType=u&model-id=dtmi%3Aa%3B1"


def test_username_ids_and_host_are_not_encoded() -> None:
    assert build_username("h", "dé v/m od", user_agent="u").startswith("h/dé v/m od/?")


def test_default_user_agent_has_v2s_shape_with_our_name() -> None:
    expected = (
        f"iotdev/{iotdev.__version__}({platform.python_version()};"
        f"{platform.system()} {platform.version()};{platform.machine()})"
    )
    assert default_user_agent() == expected
    assert build_username("h", "d") == (
        f"h/d/?api-version=2019-10-01&DeviceClientType={quote(expected, safe='')}"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("h/d/?", ("h", "d", {})),
        ("h/d/", ("h", "d", {})),
        ("h/d", ("h", "d", {})),
        ("h/d/m", ("h", "d/m", {})),
        ("h/d/m/", ("h", "d/m", {})),
        ("h/d/?a%20b%3D=%3D&%24x=%2B", ("h", "d", {"a b=": "=", "$x": "+"})),
        ("h/d/?api-version=2021-04-12", ("h", "d", {"api-version": "2021-04-12"})),
        ("h/?d/?a=1", ("h", "?d", {"a": "1"})),
        ("h/d/?m/?a=1", ("h", "d/?m", {"a": "1"})),
        ("h/d/?a=x+y%20z&b&&c=1=2&a=last", ("h", "d", {"a": "last", "b": "", "c": "1=2"})),
    ],
)
def test_parse_username_forms(text: str, expected: tuple[str, str, dict[str, str]]) -> None:
    assert parse_username(text) == expected


@pytest.mark.parametrize(
    "text", ["", "h", "/d/?a=1", "h/", "h//?a=1", "h/d//?a=1", "h/a/b/c/?x=1", "h/a/b/c"]
)
def test_parse_username_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="MQTT user name"):
        parse_username(text)


_username_ids = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1)


@given(
    host=_username_ids,
    device_id=_username_ids,
    module_id=st.none() | _username_ids,
    product_info=st.text(st.characters(codec="utf-8")),
    user_agent=st.text(st.characters(codec="utf-8")),
)
def test_username_round_trip(
    host: str, device_id: str, module_id: str | None, product_info: str, user_agent: str
) -> None:
    client_id = make_client_id(device_id, module_id)
    text = build_username(host, client_id, product_info=product_info, user_agent=user_agent)
    parsed_host, parsed_client_id, params = parse_username(text)
    assert (parsed_host, parsed_client_id) == (host, client_id)
    if product_info.startswith("dtmi"):
        assert params == {
            "api-version": "2020-09-30",
            "DeviceClientType": user_agent,
            "model-id": product_info,
        }
    else:
        assert params == {
            "api-version": "2019-10-01",
            "DeviceClientType": user_agent + product_info,
        }


# ---------------------------------------------------------------------------
# Purity
# ---------------------------------------------------------------------------

FORBIDDEN = {"socket", "ssl", "select", "selectors", "threading", "asyncio", "time", "logging"}
FORBIDDEN |= {"os", "subprocess", "io", "random", "secrets", "uuid"}


def test_auth_module_imports_only_pure_standard_library() -> None:
    tree = ast.parse(Path(_auth.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported
    assert not imported & FORBIDDEN
    assert imported <= {
        "__future__",
        "base64",
        "binascii",
        "hashlib",
        "hmac",
        "iotdev_mqtt",  # its _records helper: pure, standard library only (test_import_purity)
        "platform",
        "re",
        "urllib",
    }
