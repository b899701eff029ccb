"""The generated packet and event classes are current and behave as the
``@dataclass(frozen=True, slots=True)`` declarations they come from.

``scripts/records/*.py`` declares every packet and event as a frozen, slotted
dataclass; ``scripts/gen_records.py`` writes ``iotdev_mqtt/_packets.py`` and
``_events.py`` from them as plain slotted classes (no ``dataclasses`` at import
time).  Here each generated class is compared with the real dataclass built
from the same declaration: signature and defaults, ``__slots__`` and
``__match_args__``, ``repr``, ``==``, ``hash``, the exception and message on
assignment and deletion, pickling and copying, subclasses.
"""

from __future__ import annotations

import copy
import importlib.util
import inspect
import pickle
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import FrozenInstanceError, is_dataclass
from pathlib import Path
from typing import Any

import pytest

import iotdev_mqtt
from iotdev_mqtt import _events, _packets
from iotdev_mqtt._records import fast_constructor

REPO = Path(__file__).resolve().parent.parent


def _load_generator() -> types.ModuleType:
    path = REPO / "scripts" / "gen_records.py"
    spec = importlib.util.spec_from_file_location("gen_records", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GEN = _load_generator()


def _reference(stem: str) -> types.ModuleType:
    """The declarations of ``scripts/records/<stem>.py`` as real dataclasses
    (relative imports resolve inside ``iotdev_mqtt``)."""
    name = f"iotdev_mqtt._reference_{stem}"
    module = types.ModuleType(name)
    module.__package__ = "iotdev_mqtt"
    path = REPO / "scripts" / "records" / f"{stem}.py"
    sys.modules[name] = module
    try:
        exec(compile(path.read_text(), str(path), "exec"), module.__dict__)
    finally:
        del sys.modules[name]
    return module


REFERENCE = {"packets": _reference("packets"), "events": _reference("events")}
GENERATED = {"packets": _packets, "events": _events}


def _pairs() -> Iterator[tuple[str, type, type]]:
    for stem, module in GENERATED.items():
        for name in module.__all__:
            ours = getattr(module, name)
            if isinstance(ours, type):
                yield name, ours, getattr(REFERENCE[stem], name)


PAIRS = list(_pairs())
IDS = [name for name, _, _ in PAIRS]

# Two different sample values per annotation, so that equality can be seen to fail.
SAMPLES: dict[str, tuple[Any, Any]] = {
    "str": ("a/b", "c"),
    "bytes": (b"\x00x", b""),
    "int": (1, 300),
    "bool": (True, False),
    "int | None": (7, None),
    "str | None": ("user", None),
    "bytes | None": (b"pw", None),
    "Will | None": (_packets.Will("w/t", b"bye", 1, True), None),
    "tuple[tuple[str, int], ...]": ((("a/#", 1), ("b", 0)), (("c", 2),)),
    "tuple[int, ...]": ((0, 128), (1,)),
    "tuple[str, ...]": (("a", "b/+"), ("c",)),
    "Connect": (_packets.Connect("dev", keep_alive=30), _packets.Connect("other")),
}


def _values(cls: type, which: int = 0) -> dict[str, Any]:
    hints = inspect.signature(cls).parameters
    return {name: SAMPLES[str(p.annotation)][which] for name, p in hints.items()}


def test_generated_files_are_current() -> None:
    for spec, target in GEN.SPECS.items():
        assert GEN.generate(spec) == target.read_text(), (
            f"{target} is out of date: run python scripts/gen_records.py")


def test_every_declared_class_is_generated() -> None:
    assert len(PAIRS) == 15 + 13  # Will and the 14 packets; 13 events
    for name, ours, ref in PAIRS:
        assert is_dataclass(ref) and not is_dataclass(ours), name


def test_import_loads_neither_dataclasses_nor_inspect() -> None:
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import iotdev_mqtt; "
             "print(sorted({'dataclasses', 'inspect'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-S", "-c", probe, str(REPO)], capture_output=True,
                          text=True, check=True, timeout=60)
    assert done.stdout.strip() == "[]"
    assert Path(iotdev_mqtt.__file__).resolve().parent.parent == REPO


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_class_shape_matches_the_dataclass(name: str, ours: type, ref: type) -> None:
    assert ours.__name__ == ref.__name__ == name
    assert ours.__doc__ == ref.__doc__
    assert ours.__slots__ == ref.__slots__  # type: ignore[attr-defined]
    assert ours.__match_args__ == ref.__match_args__  # type: ignore[attr-defined]
    assert getattr(ours, "packet_type", None) == getattr(ref, "packet_type", None)
    assert "__dict__" not in dir(ours) and "__weakref__" not in dir(ours)
    assert list(inspect.signature(ours).parameters.values()) == list(
        inspect.signature(ref).parameters.values())
    for method in ("__eq__", "__hash__", "__lt__", "__le__", "__gt__", "__ge__"):
        assert (method in vars(ours)) == (method in vars(ref)), method


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_instances_behave_as_the_dataclass(name: str, ours: type, ref: type) -> None:
    values, other = _values(ours), _values(ours, 1)
    a, r = ours(**values), ref(**values)
    assert repr(a) == repr(r)
    assert hash(a) == hash(r)
    assert a.__getstate__() == r.__getstate__()
    assert a == ours(*values.values()) and not a != ours(**values)
    assert hash(a) == hash(ours(*values.values()))
    if values:
        assert a != ours(**other) and (ours(**other) == ref(**other)) is False
    assert a.__eq__(r) is NotImplemented and r.__eq__(a) is NotImplemented
    assert a.__eq__(object()) is NotImplemented
    assert a != r  # different classes are never equal, as between two dataclasses
    # Defaults: only the fields without one.
    required = {k: v for k, v in values.items()
                if inspect.signature(ours).parameters[k].default is inspect.Parameter.empty}
    assert repr(ours(**required)) == repr(ref(**required))


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_frozen_as_the_dataclass(name: str, ours: type, ref: type) -> None:
    values = _values(ours)
    a, r = ours(**values), ref(**values)
    for field in values:
        with pytest.raises(FrozenInstanceError) as mine:
            setattr(a, field, 1)
        with pytest.raises(FrozenInstanceError) as theirs:
            setattr(r, field, 1)
        assert str(mine.value) == str(theirs.value) == f"cannot assign to field {field!r}"
        with pytest.raises(FrozenInstanceError) as mine:
            delattr(a, field)
        with pytest.raises(FrozenInstanceError) as theirs:
            delattr(r, field)
        assert str(mine.value) == str(theirs.value) == f"cannot delete field {field!r}"
    assert a == ours(**values)  # nothing changed


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_frozen_against_names_that_are_not_fields(name: str, ours: type, ref: type) -> None:
    """A frozen slotted dataclass means to raise ``FrozenInstanceError`` here;
    CPython 3.10 to 3.13 raise ``TypeError`` from its ``super()`` call instead
    (its ``__setattr__`` refers to the class that ``slots=True`` replaced).  We
    raise what was meant: an ``AttributeError``, as any slotted class does."""
    a, r = ours(**_values(ours)), ref(**_values(ref))
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'not_a_field'"):
        a.not_a_field = 1
    with pytest.raises(FrozenInstanceError, match="cannot delete field 'not_a_field'"):
        del a.not_a_field
    with pytest.raises((FrozenInstanceError, TypeError)):
        r.not_a_field = 1


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_pickle_copy_and_replace(name: str, ours: type, ref: type) -> None:
    values, other = _values(ours), _values(ours, 1)
    a = ours(**values)
    for clone in (pickle.loads(pickle.dumps(a)), copy.copy(a), copy.deepcopy(a)):
        assert type(clone) is ours and clone == a and repr(clone) == repr(a)
    assert a.__replace__() == a
    for field, value in other.items():
        changed = a.__replace__(**{field: value})
        assert changed == ours(**{**values, field: value})
    with pytest.raises(TypeError):
        a.__replace__(not_a_field=1)


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_subclasses(name: str, ours: type, ref: type) -> None:
    """A plain subclass may set attributes that are not fields (what a frozen
    dataclass's ``__setattr__`` is written to allow), never fields; it keeps
    ``repr`` and ``==`` of its base."""
    values = _values(ours)
    sub = type("Sub", (ours,), {})(**values)
    sub.extra = 1
    assert sub.extra == 1
    assert repr(sub) == "Sub(" + repr(ours(**values)).split("(", 1)[1]
    assert sub != ours(**values) and sub == type(sub)(**values)
    for field in values:
        with pytest.raises(FrozenInstanceError):
            setattr(sub, field, 2)


