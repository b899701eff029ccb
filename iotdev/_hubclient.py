"""What the sync and asyncio IoT Hub device clients share: option validation,
authentication (SAS generation and renewal, X.509), the endpoint, and the
translation between ``Message`` / method / twin objects and MQTT topics.
No I/O here."""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived

from . import _hub_topics as topics
from ._auth import (
    ConnectionString,
    build_username,
    device_resource_uri,
    generate_sas_token,
    parse_sas_token,
)
from ._errors import ClientError, ServiceError
from ._models import Message, MethodRequest, MethodResponse
from .transport._credentials import X509
from .transport._endpoint import Endpoint
from .transport._options import ConnectOptions, Credentials, ReconnectPolicy

if TYPE_CHECKING:
    from ._outbox import Outbox
    from ._upload import UploadConfig

__all__ = ["HubConfig", "ParsedIncoming", "build_config"]

D2C_LIMIT = 262_144
DEFAULT_OPERATION_TIMEOUT = 120.0
RENEW_MARGIN = 120.0  # seconds before expiry: renew (own keys) or ask for a token

_BOOL_OPTIONS = ("websockets", "auto_connect", "connection_retry", "ensure_desired_properties")
_KNOWN_OPTIONS = {
    "server_verification_cert", "gateway_hostname", "websockets", "cipher", "product_info",
    "proxy_options", "sastoken_ttl", "keep_alive", "auto_connect", "connection_retry",
    "connection_retry_interval", "ensure_desired_properties",
    # iotdev extensions
    "port", "operation_timeout", "max_queued_messages", "https_port",
    "outbox_path", "outbox_max_bytes", "outbox_overflow",
    "model_id",  # Plug and Play (issue 15)
}
DEFAULT_OUTBOX_MAX_BYTES = 64 * 1024 * 1024
OUTBOX_WINDOW = 64  # outbox rows in flight at most (capped by max_queued_messages)


