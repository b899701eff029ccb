"""What the sync and asyncio ``ProvisioningDeviceClient`` share, with no I/O
in it: factory validation (azure-iot-device v2's rules), the endpoint, the
CONNECT credentials, the assignment cache and the options of the device
client made for the assigned hub, and the registration steps around the
sans-IO ``ProvisioningFlow`` that do not wait (each face keeps only its
waiting: a queue and a thread driver, or an ``asyncio.Queue`` and the asyncio
driver)."""

from __future__ import annotations

import json
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from iotdev_mqtt._records import field, mutable_record

if TYPE_CHECKING:
    from typing_extensions import Self

from . import _dps_topics as topics
from ._auth import decode_symmetric_key, default_user_agent, generate_sas_token
from ._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    CredentialError,
    OperationTimeout,
    ProvisioningServiceError,
)
from ._provisioning import DEFAULT_REQUEST_TIMEOUT, ProvisioningFlow, RegistrationResult
from .transport._credentials import X509
from .transport._endpoint import Endpoint, azure_endpoint
from .transport._options import ConnectOptions, Credentials

__all__ = ["ProvisioningClientBase", "ProvisioningConfig", "build_provisioning_config",
           "read_cache", "write_cache"]

_V2_OPTIONS = ("server_verification_cert", "gateway_hostname", "websockets", "cipher",
               "proxy_options", "sastoken_ttl", "keep_alive")
_OUR_OPTIONS = ("port",)  # iotdev: dial another port than 8883/443 (emulators, tests)
CACHE_VERSION = 1
CONNECT_ERRORS = (CredentialError, ConnectionFailedError, OperationTimeout)
"""What makes ``create_device_client`` drop a cached assignment and register again."""

def spread(delay: float) -> float:
    """Back-off jitter: 50-100 % of the nominal delay."""
    return delay * random.uniform(0.5, 1.0)


def wait_limit(deadline: float | None, now: float) -> float:
    """Seconds to wait for connecting or subscribing: what is left of the
    whole call, or two request timeouts when it has no deadline."""
    return max(0.0, 2 * DEFAULT_REQUEST_TIMEOUT if deadline is None else deadline - now)


@mutable_record
class ProvisioningConfig:
    """A validated provisioning client configuration."""

    provisioning_host: str
    registration_id: str
    id_scope: str
    symmetric_key: str | None = field(default=None, repr=False)
    x509: X509 | None = None
    server_verification_cert: str | None = None
    gateway_hostname: str | None = None
    websockets: bool = False
    cipher: str | list[str] = ""
    proxy_options: Any = None
    sastoken_ttl: int = 3600
    keep_alive: int = 60
    port: int | None = None

    def endpoint(self) -> Endpoint:
        return azure_endpoint(self, self.provisioning_host)

    def credentials(self) -> Credentials:
        """Fresh CONNECT credentials (a new SAS token from the key each time)."""
        username = topics.build_username(self.id_scope, self.registration_id,
                                         default_user_agent())
        if self.symmetric_key is None:
            return Credentials(username, None)
        uri = topics.sas_resource_uri(self.id_scope, self.registration_id)
        token = generate_sas_token(uri, self.symmetric_key, int(time.time() + self.sastoken_ttl))
        return Credentials(username, token.encode("utf-8"))

    def connect_options(self) -> ConnectOptions:
        # v2 connects with clean session 0; DPS ignores sessions either way.
        return ConnectOptions(self.registration_id, self.keep_alive, False, self.credentials)

    def device_client_options(self, payload: Any, extra: dict[str, Any]) -> dict[str, Any]:
        """Options of the device client for the assigned hub: the transport
        settings of this client (gateway excepted), the payload's ``modelId``
        as ``model_id``, then ``extra``."""
        options: dict[str, Any] = {}
        for name in ("server_verification_cert", "websockets", "cipher", "proxy_options",
                     "keep_alive"):
            value = getattr(self, name)
            if value not in (None, "", False) or name == "keep_alive":
                options[name] = value
        if self.symmetric_key is not None:
            options["sastoken_ttl"] = self.sastoken_ttl
        if isinstance(payload, dict) and isinstance(payload.get("modelId"), str) and \
                "product_info" not in extra:
            options["model_id"] = payload["modelId"]
        options.update(extra)
        return options


