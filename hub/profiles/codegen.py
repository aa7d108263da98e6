"""One point's tags and fields, as one generated Python function per point spec.

``hub.profiles.decoder`` compiles every value into a chain of closures (reference getter,
default and type check, conversion): four or five calls per field, some sixty per lamp
message, most of the decoder's time. Here the common shapes are written out as straight-line
source, compiled once when a profile loads:

- the reference read inline (a path of object keys in the payload, a fan-out item or a
  picked entry; a topic level, a frame value, an item's own key);
- the happy case checked inline: a value already of the field's type (a finite float, an int
  in 64 bits, a bool, a string), a bit of an integer, an integer or float scaled or divided;
- everything else (a missing value, a default, a conversion, an error) handed to the very
  same compiled finisher the decoder uses, so results and error messages cannot differ.

Values of other kinds (``sum``, ``count``, ``join``, ``const``, ``map``) call their compiled
evaluator as before. No text of a profile is ever pasted into the source: names,
keys and constants reach the function through its namespace, as ``_k0``, ``_k1``, ...
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hub.model import FieldValue
from hub.profiles.schema import ValueSpec

#: (tags, fields) of one point from the decoding context and the device id
ValuesFn = Callable[[Any, str], tuple[dict[str, str], dict[str, FieldValue]]]
#: the decoder's compiled value: (evaluator of the context, finisher of a value read)
Slow = tuple[Callable[[Any], FieldValue | None], Callable[[Any], FieldValue | None]]
#: one tag or field: its name, its spec and its compiled value
Compiled = tuple[str, ValueSpec, Slow]

_INT64 = f"{-(2**63)} <= v <= {2**63 - 1}"
# (condition on the value read, the value to store) for a value with no transformation
_HAPPY: dict[str, list[tuple[str, str]]] = {
    # finite: inf - inf and nan - nan are nan; an int in 64 bits converts exactly as before
    "float": [
        ("type(v) is float and v - v == 0.0", "v"),
        (f"type(v) is int and {_INT64}", "float(v)"),
    ],
    "int": [(f"type(v) is int and {_INT64}", "v")],
    "bool": [("type(v) is bool", "v")],
    "string": [("type(v) is str", "v")],
}


class _Source:
    """Lines of the function being written, and the constants they refer to."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.namespace = namespace

    def const(self, value: object) -> str:
        name = f"_k{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def add(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)


def _path(ref: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in ref.split("."))


def _read(src: _Source, ref: str, json_root: bool) -> None:
    """Lines reading ``ref`` into ``v`` as ``decoder.compile_ref`` does."""
    prefix, sep, rest = ref.partition(":")
    if not sep:
        if ref == "payload":
            src.add(1, "v = root")
        else:
            _walk(src, "root", _path(ref), known_dict=json_root)
        return
    if prefix in ("topic", "frame"):  # flat maps of names
        src.add(1, f"v = {prefix}.get({src.const(rest)}, MISSING)")
        return
    if prefix == "item":
        if rest == "@key":
            src.add(1, "v = MISSING if key is None else key")
        else:
            _walk(src, "item", _path(rest), known_dict=False)
        return
    name, _, path = rest.partition(".")  # pick:name.path
    src.add(1, f"v = c.picks.get({src.const(name)}, MISSING)")
    if path:
        _walk(src, "v", _path(path), known_dict=False)


def _walk(src: _Source, start: str, parts: tuple[str | int, ...], *, known_dict: bool) -> None:
    """Lines following object keys from ``start`` (``decoder._walk``: anything but an object
    on the way gives MISSING); paths with list indexes call ``walk`` itself."""
    if not all(isinstance(part, str) for part in parts):
        src.add(1, f"v = walk({start}, {src.const(parts)})")
        return
    value = start
    for number, part in enumerate(parts):
        get = f"{value}.get({src.const(part)}, MISSING)"
        if number == 0 and known_dict:  # a JSON message's root is an object (checked before)
            src.add(1, f"v = {get}")
        else:
            src.add(1, f"v = {get} if isinstance({value}, dict) else MISSING")
        value = "v"