@dataclass
class HubConfig:
    """Everything a client needs to connect, validated."""

    hostname: str
    device_id: str
    module_id: str | None = None
    symmetric_key: str | None = field(default=None, repr=False)  # secrets stay out of repr()
    sastoken: str | None = field(default=None, repr=False)
    x509: X509 | None = None
    server_verification_cert: str | None = None
    gateway_hostname: str | None = None
    websockets: bool = False
    cipher: str | list[str] = ""
    product_info: str = ""
    proxy_options: Any = None  # a ProxyOptions
    sastoken_ttl: int = 3600
    keep_alive: int = 60
    auto_connect: bool = True
    connection_retry: bool = True
    connection_retry_interval: int = 10
    ensure_desired_properties: bool = True
    port: int | None = None
    operation_timeout: float = DEFAULT_OPERATION_TIMEOUT
    max_queued_messages: int = 10_000
    https_port: int = 443
    outbox_path: str | os.PathLike[str] | None = None
    outbox_max_bytes: int = DEFAULT_OUTBOX_MAX_BYTES
    outbox_overflow: str = "error"
    token_expiry: float | None = field(default=None, repr=False)
    model_id: str | None = None  # Plug and Play (issue 15)
    _contexts: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def client_id(self) -> str:
        return f"{self.device_id}/{self.module_id}" if self.module_id else self.device_id

    def endpoint(self) -> Endpoint:
        host = self.gateway_hostname or self.hostname
        port = self.port if self.port is not None else (443 if self.websockets else 8883)
        from .transport._tls import make_client_context, shared_client_context

        if self.x509 is None:
            ctx = shared_client_context(server_verification_cert=self.server_verification_cert,
                                        cipher=self.cipher or None)
        else:
            ctx = make_client_context(server_verification_cert=self.server_verification_cert,
                                      cipher=self.cipher or None, x509=self.x509)
        return Endpoint(host=host, port=port,
                        transport="websockets" if self.websockets else "tls",
                        tls_context=ctx, ws_path="/$iothub/websocket",
                        proxy=self.proxy_options, connect_timeout=30.0)

    def upload_config(self) -> UploadConfig:
        """What the file-upload flows need (``_upload.py``): the hub's HTTPS
        endpoint (the gateway when set, ``https_port``, the MQTT TLS settings and
        proxy), blob endpoints (certifi's roots plus ``server_verification_cert``),
        a fresh ``Authorization`` per request, the user agent."""
        from ._auth import default_user_agent
        from ._upload import UploadConfig
        from .transport._tls import make_client_context

        contexts = self._contexts
        if "hub" not in contexts:
            contexts["hub"] = make_client_context(
                server_verification_cert=self.server_verification_cert,
                cipher=self.cipher or None, x509=self.x509)
            blob = make_client_context(server_verification_cert=self.server_verification_cert,
                                       cipher=self.cipher or None)  # storage takes the SAS
            if self.server_verification_cert is not None:
                import certifi  # storage has public certificates; the gateway may not

                blob.load_verify_locations(cafile=certifi.where())
            contexts["blob"] = blob
        hub = Endpoint(host=self.gateway_hostname or self.hostname, port=self.https_port,
                       transport="tls", tls_context=contexts["hub"],
                       proxy=self.proxy_options, connect_timeout=30.0)

        def blob_endpoint(host: str, port: int) -> Endpoint:
            return Endpoint(host=host, port=port, transport="tls", tls_context=contexts["blob"],
                            proxy=self.proxy_options, connect_timeout=30.0)

        return UploadConfig(hostname=self.hostname, device_id=self.device_id, hub_endpoint=hub,
                            blob_endpoint=blob_endpoint, authorization=self.http_authorization,
                            user_agent=default_user_agent() + str(self.product_info or ""),
                            timeout=self.operation_timeout)

    def open_outbox(self) -> Outbox | None:
        """The durable outbox of ``send_message`` (``outbox_path``), or ``None``.

        Raises:
            ClientError: it cannot be opened, belongs to another device, or is
                in use by another client.
        """
        if self.outbox_path is None:
            return None
        from ._outbox import Outbox

        return Outbox(self.outbox_path, max_bytes=self.outbox_max_bytes,
                      overflow=self.outbox_overflow, owner=self.client_id,
                      window=min(OUTBOX_WINDOW, self.max_queued_messages))

    def http_authorization(self) -> str | None:
        """The ``Authorization`` header of an HTTPS call: a token made now from the
        key, the user's token, or ``None`` (X.509).  Leaves the MQTT token's
        renewal schedule alone."""
        if self.symmetric_key is not None:
            return generate_sas_token(self.resource_uri(), self.symmetric_key,
                                      int(time.time() + self.sastoken_ttl))
        return self.sastoken

    def username(self) -> str:
        return build_username(self.hostname, self.client_id, product_info=self.product_info,
                              model_id=self.model_id)

    def resource_uri(self) -> str:
        return device_resource_uri(self.hostname, self.device_id, self.module_id)

    def current_token(self) -> str | None:
        """A token for the next connection attempt: fresh from the key, or the
        user's; ``None`` for X.509."""
        if self.symmetric_key is not None:
            expiry = int(time.time() + self.sastoken_ttl)
            self.token_expiry = float(expiry)
            return generate_sas_token(self.resource_uri(), self.symmetric_key, expiry)
        return self.sastoken

    def credentials(self) -> Credentials:
        token = self.current_token()
        return Credentials(self.username(), token.encode("utf-8") if token else None)

    def connect_options(self) -> ConnectOptions:
        return ConnectOptions(self.client_id, self.keep_alive, False, self.credentials)

    def reconnect_policy(self) -> ReconnectPolicy:
        return ReconnectPolicy(enabled=self.connection_retry,
                               interval=float(self.connection_retry_interval))


