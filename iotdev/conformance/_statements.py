"""The MQTT 3.1.1 normative statements that bind a server (OASIS mqtt-v3.1.1-os,
Appendix B), by section, with the reason where one cannot be tested from the wire.

Coverage is reported over this list: a statement is *exercised* when a check
that names it ran (passed, failed or optional), *passed* when every such check
passed or recorded an allowed choice, and *untestable* when its entry carries a
reason.  Statements that bind only a client (3.1.2-23 keep-alive sending,
3.14.4-1/2, 4.6.0-2/3/4 as receiver...) are not listed: the fake-broker mode
tests those on clients.
"""

from __future__ import annotations

__all__ = ["SECTIONS", "STATEMENTS", "section_of"]

SECTIONS = {
    "1": "Data representation",
    "2": "Control packet format",
    "3.1": "CONNECT",
    "3.2": "CONNACK",
    "3.3": "PUBLISH",
    "3.4-3.7": "PUBACK/PUBREC/PUBREL/PUBCOMP",
    "3.8-3.9": "SUBSCRIBE/SUBACK",
    "3.10-3.11": "UNSUBSCRIBE/UNSUBACK",
    "3.12-3.14": "PINGREQ/PINGRESP/DISCONNECT",
    "4": "Operational behaviour",
    "6": "WebSocket",
}

_UNTESTABLE_SESSION = "internal session state; only its visible effects are checked elsewhere"

