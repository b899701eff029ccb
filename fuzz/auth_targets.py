"""Fuzz targets for ``iotdev._auth``: ``connection-string`` and ``sas-token``.

The input is text (UTF-8, other bytes as lone surrogates).  What is checked:

``connection-string``:

1. ``ConnectionString.parse`` returns a ``ConnectionString`` or raises
   ``ValueError`` (``TypeError`` is documented for non-``str`` only); the
   outcome agrees with an oracle written from the docstring (which message,
   which fields);
2. secrets stay out of errors: every non-empty value replaced by a marker
   gives the very same error message (so no message depends on a value, the
   key included), no marker appears in a message, in the exception chain or in
   ``repr()`` of the result where the key and signature are hidden;
3. a parsed key decodes with ``decode_symmetric_key`` or gives exactly
   ``ValueError("Invalid Symmetric Key")`` with no chained exception; a token
   made with it by ``generate_sas_token`` for the string's resource URI parses
   back and passes ``verify_sas_token`` with the same key.

``sas-token``:

1. ``parse_sas_token`` returns a ``SasToken`` or raises ``SasTokenMalformed``;
   the outcome agrees with an oracle written from the docstring;
2. the signature never appears in an error: replaced by a marker, the same
   outcome (message) follows, without the marker;
3. a parsed token, written back in canonical form, parses to the same fields;
4. ``verify_sas_token`` with a fixed key raises only ``SasTokenError``
   subclasses, the one an oracle predicts (form, resource, signature, expiry,
   in that order, the signature an HMAC computed here); the key never shows in
   its messages, and another signature changes nothing but the verdict on the
   signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, unquote

from iotdev._auth import (
    SAS_PREFIX,
    ConnectionString,
    SasToken,
    SasTokenError,
    SasTokenMalformed,
    decode_symmetric_key,
    generate_sas_token,
    parse_sas_token,
    verify_sas_token,
)

from .checks import breach, short
from .hub_targets import text_of
from .registry import register

__all__: list[str] = []

_KEYS = ("HostName", "SharedAccessKeyName", "SharedAccessKey", "SharedAccessSignature",
         "DeviceId", "ModuleId", "GatewayHostName", "x509")
_FIELD = {"HostName": "host_name", "DeviceId": "device_id", "SharedAccessKey":
          "shared_access_key", "ModuleId": "module_id", "GatewayHostName": "gateway_host_name",
          "SharedAccessKeyName": "shared_access_key_name",
          "SharedAccessSignature": "shared_access_signature"}
_MARK = "\u2603"  # no ';', '=', '&', '%', blank: never changes how a text splits


def _marker(index: int) -> str:
    return f"{_MARK}{index}{_MARK}"


def _chain_text(exc: BaseException) -> str:
    """Messages and reprs of ``exc`` and every exception chained to it."""
    out = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        out.append(f"{cur!r} {cur}")
        cur = cur.__cause__ or cur.__context__
    return "\n".join(out)


# --------------------------------------------------------------------------- connection strings


def _cs_oracle(text: str) -> str | dict[str, object]:
    """The documented outcome: an error message prefix, or the fields."""
    fields: dict[str, str] = {}
    for part in text.split(";"):
        if "=" not in part:
            return "Invalid Connection String - Unable to parse"
        name, value = part.split("=", 1)
        if name in fields:
            return "Invalid Connection String - Unable to parse"
        fields[name] = value
    if any(name not in _KEYS for name in fields):
        return "Invalid Connection String - Invalid Key"
    present = {name for name, value in fields.items() if value}
    if "SharedAccessKey" in present and "x509" in present:
        return "Invalid Connection String - Mixed authentication scheme"
    device = {"HostName", "DeviceId"} <= present and (
        "SharedAccessKey" in present or "x509" in present)
    if not device:
        return "Invalid Connection String - Incomplete"
    out: dict[str, object] = {attr: fields.get(key) or None for key, attr in _FIELD.items()}
    out["x509"] = "x509" in fields
    return out


def _cs_parse(text: str, data: bytes) -> ConnectionString | ValueError:
    try:
        return ConnectionString.parse(text)
    except ValueError as exc:
        return exc
    except Exception as exc:
        raise breach("cs-exception", f"{exc!r} escaped ConnectionString.parse", data) from exc


def _cs_masked(text: str) -> tuple[str, dict[str, str]]:
    """``text`` with each non-empty value replaced by a marker; marker -> value."""
    parts = []
    values: dict[str, str] = {}
    for index, part in enumerate(text.split(";")):
        name, sep, value = part.partition("=")
        if sep and value:
            mark = _marker(index)
            values[mark] = value
            value = mark
        parts.append(name + sep + value)
    return ";".join(parts), values


def _check_token_roundtrip(cs: ConnectionString, data: bytes) -> str:
    key = cs.shared_access_key
    if key is None:
        return "x509"
    try:
        raw = decode_symmetric_key(key)
    except ValueError as exc:
        if str(exc) != "Invalid Symmetric Key" or exc.__cause__ is not None or (
                exc.__context__ is not None and not exc.__suppress_context__):
            raise breach("key-error", f"decode_symmetric_key: {exc!r} (chain: "
                         f"{exc.__cause__!r} / {exc.__context__!r})", data) from None
        return "bad key"
    except Exception as exc:
        raise breach("key-error", f"decode_symmetric_key raised {type(exc).__name__}",
                     data) from None
    if not isinstance(raw, bytes):
        raise breach("key-error", f"decode_symmetric_key returned {type(raw).__name__}", data)
    uri = cs.resource_uri
    try:
        token = generate_sas_token(uri, key, 1_900_000_000)
    except ValueError:
        if not any(0xD800 <= ord(c) <= 0xDFFF for c in uri):
            raise breach("sas-roundtrip", f"generate_sas_token refused {short(uri)}",
                         data) from None
        return "uri not encodable"
    try:
        verify_sas_token(token, key, resource_uri=uri, now=1_800_000_000)
    except Exception as exc:
        raise breach("sas-roundtrip", f"a token made for {short(uri)} with the string's key "
                     f"fails verify_sas_token: {type(exc).__name__}: {exc}", data) from None
    return "key"


@register(
    "connection-string",
    "ConnectionString.parse: parsed or ValueError, values (key) never in messages",
    shared_seeds=False,
    instrument=("iotdev._auth",),
    tokens=(";", "=", *[k + "=" for k in _KEYS], "hostname=", " DeviceId", "==", "\x00"),
    seeds=lambda: [
        b"HostName=hub.azure-devices.net;DeviceId=dev1;SharedAccessKey=c2VjcmV0c2VjcmV0",
        b"HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey=a2V5;GatewayHostName=gw",
        b"HostName=h;DeviceId=d;x509=true", b"HostName=h;DeviceId=d;x509=",
        b"HostName=h;DeviceId=d;SharedAccessKey=k;x509=true",
        b"HostName=h;SharedAccessKeyName=iothubowner;SharedAccessKey=a2V5",
        b"HostName=h;DeviceId=d;SharedAccessSignature=SharedAccessSignature sr=h&sig=s&se=1",
        b"HostName=h;DeviceId=d;SharedAccessKey=a2V5;", b"hostname=h;DeviceId=d",
        b"HostName=h;HostName=h", b"", b";", b"=", b"HostName", b"HostName=h;DeviceId=d",
        b"HostName=h;DeviceId=d;SharedAccessKey=a===",
        b"HostName=h\xff;DeviceId=d\xed\xa0\x80;SharedAccessKey=a2V5",
    ],
)
def connection_string(data: bytes) -> str:
    text = text_of(data)
    got = _cs_parse(text, data)
    want = _cs_oracle(text)
    masked_text, values = _cs_masked(text)
    masked = _cs_parse(masked_text, data)
    if isinstance(got, ValueError):
        message = str(got)
        if not isinstance(want, str) or not message.startswith(want):
            raise breach("cs-oracle", f"{message!r}, expected {short(want)}", data)
        if not isinstance(masked, ValueError) or str(masked) != message:
            raise breach("cs-secret", f"error message depends on the values: {message!r} vs "
                         f"{short(masked)} with markers", data)
        if _MARK in _chain_text(masked):
            raise breach("cs-secret", f"a value appears in the error: {_chain_text(masked)!r}",
                         data)
        return "ValueError " + want.rsplit(" - ", 1)[-1]
    if isinstance(want, str):
        raise breach("cs-oracle", f"parsed {got!r}, expected {want!r}", data)
    fields = {name: getattr(got, name) for name in got.__match_args__}
    if fields != want:
        raise breach("cs-oracle", f"parsed {short(fields)}, expected {short(want)}", data)
    if not isinstance(masked, ConnectionString):
        raise breach("cs-secret", f"parse depends on the values: {short(masked)}", data)
    for name in ("shared_access_key", "shared_access_signature"):
        mark = getattr(masked, name)
        if mark is not None and (mark in repr(masked) or mark in str(masked)):
            raise breach("cs-secret", f"{name} shows in repr(): {masked!r}", data)
    unmasked = {name: values.get(v, v) if isinstance(v, str) else v
                for name in masked.__match_args__ for v in [getattr(masked, name)]}
    if unmasked != fields:
        raise breach("cs-secret", f"markers parse to {short(unmasked)}, values to "
                     f"{short(fields)}", data)
    extras = "+".join(n for n in ("module_id", "gateway_host_name", "shared_access_key_name",
                                  "shared_access_signature") if fields[n] is not None)
    return f"ok {_check_token_roundtrip(got, data)} {extras}".strip()


# --------------------------------------------------------------------------- SAS tokens

_KEY = "c2VjcmV0LWtleS1mb3ItZnV6emluZy0wMTIzNDU2Nzg5"  # base64 of a made-up key
_RESOURCE = "hub.example.net/devices/dev1"
_NOW = 1_700_000_000
_SAS_FIELDS = ("sr", "sig", "se", "skn")


def _sas_raw_fields(text: str) -> dict[str, str] | None:
    """The stripped, still quoted fields of a well-formed token, else ``None``
    (the rules of ``parse_sas_token``'s docstring)."""
    body = text.strip()
    if not body.startswith(SAS_PREFIX) or body.count(SAS_PREFIX) != 1:
        return None
    fields: dict[str, str] = {}
    for part in body[len(SAS_PREFIX):].split("&"):
        if "=" not in part:
            return None
        name, value = (x.strip() for x in part.split("=", 1))
        if name not in _SAS_FIELDS or name in fields or value == "":
            return None
        fields[name] = value
    if {"sr", "sig", "se"} - set(fields):
        return None
    se = fields["se"]
    if not (0 < len(se) <= 20 and all(c in "0123456789" for c in se)):
        return None
    return fields


def _sas_oracle(text: str) -> str | SasToken:
    """The documented outcome: ``"malformed"`` or the token's fields."""
    fields = _sas_raw_fields(text)
    if fields is None:
        return "malformed"
    return SasToken(unquote(fields["sr"]), unquote(fields["sig"]), int(fields["se"]),
                    fields.get("skn"))


def _verify_oracle(text: str) -> str:
    """The class ``verify_sas_token`` must raise (checks in its documented order),
    or ``"verified"``."""
    fields = _sas_raw_fields(text)
    if fields is None:
        return "SasTokenMalformed"
    have, want = unquote(fields["sr"]).split("/"), _RESOURCE.split("/")
    if have[0].lower() != want[0].lower() or have[1:] != want[1:len(have)]:
        return "SasTokenWrongResource"
    digest = hmac.new(base64.b64decode(_KEY), f"{fields['sr']}\n{fields['se']}".encode(),
                      hashlib.sha256).digest()
    if unquote(fields["sig"]) != base64.b64encode(digest).decode():
        return "SasTokenBadSignature"
    if int(fields["se"]) < _NOW:
        return "SasTokenExpired"
    return "verified"


def _sas_parse(text: str, data: bytes) -> SasToken | SasTokenMalformed:
    try:
        return parse_sas_token(text)
    except SasTokenMalformed as exc:
        return exc
    except Exception as exc:
        raise breach("sas-exception", f"{exc!r} escaped parse_sas_token", data) from exc


def _sas_masked(text: str) -> str | None:
    """``text`` with each ``sig`` value replaced by a marker, or ``None``."""
    body = text.strip()
    if not body.startswith(SAS_PREFIX):
        return None
    parts = []
    changed = False
    for index, part in enumerate(body[len(SAS_PREFIX):].split("&")):
        name, sep, value = part.partition("=")
        core = value.strip()
        if sep and name.strip() == "sig" and core and SAS_PREFIX not in value:
            start = value.index(core)
            value = value[:start] + _marker(index) + value[start + len(core):]
            changed = True
        parts.append(name + sep + value)
    return SAS_PREFIX + "&".join(parts) if changed else None


def _verify(text: str, data: bytes) -> tuple[str, str]:
    """``verify_sas_token`` with the fixed key: (outcome class, message)."""
    try:
        verify_sas_token(text, _KEY, resource_uri=_RESOURCE, now=_NOW)
    except SasTokenError as exc:
        chain = _chain_text(exc)
        if _KEY in chain and _KEY not in text:
            raise breach("sas-secret", f"verify_sas_token's error shows the key: {chain!r}",
                         data) from None
        return type(exc).__name__, str(exc)
    except Exception as exc:
        raise breach("sas-exception", f"{exc!r} escaped verify_sas_token", data) from exc
    return "verified", ""


def _check_verify(text: str, masked_text: str | None, data: bytes) -> str:
    verdict, message = _verify(text, data)
    want = _verify_oracle(text)
    if verdict != want:
        raise breach("sas-verify", f"verify_sas_token: {verdict} ({message}), expected {want}",
                     data)
    if masked_text is not None:
        # Another signature: the same refusal, or a bad signature instead of success.
        masked, masked_message = _verify(masked_text, data)
        same = (masked, masked_message) == (verdict, message) or (
            verdict in ("verified", "SasTokenExpired") and masked == "SasTokenBadSignature")
        if not same or _MARK in masked_message:
            raise breach("sas-secret", f"verify_sas_token depends on the signature: "
                         f"{verdict} ({message}) vs {masked} ({masked_message})", data)
    return verdict


@register(
    "sas-token",
    "parse_sas_token / verify_sas_token: parsed or SasTokenError, signature never in messages",
    shared_seeds=False,
    instrument=("iotdev._auth",),
    tokens=("SharedAccessSignature ", "sr=", "sig=", "se=", "skn=", "&", "=", "%2F", "%2f",
            "%3D", "hub.example.net%2Fdevices%2Fdev1", " ", "1700000000", "99999999999999999999"),
    seeds=lambda: [
        generate_sas_token(_RESOURCE, _KEY, _NOW + 3600).encode(),
        generate_sas_token(_RESOURCE + "/modules/m1", _KEY, _NOW + 1).encode(),
        generate_sas_token(_RESOURCE, _KEY, _NOW - 1, "device").encode(),
        generate_sas_token("hub.example.net/devices/dev10", _KEY, _NOW + 5).encode(),
        b"SharedAccessSignature sr=a&sig=b&se=1", b"SharedAccessSignature sr=a&sig=b&se=1&skn=p",
        b"  SharedAccessSignature  se = 12 & sig = x & sr = HUB.example.net%2fdevices%2fdev1  ",
        b"SharedAccessSignature sr=a&sig=b", b"SharedAccessSignature sr=a&sig=&se=1",
        b"SharedAccessSignature sr=a&sig=b&se=1&sr=c", b"SharedAccessSignature sr=a&x=b&se=1",
        b"SharedAccessSignature sr=a&sig=b&se=+1", b"SharedAccessSignature sr=a&sig&se=1",
        b"x SharedAccessSignature sr=a&sig=b&se=1", b"SharedAccessSignature ",
        b"SharedAccessSignature sr=a&sig=SharedAccessSignature b&se=1", b"",
    ],
)
def sas_token(data: bytes) -> str:
    text = text_of(data)
    got = _sas_parse(text, data)
    want = _sas_oracle(text)
    if isinstance(got, SasTokenMalformed):
        if want != "malformed":
            raise breach("sas-oracle", f"refused ({got}), expected {short(want)}", data)
    elif got != want:
        raise breach("sas-oracle", f"parsed {short(got)}, expected {short(want)}", data)
    masked_text = _sas_masked(text)
    if masked_text is not None:
        masked = _sas_parse(masked_text, data)
        if isinstance(got, SasTokenMalformed):
            if not isinstance(masked, SasTokenMalformed) or str(masked) != str(got):
                raise breach("sas-secret", f"the error depends on the signature: {str(got)!r} "
                             f"vs {short(masked)}", data)
            if _MARK in _chain_text(masked):
                raise breach("sas-secret", f"the signature shows in {str(masked)!r}", data)
        elif not isinstance(masked, SasToken) or masked.__replace__(
                signature=got.signature) != got:
            raise breach("sas-secret", f"parse depends on the signature: {short(masked)}", data)
    token = got if isinstance(got, SasToken) else None
    if token is not None:
        skn = "" if token.policy_name is None else f"&skn={token.policy_name}"
        try:
            canonical = (f"{SAS_PREFIX}sr={quote(token.resource_uri, safe='')}"
                         f"&sig={quote(token.signature, safe='')}&se={token.expiry}{skn}")
        except UnicodeEncodeError:
            canonical = None
        if canonical is not None and _sas_parse(canonical, data) != token:
            raise breach("sas-roundtrip", f"{short(token)} written as {short(canonical)} "
                         f"parses to {short(_sas_parse(canonical, data))}", data)
    verdict = _check_verify(text, masked_text, data)
    return f"{'ok' if token else 'malformed'} {verdict}" + (" skn" if token and
                                                            token.policy_name else "")
