"""Fuzz target ``dps-answer``: ``ProvisioningFlow.receive`` with hostile DPS
answers.

The input is split at its first newline: the text before it (UTF-8 with
``surrogateescape``) is the rest of an answer topic after
``$dps/registrations/res/``, the bytes after it are the payload.  The topic is
tried as given and with the ``$rid`` of the request in flight appended (so the
flow does not just ignore it).  Invariants:

1. ``receive`` returns a bool and never raises;
2. afterwards the flow is finished with a ``RegistrationResult`` (status
   ``assigned``) or a ``ProvisioningServiceError``, or still waiting with a
   deadline (paused or awaiting), never anything else;
3. a finished flow asks for nothing more; a paused one asks for its next
   request at its deadline (``tick``), and that request is a register or a
   poll topic.
"""

from __future__ import annotations

from iotdev import ProvisioningServiceError
from iotdev._provisioning import Phase, ProvisioningFlow, RegistrationResult

from .registry import register

PREFIX = "$dps/registrations/res/"


def _check(flow: ProvisioningFlow, consumed: object) -> str:
    if not isinstance(consumed, bool):
        raise AssertionError(f"[type] receive returned {consumed!r}")
    if flow.phase is Phase.DONE:
        if not isinstance(flow.result, RegistrationResult) or flow.result.status != "assigned":
            raise AssertionError(f"[done] result {flow.result!r}")
        if flow.next_deadline() is not None or flow.requests_to_send():
            raise AssertionError("[done] a finished flow still wants to act")
        return "assigned"
    if flow.phase is Phase.FAILED:
        if not isinstance(flow.error, ProvisioningServiceError):
            raise AssertionError(f"[failed] error {flow.error!r}")
        status = flow.error.status
        return "failed" if status is None else f"failed {status // 100}xx"
    deadline = flow.next_deadline()
    if deadline is None:
        raise AssertionError(f"[waiting] no deadline in {flow.phase.name}")
    if flow.phase is Phase.PAUSED:
        flow.tick(deadline)
        out = flow.requests_to_send()
        if len(out) != 1 or not out[0].topic.startswith("$dps/registrations/"):
            raise AssertionError(f"[resend] {out!r}")
        return f"paused->{flow.phase.name}"
    return f"ignored={not consumed}"


@register("dps-answer", "ProvisioningFlow.receive: any answer gives a result, a typed "
          "error or a wait, never an exception", shared_seeds=False,
          instrument=("iotdev._provisioning", "iotdev._dps_topics"),
          tokens=("200/", "202/", "429/", "500/", "401/", "?$rid=r1", "&retry-after=",
                  '"status"', '"assigning"', '"assigned"', '"operationId"',
                  '"registrationState"', "\n"),
          seeds=lambda: [
              b'202/?$rid=r1&retry-after=3\n{"operationId":"o","status":"assigning"}',
              b'200/?$rid=r1\n{"operationId":"o","status":"assigned",'
              b'"registrationState":{"deviceId":"d","assignedHub":"h"}}',
              b'429/?$rid=r1&retry-after=1\n{}',
              b'401/?$rid=r1\n{"errorCode":401002,"message":"no"}',
          ])
def dps_answer(data: bytes) -> str:
    head, _, payload = data.partition(b"\n")
    rest = head.decode("utf-8", "surrogateescape")
    labels = []
    for topic in (PREFIX + rest, PREFIX + rest + "&$rid=r1", PREFIX + rest + "/?$rid=r1"):
        flow = ProvisioningFlow("dev", None, make_rid=lambda: "r1")
        flow.start(0.0)
        flow.requests_to_send()
        try:
            consumed = flow.receive(topic, payload, 1.0)
        except Exception as exc:
            raise AssertionError(f"[raise] receive raised {exc!r}") from exc
        labels.append(_check(flow, consumed))
    return "|".join(sorted(set(labels)))
