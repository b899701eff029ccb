"""``Message``, ``MethodRequest``, ``MethodResponse``: the azure-iot-device v2
models, same names, same attributes, same defaults."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._hub_topics import is_date

if TYPE_CHECKING:
    import datetime

__all__ = ["Message", "MethodRequest", "MethodResponse"]

SECURITY_MESSAGE_INTERFACE_ID = "urn:azureiot:Security:SecurityAgent:1"


class Message:
    """A telemetry or cloud-to-device message.

    Args:
        data: the body (``bytes``, or ``str``/anything else, sent as
            ``str(data)`` encoded in UTF-8 as v2 does).
        message_id: the ``$.mid`` system property.
        content_encoding: ``$.ce`` (e.g. ``"utf-8"``).
        content_type: ``$.ct`` (e.g. ``"application/json"``).
        output_name: ``$.on`` (module outputs).

    Attributes besides the arguments: ``custom_properties`` (application
    properties, a dict), ``correlation_id``, ``user_id``, ``expiry_time_utc``,
    ``ack`` and ``input_name`` (set on received messages), ``lock_token``.
    """

    def __init__(
        self,
        data: Any,
        message_id: str | None = None,
        content_encoding: str | None = None,
        content_type: str | None = None,
        output_name: str | None = None,
    ) -> None:
        self.data = data
        self.custom_properties: dict[str, Any] = {}
        self.lock_token: str | None = None
        self.message_id = message_id
        self.expiry_time_utc: datetime.datetime | str | None = None
        self.correlation_id: str | None = None
        self.user_id: str | None = None
        self.content_encoding = content_encoding
        self.content_type = content_type
        self.output_name = output_name
        self.input_name: str | None = None
        self.ack: str | None = None
        self._iothub_interface_id: str | None = None

    @property
    def iothub_interface_id(self) -> str | None:
        return self._iothub_interface_id

    def set_as_security_message(self) -> None:
        """Mark the message as an Azure Security Center message (``$.ifid``)."""
        self._iothub_interface_id = SECURITY_MESSAGE_INTERFACE_ID

    def body_bytes(self) -> bytes:
        """The body as sent on the wire."""
        data = self.data
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
        if data is None:
            return b""
        return str(data).encode("utf-8")

    def get_size(self) -> int:
        """Body plus property names and values, in bytes (IoT Hub's count)."""
        total = len(self.body_bytes())
        for value in (self.message_id, self.correlation_id, self.user_id, self.content_type,
                      self.content_encoding, self.output_name, self._iothub_interface_id):
            if value:
                total += len(str(value).encode("utf-8"))
        expiry = self.expiry_time_utc
        if expiry:
            text = expiry.isoformat() if is_date(expiry) else str(expiry)
            total += len(text.encode("utf-8"))
        for key, value in self.custom_properties.items():
            total += len(str(key).encode("utf-8")) + len(str(value).encode("utf-8"))
        return total

    def __str__(self) -> str:
        return str(self.data)

    def __repr__(self) -> str:
        return (f"Message(data={self.data!r}, message_id={self.message_id!r}, "
                f"custom_properties={self.custom_properties!r})")


class MethodRequest:
    """A direct method call received from the hub."""

    def __init__(self, request_id: str, name: str, payload: Any) -> None:
        self._request_id = request_id
        self._name = name
        self._payload = payload

    @property
    def request_id(self) -> str:
        return self._request_id

    @property
    def name(self) -> str:
        return self._name

    @property
    def payload(self) -> Any:
        return self._payload

    def __repr__(self) -> str:
        return f"MethodRequest(request_id={self._request_id!r}, name={self._name!r})"


class MethodResponse:
    """The answer to a ``MethodRequest``: a status and a JSON-serialisable payload."""

    def __init__(self, request_id: str, status: int, payload: Any = None) -> None:
        self.request_id = request_id
        self.status = status
        self.payload = payload

    @classmethod
    def create_from_method_request(cls, method_request: MethodRequest, status: int,
                                   payload: Any = None) -> MethodResponse:
        return cls(method_request.request_id, status, payload)

    def __repr__(self) -> str:
        return f"MethodResponse(request_id={self.request_id!r}, status={self.status!r})"
