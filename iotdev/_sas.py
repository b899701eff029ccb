"""SAS tokens of IoT Hub identities (reference section 2): the resource URIs
they name, generating, parsing and verifying them.  Pure functions over
strings: time enters as an argument (``expiry``, ``now``).  Split from
``_auth`` (connection strings and user names), which re-exports every name.

Compatibility with azure-iot-device v2 (2.14): ``generate_sas_token`` is
byte-exact with v2 (field order ``sr``, ``sig``, ``se``[, ``skn``]; ``sr`` and
``sig`` quoted with ``quote(..., safe="")``, ``skn`` as given); keys are decoded
like v2 (non-validating base64, bad padding is ``ValueError("Invalid Symmetric
Key")``); ``parse_sas_token`` accepts what v2 accepts except text before
``SharedAccessSignature``, duplicated fields, empty values and an ``se`` that
is not plain ASCII digits.  No error text contains a key or a signature.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from iotdev_mqtt._records import record, set_field

__all__ = [
    "SAS_PREFIX",
    "SasToken",
    "SasTokenBadSignature",
    "SasTokenError",
    "SasTokenExpired",
    "SasTokenMalformed",
    "SasTokenWrongResource",
    "decode_symmetric_key",
    "derive_device_key",
    "device_resource_uri",
    "generate_sas_token",
    "parse_device_resource_uri",
    "parse_sas_token",
    "verify_sas_token",
]

SAS_PREFIX = "SharedAccessSignature "


def device_resource_uri(host: str, device_id: str, module_id: str | None = None) -> str:
    """The SAS resource URI of a device or module (reference 2.1).

    Args:
        host: the hub's host name (never the gateway's).
        device_id: the device id, not encoded.
        module_id: the module id; ``None`` or ``""`` for a device (v2 tests truth).

    Returns:
        ``{host}/devices/{device_id}`` or ``{host}/devices/{device_id}/modules/{module_id}``.
    """
    uri = f"{host}/devices/{device_id}"
    if module_id:
        uri += f"/modules/{module_id}"
    return uri


def parse_device_resource_uri(resource_uri: str) -> tuple[str, str, str | None]:
    """Split a device or module resource URI, as v2's ``create_from_sastoken`` does.

    Args:
        resource_uri: the unquoted URI, e.g. ``SasToken.resource_uri``.

    Returns:
        ``(host, device_id, module_id or None)``.

    Raises:
        ValueError: "Invalid SAS URI" unless the URI is
            ``host/devices/{id}`` or ``host/devices/{id}/modules/{mid}`` with
            non-empty parts.
    """
    parts = resource_uri.split("/")
    if (
        len(parts) in (3, 5)
        and all(parts)
        and parts[1] == "devices"
        and (len(parts) == 3 or parts[3] == "modules")
    ):
        return parts[0], parts[2], parts[4] if len(parts) == 5 else None
    raise ValueError("Invalid SAS URI: expected {host}/devices/{device_id}[/modules/{module_id}]")




class SasTokenError(ValueError):
    """A SAS token was refused.

    Attributes:
        reason: why, in words; never contains a key or a signature.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SasTokenMalformed(SasTokenError):
    """The text is not a well-formed SAS token."""


class SasTokenExpired(SasTokenError):
    """The token's ``se`` lies in the past."""


class SasTokenWrongResource(SasTokenError):
    """The token's ``sr`` does not cover the resource being accessed."""


class SasTokenBadSignature(SasTokenError):
    """The token's ``sig`` was not made with the expected key."""


@record
class SasToken:
    """The fields of a parsed SAS token.

    Attributes:
        resource_uri: ``sr``, unquoted (``myhub.azure-devices.net/devices/dev1``).
        signature: ``sig``, unquoted (the base64 HMAC).
        expiry: ``se``, seconds since the Unix epoch.
        policy_name: ``skn`` or ``None``.
    """

    __match_args__ = ("resource_uri", "signature", "expiry", "policy_name")
    __slots__ = __match_args__

    resource_uri: str
    signature: str
    expiry: int
    policy_name: str | None

    def __init__(self, resource_uri: str, signature: str, expiry: int,
                 policy_name: str | None = None) -> None:
        set_field(self, "resource_uri", resource_uri)
        set_field(self, "signature", signature)
        set_field(self, "expiry", expiry)
        set_field(self, "policy_name", policy_name)