def _happy(src: _Source, spec: ValueSpec) -> list[tuple[str, str]] | None:
    """(condition, value) pairs of the common cases of ``spec`` (its value read into ``v``),
    or None: no inline case, the evaluator does it all."""
    if spec.map is not None:
        return None
    if spec.bit is not None:
        if spec.scale is not None or spec.divide is not None:
            return None
        return [("type(v) is int", f"bool((v >> {spec.bit}) & 1)")]
    if spec.scale is not None or spec.divide is not None:
        if spec.type != "float":
            return None
        number = "v"
        if spec.scale is not None:
            number = f"({number} * {src.const(spec.scale)})"
        if spec.divide is not None:
            number = f"({number} / {src.const(spec.divide)})"
        # the result must still be finite: computed, then checked like any float
        return [(f"(type(v) is int or type(v) is float) and finite({number})", f"float({number})")]
    return _HAPPY[spec.type]


def _value(
    src: _Source,
    name: str,
    spec: ValueSpec,
    slow: Slow,
    *,
    tag: bool,
    json_root: bool,
) -> None:
    """Lines computing one value into the point's tags (``tag``) or fields.

    ``slow`` is (evaluator, finisher) from the decoder: the evaluator reads and finishes the
    value itself; the finisher takes a value already read (a missing one included) and
    converts it, or raises the decode error.
    """
    evaluator, finisher = slow
    key = src.const(name)
    store = f"tags[{key}] = tag_text({key}, v)" if tag else f"fields[{key}] = v"
    keep = "v is not None and v != ''" if tag else "v is not None"
    cases = _happy(src, spec) if spec.from_ is not None else None
    if cases is None or spec.from_ is None:
        src.add(1, f"v = {src.const(evaluator)}(c)")
        src.add(1, f"if {keep}:")
        src.add(2, store)
        return
    _read(src, spec.from_, json_root)
    for number, (condition, value) in enumerate(cases):
        src.add(1, f"{'elif' if number else 'if'} {condition}:")
        if value != "v":
            src.add(2, f"v = {value}")
        if tag and spec.type == "string":
            # tag_text's checks, inline: text that can be a tag is stored as it is
            src.add(2, "if v:")
            src.add(3, "if '\\n' in v or '\\r' in v or v[-1] == '\\\\':")
            src.add(4, store)
            src.add(3, "else:")
            src.add(4, f"tags[{key}] = v")
        elif tag:
            src.add(2, "if v != '':")
            src.add(3, store)
        else:
            src.add(2, store)
    src.add(1, "else:")
    src.add(2, f"v = {src.const(finisher)}(v)")
    src.add(2, f"if {keep}:")
    src.add(3, store)


def generate(
    tags: list[Compiled],
    fields: list[Compiled],
    *,
    json_root: bool,
    helpers: dict[str, Any],
) -> ValuesFn:
    """The function giving one point's (tags, fields); ``helpers`` are the decoder's
    ``MISSING``, ``walk`` and ``tag_text``."""
    namespace: dict[str, Any] = {**helpers, "finite": math.isfinite}
    src = _Source(namespace)
    src.add(0, "def values(c, device_id):")
    src.add(1, "root, topic, frame, item, key = c.root, c.topic, c.frame, c.item, c.key")
    src.add(1, "tags = {'device_id': device_id}")
    src.add(1, "fields = {}")
    for name, spec, slow in tags:
        _value(src, name, spec, slow, tag=True, json_root=json_root)
    for name, spec, slow in fields:
        _value(src, name, spec, slow, tag=False, json_root=json_root)
    src.add(1, "return tags, fields")
    code = compile("\n".join(src.lines), "<profile point values>", "exec")
    exec(code, namespace)  # noqa: S102  # our own source; profile text only as constants
    made: ValuesFn = namespace["values"]
    return made