@pytest.mark.parametrize(("name", "ours", "ref"), PAIRS, ids=IDS)
def test_fast_constructor_builds_the_same_value(name: str, ours: type, ref: type) -> None:
    values = _values(ours)
    fast = fast_constructor(ours)(*values.values())
    assert type(fast) is ours and fast == ours(**values) and hash(fast) == hash(ours(**values))
    if values:
        with pytest.raises(FrozenInstanceError):
            setattr(fast, next(iter(values)), None)


def test_pattern_matching() -> None:
    from iotdev_mqtt import MessageReceived, PingReq, Publish

    def kind(p: object) -> str:
        match p:
            case Publish(topic, payload, qos=1):
                return f"q1 {topic} {payload!r}"
            case Publish(topic=t, retain=True):
                return f"retained {t}"
            case MessageReceived(_, _, _, _, _, None):
                return "qos0 message"
            case PingReq():
                return "ping"
        return "other"

    assert kind(Publish("a", b"x", qos=1, packet_id=3)) == "q1 a b'x'"
    assert kind(Publish("b", retain=True)) == "retained b"
    assert kind(MessageReceived("t", b"", 0, False, False, None)) == "qos0 message"
    assert kind(PingReq()) == "ping"
    assert kind(Publish("c")) == "other"


# --------------------------------------------------------------------------- iotdev's own