def decode_symmetric_key(key: str | bytes) -> bytes:
    """Decode a base64 shared access key the way v2 does.

    v2 calls ``base64.b64decode`` in its default, non-validating mode:
    characters outside the base64 alphabet (spaces, newlines, non-ASCII text)
    are dropped; only bad padding fails.

    Args:
        key: the base64 key as text (UTF-8 encoded first) or bytes.

    Returns:
        The raw key bytes.

    Raises:
        ValueError: "Invalid Symmetric Key" for bad padding, a ``str`` that is
            not encodable (lone surrogates) or a key that is neither ``str``
            nor bytes (v2 turns its ``TypeError`` into this too).  The key is
            never shown and the original exception is not chained.
    """
    # base64, hashlib and hmac load on first use: importing the client stays cheap
    # (and X.509 devices never need them).
    import base64
    import binascii

    try:
        if isinstance(key, str):
            raw = key.encode("utf-8")
        elif isinstance(key, bytes | bytearray):
            raw = bytes(key)
        else:
            raise TypeError(type(key).__name__)
        return base64.b64decode(raw)
    except (binascii.Error, UnicodeEncodeError, TypeError):
        raise ValueError("Invalid Symmetric Key") from None


def _sign(key: bytes, message: str) -> str:
    import base64
    import hashlib
    import hmac

    digest = hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def derive_device_key(group_key: str | bytes, registration_id: str) -> str:
    """Derive a device key from a DPS group-enrollment key (reference 2.2, V5).

    Args:
        group_key: the enrollment group's base64 key.
        registration_id: the device's registration id.

    Returns:
        ``base64(HMAC-SHA256(b64decode(group_key), registration_id))``.

    Raises:
        ValueError: "Invalid Symmetric Key".
    """
    return _sign(decode_symmetric_key(group_key), registration_id)


def generate_sas_token(
    resource_uri: str,
    key: str | bytes,
    expiry: int,
    policy_name: str | None = None,
) -> str:
    """Build a SAS token byte for byte as v2's ``RenewableSasToken`` does.

    ``SharedAccessSignature sr={quote(uri)}&sig={quote(sig)}&se={expiry}[&skn={policy}]``
    where ``sig = base64(HMAC-SHA256(b64decode(key), quote(uri) + "\\n" + str(expiry)))``.

    Args:
        resource_uri: unquoted, e.g. ``myhub.azure-devices.net/devices/dev1``.
        key: the base64 shared access key.
        expiry: seconds since the Unix epoch (v2: ``int(time.time() + ttl)``).
        policy_name: ``skn`` for shared-access-policy keys; ``None`` or ``""``
            for device keys (the v2 device client never sets it).  Sent as
            given, not quoted (v2).

    Returns:
        The token text (the MQTT password).

    Raises:
        ValueError: "Invalid Symmetric Key"; or a ``policy_name`` containing
            ``&`` (the token could not be parsed back).
        TypeError: ``expiry`` is not an integer.
    """
    if isinstance(expiry, bool) or not isinstance(expiry, int):
        raise TypeError(f"expiry must be an int, not {type(expiry).__name__}")
    if policy_name and "&" in policy_name:
        raise ValueError("policy_name must not contain '&'")
    signing_key = decode_symmetric_key(key)
    encoded_uri = quote(resource_uri, safe="")
    signature = _sign(signing_key, f"{encoded_uri}\n{expiry}")
    token = f"{SAS_PREFIX}sr={encoded_uri}&sig={quote(signature, safe='')}&se={expiry}"
    if policy_name:
        token += f"&skn={policy_name}"
    return token


_REQUIRED_SAS_FIELDS = ("sr", "sig", "se")
_VALID_SAS_FIELDS = frozenset(("sr", "sig", "se", "skn"))
_DIGITS = re.compile(r"[0-9]{1,20}")


