"""Frozen value classes without ``dataclasses``: the run-time half of the
generated packets and events (``_packets``, ``_events``), also used by hand for
iotdev's ``ConnectionString`` and ``SasToken``.

A class declares ``__match_args__`` (its fields, in order), ``__slots__`` and
an ``__init__`` that stores each field with ``set_field`` (what
``scripts/gen_records.py`` writes out from a dataclass declaration).
``@record`` then adds what ``@dataclass(frozen=True, slots=True)`` would:
``__repr__``, ``__eq__`` and ``__hash__`` over the fields (unless the class
defines its own), ``__setattr__`` and ``__delattr__`` raising
``dataclasses.FrozenInstanceError`` with the same messages, ``__getstate__`` /
``__setstate__`` (pickle and ``copy``), and ``__replace__`` (``copy.replace()``,
Python 3.13+).  For type checkers ``record`` is a ``dataclass_transform``, so
fields are read-only there too.

``mutable_record`` is ``@dataclass`` (mutable, with ``__dict__``) for
configuration classes: it reads the class's own annotations and defaults
(``field(default=..., default_factory=..., repr=False)`` as in
``dataclasses``) and adds the ``__init__`` (calling ``__post_init__`` when
defined), ``__repr__``, ``__eq__`` (so ``__hash__`` is ``None``) and
``__match_args__`` a dataclass would.  No ``dataclasses`` or ``inspect`` at import
time (about 4 ms and 1 MB): ``dataclasses`` is imported on the error path only.

``fast_constructor(cls)`` builds instances faster on hot paths.  A frozen
class's ``__init__`` sets each field through ``object.__setattr__``, which
costs about twice a plain slotted ``__init__``.  Where every field is already
validated (decoded packets, engine events), the twin class it returns has the
same slots and a plain ``__init__`` that fills them and then switches the
instance's class to ``cls``: the result is an ordinary, frozen ``cls``
instance (``type(x) is cls``, ``x == cls(...)``, assignment raises
``FrozenInstanceError``).  Arguments are positional, in field order.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter
from typing import TYPE_CHECKING, Any, TypeVar

__all__ = ["fast_constructor", "field", "frozen_error", "mutable_record", "record", "set_field"]

T = TypeVar("T")

set_field = object.__setattr__
"""Store a field of a frozen instance (what a frozen dataclass's ``__init__`` does)."""


def frozen_error(message: str) -> AttributeError:
    """The ``dataclasses.FrozenInstanceError`` (an ``AttributeError``) for ``message``."""
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(message)


def _record(cls: type[T]) -> type[T]:
    fields: tuple[str, ...] = cls.__match_args__  # type: ignore[attr-defined]
    # The fields as a tuple, as a dataclass compares and hashes them.
    key: Callable[[object], tuple[Any, ...]]
    if len(fields) > 1:
        key = attrgetter(*fields)
    elif fields:
        one = attrgetter(fields[0])

        def key(obj: object) -> tuple[Any, ...]:
            return (one(obj),)
    else:

        def key(obj: object) -> tuple[Any, ...]:
            return ()

    def __repr__(self: T) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields)
        return f"{self.__class__.__qualname__}({shown})"

    def __eq__(self: T, other: object) -> bool:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    def __hash__(self: T) -> int:
        return hash(key(self))

    def __setattr__(self: T, name: str, value: object) -> None:
        if type(self) is cls or name in fields:
            raise frozen_error(f"cannot assign to field {name!r}")
        set_field(self, name, value)

    def __delattr__(self: T, name: str) -> None:
        if type(self) is cls or name in fields:
            raise frozen_error(f"cannot delete field {name!r}")
        object.__delattr__(self, name)

    def __getstate__(self: T) -> list[object]:
        return [getattr(self, name) for name in fields]

    def __setstate__(self: T, state: list[object]) -> None:
        for name, value in zip(fields, state, strict=False):
            set_field(self, name, value)

    def __replace__(self: T, /, **changes: Any) -> T:
        values = {name: getattr(self, name) for name in fields}
        values.update(changes)  # an unknown name is __init__'s TypeError
        return self.__class__(**values)

    own = cls.__dict__
    # A class that defines __eq__ gets __hash__ = None in its namespace; that
    # is not an explicit __hash__ (dataclasses' rule).
    explicit_hash = "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)
    methods: list[Callable[..., Any]] = [
        __setattr__, __delattr__, __getstate__, __setstate__, __replace__]
    methods += [m for m in (__repr__, __eq__) if m.__name__ not in own]
    if not explicit_hash:
        methods.append(__hash__)
    for method in methods:
        method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
        setattr(cls, method.__name__, method)
    return cls


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform

    @dataclass_transform(frozen_default=True)
    def record(cls: type[T]) -> type[T]:
        """Type checkers see a frozen dataclass (read-only fields, its ``__init__``)."""
        return cls