def _check_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - _KNOWN_OPTIONS)
    if unknown:
        raise TypeError(f"Unsupported keyword argument(s): {', '.join(map(repr, unknown))}")
    for name in _BOOL_OPTIONS:
        if name in kwargs and not isinstance(kwargs[name], bool):
            raise TypeError(f"{name} must be a bool, not {type(kwargs[name]).__name__}")
    for name in ("server_verification_cert", "gateway_hostname", "product_info", "model_id"):
        value = kwargs.get(name)
        if value is not None and not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    cipher = kwargs.get("cipher")
    if cipher is not None and not isinstance(cipher, str | list):
        raise TypeError("Invalid type for 'cipher'")
    proxy = kwargs.get("proxy_options")
    if proxy is not None:
        from .transport._proxy import ProxyOptions

        if not isinstance(proxy, ProxyOptions):
            raise TypeError("proxy_options must be a ProxyOptions")
    for name, low, high in (("sastoken_ttl", 1, None), ("keep_alive", 1, 1740),
                            ("connection_retry_interval", 1, None), ("port", 1, 65535),
                            ("max_queued_messages", 1, None), ("https_port", 1, 65535),
                            ("outbox_max_bytes", 1, None)):
        if name in kwargs:
            value = kwargs[name]
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < low or (high is not None and value > high):
                span = f"{low} to {high}" if high else f"at least {low}"
                raise ValueError(f"{name} must be {span}, got {value}")
    if "operation_timeout" in kwargs:
        value = kwargs["operation_timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ValueError(f"operation_timeout must be a positive number, got {value!r}")
    path = kwargs.get("outbox_path")
    if path is not None:
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"outbox_path must be a str or os.PathLike (or None), "
                            f"not {type(path).__name__}")
        text = os.fspath(path)
        if not isinstance(text, str):
            raise TypeError("outbox_path must be a str or os.PathLike[str], not bytes")
        if text in ("", ":memory:"):
            raise ValueError(f"outbox_path must name a file, got {text!r}")
    if "outbox_overflow" in kwargs:
        value = kwargs["outbox_overflow"]
        if not isinstance(value, str):
            raise TypeError(f"outbox_overflow must be a str, not {type(value).__name__}")
        if value not in ("error", "drop_oldest"):
            raise ValueError(f"outbox_overflow must be 'error' or 'drop_oldest', got {value!r}")
    return kwargs


def build_config(*, hostname: str, device_id: str, module_id: str | None = None,
                 symmetric_key: str | None = None, sastoken: str | None = None,
                 x509: X509 | None = None, **kwargs: Any) -> HubConfig:
    """Validate the factory arguments into a ``HubConfig``."""
    options = _check_options(kwargs)
    config = HubConfig(hostname=hostname, device_id=device_id, module_id=module_id,
                       symmetric_key=symmetric_key, sastoken=sastoken, x509=x509, **options)
    if config.model_id is not None:
        build_username(hostname, config.client_id, model_id=config.model_id)  # ValueError
    if symmetric_key is not None:
        from ._auth import decode_symmetric_key

        decode_symmetric_key(symmetric_key)  # ValueError("Invalid Symmetric Key")
    if sastoken is not None:
        parsed = parse_sas_token(sastoken)
        config.token_expiry = float(parsed.expiry)
    return config


def config_from_connection_string(connection_string: str, **kwargs: Any) -> HubConfig:
    if not isinstance(connection_string, str):
        raise TypeError("connection_string must be a str")
    cs = ConnectionString.parse(connection_string)
    if cs.module_id:
        raise ValueError("the connection string is a module's; use a module client")
    x509 = kwargs.pop("x509", None)
    if cs.x509 and x509 is None:
        raise ValueError("the connection string says x509=true: pass x509=X509(...)")
    if cs.gateway_host_name and "gateway_hostname" not in kwargs:
        kwargs["gateway_hostname"] = cs.gateway_host_name
    return build_config(hostname=cs.host_name, device_id=cs.device_id,
                        symmetric_key=cs.shared_access_key, x509=x509, **kwargs)


def config_from_sastoken(sastoken: str, **kwargs: Any) -> HubConfig:
    if not isinstance(sastoken, str):
        raise TypeError("sastoken must be a str")
    parsed = parse_sas_token(sastoken)
    parts = parsed.resource_uri.split("/")
    if len(parts) not in (3, 5) or parts[1] != "devices":
        raise ValueError("the SAS token's resource is not a device "
                         "('{hostname}/devices/{device_id}')")
    if "sastoken_ttl" in kwargs:
        raise TypeError("sastoken_ttl does not apply to a client made from a SAS token")
    return build_config(hostname=parts[0], device_id=parts[2], sastoken=sastoken, **kwargs)


