"""The DPS registration flow, sans-IO, and its result (``RegistrationResult``).

Theory of operation
-------------------
``ProvisioningFlow`` is the whole registration conversation with the Device
Provisioning Service once the MQTT connection is up and subscribed to
``$dps/registrations/res/#``.  It does no I/O and reads no clock: the driver
calls ``start(now)``, sends what ``requests_to_send()`` returns, feeds every
message with ``receive(topic, payload, now)``, calls ``tick(now)`` at
``next_deadline()``, and stops once ``finished`` (then ``result`` or
``error``).

Phases (one ``Phase`` enum; the transitions are in ``_TRANSITIONS``)::

    IDLE --start--> AWAITING --answer 200/202 assigning--> PAUSED --due--> AWAITING (poll)
                    AWAITING --answer 429/5xx----------->  PAUSED --due--> AWAITING (same request)
                    AWAITING --assigned--> DONE
                    AWAITING --4xx / failed / disabled / garbage / request timeout--> FAILED
         any phase but DONE --whole-call deadline--> FAILED

What it does better than azure-iot-device 2.14: ``retry-after`` is honoured
on every answer (v2 ignores it after the first 202 and waits 2 s); 429 and
5xx without ``retry-after`` back off exponentially (2, 4, 8 ... 60 s, v2 waits
2 s forever); a whole-call ``timeout`` bounds everything; each request gets a
fresh request id, so a late answer to an abandoned request is ignored.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from typing import Any

from iotdev_mqtt._records import record, set_field

from . import _dps_topics as topics
from ._errors import OperationTimeout, ProvisioningServiceError
from ._hub_topics import new_request_id

__all__ = [
    "Phase",
    "ProvisioningFlow",
    "RegistrationResult",
    "RegistrationState",
    "Request",
    "registration_body",
]

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds to wait for the answer to one request (v2's ``DEFAULT_TIMEOUT_INTERVAL``)."""
DEFAULT_POLLING_INTERVAL = 2.0
"""Seconds between polls when DPS sends no ``retry-after`` (v2's value)."""
BACKOFF_BASE = 2.0
MAX_BACKOFF = 60.0


# --------------------------------------------------------------------- results


class RegistrationState:
    """Where DPS assigned the device, as azure-iot-device v2's ``RegistrationState``.

    ``response_payload`` is, as in v2, the JSON *text* of the payload the
    service returned (``"null"`` when there was none); ``payload`` (ours) is the
    parsed value.
    """

    def __init__(self, device_id: str | None = None, assigned_hub: str | None = None,
                 sub_status: str | None = None, created_date_time: str | None = None,
                 last_update_date_time: str | None = None, etag: str | None = None,
                 payload: Any = None) -> None:
        self._device_id = device_id
        self._assigned_hub = assigned_hub
        self._sub_status = sub_status
        self._created_date_time = created_date_time
        self._last_update_date_time = last_update_date_time
        self._etag = etag
        self._response_payload = payload

    @property
    def device_id(self) -> str | None:
        return self._device_id

    @property
    def assigned_hub(self) -> str | None:
        return self._assigned_hub

    @property
    def sub_status(self) -> str | None:
        return self._sub_status

    @property
    def created_date_time(self) -> str | None:
        return self._created_date_time

    @property
    def last_update_date_time(self) -> str | None:
        return self._last_update_date_time

    @property
    def etag(self) -> str | None:
        return self._etag

    @property
    def response_payload(self) -> str:
        return json.dumps(self._response_payload, default=lambda o: o.__dict__, sort_keys=True)

    @property
    def payload(self) -> Any:
        """The payload DPS returned, parsed (iotdev)."""
        return self._response_payload

    def __str__(self) -> str:
        return "\n".join([str(self.device_id), str(self.assigned_hub), str(self.sub_status),
                          self.response_payload])


