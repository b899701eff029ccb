"""The configuration of an IoT Hub client: the factories' option validation
(as azure-iot-device v2 validates them), authentication (SAS tokens from a key
or the application, X.509), the endpoints.  The hub behaviour itself is the
sans-IO ``HubSession`` (``_session.py``).  No I/O here."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from iotdev_mqtt._records import field, mutable_record

from ._auth import (
    ConnectionString,
    build_username,
    device_resource_uri,
    generate_sas_token,
    parse_device_resource_uri,
    parse_sas_token,
)
from ._errors import ClientError
from ._session import HubSession, Identity
from .transport._credentials import X509
from .transport._endpoint import Endpoint, azure_endpoint
from .transport._options import ConnectOptions, Credentials, ReconnectPolicy

if TYPE_CHECKING:
    from ._outbox import Outbox
    from ._upload import UploadConfig

__all__ = ["HubConfig", "build_config", "check_update_sastoken", "config_from_connection_string",
           "config_from_sastoken"]

DEFAULT_OPERATION_TIMEOUT = 120.0

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
_INT_LIKE_OPTIONS = ("keep_alive", "connection_retry_interval")
DEFAULT_OUTBOX_MAX_BYTES = 64 * 1024 * 1024
PRESIGNED_MAX_AGE = 30.0  # seconds a token signed ahead may wait for its CONNECT
OUTBOX_WINDOW = 64  # outbox rows in flight at most (capped by max_queued_messages)


@mutable_record
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
    workload: Any = field(default=None, repr=False)  # a _workload.Workload: IoT Edge signs
    edge: bool = False  # made from the IoT Edge environment (invoke_method allowed, as v2)
    presigned: tuple[str, float, float] | None = field(default=None, repr=False)
    """A workload-signed token ready for the next CONNECT (token, expiry, when
    signed): the asyncio face signs ahead on its loop so that the driver's
    credentials call need not block it."""
    _contexts: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def client_id(self) -> str:
        return f"{self.device_id}/{self.module_id}" if self.module_id else self.device_id

    def endpoint(self) -> Endpoint:
        return azure_endpoint(self, self.hostname)

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
        if self.workload is not None:
            from ._workload import build_sas_token

            return build_sas_token(self.resource_uri(), self.workload, self.sastoken_ttl)[0]
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
        if self.workload is not None:  # signed by the IoT Edge workload API (blocking, local)
            from ._workload import build_sas_token

            ready, self.presigned = self.presigned, None
            if ready is not None and time.time() - ready[2] < PRESIGNED_MAX_AGE:
                self.token_expiry = ready[1]
                return ready[0]

            token, self.token_expiry = build_sas_token(self.resource_uri(), self.workload,
                                                       self.sastoken_ttl)
            return token
        return self.sastoken

    def credentials(self) -> Credentials:
        token = self.current_token()
        return Credentials(self.username(), token.encode("utf-8") if token else None)

    def connect_options(self) -> ConnectOptions:
        return ConnectOptions(self.client_id, self.keep_alive, False, self.credentials)

    def reconnect_policy(self) -> ReconnectPolicy:
        return ReconnectPolicy(enabled=self.connection_retry,
                               interval=float(self.connection_retry_interval))

    def new_session(self) -> HubSession:
        """The sans-IO hub session of a client with this configuration."""
        own_key = None if self.x509 is not None else (
            self.symmetric_key is not None or self.workload is not None)
        return HubSession(Identity(self.device_id, self.module_id),
                          ensure_desired_properties=self.ensure_desired_properties,
                          own_key=own_key)


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
    for name in _INT_LIKE_OPTIONS:  # v2 passes these through int(): "30" and 30.0 are fine
        value = kwargs.get(name)
        if isinstance(value, str | float) and not isinstance(value, bool):
            try:
                kwargs[name] = int(value)
            except (ValueError, OverflowError):
                raise TypeError(f"Invalid type for {name!r}: must be a numeric value, "
                                f"got {value!r}") from None
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
    for name, value in (("hostname", hostname), ("device_id", device_id)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, not {type(value).__name__}")
        if not value:
            raise ValueError(f"{name} must not be empty")
    if x509 is not None:
        if "sastoken_ttl" in options:  # as v2: no token to live
            raise TypeError("Unsupported keyword argument: 'sastoken_ttl' (X.509 "
                            "authentication uses no SAS token)")
        for path in (x509.certificate_file, x509.key_file):
            if not os.path.isfile(path):  # as v2 (at connect there), but at once
                raise FileNotFoundError(2, "No such X.509 certificate or key file", path)
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


def config_from_connection_string(connection_string: str, module: bool = False,
                                  **kwargs: Any) -> HubConfig:
    if not isinstance(connection_string, str):
        raise TypeError("connection_string must be a str")
    cs = ConnectionString.parse(connection_string)
    if cs.module_id and not module:
        raise ValueError("the connection string is a module's; use a module client")
    if module and not cs.module_id:
        raise ValueError("the connection string is a device's (no ModuleId=); "
                         "IoTHubModuleClient needs a module's")
    x509 = kwargs.pop("x509", None)
    if cs.x509 and x509 is None:
        raise ValueError("the connection string says x509=true: pass x509=X509(...)")
    if "gateway_hostname" in kwargs:  # as v2: it comes from the connection string
        raise TypeError("Unsupported keyword argument: 'gateway_hostname' (with a connection "
                        "string, use its GatewayHostName=)")
    if cs.gateway_host_name:
        kwargs["gateway_hostname"] = cs.gateway_host_name
    return build_config(hostname=cs.host_name, device_id=cs.device_id,
                        module_id=cs.module_id or None,
                        symmetric_key=cs.shared_access_key, x509=x509, **kwargs)


def config_from_sastoken(sastoken: str, module: bool = False, **kwargs: Any) -> HubConfig:
    if not isinstance(sastoken, str):
        raise TypeError("sastoken must be a str")
    if "sastoken_ttl" in kwargs:
        raise TypeError("sastoken_ttl does not apply to a client made from a SAS token")
    hostname, device_id, module_id = _token_identity(sastoken, module)
    return build_config(hostname=hostname, device_id=device_id, module_id=module_id,
                        sastoken=sastoken, **kwargs)


def _token_identity(sastoken: str, module: bool) -> tuple[str, str, str | None]:
    """``(hostname, device_id, module_id)`` of a SAS token a client may use, as
    v2 checks it.

    Raises:
        ValueError: malformed, expired, or a module's token on a device client
            (or the reverse).
    """
    parsed = parse_sas_token(sastoken)
    hostname, device_id, module_id = parse_device_resource_uri(parsed.resource_uri)
    if module_id and not module:
        raise ValueError("Provided SasToken is for a module")
    if module and not module_id:
        raise ValueError("Provided SasToken is for a device")
    if parsed.expiry < int(time.time()):
        raise ValueError("Provided SasToken has already expired")
    return hostname, device_id, module_id


def check_update_sastoken(config: HubConfig, sastoken: str) -> float:
    """Validate ``update_sastoken`` as v2 does and store the token; returns its
    expiry.

    Raises:
        ClientError: the client was not created from a SAS token.
        ValueError: malformed, expired, or for another hub, device or module;
            the current token stays.
    """
    if config.sastoken is None:
        raise ClientError("Cannot update sastoken when client was not created with one")
    if not isinstance(sastoken, str):
        raise TypeError("sastoken must be a str")
    hostname, device_id, module_id = _token_identity(sastoken, config.module_id is not None)
    if (hostname, device_id, module_id) != (config.hostname, config.device_id,
                                           config.module_id):
        raise ValueError("Provided SasToken does not match the existing hostname, device id "
                         "or module id")
    config.sastoken = sastoken
    config.token_expiry = float(parse_sas_token(sastoken).expiry)
    return config.token_expiry