# Value classes of iotdev written out instead of built by @dataclass at import
# (see README "Footprint on small boards"), against the dataclass they replace:
# (class, frozen, slots, has its own repr).
def _iotdev_classes() -> list[tuple[type, bool, bool, bool]]:
    from iotdev import _session
    from iotdev._auth import ConnectionString, SasToken
    from iotdev._provisioning import Request
    from iotdev.transport._credentials import X509
    from iotdev.transport._options import ConnectOptions, Credentials, ReconnectPolicy

    outputs = [_session.Identity, _session.Publish, _session.Subscribe, _session.Unsubscribe,
               _session.Received, _session.TwinDone, _session.Problem, Request]
    return [(ConnectionString, True, True, True), (SasToken, True, True, False),
            (Credentials, False, False, True), (ConnectOptions, False, False, False),
            (ReconnectPolicy, False, False, False), (X509, True, False, True),
            *[(cls, True, True, False) for cls in outputs]]


@pytest.mark.parametrize(("cls", "frozen", "slots", "own_repr"), _iotdev_classes(),
                         ids=lambda v: getattr(v, "__name__", str(v)))
def test_iotdev_value_classes_behave_as_their_dataclass(
        cls: type, frozen: bool, slots: bool, own_repr: bool) -> None:
    import dataclasses

    params = list(inspect.signature(cls).parameters.values())
    assert tuple(p.name for p in params) == cls.__match_args__  # type: ignore[attr-defined]
    ref = dataclasses.make_dataclass(
        cls.__name__,
        [(p.name, object) if p.default is p.empty else (p.name, object, p.default)
         for p in params],
        frozen=frozen, slots=slots)
    values = {p.name: f"v-{p.name}" for p in params}
    other = {**values, params[0].name: "changed"}
    ours, theirs = cls(**values), ref(**values)
    assert ref.__match_args__ == cls.__match_args__  # type: ignore[attr-defined]
    if not own_repr:
        assert repr(ours) == repr(theirs)
    assert ours == cls(*values.values()) and ours != cls(**other)
    assert ours.__eq__(theirs) is NotImplemented
    assert (cls.__hash__ is None) == (ref.__hash__ is None)
    if frozen:
        assert hash(ours) == hash(theirs)
        with pytest.raises(FrozenInstanceError, match="cannot assign to field"):
            setattr(ours, params[0].name, 1)
        with pytest.raises(FrozenInstanceError, match="cannot delete field"):
            delattr(ours, params[0].name)
        assert ours.__replace__(**{params[0].name: "changed"}) == cls(**other)
    else:
        setattr(ours, params[0].name, "changed")
        assert ours == cls(**other)
    assert hasattr(ours, "__dict__") == hasattr(theirs, "__dict__")
    clone = pickle.loads(pickle.dumps(ours))
    assert clone == ours and copy.deepcopy(ours) == ours
    # Defaults as declared.
    required = {p.name: values[p.name] for p in params if p.default is p.empty}
    assert all(getattr(cls(**required), p.name) == p.default
               for p in params if p.default is not p.empty)