def feature_filter(feature: str, config: HubConfig) -> str:
    """The topic filter a client feature subscribes to."""
    if feature == "c2d":
        return topics.c2d_subscribe_filter(config.device_id)
    return {
        "methods": topics.METHOD_SUBSCRIBE_FILTER,
        "twin_patches": topics.TWIN_DESIRED_SUBSCRIBE_FILTER,
        "twin": topics.TWIN_RESPONSE_SUBSCRIBE_FILTER,
    }[feature]


# ----------------------------------------------------------------- messages


def telemetry_publish(config: HubConfig, message: Any) -> tuple[str, bytes]:
    """Topic and body for ``send_message``; anything not a ``Message`` becomes one.

    Raises:
        ValueError: the message is over IoT Hub's 256 KB (body plus properties).
    """
    if not isinstance(message, Message):
        message = Message(message)
    body = message.body_bytes()
    bag = topics.encode_property_bag(topics.d2c_system_pairs(message), message.custom_properties)
    size = message.get_size()
    if size > D2C_LIMIT:
        raise ValueError(f"the message is {size} bytes (body and properties); IoT Hub's "
                         f"limit is {D2C_LIMIT} (256 KB)")
    return topics.telemetry_topic(config.device_id, config.module_id, bag), body


@dataclass
class ParsedIncoming:
    """A received message sorted by kind: ``c2d``, ``method``, ``desired`` or ``other``."""

    kind: str
    value: Any = None


def parse_incoming(config: HubConfig, message: MessageReceived) -> ParsedIncoming:
    topic = message.topic
    c2d = topics.parse_c2d_topic(topic)
    if c2d is not None and c2d[0] == config.device_id:
        received = Message(message.payload)
        attrs, custom = topics.split_received_properties(topics.decode_property_bag(c2d[1]))
        for attribute, value in attrs.items():
            setattr(received, attribute, value)
        received.custom_properties = custom
        return ParsedIncoming("c2d", received)
    method = topics.parse_method_request_topic(topic)
    if method is not None:
        name, rid = method
        payload = json.loads(message.payload.decode("utf-8") or "null")
        return ParsedIncoming("method", MethodRequest(rid, name, payload))
    if topics.parse_twin_desired_patch_topic(topic) is not None:
        return ParsedIncoming("desired", json.loads(message.payload.decode("utf-8") or "null"))
    return ParsedIncoming("other", message)


def method_response_publish(response: MethodResponse) -> tuple[str, bytes]:
    if not isinstance(response, MethodResponse):
        raise TypeError("send_method_response takes a MethodResponse")
    if isinstance(response.status, bool) or not isinstance(response.status, int):
        raise TypeError("MethodResponse.status must be an int")
    body = json.dumps(response.payload).encode("utf-8")
    return topics.method_response_topic(response.status, response.request_id), body


class TwinRequests:
    """Twin GET / reported PATCH requests by ``$rid``, kept until answered so
    that they can be re-sent after a reconnect."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[str, bytes, Any]] = {}

    def new(self, kind: str, patch: Any = None) -> tuple[str, str, bytes]:
        rid = str(uuid.uuid4())
        if kind == "GET":
            return rid, topics.twin_get_topic(rid), b" "
        return rid, topics.twin_patch_reported_topic(rid), json.dumps(patch).encode("utf-8")

    @staticmethod
    def parse_response(message: MessageReceived) -> tuple[int, str, int | None] | None:
        return topics.parse_twin_response_topic(message.topic)

    @staticmethod
    def outcome(status: int, body: bytes) -> Any:
        """The twin document (GET), ``None`` (PATCH), or raise ``ServiceError``."""
        if status >= 300:
            raise ServiceError(f"twin operation returned status {status}", status=status)
        text = body.decode("utf-8").strip()
        return json.loads(text) if text else None


def check_update_sastoken(config: HubConfig, sastoken: str) -> None:
    """Validate ``update_sastoken``: only for token-made clients, same resource."""
    if config.sastoken is None:
        raise ClientError("update_sastoken() is only for clients created from a SAS token")
    parsed = parse_sas_token(sastoken)
    if parsed.resource_uri != config.resource_uri():
        raise ValueError("the new SAS token is for another resource")
    config.sastoken = sastoken
    config.token_expiry = float(parsed.expiry)