class RegistrationResult:
    """The outcome of ``register()``, as azure-iot-device v2's ``RegistrationResult``.

    Attributes:
        operation_id: DPS's operation id.
        status: ``"assigned"`` (any other status raises from ``register()``).
        registration_state: a ``RegistrationState`` or ``None``.
    """

    def __init__(self, operation_id: str, status: str,
                 registration_state: RegistrationState | None = None) -> None:
        self._operation_id = operation_id
        self._status = status
        self._registration_state = registration_state
        self._document: dict[str, Any] = {}

    @property
    def operation_id(self) -> str:
        return self._operation_id

    @property
    def status(self) -> str:
        return self._status

    @property
    def registration_state(self) -> RegistrationState | None:
        return self._registration_state

    def __str__(self) -> str:
        return "\n".join([str(self.registration_state), self.status])

    @classmethod
    def from_operation_status(cls, document: dict[str, Any]) -> RegistrationResult:
        """Build a result from DPS's RegistrationOperationStatus JSON object.

        Raises:
            ValueError: the document is not an object with an ``operationId``
                and a ``status`` string.
        """
        if not isinstance(document, dict):
            raise ValueError("the operation status is not a JSON object")
        operation_id, status = document.get("operationId"), document.get("status")
        if not isinstance(operation_id, str) or not isinstance(status, str):
            raise ValueError("the operation status lacks operationId or status")
        state = document.get("registrationState")
        registration_state = None
        if isinstance(state, dict):
            registration_state = RegistrationState(
                device_id=state.get("deviceId"), assigned_hub=state.get("assignedHub"),
                sub_status=state.get("substatus"),
                created_date_time=state.get("createdDateTimeUtc"),
                last_update_date_time=state.get("lastUpdatedDateTimeUtc"),
                etag=state.get("etag"), payload=state.get("payload"))
        result = cls(operation_id, status, registration_state)
        result._document = document
        return result

    def to_operation_status(self) -> dict[str, Any]:
        """The JSON object this result was built from (for caches)."""
        return dict(self._document)


def registration_body(registration_id: str, payload: Any) -> bytes:
    """The register request's body, as v2 writes it (``sort_keys``, objects as
    their ``__dict__``).

    Raises:
        TypeError: the payload cannot be serialized.
    """
    document = {"payload": payload, "registrationId": registration_id}

    def as_dict(value: Any) -> Any:
        try:
            return value.__dict__
        except AttributeError:
            raise TypeError(f"the provisioning payload holds a {type(value).__name__}, "
                            "which is not JSON serializable") from None

    try:
        return json.dumps(document, default=as_dict, sort_keys=True).encode("utf-8")
    except ValueError as exc:  # a circular reference
        raise TypeError(f"the provisioning payload is not JSON serializable: {exc}") from None


# ------------------------------------------------------------------------ flow


class Phase(enum.Enum):
    IDLE = "idle"
    AWAITING = "awaiting"  # a request is out, waiting for its answer
    PAUSED = "paused"  # waiting before the next request (poll or retry)
    DONE = "done"
    FAILED = "failed"


_TRANSITIONS: dict[tuple[Phase, str], Phase] = {
    (Phase.IDLE, "start"): Phase.AWAITING,
    (Phase.AWAITING, "assigning"): Phase.PAUSED,
    (Phase.AWAITING, "retry"): Phase.PAUSED,
    (Phase.AWAITING, "assigned"): Phase.DONE,
    (Phase.AWAITING, "fail"): Phase.FAILED,
    (Phase.PAUSED, "due"): Phase.AWAITING,
    (Phase.PAUSED, "fail"): Phase.FAILED,
    (Phase.IDLE, "fail"): Phase.FAILED,
}


@record
class Request:
    """One PUBLISH to send (QoS 1)."""

    __match_args__ = ("topic", "payload")
    __slots__ = __match_args__

    topic: str
    payload: bytes

    def __init__(self, topic: str, payload: bytes) -> None:
        set_field(self, "topic", topic)
        set_field(self, "payload", payload)


