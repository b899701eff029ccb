"""The registry of fuzz targets.

A target is a name plus a function that takes ``bytes``:

* it returns a short *outcome label* (``str``), e.g. ``"CONNECT+PUBLISH"`` or
  ``"MalformedPacket PUBLISH/topic name [MQTT-3.3.2-2]"``.  The engine counts
  distinct labels for its report and keeps a mutated input in its corpus when
  it produced a label not seen before, so a label should name a *class* of
  behaviour (packet types, error class and rule), not the input's details;
* it raises ``AssertionError`` when an invariant breaks.  Any other exception
  that escapes is a breach too (the engine records it the same way), but a
  target should catch what the code under test may legitimately raise and turn
  everything else into ``AssertionError ... from exc`` with a message that
  starts with a ``[tag]`` naming the invariant: the minimizer keeps inputs that
  fail with the same tag.

It must be deterministic: the same bytes give the same label or the same breach
(derive any randomness from the input, e.g. ``random.Random(zlib.crc32(data))``),
so a crash file reproduces with ``python -m fuzz --reproduce PATH``.

Adding a target, e.g. for the connection engines::

    # in fuzz/targets.py, or in a new module listed in TARGET_MODULES below
    from fuzz.checks import Plain, check_split_invariance, error_label
    from fuzz.registry import register

    @register("client-connection", "ClientConnection.receive_data after CONNECT")
    def client_connection(data: bytes) -> str:
        def fresh() -> Plain:
            conn = ClientConnection()
            conn.connect("fuzz", now=0.0)
            conn.data_to_send()
            return Plain(lambda chunk: conn.receive_data(chunk, now=1.0), conn.data_to_send)
        run = check_split_invariance(
            fresh, data, partial=lambda exc: exc.events,
            buffer_types=False, empty_chunks=False,  # b"" is EOF for receive_data
            dead_after_error=b"\\xd0\\x00", dead_error=ProtocolError,
        )
        return error_label(run.error)   # or the event types seen

``check_split_invariance`` feeds whole, byte by byte and in random chunks and
requires the same items, the same error and the same ``state()``; a ``Feeder``
with a ``check()`` adds invariants that hold after every call (see
``targets._Reader``, which bounds ``PacketReader.buffered``).

``register`` takes an optional ``seeds`` callable returning extra seed inputs
for that target (e.g. streams that start with a CONNACK); a target also gets
the shared MQTT corpus of ``corpus.py`` unless ``shared_seeds=False`` (targets
whose input is text, not MQTT bytes), and the checked-in inputs of
``fuzz/corpus/<name>/`` (see ``store.py``).  Two more options serve the
engines:

* ``instrument``: the modules (or packages: every loaded submodule) whose
  functions the atheris engine instruments for coverage, e.g.
  ``("iotdev._auth",)``; default ``("iotdev_mqtt",)``;
* ``tokens``: dictionary words for the mutators (``"HostName="``,
  ``b"Content-Length: "``): the stdlib mutator inserts them, atheris passes them
  to libFuzzer as ``-dict``.

The CLI lists targets with ``--list`` and runs one with ``--target NAME``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["TARGETS", "TARGET_MODULES", "Target", "TargetFn", "get_target", "load_targets",
           "register"]

TargetFn = Callable[[bytes], str]
SeedFn = Callable[[], Iterable[bytes]]

# Modules whose import registers targets; add yours here.
TARGET_MODULES: tuple[str, ...] = (
    "fuzz.targets",
    "fuzz.engine_targets",
    "fuzz.topic_targets",
    "fuzz.hub_targets",
    "fuzz.auth_targets",
    "fuzz.http_targets",
    "fuzz.dps_targets",
    "fuzz.conformance_targets",
)


@dataclass(frozen=True, slots=True)
class Target:
    """One registered target.

    Attributes:
        name: the CLI name, also the prefix of its crash files.
        fn: the function under fuzz (see the module docstring).
        description: one line for ``--list``.
        seeds: extra seed inputs for this target, or ``None``.
        shared_seeds: whether the shared MQTT corpus of ``corpus.py`` seeds it too.
        instrument: modules or packages atheris instruments for this target.
        tokens: dictionary words for the mutators.
    """

    name: str
    fn: TargetFn
    description: str = ""
    seeds: SeedFn | None = None
    shared_seeds: bool = True
    instrument: tuple[str, ...] = ("iotdev_mqtt",)
    tokens: tuple[bytes, ...] = ()


TARGETS: dict[str, Target] = {}


def register(
    name: str,
    description: str = "",
    *,
    seeds: SeedFn | None = None,
    shared_seeds: bool = True,
    instrument: tuple[str, ...] = ("iotdev_mqtt",),
    tokens: Iterable[bytes | str] = (),
) -> Callable[[TargetFn], TargetFn]:
    """Decorator: register ``fn`` as the target ``name`` (options: see ``Target``).

    Raises:
        ValueError: ``name`` is already registered or is not a simple name.
    """
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"target name must be letters, digits, '-' or '_', got {name!r}")

    def deco(fn: TargetFn) -> TargetFn:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} is registered twice")
        words = tuple(t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in tokens)
        TARGETS[name] = Target(name, fn, description, seeds, shared_seeds, instrument, words)
        return fn

    return deco


def load_targets() -> dict[str, Target]:
    """Import every module of ``TARGET_MODULES`` and return the registry."""
    for module in TARGET_MODULES:
        importlib.import_module(module)
    return TARGETS


def get_target(name: str) -> Target:
    """The target ``name``.

    Raises:
        KeyError: no such target (the message lists the known ones).
    """
    targets = load_targets()
    try:
        return targets[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known: {', '.join(sorted(targets))}") from None
