"""Topic names, topic filters and matching (MQTT 3.1.1 section 4.7).

``topic_name_problem`` / ``topic_filter_problem`` return ``None`` for a valid
string or ``(reason, rule)``; the codec wraps that in the error class that fits
the side at fault.  The public helpers raise ``LocalProtocolError``.
"""

from __future__ import annotations

from ._errors import LocalProtocolError

__all__ = [
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]

_MAX_STRING = 65535


def string_problem(value: str) -> tuple[str, str] | None:
    """Common UTF-8 string rules for any MQTT string (1.5.3)."""
    if "\x00" in value:
        return "contains U+0000", "MQTT-1.5.3-2"
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate and is not well-formed UTF-8", "MQTT-1.5.3-1"
    if len(encoded) > _MAX_STRING:
        return f"is {len(encoded)} bytes long, the limit is 65535", "MQTT-4.7.3-3"
    return None


def topic_name_problem(name: str) -> tuple[str, str] | None:
    """Why ``name`` is not a valid topic name, or ``None``."""
    if not name:
        return "is empty", "MQTT-4.7.3-1"
    if "+" in name or "#" in name:
        return "contains a wildcard ('+' or '#')", "MQTT-3.3.2-2"
    return string_problem(name)


def filter_levels_problem(topic_filter: str) -> tuple[str, str] | None:
    """Wildcard placement rules of a topic filter (4.7.1), no string checks."""
    if "+" not in topic_filter and "#" not in topic_filter:
        return None
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#":
                return f"'#' must occupy a whole level, got {level!r}", "MQTT-4.7.1-2"
            if i != last:
                return "'#' must be the last level", "MQTT-4.7.1-2"
        if "+" in level and level != "+":
            return f"'+' must occupy a whole level, got {level!r}", "MQTT-4.7.1-3"
    return None


def topic_filter_problem(topic_filter: str) -> tuple[str, str] | None:
    """Why ``topic_filter`` is not a valid topic filter, or ``None``."""
    if not topic_filter:
        return "is empty", "MQTT-4.7.3-1"
    return filter_levels_problem(topic_filter) or string_problem(topic_filter)


def validate_topic_name(name: str) -> None:
    """Check a topic name (PUBLISH, Will topic).

    Raises:
        LocalProtocolError: naming the rule broken.
    """
    if not isinstance(name, str):
        raise LocalProtocolError(f"must be str, not {type(name).__name__}", field="topic name")
    problem = topic_name_problem(name)
    if problem:
        raise LocalProtocolError(problem[0], field="topic name", rule=problem[1])


def validate_topic_filter(topic_filter: str) -> None:
    """Check a topic filter (SUBSCRIBE, UNSUBSCRIBE).

    Raises:
        LocalProtocolError: naming the rule broken.
    """
    if not isinstance(topic_filter, str):
        raise LocalProtocolError(
            f"must be str, not {type(topic_filter).__name__}", field="topic filter"
        )
    problem = topic_filter_problem(topic_filter)
    if problem:
        raise LocalProtocolError(problem[0], field="topic filter", rule=problem[1])


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (4.7.1, 4.7.2).

    Matching is level by level with exact character comparison.  ``+`` matches
    one level (possibly empty), ``#`` the parent level and everything below it.
    A filter starting with ``+`` or ``#`` never matches a topic starting with
    ``$`` [MQTT-4.7.2-1].  Both arguments are assumed valid.
    """
    if topic[:1] == "$" and topic_filter[:1] in ("+", "#"):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return topic_filter == topic
    flevels = topic_filter.split("/")
    tlevels = topic.split("/")
    ntopic = len(tlevels)
    for i, level in enumerate(flevels):
        if level == "#":
            return True
        if i >= ntopic:
            return False
        if level != "+" and level != tlevels[i]:
            return False
    return len(flevels) == ntopic
