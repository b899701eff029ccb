"""Twin-document rules (reference section 7.4): which keys and values a twin
section may hold, how big a section is, and how a patch merges.  Pure
functions over JSON values; errors are ``TwinError`` with the status the
service answers."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from ._records import (
    TWIN_INT_MAX,
    TWIN_INT_MIN,
    TWIN_MAX_DEPTH,
    TWIN_MAX_KEY_BYTES,
    TWIN_MAX_STRING_BYTES,
    TwinError,
)

__all__ = ["check_document", "check_size", "merge", "twin_section_size"]


def _is_control(char: str) -> bool:
    """C0 and C1 control characters (and DEL between them), Unicode category Cc."""
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


def _where(section: str, path: tuple[str, ...]) -> str:
    return ".".join((section, *path))


def _check_key(section: str, path: tuple[str, ...], key: object) -> str:
    where = _where(section, path)
    if not isinstance(key, str):
        raise TwinError(400, f"{where}: key {key!r} is not a string")
    if not key:
        raise TwinError(400, f"{where}: empty key")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > TWIN_MAX_KEY_BYTES:
        raise TwinError(
            400, f"{where}: key {key[:32]!r}... is {size} bytes, over {TWIN_MAX_KEY_BYTES}"
        )
    for char in key:
        if char in ".$ " or _is_control(char):
            raise TwinError(
                400, f"{where}: key {key!r} contains {char!r} (no '.', '$', space or "
                "control characters)"
            )
    return key


def _check_value(section: str, path: tuple[str, ...], value: object, depth: int) -> None:
    """Check ``value`` found at ``path``.

    ``depth`` counts the containers between the section root and ``value``
    (0 for a root member), so an object or array is allowed up to
    ``TWIN_MAX_DEPTH`` keys below the root, as in the service's example (ten
    nested objects, the innermost holding a plain property).
    """
    if value is None or isinstance(value, bool):
        return
    where = _where(section, path)
    if isinstance(value, int):
        if not TWIN_INT_MIN <= value <= TWIN_INT_MAX:
            raise TwinError(
                400, f"{where}: integer {value} is outside {TWIN_INT_MIN}..{TWIN_INT_MAX}"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TwinError(400, f"{where}: {value} is not a JSON number")
    elif isinstance(value, str):
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > TWIN_MAX_STRING_BYTES:
            raise TwinError(
                400, f"{where}: string of {size} bytes is over {TWIN_MAX_STRING_BYTES}"
            )
    elif isinstance(value, dict | list):
        if depth + 1 > TWIN_MAX_DEPTH:
            raise TwinError(
                400, f"{where}: nested deeper than {TWIN_MAX_DEPTH} levels"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                name = _check_key(section, path, key)
                _check_value(section, (*path, name), item, depth + 1)
        else:
            for index, item in enumerate(value):
                _check_value(section, (*path, f"[{index}]"), item, depth + 1)
    else:
        raise TwinError(400, f"{where}: {type(value).__name__} is not a JSON value")


def check_document(section: str, document: object) -> dict[str, Any]:
    """Validate a patch (or a whole tags object) against reference 7.4."""
    if not isinstance(document, dict):
        raise TwinError(
            400, f"{section}: the document must be a JSON object, not {type(document).__name__}"
        )
    for key, item in document.items():
        name = _check_key(section, (), key)
        _check_value(section, (name,), item, 0)
    return document


def _text_size(text: str) -> int:
    return sum(1 for char in text if not _is_control(char))


def twin_section_size(document: Mapping[str, Any]) -> int:
    """The size IoT Hub charges a twin section against its limit.

    The service's rule ("Understand device twins", twin size): each property
    adds the length of its key and of its value; strings count their
    characters except C0/C1 control characters, numbers 8, booleans 4, a
    nested object the sum over its members.  Arrays (not covered by the rule)
    count the sum of their elements, and ``null`` inside an array counts 0.
    ``$version``/``$metadata`` are never part of a stored section.
    """
    return sum(_text_size(key) + _value_size(value) for key, value in document.items())


def _value_size(value: object) -> int:
    if isinstance(value, bool):
        return 4
    if isinstance(value, int | float):
        return 8
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, dict):
        return twin_section_size(value)
    if isinstance(value, list):
        return sum(_value_size(item) for item in value)
    return 0


def merge(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``target`` with ``patch`` merged in (null deletes, objects merge)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = merge(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def check_size(section: str, document: Mapping[str, Any], limit: int) -> None:
    size = twin_section_size(document)
    if size > limit:
        raise TwinError(413, f"{section}: the section would be {size} bytes, over {limit}")

