"""Credentials of an IoT Hub device: connection strings, SAS tokens, MQTT user names.

SAS tokens and their resource URIs live in ``_sas`` (re-exported here).

Pure functions over strings (reference sections 1.2, 1.3, 2 and 3): no clock,
no sockets, no logging.  Time enters as an argument (``expiry``, ``now``).

Secrets never leave this module in an error message or a ``repr``: the shared
access key and a connection string's ``SharedAccessSignature`` are hidden by
``ConnectionString.__repr__``, and no exception text contains a key, a value of
a connection string or a token's signature.

Compatibility with azure-iot-device v2 (2.14):

* ``generate_sas_token`` is byte-exact with v2 (field order ``sr``, ``sig``,
  ``se``[, ``skn``]; ``sr`` and ``sig`` quoted with ``quote(..., safe="")``,
  ``skn`` as given).  Keys are decoded like v2: non-validating base64 (characters
  outside the alphabet are dropped), bad padding raises
  ``ValueError("Invalid Symmetric Key")``.  A policy name containing ``&`` is
  refused (v2 would emit a token that cannot be parsed back).
* ``ConnectionString.parse`` applies v2's rules and messages; it is stricter
  in one place: a hub-level string without ``DeviceId`` raises ``ValueError``
  (v2's factory raised a bare ``KeyError('DeviceId')``).
* ``parse_sas_token`` accepts what v2 accepts except: text before
  ``SharedAccessSignature``, duplicated fields, empty values and an ``se`` that
  is not plain ASCII digits are rejected (v2 took the last duplicate and let
  ``int()`` accept ``" +12"`` or ``"1_0"``).
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlencode

# Frozen value classes without building dataclasses at import time: the helper
# of iotdev_mqtt's packets adds what @dataclass(frozen=True, slots=True) would
# (==, hash, repr, refusing assignment, pickling) to the __init__ written here.
from iotdev_mqtt._records import record, set_field

from ._sas import (
    SAS_PREFIX,
    SasToken,
    SasTokenBadSignature,
    SasTokenError,
    SasTokenExpired,
    SasTokenMalformed,
    SasTokenWrongResource,
    decode_symmetric_key,
    derive_device_key,
    device_resource_uri,
    generate_sas_token,
    parse_device_resource_uri,
    parse_sas_token,
    verify_sas_token,
)

__all__ = [
    "DIGITAL_TWIN_API_VERSION",
    "DIGITAL_TWIN_PREFIX",
    "IOTHUB_API_VERSION",
    "SAS_PREFIX",
    "ConnectionString",
    "SasToken",
    "SasTokenBadSignature",
    "SasTokenError",
    "SasTokenExpired",
    "SasTokenMalformed",
    "SasTokenWrongResource",
    "build_username",
    "decode_symmetric_key",
    "default_user_agent",
    "derive_device_key",
    "device_resource_uri",
    "generate_sas_token",
    "make_client_id",
    "parse_device_resource_uri",
    "parse_sas_token",
    "parse_username",
    "verify_sas_token",
]

#: ``api-version`` of the MQTT user name (v2 ``constant.IOTHUB_API_VERSION``).
IOTHUB_API_VERSION = "2019-10-01"
#: ``api-version`` when the product info is a Plug and Play model id.
DIGITAL_TWIN_API_VERSION = "2020-09-30"
#: A product info starting with this is sent as ``model-id`` (v2 ``DIGITAL_TWIN_PREFIX``).
DIGITAL_TWIN_PREFIX = "dtmi"
#: The literal that starts every SAS token, including the trailing space.

_PRODUCT = "iotdev"


# ---------------------------------------------------------------------------
# Connection strings (reference section 3)
# ---------------------------------------------------------------------------

_HOST_NAME = "HostName"
_SHARED_ACCESS_KEY_NAME = "SharedAccessKeyName"
_SHARED_ACCESS_KEY = "SharedAccessKey"
_SHARED_ACCESS_SIGNATURE = "SharedAccessSignature"
_DEVICE_ID = "DeviceId"
_MODULE_ID = "ModuleId"
_GATEWAY_HOST_NAME = "GatewayHostName"
_X509 = "x509"

_VALID_KEYS = (
    _HOST_NAME,
    _SHARED_ACCESS_KEY_NAME,
    _SHARED_ACCESS_KEY,
    _SHARED_ACCESS_SIGNATURE,
    _DEVICE_ID,
    _MODULE_ID,
    _GATEWAY_HOST_NAME,
    _X509,
)
_KEYS_BY_FOLDED_NAME = {key.lower(): key for key in _VALID_KEYS}

_UNABLE_TO_PARSE = "Invalid Connection String - Unable to parse"
_INVALID_KEY = "Invalid Connection String - Invalid Key"
_MIXED = "Invalid Connection String - Mixed authentication scheme"
_INCOMPLETE = "Invalid Connection String - Incomplete"
_NO_DEVICE_ID = (
    "Invalid Connection String - Incomplete: no DeviceId (a hub-level connection string, "
    "HostName + SharedAccessKeyName + SharedAccessKey, cannot identify a device)"
)


@record
class ConnectionString:
    """A parsed device or module connection string.

    Empty optional values (``ModuleId=``) are ``None``, as v2 treats them (it
    tests them for truth).  ``x509`` is ``True`` when the ``x509`` key is
    present, whatever its value (v2 checks presence).

    ``repr()`` and ``str()`` hide ``shared_access_key`` and
    ``shared_access_signature``.

    Attributes:
        host_name: the hub's ``HostName`` (used in the user name and SAS URI).
        device_id: ``DeviceId``.
        shared_access_key: ``SharedAccessKey`` (base64 text) or ``None``.
        module_id: ``ModuleId`` or ``None``.
        gateway_host_name: ``GatewayHostName`` (the TCP/TLS destination) or ``None``.
        shared_access_key_name: ``SharedAccessKeyName`` or ``None`` (v2 ignores it).
        x509: ``True`` when the string says ``x509=...``.
        shared_access_signature: ``SharedAccessSignature`` or ``None`` (v2 parses,
            then ignores it).
    """

    __match_args__ = ("host_name", "device_id", "shared_access_key", "module_id",
                      "gateway_host_name", "shared_access_key_name", "x509",
                      "shared_access_signature")
    __slots__ = __match_args__

    host_name: str
    device_id: str
    shared_access_key: str | None
    module_id: str | None
    gateway_host_name: str | None
    shared_access_key_name: str | None
    x509: bool
    shared_access_signature: str | None

    def __init__(
        self,
        host_name: str,
        device_id: str,
        shared_access_key: str | None = None,
        module_id: str | None = None,
        gateway_host_name: str | None = None,
        shared_access_key_name: str | None = None,
        x509: bool = False,
        shared_access_signature: str | None = None,
    ) -> None:
        set_field(self, "host_name", host_name)
        set_field(self, "device_id", device_id)
        set_field(self, "shared_access_key", shared_access_key)
        set_field(self, "module_id", module_id)
        set_field(self, "gateway_host_name", gateway_host_name)
        set_field(self, "shared_access_key_name", shared_access_key_name)
        set_field(self, "x509", x509)
        set_field(self, "shared_access_signature", shared_access_signature)

    def __repr__(self) -> str:
        key = None if self.shared_access_key is None else "<hidden>"
        sig = None if self.shared_access_signature is None else "<hidden>"
        return (
            f"ConnectionString(host_name={self.host_name!r}, device_id={self.device_id!r}, "
            f"module_id={self.module_id!r}, gateway_host_name={self.gateway_host_name!r}, "
            f"shared_access_key_name={self.shared_access_key_name!r}, x509={self.x509!r}, "
            f"shared_access_key={key}, shared_access_signature={sig})"
        )

    __str__ = __repr__

    @property
    def client_id(self) -> str:
        """The MQTT client identifier: ``device_id`` or ``device_id/module_id``."""
        return make_client_id(self.device_id, self.module_id)

    @property
    def resource_uri(self) -> str:
        """The SAS resource URI of this identity (always on ``host_name``)."""
        return device_resource_uri(self.host_name, self.device_id, self.module_id)

    @classmethod
    def parse(cls, text: str) -> ConnectionString:
        """Parse ``Key=Value;Key=Value;...`` as v2's ``connection_string.py`` does.

        Parts are split on ``;`` and each on the first ``=`` (values may contain
        ``=``).  Keys are case-sensitive; nothing is stripped.

        Args:
            text: the connection string.

        Returns:
            The parsed connection string.

        Raises:
            TypeError: ``text`` is not a ``str`` ("Connection String must be of type str").
            ValueError: with v2's message: "Invalid Connection String - Unable to
                parse" (a part without ``=``, including the empty part after a
                trailing ``;``, or a duplicated key), "... - Invalid Key" (a key
                v2 does not know; the message may suggest the right spelling),
                "... - Mixed authentication scheme" (``SharedAccessKey`` and
                ``x509`` both non-empty), "... - Incomplete" (neither ``HostName`` +
                ``DeviceId`` + (``SharedAccessKey`` or ``x509``) nor ``HostName`` +
                ``SharedAccessKey`` + ``SharedAccessKeyName``, empty values
                counting as absent).  A hub-level string, valid for v2's parser,
                is refused here because it names no device.  No message contains
                a value of the string.
        """
        if not isinstance(text, str):
            raise TypeError("Connection String must be of type str")
        fields: dict[str, str] = {}
        for index, part in enumerate(text.split(";")):
            name, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"{_UNABLE_TO_PARSE} (part {index + 1} has no '=')")
            if name in fields:
                # Only valid key names are safe to echo.
                what = f"key {name!r}" if name in _VALID_KEYS else "a key"
                raise ValueError(f"{_UNABLE_TO_PARSE} ({what} appears twice)")
            fields[name] = value
        for index, name in enumerate(fields):
            if name not in _VALID_KEYS:
                hint = _KEYS_BY_FOLDED_NAME.get(name.strip().lower())
                suffix = (
                    f" (part {index + 1}: keys are case-sensitive, without spaces; "
                    f"did you mean {hint!r}?)"
                    if hint
                    else f" (part {index + 1})"
                )
                raise ValueError(_INVALID_KEY + suffix)

        host_name = fields.get(_HOST_NAME) or None
        device_id = fields.get(_DEVICE_ID) or None
        key = fields.get(_SHARED_ACCESS_KEY) or None
        key_name = fields.get(_SHARED_ACCESS_KEY_NAME) or None
        x509_value = fields.get(_X509)
        if key and x509_value:
            raise ValueError(_MIXED)
        if host_name and device_id and (key or x509_value):
            pass
        elif host_name and key and key_name:
            raise ValueError(_NO_DEVICE_ID)
        else:
            raise ValueError(_INCOMPLETE)
        return cls(
            host_name=host_name,
            device_id=device_id,
            shared_access_key=key,
            module_id=fields.get(_MODULE_ID) or None,
            gateway_host_name=fields.get(_GATEWAY_HOST_NAME) or None,
            shared_access_key_name=key_name,
            x509=x509_value is not None,
            shared_access_signature=fields.get(_SHARED_ACCESS_SIGNATURE) or None,
        )


def make_client_id(device_id: str, module_id: str | None = None) -> str:
    """The MQTT client identifier of an identity (reference 1.2), not encoded.

    Args:
        device_id: the device id.
        module_id: the module id; ``None`` or ``""`` for a device.

    Returns:
        ``device_id`` or ``device_id/module_id``.
    """
    return f"{device_id}/{module_id}" if module_id else device_id


# ---------------------------------------------------------------------------
# MQTT user names (reference section 1.3)
# ---------------------------------------------------------------------------


def default_user_agent() -> str:
    """Our user agent, in v2's shape with our product name.

    Returns:
        ``iotdev/{version}({python_version};{system} {os_version};{machine})``,
        e.g. ``iotdev/0.1.0(3.11.4;Linux #1 SMP ...;x86_64)``.
    """
    import platform

    from . import __version__

    return (
        f"{_PRODUCT}/{__version__}({platform.python_version()};"
        f"{platform.system()} {platform.version()};{platform.machine()})"
    )


def build_username(
    host: str,
    client_id: str,
    *,
    product_info: object = "",
    user_agent: str | None = None,
    api_version: str | None = None,
    model_id: str | None = None,
) -> str:
    """The MQTT user name, byte for byte as v2 builds it (reference 1.3).

    ``{host}/{client_id}/?{query}``; host and client id are not encoded, the
    query is ``urlencode(pairs, quote_via=quote)``.  Pairs: ``api-version``,
    ``DeviceClientType={user_agent}{product_info}``; when ``str(product_info)``
    starts with ``dtmi`` it is a Plug and Play model id instead: api-version
    2020-09-30, ``DeviceClientType={user_agent}``, ``model-id={product_info}``.

    Args:
        host: the hub's host name (never the gateway's).
        client_id: ``device_id`` or ``device_id/module_id``.
        product_info: appended to the user agent, or a ``dtmi:...`` model id;
            converted with ``str()`` as v2 does.
        user_agent: ``None`` for ``default_user_agent()``.
        api_version: ``None`` for v2's value (2019-10-01, or 2020-09-30 with a
            model id).
        model_id: a Plug and Play model id (iotdev's clearer spelling of
            ``product_info="dtmi:..."``); ``product_info`` then stays in
            ``DeviceClientType``.

    Returns:
        The user name.

    Raises:
        ValueError: ``model_id`` does not start with ``dtmi:``.
    """
    agent = default_user_agent() if user_agent is None else user_agent
    info = str(product_info)
    pairs: list[tuple[str, str]]
    if model_id is not None:
        if not model_id.startswith(DIGITAL_TWIN_PREFIX + ":"):
            raise ValueError(f"model_id must be a DTMI ('dtmi:...;1'), got {model_id!r}")
        pairs = [
            ("api-version", api_version or DIGITAL_TWIN_API_VERSION),
            ("DeviceClientType", agent + info),
            ("model-id", model_id),
        ]
    elif info.startswith(DIGITAL_TWIN_PREFIX):
        pairs = [
            ("api-version", api_version or DIGITAL_TWIN_API_VERSION),
            ("DeviceClientType", agent),
            ("model-id", info),
        ]
    else:
        pairs = [
            ("api-version", api_version or IOTHUB_API_VERSION),
            ("DeviceClientType", agent + info),
        ]
    return f"{host}/{client_id}/?{urlencode(pairs, quote_via=quote)}"


def parse_username(text: str) -> tuple[str, str, dict[str, str]]:
    """Split an IoT Hub MQTT user name (for the emulator).

    The query starts at the last ``/?`` (query values are quoted, ids cannot
    contain ``/``, so this also works for ids containing ``?``).  A user name
    without a query (``host/device`` or ``host/device/``) is accepted with an
    empty dict.  Query entries are split on ``&`` and the first ``=`` and
    unquoted with ``unquote`` (``+`` stays ``+``); an entry without ``=`` has
    the value ``""``, empty entries are skipped, a later duplicate wins.

    Args:
        text: the CONNECT user name.

    Returns:
        ``(host, client_id, params)``; ``client_id`` is ``device`` or
        ``device/module``, as sent (not unquoted).

    Raises:
        ValueError: no ``/`` after a non-empty host, or a client id that is
            empty, has an empty segment or more than one ``/``.
    """
    host, sep, rest = text.partition("/")
    if not host or not sep:
        raise ValueError("MQTT user name must be {host}/{client_id}/?{query}")
    cut = rest.rfind("/?")
    if cut >= 0:
        client_id, query = rest[:cut], rest[cut + 2 :]
    else:
        client_id = rest[:-1] if rest.endswith("/") else rest
        query = ""
    segments = client_id.split("/")
    if len(segments) > 2 or not all(segments):
        raise ValueError("MQTT user name: client id must be {device_id} or {device_id}/{module_id}")
    params: dict[str, str] = {}
    for entry in query.split("&"):
        if not entry:
            continue
        name, _, value = entry.partition("=")
        params[unquote(name)] = unquote(value)
    return host, client_id, params
