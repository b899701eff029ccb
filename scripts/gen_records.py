"""Write ``iotdev_mqtt/_packets.py`` and ``_events.py`` from their dataclass declarations.

The packet and event types are declared as ``@dataclass(frozen=True, slots=True)``
in ``scripts/records/`` (the readable source of truth).  Building dataclasses
costs about a third of a millisecond per class at import time and pulls in
``dataclasses`` and ``inspect``, so the package ships plain slotted classes
written out from those declarations: ``__slots__``, ``__match_args__`` and the
``__init__`` a frozen dataclass would generate for each;
``iotdev_mqtt._records.record`` adds the methods that are alike for all
(``__repr__``, ``__eq__``, ``__hash__`` over the fields, refusing
``__setattr__`` / ``__delattr__``, ``__getstate__`` / ``__setstate__``,
``__replace__``).  ``tests/test_records.py`` checks that the files are current
and that each class behaves as its dataclass.

Usage::

    python scripts/gen_records.py           # rewrite the generated files
    python scripts/gen_records.py --check   # exit 1 if they are out of date
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parent.parent
SPECS = {
    REPO / "scripts" / "records" / "packets.py": REPO / "iotdev_mqtt" / "_packets.py",
    REPO / "scripts" / "records" / "events.py": REPO / "iotdev_mqtt" / "_events.py",
}
WIDTH = 100
HELPERS = "from ._records import record, set_field"


class Field(NamedTuple):
    name: str
    annotation: str
    default: str | None


def _lines(source: list[str], node: ast.stmt) -> list[str]:
    """The source lines of ``node``, decorators included."""
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    assert node.end_lineno is not None
    return source[first - 1 : node.end_lineno]


def _is_record(node: ast.stmt) -> bool:
    if not isinstance(node, ast.ClassDef):
        return False
    for deco in node.decorator_list:
        if (isinstance(deco, ast.Call) and isinstance(deco.func, ast.Name)
                and deco.func.id == "dataclass"):
            flags = {k.arg: k.value for k in deco.keywords}
            ok = all(isinstance(flags.get(k), ast.Constant) and flags[k].value is True  # type: ignore[attr-defined]
                     for k in ("frozen", "slots"))
            if ok and set(flags) == {"frozen", "slots"}:
                return True
            raise SystemExit(f"{node.name}: only @dataclass(frozen=True, slots=True) is supported")
    return False


def _tuple(items: list[str], indent: str, wrap: bool = False) -> str:
    """``(a, b)`` on one line if it fits, else one item per line."""
    if not items:
        return "()"
    one = "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if not wrap and len(indent) + len(one) + 20 <= WIDTH:
        return one
    inner = "".join(f"{indent}    {item},\n" for item in items)
    return f"(\n{inner}{indent})"


def _record(source: list[str], node: ast.ClassDef) -> list[str]:
    name = node.name
    body = list(node.body)
    out = [f"@record\nclass {name}:"]
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        out.append("".join(_lines(source, body.pop(0))).rstrip("\n"))
        out.append("")
    fields: list[Field] = []
    classvars: list[str] = []
    other: list[str] = []
    for stmt in body:
        text = "".join(_lines(source, stmt)).rstrip("\n")
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            annotation = ast.unparse(stmt.annotation)
            if annotation.startswith("ClassVar"):
                classvars.append(text)
                continue
            default = None if stmt.value is None else ast.get_source_segment(
                "".join(source), stmt.value)
            if default is None and fields and fields[-1].default is not None:
                raise SystemExit(f"{name}.{stmt.target.id}: no default after a default")
            fields.append(Field(stmt.target.id, annotation, default))
        else:
            other.append(text)
    names = [f.name for f in fields]
    quoted = [f'"{n}"' for n in names]
    out.append(f"    __match_args__ = {_tuple(quoted, '    ')}")
    out.append("    __slots__ = __match_args__  # fields in order, as a dataclass's")
    if classvars or fields:
        out.append("")
    out.extend(classvars)
    out.extend(f"    {f.name}: {f.annotation}" for f in fields)

    params = [f"{f.name}: {f.annotation}" + ("" if f.default is None else f" = {f.default}")
              for f in fields]
    signature = f"    def __init__(self{''.join(', ' + p for p in params)}) -> None:"
    if len(signature) > WIDTH:
        signature = ("    def __init__(\n        self,\n"
                     + "".join(f"        {p},\n" for p in params) + "    ) -> None:")
    out += ["", signature]
    out += [f'        set_field(self, "{n}", {n})' for n in names] or ["        pass"]

    for text in other:
        out += ["", text]
    return out


def generate(spec: Path) -> str:
    """The generated module for the declarations in ``spec``."""
    text = spec.read_text()
    source = text.splitlines(keepends=True)
    tree = ast.parse(text)
    target = SPECS[spec].relative_to(REPO)
    header = [f"# Generated by scripts/gen_records.py from {spec.relative_to(REPO)}: do not edit.",
              "# Change the declarations there and run: python scripts/gen_records.py"]
    stdlib: list[str] = []
    local: list[tuple[str, str]] = [("_records", HELPERS)]
    blocks: list[list[str]] = []
    body = list(tree.body)
    doc = "".join(_lines(source, body.pop(0))).rstrip("\n")
    future = body.pop(0)
    assert isinstance(future, ast.ImportFrom) and future.module == "__future__", target
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module == "dataclasses":
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            local.append((node.module or "", "".join(_lines(source, node)).rstrip("\n")))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            stdlib.append("".join(_lines(source, node)).rstrip("\n"))
        elif _is_record(node):
            assert isinstance(node, ast.ClassDef)
            blocks.append(_record(source, node))
        else:
            blocks.append(["".join(_lines(source, node)).rstrip("\n")])
    imports = [*stdlib, ""] if stdlib else []
    imports += [line for _, line in sorted(local)]
    parts = [*header, doc, "", "from __future__ import annotations", "", *imports]
    previous_class = False
    for block in blocks:
        is_class = block[0].startswith("@record")
        # Two blank lines around classes, as the declarations have them.
        parts += ["", ""] if (is_class or previous_class) else [""]
        parts += block
        previous_class = is_class
    return "\n".join(parts) + "\n"


def main(argv: list[str]) -> int:
    check = argv[1:] == ["--check"]
    if argv[1:] and not check:
        print(__doc__)
        return 2
    stale = []
    for spec, target in SPECS.items():
        new = generate(spec)
        if target.read_text() != new:
            stale.append(target.relative_to(REPO))
            if not check:
                target.write_text(new)
    if check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run python scripts/gen_records.py")
        return 1
    for path in stale:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