def test_session_outputs_without_fields() -> None:
    from iotdev._session import Reauthorize, TokenRequired

    for cls in (Reauthorize, TokenRequired):
        assert cls() == cls() and hash(cls()) == hash(()) and repr(cls()) == f"{cls.__name__}()"
        assert cls.__match_args__ == () and not hasattr(cls(), "__dict__")
        with pytest.raises(FrozenInstanceError):
            cls().x = 1  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- mutable_record


def _declare_config(decorator: Any, field: Any) -> type:
    class Config:
        name: str
        port: int = 1
        secret: str | None = field(default=None, repr=False)
        headers: list[str] = field(default_factory=list)

        def __post_init__(self) -> None:
            if self.port < 0:
                raise ValueError("port must not be negative")

        def describe(self) -> str:
            return f"{self.name}:{self.port}"

    return decorator(Config)  # type: ignore[no-any-return]


def test_mutable_record_behaves_as_the_dataclass() -> None:
    import dataclasses

    from iotdev_mqtt._records import field, mutable_record

    ours = _declare_config(mutable_record, field)
    ref = _declare_config(dataclasses.dataclass, dataclasses.field)
    ours_params = inspect.signature(ours).parameters.values()
    ref_params = inspect.signature(ref).parameters.values()
    assert [(p.name, repr(p.default), p.kind) for p in ours_params] == \
        [(p.name, repr(p.default), p.kind) for p in ref_params]
    assert ours.__match_args__ == ref.__match_args__ == ("name", "port", "secret", "headers")  # type: ignore[attr-defined]
    assert ours.__hash__ is None and ref.__hash__ is None
    assert ours.port == ref.port == 1 and not hasattr(ours, "headers")  # type: ignore[attr-defined]
    for args in [("a",), ("a", 2, "s", ["h"])]:
        a, b = ours(*args), ref(*args)
        assert repr(a) == repr(b)
        assert vars(a) == vars(b)
        assert a == ours(*args) and a != ours("other") and a.__eq__(b) is NotImplemented
        assert copy.copy(a) == a and copy.deepcopy(a) == a  # (a local class: no pickle)
        a.port = 5
        assert a.describe() == "a:5"
    assert ours("a").headers is not ours("a").headers  # a fresh list each time
    with pytest.raises(ValueError, match="negative"):
        ours("a", -1)
    with pytest.raises(TypeError):
        ours()


def test_iotdev_configurations_are_mutable_records() -> None:
    import ssl

    from iotdev._hubclient import HubConfig
    from iotdev._provisioning_config import ProvisioningConfig
    from iotdev.transport._endpoint import Endpoint

    config = HubConfig("hub", "dev", symmetric_key="a2V5", sastoken="SharedAccessSignature x")
    assert "a2V5" not in repr(config) and "SharedAccessSignature" not in repr(config)
    assert repr(config).startswith("HubConfig(hostname='hub', device_id='dev', module_id=None,")
    assert config._contexts == {} and config._contexts is not HubConfig("h", "d")._contexts
    assert config == HubConfig("hub", "dev", symmetric_key="a2V5",
                               sastoken="SharedAccessSignature x")
    assert HubConfig.__match_args__[:3] == ("hostname", "device_id", "module_id")  # type: ignore[attr-defined]
    prov = ProvisioningConfig("dps", "reg", "scope", symmetric_key="a2V5")
    assert "a2V5" not in repr(prov) and prov.port is None
    endpoint = Endpoint("h", 8883, "tls", ssl.create_default_context())
    assert endpoint.ws_headers == [] and endpoint.connect_timeout == 30.0
    with pytest.raises(ValueError, match="needs a tls_context"):
        Endpoint("h", 8883, "tls")  # __post_init__ still validates