def build_provisioning_config(provisioning_host: str, registration_id: str, id_scope: str, *,
                              symmetric_key: str | None = None, x509: X509 | None = None,
                              **kwargs: Any) -> ProvisioningConfig:
    """Validate a factory's arguments as v2 does.

    Raises:
        ValueError: blank registration id ("Registration Id can not be none,
            empty or blank."), "Invalid Symmetric Key", a bad option value.
        TypeError: an unsupported keyword ("Unsupported keyword argument
            'name'"), ``sastoken_ttl`` with X.509, an option of the wrong type.
    """
    if not (isinstance(registration_id, str) and registration_id.strip()):
        raise ValueError("Registration Id can not be none, empty or blank.")
    for name in kwargs:
        if name not in _V2_OPTIONS + _OUR_OPTIONS or (x509 is not None and name == "sastoken_ttl"):
            raise TypeError(f"Unsupported keyword argument '{name}'")
    for name, value in (("provisioning_host", provisioning_host), ("id_scope", id_scope)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty str, got {value!r}")
    from ._hubclient import _check_options  # the device client's option rules

    _check_options(dict(kwargs))
    if symmetric_key is not None:
        decode_symmetric_key(symmetric_key)  # ValueError("Invalid Symmetric Key")
    if x509 is not None and not isinstance(x509, X509):
        raise TypeError("x509 must be an iotdev.X509")
    return ProvisioningConfig(provisioning_host, registration_id, id_scope,
                              symmetric_key=symmetric_key, x509=x509, **kwargs)


# ------------------------------------------------------------- assignment cache


def _cache_key(config: ProvisioningConfig) -> dict[str, str]:
    return {"provisioning_host": config.provisioning_host, "id_scope": config.id_scope,
            "registration_id": config.registration_id}


def read_cache(path: str | os.PathLike[str],
               config: ProvisioningConfig) -> RegistrationResult | None:
    """The cached assignment for this registration, or ``None`` (no file, a
    file for another registration, or one that cannot be read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("version") != CACHE_VERSION or \
            document.get("key") != _cache_key(config):
        return None
    try:
        result = RegistrationResult.from_operation_status(document.get("result"))  # type: ignore[arg-type]
    except ValueError:
        return None
    state = result.registration_state
    if result.status != "assigned" or state is None or not state.assigned_hub or \
            not state.device_id:
        return None
    return result


def write_cache(path: str | os.PathLike[str], config: ProvisioningConfig,
                result: RegistrationResult) -> None:
    """Store the assignment (no secrets) atomically, readable by the owner only.

    Raises:
        OSError: the file cannot be written.
    """
    target = os.fspath(path)
    document = {"version": CACHE_VERSION, "key": _cache_key(config),
                "result": result.to_operation_status(), "written": time.time()}
    tmp = target + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    os.replace(tmp, target)


class ProvisioningClientBase:
    """The factories and the payload of both ``ProvisioningDeviceClient`` faces."""

    _log: ClassVar[logging.Logger] = logging.getLogger(__name__)  # each face sets its own

    def __init__(self, config: ProvisioningConfig) -> None:
        self._config = config
        self._provisioning_payload: Any = None

    @classmethod
    def create_from_symmetric_key(cls, provisioning_host: str, registration_id: str,
                                  id_scope: str, symmetric_key: str,
                                  **kwargs: Any) -> Self:
        """A client that proves itself with a SAS token signed by ``symmetric_key``
        (an individual enrollment's key, or ``derive_device_key(group_key,
        registration_id)`` for a group enrollment).

        Args:
            provisioning_host: DPS's host (``global.azure-devices-provisioning.net``).
            registration_id: the device's registration id.
            id_scope: the DPS instance's id scope.
            symmetric_key: the base64 key.
            **kwargs: ``server_verification_cert``, ``gateway_hostname``,
                ``websockets``, ``cipher``, ``proxy_options``, ``sastoken_ttl``,
                ``keep_alive`` (v2's options) and ``port`` (iotdev).

        Raises:
            ValueError: blank registration id, "Invalid Symmetric Key".
            TypeError: an unsupported option.
        """
        return cls(build_provisioning_config(provisioning_host, registration_id, id_scope,
                                             symmetric_key=symmetric_key, **kwargs))

    @classmethod
    def create_from_x509_certificate(cls, provisioning_host: str, registration_id: str,
                                     id_scope: str, x509: X509,
                                     **kwargs: Any) -> Self:
        """A client that proves itself with a client certificate (CN =
        registration id).  Options as ``create_from_symmetric_key`` except
        ``sastoken_ttl``.

        Raises:
            ValueError: blank registration id.  TypeError: an unsupported option.
        """
        return cls(build_provisioning_config(provisioning_host, registration_id, id_scope,
                                             x509=x509, **kwargs))

    @property
    def provisioning_payload(self) -> Any:
        """The ``payload`` of the registration request (any JSON value; objects
        go in as their ``__dict__``, as v2)."""
        return self._provisioning_payload

    @provisioning_payload.setter
    def provisioning_payload(self, provisioning_payload: Any) -> None:
        self._provisioning_payload = provisioning_payload

    def _device_client(self, client_class: Any, result: RegistrationResult,
                       device_options: dict[str, Any]) -> Any:
        """An ``IoTHubDeviceClient`` (of ``client_class``, sync or asyncio) for
        the assigned hub, authenticating as this client does."""
        state = result.registration_state
        if state is None or not state.assigned_hub or not state.device_id:
            raise ProvisioningServiceError(
                "the registration result names no assigned hub or device id",
                body=result.to_operation_status())
        config = self._config
        options = config.device_client_options(self._provisioning_payload, device_options)
        if config.x509 is not None:
            return client_class.create_from_x509_certificate(
                config.x509, state.assigned_hub, state.device_id, **options)
        return client_class.create_from_symmetric_key(
            config.symmetric_key, state.assigned_hub, state.device_id, **options)

    # ---------------------------------------------- registration, no waiting

    def _new_flow(self, timeout: float | None) -> ProvisioningFlow:
        self._log.info("registering %r with %s", self._config.registration_id,
                 self._config.provisioning_host)
        return ProvisioningFlow(self._config.registration_id, self._provisioning_payload,
                                timeout=timeout, jitter=spread)

    @staticmethod
    def _drop_reporter(put: Callable[[Any], None]) -> Callable[[bool, str | None], None]:
        """The driver's ``on_state``: a drop goes into the inbox as an error."""

        def on_state(connected: bool, reason: str | None) -> None:
            if not connected:
                put(ConnectionDroppedError(
                    f"lost the connection to the provisioning service: {reason}"))

        return on_state

    @staticmethod
    def _check_subscription(codes: Any) -> None:
        if not codes or codes[0] == 0x80:
            raise ClientError("the provisioning service refused the subscription to "
                              f"{topics.RESPONSE_SUBSCRIBE_FILTER}")

    @staticmethod
    def _send_due(flow: ProvisioningFlow, publish: Callable[[str, bytes], object]) -> bool:
        """Publish what the flow queued; ``True`` while it waits for more."""
        for request in flow.requests_to_send():
            publish(request.topic, request.payload)
        return not flow.finished

    @staticmethod
    def _wait_time(flow: ProvisioningFlow, now: float) -> float | None:
        """Seconds to wait for the inbox before ``_take(None)`` ticks the flow."""
        due = flow.next_deadline()
        return None if due is None else max(0.0, due - now)

    @staticmethod
    def _take(flow: ProvisioningFlow, item: Any, now: float) -> None:
        """Feed what the inbox gave: ``None`` (the wait ran out), an error to
        raise, or a message."""
        if item is None:
            flow.tick(now)
        elif isinstance(item, BaseException):
            raise item
        else:
            flow.receive(item.topic, item.payload, now)

    def _outcome(self, flow: ProvisioningFlow, elapsed: float) -> RegistrationResult:
        if flow.error is not None:
            self._log.info("registration of %r failed: %s", self._config.registration_id,
                           flow.error)
            raise flow.error
        assert flow.result is not None
        self._log.info("registered %r in %.2f s (%d requests)", self._config.registration_id,
                 elapsed, flow.requests_sent)
        return flow.result

    # ----------------------------------------------- create_device_client

    def _cached_assignment(self, cache_path: str | os.PathLike[str] | None,
                           force_register: bool) -> RegistrationResult | None:
        if cache_path is None or force_register:
            return None
        return read_cache(cache_path, self._config)

    def _remember(self, cache_path: str | os.PathLike[str] | None,
                  result: RegistrationResult) -> RegistrationResult:
        if cache_path is not None:
            write_cache(cache_path, self._config, result)
        return result

    def _stale_assignment(self) -> None:
        self._log.info("the cached assignment of %r did not connect: registering again",
                 self._config.registration_id)
