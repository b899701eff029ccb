"""IoT Edge routes: ``FROM <source> [WHERE <condition>] INTO <sink>``, parsed
and matched (pure; no I/O).

Sources, as edgeHub names a message's origin (a module's message comes from
``/messages/modules/{module}/outputs/{output}``, or ``/messages/modules/{module}``
when it names no output)::

    /*  /messages/*  /messages/modules/*  /messages/modules/{m}/*
    /messages/modules/{m}/outputs/*  /messages/modules/{m}/outputs/{o}

A source ending in ``/*`` matches its prefix and everything below it; other
sources match exactly.  Sinks: ``$upstream`` (to the hub: the hub's telemetry)
and ``BrokeredEndpoint("/modules/{m}/inputs/{i}")`` (a module's input).

``WHERE`` conditions (a subset of IoT Hub's routing query language): the
comparisons ``= != <> < <= > >=`` between a property and a literal (a
quoted string, a number, ``true``/``false``), ``AND``, ``OR``, ``NOT``,
parentheses and ``IS_DEFINED(prop)``.  A bare name is an application
property; ``$contentType``, ``$contentEncoding``, ``$messageId``,
``$correlationId``, ``$connectionDeviceId``, ``$connectionModuleId`` and
``$outputName`` are system properties.  A comparison with a missing property
is false; a numeric literal compares numerically with a property that parses
as a number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Route", "parse_route"]

Properties = Mapping[str, str | None]
Condition = Callable[[Properties], bool]

_ROUTE_RE = re.compile(
    r"^\s*FROM\s+(?P<source>\S+)\s+(?:WHERE\s+(?P<where>.+?)\s+)?INTO\s+(?P<sink>.+?)\s*$",
    re.IGNORECASE | re.DOTALL)
_SINK_RE = re.compile(
    r'^BrokeredEndpoint\(\s*"/modules/(?P<module>[^/"]+)/inputs/(?P<input>[^/"]+)"\s*\)$',
    re.IGNORECASE)
_SOURCE_RE = re.compile(
    r"^/(\*|messages/(\*|modules/(\*|[^/*]+/(\*|outputs/(\*|[^/*]+)))))$")
_SYSTEM = {"$contenttype": "$.ct", "$contentencoding": "$.ce", "$messageid": "$.mid",
           "$correlationid": "$.cid", "$connectiondeviceid": "$.cdid",
           "$connectionmoduleid": "$.cmid", "$outputname": "$.on"}
_TOKEN_RE = re.compile(r"""\s*(?:(?P<str>'(?:[^']|'')*'|"[^"]*")|(?P<num>-?\d+(?:\.\d+)?)
    |(?P<op><>|!=|<=|>=|=|<|>|\(|\)|,)|(?P<name>\$?[A-Za-z_][A-Za-z0-9_\-.]*))""", re.VERBOSE)


@dataclass(frozen=True, slots=True)
class Route:
    """One parsed route.

    Attributes:
        name: the route's name.
        text: the route as written.
        source: the ``FROM`` path.
        module: the target module of a ``BrokeredEndpoint`` (``None`` for ``$upstream``).
        input_name: the target input (``None`` for ``$upstream``).
    """

    name: str
    text: str
    source: str
    module: str | None
    input_name: str | None
    condition: Condition | None = None

    def matches(self, origin: str, properties: Properties) -> bool:
        """Whether a message from ``origin`` (e.g. ``/messages/modules/a/outputs/o1``)
        with these properties (application ones by name, system ones as
        ``$.ct``...) takes this route."""
        if self.source.endswith("/*"):
            prefix = self.source[:-2]
            if not (origin == prefix or origin.startswith(prefix + "/") or prefix == ""):
                return False
        elif origin != self.source:
            return False
        return self.condition is None or self.condition(properties)


def parse_route(name: str, text: str) -> Route:
    """Parse ``FROM <source> [WHERE <condition>] INTO <sink>``.

    Raises:
        ValueError: the route, its source, sink or condition is malformed
            (the message names the part).
    """
    match = _ROUTE_RE.match(text)
    if match is None:
        raise ValueError(f"route {name!r}: expected FROM <source> [WHERE <condition>] "
                         f"INTO <sink>, got {text!r}")
    source, where, sink = match["source"], match["where"], match["sink"].strip()
    if not _SOURCE_RE.match(source):
        raise ValueError(f"route {name!r}: unknown source {source!r} (for example "
                         "/messages/* or /messages/modules/filter/outputs/output1)")
    module = input_name = None
    if sink.lower() != "$upstream":
        target = _SINK_RE.match(sink)
        if target is None:
            raise ValueError(f"route {name!r}: unknown sink {sink!r} (use $upstream or "
                             'BrokeredEndpoint("/modules/{module}/inputs/{input}"))')
        module, input_name = target["module"], target["input"]
    condition = _Parser(name, where).parse() if where else None
    return Route(name, text, source, module, input_name, condition)


class _Parser:
    """Recursive descent over the WHERE tokens, building closures."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        position = 0
        while position < len(text):
            if text[position:].strip() == "":
                break
            match = _TOKEN_RE.match(text, position)
            if match is None or match.end() == position:
                raise self._error(f"cannot read {text[position:position + 20]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match[kind]))
            position = match.end()
        self.index = 0

    def _error(self, what: str) -> ValueError:
        return ValueError(f"route {self.name!r}: WHERE {self.text!r}: {what}")

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _word(self, word: str) -> bool:
        token = self._peek()
        if token is not None and token[0] == "name" and token[1].upper() == word:
            self.index += 1
            return True
        return False

    def _expect(self, op: str) -> None:
        token = self._peek()
        if token != ("op", op):
            raise self._error(f"expected {op!r}")
        self.index += 1

    def parse(self) -> Condition:
        condition = self._or()
        if self._peek() is not None:
            raise self._error(f"unexpected {self._peek()[1]!r}")  # type: ignore[index]
        return condition

    def _or(self) -> Condition:
        left = self._and()
        while self._word("OR"):
            left = _either(left, self._and())
        return left

    def _and(self) -> Condition:
        left = self._not()
        while self._word("AND"):
            left = _both(left, self._not())
        return left

    def _not(self) -> Condition:
        if self._word("NOT"):
            inner = self._not()
            return lambda p: not inner(p)
        return self._comparison()

    def _comparison(self) -> Condition:
        token = self._peek()
        if token == ("op", "("):
            self.index += 1
            inner = self._or()
            self._expect(")")
            return inner
        if token is not None and token[0] == "name" and token[1].upper() == "IS_DEFINED":
            self.index += 1
            self._expect("(")
            key = self._property()
            self._expect(")")
            return lambda p: p.get(key) is not None
        key = self._property()
        token = self._peek()
        if token is None or token[0] != "op" or token[1] in "(),":
            raise self._error(f"expected a comparison after {key!r}")
        self.index += 1
        literal = self._literal()
        return _compare(key, token[1], literal)

    def _property(self) -> str:
        token = self._peek()
        if token is None or token[0] != "name":
            raise self._error("expected a property name")
        self.index += 1
        name = token[1]
        if name.startswith("$"):
            system = _SYSTEM.get(name.lower())
            if system is None:
                raise self._error(f"unknown system property {name!r}")
            return system
        return name

    def _literal(self) -> Any:
        token = self._peek()
        if token is None:
            raise self._error("expected a value")
        self.index += 1
        kind, text = token
        if kind == "str":
            return text[1:-1].replace("''", "'") if text[0] == "'" else text[1:-1]
        if kind == "num":
            return float(text)
        if kind == "name" and text.lower() in ("true", "false"):
            return text.lower()
        raise self._error(f"expected a quoted string, a number or true/false, not {text!r}")


def _either(a: Condition, b: Condition) -> Condition:
    return lambda p: a(p) or b(p)


def _both(a: Condition, b: Condition) -> Condition:
    return lambda p: a(p) and b(p)


def _compare(key: str, op: str, literal: Any) -> Condition:
    def check(properties: Properties) -> bool:
        value = properties.get(key)
        if value is None:
            return False
        left: Any = value
        right: Any = literal
        if isinstance(literal, float):
            try:
                left = float(value)
            except ValueError:
                return False
        if op == "=":
            return bool(left == right)
        if op in ("!=", "<>"):
            return bool(left != right)
        if op == "<":
            return bool(left < right)
        if op == "<=":
            return bool(left <= right)
        if op == ">":
            return bool(left > right)
        return bool(left >= right)
    return check