# id -> (summary, reason it cannot be tested from the wire or "")
STATEMENTS: dict[str, tuple[str, str]] = {
    "MQTT-1.5.3-1": ("ill-formed UTF-8 in a string: close", ""),
    "MQTT-1.5.3-2": ("U+0000 in a string: close", ""),
    "MQTT-1.5.3-3": ("U+FEFF kept, never stripped", ""),
    "MQTT-2.2.2-1": ("reserved flag bits as in Table 2.2 in what the server sends", ""),
    "MQTT-2.2.2-2": ("invalid flags: close", ""),
    "MQTT-2.3.1-1": ("non-zero packet id in QoS>0 PUBLISH, SUBSCRIBE, UNSUBSCRIBE", ""),
    "MQTT-2.3.1-2": ("a new packet id is one not in use",
                     "needs 65,535 messages in flight to one client to force reuse"),
    "MQTT-2.3.1-3": ("a re-sent packet keeps its id", ""),
    "MQTT-2.3.1-4": ("the server follows 2.3.1-2/3 for its own PUBLISH", ""),
    "MQTT-2.3.1-5": ("QoS 0 PUBLISH has no packet id", ""),
    "MQTT-2.3.1-6": ("PUBACK/PUBREC/PUBREL carry the PUBLISH's id", ""),
    "MQTT-2.3.1-7": ("SUBACK/UNSUBACK carry the request's id", ""),
    "MQTT-3.1.0-1": ("first packet must be CONNECT, else close", ""),
    "MQTT-3.1.0-2": ("second CONNECT: close", ""),
    "MQTT-3.1.2-1": ("protocol name not MQTT: may close, must not continue as 3.1.1", ""),
    "MQTT-3.1.2-2": ("unsupported level: CONNACK 0x01 and close", ""),
    "MQTT-3.1.2-3": ("CONNECT reserved flag set: close", ""),
    "MQTT-3.1.2-4": ("clean session 0: resume the session", ""),
    "MQTT-3.1.2-5": ("clean session 0: store QoS 1/2 messages for the offline client", ""),
    "MQTT-3.1.2-6": ("clean session 1: discard the previous session", ""),
    "MQTT-3.1.2-7": ("retained messages are not part of the session", ""),
    "MQTT-3.1.2-8": ("Will stored and published on an abnormal close", ""),
    "MQTT-3.1.2-9": ("Will flag set: Will topic and message present", ""),
    "MQTT-3.1.2-10": ("Will removed on DISCONNECT", ""),
    "MQTT-3.1.2-11": ("Will flag 0: Will QoS and retain 0", ""),
    "MQTT-3.1.2-12": ("Will flag 0: no Will published",
                      "without a Will there is no topic to watch for one that should not come"),
    "MQTT-3.1.2-13": ("Will flag 0: Will QoS 0", ""),
    "MQTT-3.1.2-14": ("Will QoS is never 3", ""),
    "MQTT-3.1.2-15": ("Will flag 0: Will retain 0", ""),
    "MQTT-3.1.2-16": ("Will retain 0: Will published non-retained", ""),
    "MQTT-3.1.2-17": ("Will retain 1: Will published retained", ""),
    "MQTT-3.1.2-18": ("user name flag 0: no user name", ""),
    "MQTT-3.1.2-19": ("user name flag 1: user name present", ""),
    "MQTT-3.1.2-20": ("password flag 0: no password", ""),
    "MQTT-3.1.2-21": ("password flag 1: password present", ""),
    "MQTT-3.1.2-22": ("password without user name is invalid", ""),
    "MQTT-3.1.2-24": ("close after 1.5 x keep-alive of silence", ""),
    "MQTT-3.1.3-1": ("payload fields in order", ""),
    "MQTT-3.1.3-2": ("client id identifies the session", ""),
    "MQTT-3.1.3-3": ("client id present, first in the payload", ""),
    "MQTT-3.1.3-4": ("client id is a UTF-8 string", ""),
    "MQTT-3.1.3-5": ("accept 1-23 character [0-9a-zA-Z] client ids", ""),
    "MQTT-3.1.3-6": ("empty client id: assign a unique one",
                     "3.1.1 never tells the client the assigned id; only acceptance is seen"),
    "MQTT-3.1.3-8": ("empty client id with clean session 0: CONNACK 0x02, close", ""),
    "MQTT-3.1.3-9": ("rejected client id: CONNACK 0x02, close",
                     "which ids a server rejects is its own policy"),
    "MQTT-3.1.3-10": ("Will topic is a UTF-8 string", ""),
    "MQTT-3.1.3-11": ("user name is a UTF-8 string", ""),
    "MQTT-3.1.4-1": ("bad CONNECT: close without CONNACK", ""),
    "MQTT-3.1.4-2": ("same client id connected: disconnect the old one", ""),
    "MQTT-3.1.4-3": ("process clean session", ""),
    "MQTT-3.1.4-4": ("acknowledge with CONNACK 0", ""),
    "MQTT-3.1.4-5": ("after a refused CONNECT, process nothing more", ""),
    "MQTT-3.2.0-1": ("first packet to the client is CONNACK", ""),
    "MQTT-3.2.2-1": ("clean session 1 accepted: session present 0", ""),
    "MQTT-3.2.2-2": ("clean session 0: session present says whether a session was kept", ""),
    "MQTT-3.2.2-3": ("clean session 0 without a stored session: session present 0", ""),
    "MQTT-3.2.2-4": ("non-zero return code: session present 0", ""),
    "MQTT-3.2.2-5": ("non-zero return code: close", ""),
    "MQTT-3.2.2-6": ("no fitting return code: close without CONNACK",
                     "needs a server-side failure that no packet can provoke"),
    "MQTT-3.3.1-1": ("DUP 1 on a redelivery", ""),
    "MQTT-3.3.1-2": ("QoS 0 has DUP 0", ""),
    "MQTT-3.3.1-3": ("DUP of an incoming PUBLISH is not propagated", ""),
    "MQTT-3.3.1-4": ("QoS 3 is malformed: close", ""),
    "MQTT-3.3.1-5": ("RETAIN 1: store the message for the topic", ""),
    "MQTT-3.3.1-6": ("new subscription: send the matching retained messages", ""),
    "MQTT-3.3.1-7": ("a QoS 0 retained message replaces the previous one", ""),
    "MQTT-3.3.1-8": ("retained messages sent on subscribe have RETAIN 1", ""),
    "MQTT-3.3.1-9": ("normal forwarding has RETAIN 0", ""),
    "MQTT-3.3.1-10": ("retained with empty payload clears the topic", ""),
    "MQTT-3.3.1-11": ("an empty retained payload is never stored", ""),
    "MQTT-3.3.1-12": ("RETAIN 0 leaves the retained message alone", ""),
    "MQTT-3.3.2-1": ("topic name is a UTF-8 string", ""),
    "MQTT-3.3.2-2": ("no wildcards in a topic name", ""),
    "MQTT-3.3.2-3": ("topic of a forwarded PUBLISH matches the subscription", ""),
    "MQTT-3.3.4-1": ("receiver answers PUBLISH per its QoS", ""),
    "MQTT-3.3.5-1": ("deliver at the maximum QoS of the matching subscriptions", ""),
    "MQTT-3.3.5-2": ("unauthorized PUBLISH: ack or close",
                     "needs an authorization rule configured on the broker"),
    "MQTT-3.6.1-1": ("PUBREL flags 0010, else close", ""),
    "MQTT-3.8.1-1": ("SUBSCRIBE flags 0010, else close", ""),
    "MQTT-3.8.3-1": ("topic filters are UTF-8 strings", ""),
    "MQTT-3.8.3-2": ("wildcards unsupported: reject the filter", ""),
    "MQTT-3.8.3-3": ("SUBSCRIBE has at least one filter", ""),
    "MQTT-3-8.3-4": ("requested QoS byte: reserved bits 0, QoS <= 2", ""),
    "MQTT-3.8.4-1": ("answer SUBSCRIBE with SUBACK", ""),
    "MQTT-3.8.4-2": ("SUBACK has the SUBSCRIBE's id", ""),
    "MQTT-3.8.4-3": ("identical filter replaces the subscription, resends retained", ""),
    "MQTT-3.8.4-4": ("several filters handled as a sequence of SUBSCRIBEs", ""),
    "MQTT-3.8.4-5": ("one SUBACK code per filter", ""),
    "MQTT-3.8.4-6": ("granted QoS may be lower than requested", ""),
    "MQTT-3.9.3-1": ("SUBACK codes in filter order", ""),
    "MQTT-3.9.3-2": ("SUBACK codes only 00 01 02 80", ""),
    "MQTT-3.10.1-1": ("UNSUBSCRIBE flags 0010, else close", ""),
    "MQTT-3.10.3-1": ("UNSUBSCRIBE filters are UTF-8 strings", ""),
    "MQTT-3.10.3-2": ("UNSUBSCRIBE has at least one filter", ""),
    "MQTT-3.10.4-1": ("unsubscribe compares filters character by character", ""),
    "MQTT-3.10.4-2": ("stop adding messages for the removed subscription", ""),
    "MQTT-3.10.4-3": ("finish QoS 1/2 messages already started",
                      "needs a message in flight at the instant of UNSUBSCRIBE"),
    "MQTT-3.10.4-4": ("answer UNSUBSCRIBE with UNSUBACK", ""),
    "MQTT-3.10.4-5": ("UNSUBACK even if nothing was removed", ""),
    "MQTT-3.10.4-6": ("several filters handled as a sequence, one UNSUBACK", ""),
    "MQTT-3.12.4-1": ("answer PINGREQ with PINGRESP", ""),
    "MQTT-3.14.1-1": ("DISCONNECT reserved bits 0, else close", ""),
    "MQTT-3.14.4-3": ("DISCONNECT discards the Will", ""),
    "MQTT-4.1.0-1": ("keep the session for its whole life", _UNTESTABLE_SESSION),
    "MQTT-4.1.0-2": ("a session lasts at least as long as its connection", _UNTESTABLE_SESSION),
    "MQTT-4.3.1-1": ("QoS 0 sender: QoS 0, DUP 0", ""),
    "MQTT-4.3.2-1": ("QoS 1 sender: new id, DUP 0, until PUBACK", ""),
    "MQTT-4.3.2-2": ("QoS 1 receiver: PUBACK, then the id is new", ""),
    "MQTT-4.3.3-1": ("QoS 2 sender: PUBREL after PUBREC, no PUBLISH resend after it", ""),
    "MQTT-4.3.3-2": ("QoS 2 receiver: PUBREC, dedup until PUBREL, PUBCOMP", ""),
    "MQTT-4.4.0-1": ("resend unacknowledged PUBLISH and PUBREL on resume", ""),
    "MQTT-4.5.0-1": ("queue messages for every matching session", ""),
    "MQTT-4.6.0-1": ("resend in the original order", ""),
    "MQTT-4.6.0-2": ("PUBACKs in the order the PUBLISHes arrived", ""),
    "MQTT-4.6.0-3": ("PUBRECs in the order the PUBLISHes arrived", ""),
    "MQTT-4.6.0-4": ("PUBRELs in the order the PUBRECs arrived", ""),
    "MQTT-4.6.0-5": ("a server treats each topic as an ordered topic by default", ""),
    "MQTT-4.6.0-6": ("messages to one topic forwarded in order", ""),
    "MQTT-4.7.1-1": ("wildcards only in filters", ""),
    "MQTT-4.7.1-2": ("'#' alone or after '/', and last", ""),
    "MQTT-4.7.1-3": ("'+' fills a whole level", ""),
    "MQTT-4.7.2-1": ("filters starting with a wildcard do not match '$' topics", ""),
    "MQTT-4.7.3-1": ("topic names and filters at least one character", ""),
    "MQTT-4.7.3-2": ("no U+0000 in topic names and filters", ""),
    "MQTT-4.7.3-3": ("topic names and filters at most 65,535 bytes",
                     "a 16-bit length prefix cannot announce a longer string"),
    "MQTT-4.7.3-4": ("no normalization when matching", ""),
    "MQTT-4.8.0-1": ("protocol violation: close", ""),
    "MQTT-4.8.0-2": ("transient error: close",
                     "needs a server-side resource failure that no packet can provoke"),
    "MQTT-6.0.0-1": ("MQTT in WebSocket binary frames", ""),
    "MQTT-6.0.0-2": ("packets may span WebSocket frames", ""),
    "MQTT-6.0.0-4": ("the server selects the 'mqtt' subprotocol", ""),
}


def section_of(statement: str) -> str:
    """The ``SECTIONS`` key for a statement id such as ``"MQTT-3.8.4-5"``."""
    number = statement.removeprefix("MQTT-").replace("3-8.", "3.8.")
    major = number.split(".")[0]
    if major != "3":
        return major
    minor = int(number.split(".")[1].split("-")[0])
    for key in ("3.1", "3.2", "3.3"):
        if minor == int(key[2:]):
            return key
    if 4 <= minor <= 7:
        return "3.4-3.7"
    if minor in (8, 9):
        return "3.8-3.9"
    if minor in (10, 11):
        return "3.10-3.11"
    return "3.12-3.14"