else:
    record = _record


class _Missing:
    def __repr__(self) -> str:
        return "<factory>"


_MISSING: Any = _Missing()


class _Field:
    __slots__ = ("default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Callable[[], Any] | None,
                 repr: bool) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr


def field(*, default: Any = _MISSING, default_factory: Callable[[], Any] | None = None,
          repr: bool = True) -> Any:
    """A field's default and whether ``repr()`` shows it, as ``dataclasses.field``."""
    return _Field(default, default_factory, repr)


def _mutable_record(cls: type[T]) -> type[T]:
    own = cls.__dict__
    names: list[str] = []
    shown: list[str] = []
    params: list[str] = []
    body: list[str] = []
    namespace: dict[str, Any] = {"_MISSING": _MISSING}
    for name, annotation in own.get("__annotations__", {}).items():
        if "ClassVar" in str(annotation):
            continue
        spec = own.get(name, _MISSING)
        if not isinstance(spec, _Field):
            spec = _Field(spec, None, True)
        names.append(name)
        if spec.repr:
            shown.append(name)
        if spec.default_factory is not None:
            namespace[f"_factory_{name}"] = spec.default_factory
            params.append(f"{name}=_MISSING")
            body.append(f"    self.{name} = _factory_{name}() if {name} is _MISSING else {name}")
            delattr(cls, name)
        elif spec.default is not _MISSING:
            namespace[f"_default_{name}"] = spec.default
            params.append(f"{name}=_default_{name}")
            body.append(f"    self.{name} = {name}")
            setattr(cls, name, spec.default)
        else:
            if params and "=" in params[-1]:
                raise TypeError(f"non-default argument {name!r} follows default argument")
            params.append(name)
            body.append(f"    self.{name} = {name}")
    if "__post_init__" in own:
        body.append("    self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n" + "\n".join(body or ["    pass"])
    exec(source, namespace)
    init = namespace["__init__"]
    fields = tuple(names)
    key = attrgetter(*fields) if fields else (lambda obj: ())

    def __repr__(self: T) -> str:
        text = ", ".join(f"{name}={getattr(self, name)!r}" for name in shown)
        return f"{self.__class__.__qualname__}({text})"

    def __eq__(self: T, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(key(self) == key(other))
        return NotImplemented

    if "__match_args__" not in own:
        cls.__match_args__ = fields  # type: ignore[attr-defined,misc]
    if "__eq__" not in own:
        cls.__hash__ = None  # type: ignore[assignment]
    methods: list[Callable[..., Any]] = [init]
    methods += [m for m in (__repr__, __eq__) if m.__name__ not in own]
    for method in methods:
        method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
        setattr(cls, method.__name__, method)
    return cls


if TYPE_CHECKING:

    @dataclass_transform(field_specifiers=(field,))
    def mutable_record(cls: type[T]) -> type[T]:
        """Type checkers see a dataclass (its ``__init__``, mutable fields)."""
        return cls

else:
    mutable_record = _mutable_record


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
