"""Fast construction of frozen, slotted dataclass instances on hot paths.

A frozen dataclass's ``__init__`` sets each field through
``object.__setattr__``, which costs about twice a plain slotted ``__init__``.
Where every field is already validated (decoded packets, engine events),
``fast_constructor(cls)`` returns a twin class with the same slots whose plain
``__init__`` fills the slots and then switches the instance's class to ``cls``.
The result is an ordinary, frozen ``cls`` instance (``type(x) is cls``,
``x == cls(...)``, assignment raises ``FrozenInstanceError``).  Arguments are
positional, in field order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["fast_constructor"]

T = TypeVar("T")


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    slots: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
    params = "".join(f", {name}" for name in slots)
    body = "".join(f"        self.{name} = {name}\n" for name in slots)
    source = (
        "class Twin:\n"
        f"    __slots__ = {slots!r}\n"
        f"    def __init__(self{params}):\n"
        f"{body}"
        "        self.__class__ = cls\n"
    )
    namespace: dict[str, Any] = {"cls": cls}
    exec(source, namespace)
    twin = namespace["Twin"]
    twin.__qualname__ = twin.__name__ = f"_Fast{cls.__name__}"
    return twin  # type: ignore[no-any-return]
