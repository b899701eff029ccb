"""Identity checks shared by the hub's MQTT listener and its device HTTP API:
who a CONNECT (or a request) claims to be, and whether its SAS token or TLS
client certificate proves it.

An identity is a ``Device`` or a ``Module`` (``_records.py``).  A SAS token
must name the identity (``{host}/devices/{d}`` or
``{host}/devices/{d}/modules/{m}``) under one of the hub's names, verify with
its primary or secondary key and not be expired; a certificate's SHA-1 or
SHA-256 thumbprint must be registered for it.  A module is refused when its
device is disabled.  Every check returns the reason for a refusal (a sentence
for the log and the client) or ``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from iotdev_mqtt import Connect

from .._auth import SasTokenError, parse_sas_token, parse_username, verify_sas_token
from ._records import Device, Module
from ._x509 import thumbprints

__all__ = ["AuthResult", "IdentityChecks", "Registry"]

Identity = Device | Module


class Registry(Protocol):
    """What the checks read: the identity registry (``Store`` is one)."""

    def device(self, device_id: str) -> Device | None: ...

    def module(self, device_id: str, module_id: str) -> Module | None: ...


@dataclass(frozen=True, slots=True)
class AuthResult:
    """A CONNECT's fate: the identity (``None`` if refused), the refusal
    reason, and the SAS token's expiry (epoch seconds; ``None`` for X.509)."""

    identity: Identity | None
    refusal: str | None
    expiry: float | None = None


class IdentityChecks:
    """The checks, over a registry and the names the hub answers to.

    Args:
        registry: looks identities up (``Store``).
        host_names: returns the host names a token's ``sr`` may use (the hub
            name, ``localhost``, the bound and connection addresses).
        clock: epoch seconds (``time.time``).
    """

    def __init__(self, registry: Registry, host_names: Callable[[], Iterable[str]],
                 clock: Callable[[], float]) -> None:
        self.registry = registry
        self._host_names = host_names
        self._clock = clock

    def lookup(self, client_id: str) -> tuple[Identity | None, str | None]:
        """The identity a client id (``device`` or ``device/module``) names.

        Returns:
            ``(identity, None)``, or ``(None, reason)`` when it is unknown or
            its device is disabled.
        """
        device_id, _, module_id = client_id.partition("/")
        device = self.registry.device(device_id)
        if device is None:
            return None, f"unknown device {device_id!r}"
        if not device.enabled:
            return None, f"device {device_id} is disabled"
        if not module_id:
            return device, None
        module = self.registry.module(device_id, module_id)
        if module is None:
            return None, f"unknown module {module_id!r} of device {device_id!r}"
        return module, None

    def connect(self, packet: Connect, peer_certificate: Callable[[], bytes | None]) -> AuthResult:
        """Decide a CONNECT.

        Args:
            packet: the CONNECT.
            peer_certificate: returns the DER of the TLS client certificate,
                if any (asked only for a CONNECT without a password).

        Returns:
            An ``AuthResult``.
        """
        identity, reason = self.lookup(packet.client_id)
        if identity is None:
            return AuthResult(None, reason)
        if packet.username is None:
            return AuthResult(None, "no user name")
        reason = self.check_username(packet.username, packet.client_id)
        if reason is not None:
            return AuthResult(None, reason)
        if packet.password is None:
            if not identity.x509_thumbprints:
                return AuthResult(None, "no password, and the identity has no X.509 "
                                        "thumbprint")
            der = peer_certificate()
            if not der:
                return AuthResult(None, "no password and no client certificate")
            reason = self.check_thumbprint(der, identity)
            return AuthResult(identity if reason is None else None, reason)
        reason, expiry = self.check_token(identity, packet.password.decode("utf-8", "replace"))
        return AuthResult(identity if reason is None else None, reason, expiry)

    @staticmethod
    def check_username(username: str, client_id: str) -> str | None:
        """``{host}/{client_id}/?...`` must name the CONNECT's client id."""
        try:
            _, named, _ = parse_username(username)
        except ValueError as exc:
            return f"bad user name: {exc}"
        if named != client_id:
            return "the user name names another client id"
        return None

    @staticmethod
    def check_thumbprint(der: bytes, identity: Identity) -> str | None:
        """The certificate's thumbprint must be registered for ``identity``."""
        if not set(thumbprints(der)) & set(identity.x509_thumbprints):
            kind = "device" if isinstance(identity, Device) else "module"
            return f"the client certificate's thumbprint is not registered for the {kind}"
        return None

    def check_token(self, identity: Identity, token: str) -> tuple[str | None, float | None]:
        """Verify a SAS token for ``identity``.

        Returns:
            ``(None, expiry)`` when it proves the identity, else ``(reason, None)``.
        """
        try:
            named = parse_sas_token(token).resource_uri
        except ValueError as exc:
            return f"SAS token refused: {exc}", None
        path = f"devices/{identity.device_id}"
        if isinstance(identity, Module):
            path += f"/modules/{identity.module_id}"
        hosts = set(self._host_names())
        # Try the host the token names first: its error is the one that matters.
        ordered = sorted(hosts, key=lambda host: not named.startswith(f"{host}/"))
        error: str | None = "no key"
        for host in ordered:
            uri = f"{host}/{path}"
            for key in (identity.primary_key, identity.secondary_key):
                if not key:
                    continue
                try:
                    parsed = verify_sas_token(token, key, resource_uri=uri, now=self._clock())
                except SasTokenError as exc:
                    if error == "no key" or named.startswith(f"{host}/"):
                        error = str(exc)
                    continue
                return None, float(parsed.expiry)
            if named.startswith(f"{host}/"):
                break
        return f"SAS token refused: {error}", None