def _sas_fields(text: str) -> dict[str, str]:
    """The raw (still quoted) fields of a token; raises ``SasTokenMalformed``."""
    if not isinstance(text, str):
        raise SasTokenMalformed("Invalid SasToken string: must be str")
    body = text.strip()
    if not body.startswith(SAS_PREFIX) or SAS_PREFIX in body[len(SAS_PREFIX) :]:
        raise SasTokenMalformed(
            "Invalid SasToken string: Not a SasToken (must start with 'SharedAccessSignature ')"
        )
    fields: dict[str, str] = {}
    for part in body[len(SAS_PREFIX) :].split("&"):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep:
            raise SasTokenMalformed("Invalid SasToken string: Incorrectly formatted (no '=')")
        if name not in _VALID_SAS_FIELDS:
            raise SasTokenMalformed("Invalid SasToken string: Unexpected fields present")
        if name in fields:
            raise SasTokenMalformed(f"Invalid SasToken string: field {name!r} appears twice")
        if not value:
            raise SasTokenMalformed(f"Invalid SasToken string: field {name!r} is empty")
        fields[name] = value
    missing = [name for name in _REQUIRED_SAS_FIELDS if name not in fields]
    if missing:
        raise SasTokenMalformed(
            "Invalid SasToken string: Not all required fields present (missing "
            + ", ".join(missing)
            + ")"
        )
    if not _DIGITS.fullmatch(fields["se"]):
        raise SasTokenMalformed(
            "Invalid SasToken string: 'se' must be an expiry in seconds (ASCII digits)"
        )
    return fields


def parse_sas_token(text: str) -> SasToken:
    """Parse a SAS token (reference 2.3); fields may come in any order.

    Args:
        text: ``SharedAccessSignature sr=...&sig=...&se=...[&skn=...]``; blanks
            around the whole text and around each name and value are ignored.

    Returns:
        The token's fields, ``sr`` and ``sig`` unquoted with ``unquote``.

    Raises:
        SasTokenMalformed: (a ``ValueError``) not the prefix, a field without
            ``=``, an unknown, duplicated, empty or missing field, or ``se`` not
            decimal digits.
    """
    fields = _sas_fields(text)
    return SasToken(
        resource_uri=unquote(fields["sr"]),
        signature=unquote(fields["sig"]),
        expiry=int(fields["se"]),
        policy_name=fields.get("skn"),
    )


def _covers(token_uri: str, resource_uri: str) -> bool:
    """Whether a token for ``token_uri`` grants ``resource_uri``.

    Per path segment prefix (``host/devices/dev1`` covers
    ``host/devices/dev1/modules/m`` but not ``host/devices/dev10``); the first
    segment (host name or DPS id scope) compares without case, the rest with it
    (device ids are case-sensitive).
    """
    have = token_uri.split("/")
    want = resource_uri.split("/")
    if have[0].lower() != want[0].lower():
        return False
    return have[1:] == want[1 : len(have)]


def verify_sas_token(
    token_text: str,
    key: str | bytes,
    *,
    resource_uri: str,
    now: float,
) -> SasToken:
    """Check a SAS token as the service does (for the emulator).

    The signature is recomputed over the token's own ``sr`` text as sent (still
    quoted, whatever the case of its hex) plus ``"\\n"`` plus ``se``, and compared
    in constant time.  Checks run in this order: form, resource, signature, expiry.

    Args:
        token_text: the token (the MQTT password).
        key: the base64 key the token must be signed with.  The caller picks it
            (device key, or a policy key named by ``policy_name``).
        resource_uri: the unquoted URI being accessed, e.g.
            ``device_resource_uri(host, device_id)``.
        now: the current time in seconds since the Unix epoch.

    Returns:
        The parsed token.

    Raises:
        SasTokenMalformed: see ``parse_sas_token``.
        SasTokenWrongResource: ``sr`` does not cover ``resource_uri``.
        SasTokenBadSignature: ``sig`` does not match.
        SasTokenExpired: ``se < now`` (v2's "already expired" test).
        ValueError: "Invalid Symmetric Key" for a ``key`` with bad padding.
    """
    fields = _sas_fields(token_text)
    token = SasToken(
        resource_uri=unquote(fields["sr"]),
        signature=unquote(fields["sig"]),
        expiry=int(fields["se"]),
        policy_name=fields.get("skn"),
    )
    signing_key = decode_symmetric_key(key)
    if not _covers(token.resource_uri, resource_uri):
        raise SasTokenWrongResource(
            f"SasToken is for {token.resource_uri!r}, which does not cover {resource_uri!r}"
        )
    expected = _sign(signing_key, f"{fields['sr']}\n{fields['se']}").encode("ascii")
    given = token.signature.encode("utf-8", "surrogatepass")
    import hmac

    if not hmac.compare_digest(expected, given):
        raise SasTokenBadSignature("SasToken signature does not match the key")
    if token.expiry < now:
        raise SasTokenExpired(f"SasToken expired at {token.expiry} (now {int(now)})")
    return token