class ProvisioningFlow:
    """One registration with DPS, sans-IO.

    Args:
        registration_id: the device's registration id.
        payload: the ``provisioning_payload`` (any JSON-serializable value).
        timeout: seconds for the whole registration, or ``None`` (no limit
            beyond each request's own).
        request_timeout: seconds to wait for the answer to one request.
        polling_interval: seconds between polls when DPS gives no ``retry-after``.
        max_backoff: the longest wait before retrying a 429/5xx with no ``retry-after``.
        make_rid: returns a fresh request id (uuid4 by default).
        jitter: maps a back-off delay to the one used (identity by default;
            drivers pass a random spread so a fleet does not retry in step).

    Raises:
        TypeError: the payload cannot be serialized to JSON.
    """

    def __init__(self, registration_id: str, payload: Any = None, *,
                 timeout: float | None = None,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 polling_interval: float = DEFAULT_POLLING_INTERVAL,
                 max_backoff: float = MAX_BACKOFF,
                 make_rid: Callable[[], str] | None = None,
                 jitter: Callable[[float], float] | None = None) -> None:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, got {timeout!r}")
        if not request_timeout > 0:
            raise ValueError(f"request_timeout must be positive, got {request_timeout!r}")
        self.registration_id = registration_id
        self._body = registration_body(registration_id, payload)
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.polling_interval = polling_interval
        self.max_backoff = max_backoff
        self._make_rid = make_rid or new_request_id
        self._jitter = jitter or (lambda delay: delay)
        self.phase = Phase.IDLE
        self.result: RegistrationResult | None = None
        self.error: Exception | None = None
        self.operation_id: str | None = None
        self.requests_sent = 0
        self.last_status: int | None = None
        self._out: list[Request] = []
        self._rid: str | None = None
        self._kind = "register"  # what the next/current request is
        self._deadline: float | None = None  # whole call
        self._timer: float | None = None  # request timeout or pause end
        self._failures = 0  # consecutive 429/5xx

    # ------------------------------------------------------------- driver API

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.DONE, Phase.FAILED)

    def start(self, now: float, *, began: float | None = None) -> None:
        """Begin: queue the registration request.

        Args:
            now: the current time.
            began: when the whole call began (before connecting), if earlier
                than ``now``: the whole-call ``timeout`` counts from it.

        Raises:
            RuntimeError: already started.
        """
        if self.phase is not Phase.IDLE:
            raise RuntimeError(f"start() in {self.phase.name}")
        if self.timeout is not None:
            self._deadline = (now if began is None else min(began, now)) + self.timeout
        self._move("start")
        self._send(now)

    def requests_to_send(self) -> list[Request]:
        """Drain the requests queued since the last call."""
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> float | None:
        """When to call ``tick()``, or ``None`` once finished."""
        if self.finished:
            return None
        times = [t for t in (self._timer, self._deadline) if t is not None]
        return min(times) if times else None

    def tick(self, now: float) -> None:
        """Run the timers: the whole-call deadline, the request timeout, the
        end of a pause (which queues the next request)."""
        if self.finished:
            return
        if self._deadline is not None and now >= self._deadline:
            last = "" if self.last_status is None else f" (last answer: {self.last_status})"
            self._fail(OperationTimeout(
                f"registration of {self.registration_id!r} did not complete within "
                f"{self.timeout:g} s{last}"))
            return
        if self._timer is None or now < self._timer:
            return
        if self.phase is Phase.AWAITING:
            self._fail(OperationTimeout(
                f"no answer from the provisioning service to the {self._kind} request "
                f"within {self.request_timeout:g} s"))
        elif self.phase is Phase.PAUSED:
            self._move("due")
            self._send(now)

    def receive(self, topic: str, payload: bytes, now: float) -> bool:
        """Feed one received message.

        Returns:
            ``True`` if it was the answer to the request in flight (consumed);
            ``False`` for anything else (another topic, a stale request id,
            an answer after the end), which is ignored.
        """
        try:
            parsed = topics.parse_response_topic(topic)
        except ValueError as exc:
            if self.phase is Phase.AWAITING:
                self._fail(ProvisioningServiceError(f"malformed answer: {exc}"))
                return True
            return False
        if parsed is None or self.phase is not Phase.AWAITING:
            return False
        status, props = parsed
        if props.get("$rid") != self._rid:
            return False
        self.last_status = status
        retry_after = _seconds(props.get("retry-after"))
        if 200 <= status < 300:
            self._on_success(status, payload, retry_after, now)
        elif status == 429 or status >= 500:
            self._failures += 1
            delay = retry_after
            if delay is None:
                nominal = min(self.max_backoff, BACKOFF_BASE * 2 ** (self._failures - 1))
                delay = self._jitter(nominal)
            self._pause("retry", now, delay)
        else:
            body = _parse_json(payload)
            code, message = "", ""
            if isinstance(body, dict):
                code = str(body.get("errorCode", ""))
                message = str(body.get("message", ""))
            self._fail(ProvisioningServiceError(
                f"the provisioning service refused the {self._kind} request with status "
                f"{status}" + (f": {message}" if message else "") +
                (f" (errorCode {code})" if code else ""),
                status=status, code=code, retry_after=retry_after, body=body))
        return True

    # ------------------------------------------------------------------ inside

    def _move(self, event: str) -> None:
        target = _TRANSITIONS.get((self.phase, event))
        if target is None:
            raise RuntimeError(f"provisioning flow: {event!r} in {self.phase.name}")
        self.phase = target

    def _send(self, now: float) -> None:
        self._rid = self._make_rid()
        if self._kind == "register":
            self._out.append(Request(topics.register_topic(self._rid), self._body))
        else:
            assert self.operation_id is not None
            self._out.append(Request(topics.poll_topic(self._rid, self.operation_id), b" "))
        self.requests_sent += 1
        self._timer = now + self.request_timeout

    def _pause(self, event: str, now: float, delay: float) -> None:
        self._move(event)
        self._timer = now + max(0.0, delay)

    def _fail(self, error: Exception) -> None:
        self._move("fail")
        self.error = error
        self._timer = None

    def _on_success(self, status: int, payload: bytes, retry_after: float | None,
                    now: float) -> None:
        self._failures = 0
        document = _parse_json(payload)
        try:
            result = RegistrationResult.from_operation_status(document)
        except ValueError as exc:
            self._fail(ProvisioningServiceError(
                f"malformed {status} answer to the {self._kind} request: {exc}",
                status=status, body=document))
            return
        self.operation_id = result.operation_id
        if result.status == "assigning":
            self._kind = "poll"
            delay = self.polling_interval if retry_after is None else retry_after
            self._pause("assigning", now, delay)
        elif result.status == "assigned":
            self._move("assigned")
            self._timer = None
            self.result = result
        else:
            state = document.get("registrationState") if isinstance(document, dict) else None
            detail = ""
            code = ""
            if isinstance(state, dict):
                detail = str(state.get("errorMessage") or "")
                code = str(state.get("errorCode") or "")
            self._fail(ProvisioningServiceError(
                f"registration of {self.registration_id!r} ended with status "
                f"{result.status!r}" + (f": {detail}" if detail else ""),
                status=status, code=code, body=document, registration_status=result.status))


#: The longest ``retry-after`` honoured (seconds): a larger one (``inf``,
#: ``1e308``) from a faulty or hostile service is cut to this, so a wait
#: stays bounded and finite even with ``timeout=None``.
MAX_RETRY_AFTER = 300.0


def _seconds(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if value != value or value < 0:  # NaN or negative: ignore
        return None
    return min(value, MAX_RETRY_AFTER)  # inf or 1e308 would wait forever


def _parse_json(payload: bytes) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return payload.decode("utf-8", "replace")
