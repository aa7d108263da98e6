"""Decode stage: a message spec compiled once into closures, then applied to each payload.

``MessageDecoder.decode(raw, captured)`` turns one ``RawMessage`` into a ``Decoded`` (the
device id and its points) or raises ``DecodeError`` with a stable reason code:

``too_large`` ``not_utf8`` ``invalid_json`` ``bad_topic`` ``missing_key`` ``wrong_type``
``bad_value`` ``invalid_frame`` ``unknown_port`` ``truncated_frame`` ``wrong_column_count``
``empty_payload``

A message is decoded whole or not at all: one bad lane dead-letters the whole message, so a
reading is never half stored.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from hub.errors import DecodeError
from hub.model import Decoded, FieldValue, Point, RawMessage, TimeProblem
from hub.profiles.codegen import Compiled, generate
from hub.profiles.schema import (
    DelimitedSpec,
    FrameSpec,
    MessageSpec,
    PointSpec,
    SelectSpec,
    TimeSpec,
    ValueSpec,
)

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_PAST_MS = 7 * 24 * 3600 * 1000
MAX_FUTURE_MS = 5 * 60 * 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class _Missing:
    """Marks a reference that found nothing (distinct from a JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Ctx:
    """What references are resolved against while decoding one message."""

    __slots__ = ("frame", "item", "key", "picks", "root", "topic")

    def __init__(self, root: Any, topic: dict[str, str]) -> None:
        self.root = root
        self.topic = topic
        self.frame: dict[str, int | float] = {}
        self.picks: dict[str, Any] = {}
        self.item: Any = MISSING
        self.key: str | None = None


Getter = Callable[[Ctx], Any]
#: ``None``: values are JSON, a string is never a number. ``False``/``True``: values are text
#: cells, parsed as numbers with a decimal point / a decimal comma.
TextNumbers = bool | None
Evaluator = Callable[[Ctx], FieldValue | None]


def _walk(value: Any, parts: tuple[str | int, ...]) -> Any:
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, MISSING) if isinstance(part, str) else MISSING
            if value is MISSING:
                # numeric-looking map keys stay strings in JSON
                return MISSING
        elif isinstance(value, list) and isinstance(part, int):
            if -len(value) <= part < len(value):
                value = value[part]
            else:
                return MISSING
        else:
            return MISSING
    return value


def _path_parts(path: str) -> tuple[str | int, ...]:
    return tuple(int(p) if p.lstrip("-").isdigit() else p for p in path.split("."))


def compile_ref(ref: str) -> Getter:
    """A getter for one reference string (see ``hub.profiles.schema``)."""
    prefix, sep, rest = ref.partition(":")
    if not sep:
        if ref == "payload":
            return lambda c: c.root
        parts = _path_parts(ref)
        if len(parts) == 1 and isinstance(parts[0], str):
            key = parts[0]
            return lambda c: c.root.get(key, MISSING) if isinstance(c.root, dict) else MISSING
        return lambda c: _walk(c.root, parts)
    if prefix == "topic":
        return lambda c: c.topic.get(rest, MISSING)
    if prefix == "frame":
        return lambda c: c.frame.get(rest, MISSING)
    if prefix == "item":
        if rest == "@key":
            return lambda c: MISSING if c.key is None else c.key
        item_parts = _path_parts(rest)
        return lambda c: _walk(c.item, item_parts)
    name, _, path = rest.partition(".")
    pick_parts = _path_parts(path) if path else ()
    return lambda c: _walk(c.picks.get(name, MISSING), pick_parts)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_number(value: Any, what: str, text: TextNumbers) -> int | float:
    """A JSON number as-is; a string only when the payload is text (CSV cells)."""
    if _is_number(value):
        return value  # type: ignore[no-any-return]  # narrowed by _is_number
    if text is not None and isinstance(value, str):
        cleaned = value.strip().replace(",", ".") if text else value.strip()
        try:
            return int(cleaned)
        except ValueError:
            try:
                return float(cleaned)
            except ValueError:
                raise DecodeError("bad_value", f"{what}: {value!r} is not a number") from None
    raise DecodeError("wrong_type", f"{what}: expected a number, got {_type_name(value)}")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _convert(value: Any, type_: str, what: str, text: TextNumbers) -> FieldValue:
    if type_ == "float":
        number = float(_to_number(value, what, text))
        if not math.isfinite(number):
            raise DecodeError("bad_value", f"{what}: {value!r} is not a finite number")
        return number
    if type_ == "int":
        number = _to_number(value, what, text)
        if isinstance(number, float):
            if not number.is_integer():
                raise DecodeError("wrong_type", f"{what}: expected an integer, got {value!r}")
            number = int(number)
        if not -(2**63) <= number < 2**63:
            raise DecodeError("bad_value", f"{what}: {number} does not fit a 64-bit integer")
        return number
    if type_ == "bool":
        if isinstance(value, bool):
            return value
        if (
            text is not None
            and isinstance(value, str)
            and value.strip().lower()
            in (
                "true",
                "false",
            )
        ):
            return value.strip().lower() == "true"
        raise DecodeError("wrong_type", f"{what}: expected a boolean, got {value!r}")
    # string
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if _is_number(value):
        return str(value)
    raise DecodeError("wrong_type", f"{what}: expected a string, got {_type_name(value)}")


def _finisher(
    spec: ValueSpec, what: str, source_text: str, text: TextNumbers
) -> Callable[[Any], FieldValue | None]:
    """Default, map, bit, scaling and type conversion of a raw value."""
    type_ = spec.type
    default, required = spec.default, spec.required
    mapping, bit, scale, divide = spec.map, spec.bit, spec.scale, spec.divide
    # a JSON value already of the field's type needs no conversion (the common case)
    native: type[Any] = {"float": float, "int": int, "string": str, "bool": bool}[type_]

    def present(raw: Any) -> Any:
        """The raw value, the default when absent, or MISSING for "omit it"."""
        if raw is MISSING or raw is None:
            if default is not None:
                return default
            if required:
                raise DecodeError("missing_key", f"{what}: no value at {source_text}")
            return MISSING
        return raw

    def plain(raw: Any) -> FieldValue | None:
        raw = present(raw)
        if raw is MISSING:
            return None
        if type(raw) is native and (
            native is str
            or native is bool
            or (native is float and math.isfinite(raw))
            or (native is int and -(2**63) <= raw < 2**63)
        ):
            value: FieldValue = raw
            return value
        return _convert(raw, type_, what, text)

    def transformed(raw: Any) -> FieldValue | None:
        raw = present(raw)
        if raw is MISSING:
            return None
        if mapping is not None:
            mapped = mapping.get(raw if isinstance(raw, str) else str(raw), MISSING)
            if mapped is not MISSING:
                raw = mapped
        if bit is not None:
            if not isinstance(raw, int) or isinstance(raw, bool):
                raise DecodeError("wrong_type", f"{what}: bit {bit} of a non-integer")
            return bool((raw >> bit) & 1)
        if scale is not None or divide is not None:
            number: float = _to_number(raw, what, text)
            if scale is not None:
                number = number * scale
            if divide is not None:
                number = number / divide
            raw = number
        return _convert(raw, type_, what, text)

    if mapping is None and bit is None and scale is None and divide is None:
        return plain
    return transformed


def compile_finisher(
    name: str, spec: ValueSpec, text: TextNumbers
) -> Callable[[Any], FieldValue | None]:
    """Default, map, bit, scaling and type conversion of a value already read."""
    return _finisher(spec, name, _source_text(spec), text)


def _source_text(spec: ValueSpec) -> str:
    if spec.from_ is not None:
        return spec.from_
    if spec.sum is not None:
        return "sum of " + ", ".join(spec.sum)
    return spec.count or spec.join or "const"


def compile_value(
    name: str,
    spec: ValueSpec,
    text: TextNumbers,
    finish: Callable[[Any], FieldValue | None] | None = None,
) -> Evaluator:
    """An evaluator for one field/tag: ``None`` means "absent, omit it". ``finish``: the
    value's finisher (``compile_finisher``) when the caller holds it already."""
    what = name
    if finish is None:
        finish = compile_finisher(name, spec, text)
    if spec.const is not None:
        const = spec.const
        return lambda c: finish(const)
    if spec.from_ is not None:
        getter = compile_ref(spec.from_)
        return lambda c: finish(getter(c))
    if spec.sum is not None:
        getters = [(ref, compile_ref(ref)) for ref in spec.sum]

        def total(c: Ctx) -> FieldValue | None:
            acc: int | float = 0
            for ref, get in getters:
                part = get(c)
                if part is MISSING or part is None:
                    continue  # a class missing from the counts counts as 0
                acc += _to_number(part, f"{what} ({ref})", text)
            return finish(acc)

        return total
    list_ref = spec.count if spec.count is not None else spec.join
    assert list_ref is not None  # noqa: S101  # guaranteed by ValueSpec._one_source
    list_getter = compile_ref(list_ref)
    counting = spec.count is not None
    separator = spec.separator

    def from_list(c: Ctx) -> FieldValue | None:
        items = list_getter(c)
        if items is MISSING or items is None:
            if spec.required and spec.default is None:
                raise DecodeError("missing_key", f"{what}: no list at {list_ref}")
            items = []
        if not isinstance(items, list):
            raise DecodeError("wrong_type", f"{what}: {list_ref} is not a list")
        if counting:
            return finish(len(items))
        texts = []
        for entry in items:
            if not isinstance(entry, str | int | float) or isinstance(entry, bool):
                raise DecodeError("wrong_type", f"{what}: {list_ref} holds {_type_name(entry)}")
            texts.append(str(entry))
        return finish(separator.join(texts))

    return from_list


def _iso_ms(value: str) -> int | None:
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    return (stamp - _EPOCH) // _MS


def compile_time(spec: TimeSpec | None) -> Callable[[Ctx, int, str], tuple[int, str | None]]:
    """A function giving (time_ms, problem kind or None) for a point context."""
    if spec is None:
        return lambda c, received_ms, device_id: (received_ms, None)
    getter = compile_ref(spec.from_)
    fmt = spec.format

    def stamp(c: Ctx, received_ms: int, device_id: str) -> tuple[int, str | None]:
        raw = getter(c)
        if raw is MISSING or raw is None:
            return received_ms, "missing"
        value: int | None = None
        if fmt == "iso8601":
            value = _iso_ms(raw) if isinstance(raw, str) else None
        elif _is_number(raw) and math.isfinite(raw):
            scaled = raw * 1000 if fmt == "epoch_s" else raw
            # seconds near the largest float are no time: * 1000 overflows to infinity
            value = round(scaled) if math.isfinite(scaled) else None
        if value is None:
            return received_ms, "unparsable"
        if value < received_ms - MAX_PAST_MS:
            return received_ms, "too_old"
        if value > received_ms + MAX_FUTURE_MS:
            return received_ms, "in_future"
        return value, None

    return stamp


_STRUCT_CODES = {
    "uint8": "B",
    "int8": "b",
    "uint16": "H",
    "int16": "h",
    "uint32": "I",
    "int32": "i",
    "float32": "f",
}


class _Frame:
    def __init__(self, spec: FrameSpec) -> None:
        order = ">" if spec.byte_order == "big" else "<"
        self._source = compile_ref(spec.source)
        self._source_ref = spec.source
        self._port = compile_ref(spec.port) if spec.port else None
        self._port_ref = spec.port
        self._hex = spec.encoding == "hex"
        self._layouts: dict[int, tuple[struct.Struct, tuple[str, ...]]] = {
            port: (
                struct.Struct(order + "".join(_STRUCT_CODES[f.type] for f in fields)),
                tuple(f.name for f in fields),
            )
            for port, fields in spec.layouts.items()
        }
        self._only = next(iter(self._layouts.values())) if self._port is None else None

    def read(self, c: Ctx) -> None:
        encoded = self._source(c)
        if encoded is MISSING or encoded is None:
            raise DecodeError("missing_key", f"frame: no value at {self._source_ref}")
        if not isinstance(encoded, str):
            raise DecodeError("wrong_type", f"frame: {self._source_ref} is not a string")
        try:
            data = (
                bytes.fromhex(encoded)
                if self._hex
                else base64.b64decode(encoded.encode("ascii"), validate=True)
            )
        except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
            raise DecodeError("invalid_frame", f"frame: {self._source_ref}: {exc}") from None
        if self._port is not None:
            port = self._port(c)
            if port is MISSING or port is None:
                raise DecodeError("missing_key", f"frame: no port at {self._port_ref}")
            if not isinstance(port, int) or isinstance(port, bool):
                raise DecodeError("wrong_type", f"frame: port {self._port_ref} is not an integer")
            layout = self._layouts.get(port)
            if layout is None:
                known = ", ".join(str(p) for p in sorted(self._layouts))
                raise DecodeError("unknown_port", f"port {port} is not one of {known}")
        else:
            assert self._only is not None  # noqa: S101  # set when there is no port
            layout, port = self._only, None
        layout_struct, names = layout
        if len(data) < layout_struct.size:
            where = f"port {port} " if port is not None else ""
            raise DecodeError(
                "truncated_frame",
                f"{where}frame needs {layout_struct.size} bytes, got {len(data)}",
            )
        c.frame = dict(zip(names, layout_struct.unpack_from(data), strict=True))


def _compile_select(spec: SelectSpec) -> Callable[[Any], Any]:
    getter = compile_ref(spec.from_)
    key = spec.max_by if spec.max_by is not None else spec.min_by
    biggest = spec.max_by is not None

    def select(c: Ctx) -> Any:
        items = getter(c)
        if not isinstance(items, list):
            return MISSING
        best: Any = MISSING
        best_value: float = 0.0
        for entry in items:
            value: Any = entry.get(key) if isinstance(entry, dict) else None
            if not _is_number(value):
                continue
            if best is MISSING or (value > best_value if biggest else value < best_value):
                best, best_value = entry, value
        return best

    return select


class _PointMaker:
    def __init__(self, spec: PointSpec, text: TextNumbers, rows: bool, json_root: bool) -> None:
        self.measurement = spec.measurement
        self.each = compile_ref(spec.each) if spec.each else None
        self.each_ref = spec.each
        self.rows = rows

        def compiled(specs: dict[str, ValueSpec]) -> list[Compiled]:
            found: list[Compiled] = []
            for name, value in specs.items():
                finish = compile_finisher(name, value, text)  # one, shared by both paths
                found.append((name, value, (compile_value(name, value, text, finish), finish)))
            return found

        # one generated function per point spec (hub.profiles.codegen) built on these
        self.values = generate(
            compiled(spec.tags),
            compiled(spec.fields),
            json_root=json_root,
            helpers={"MISSING": MISSING, "walk": _walk, "tag_text": _tag_text},
        )

    def items(self, c: Ctx) -> Iterable[tuple[Any, str | None]]:
        if self.rows:
            return ((row, None) for row in c.root)
        if self.each is None:
            return ((MISSING, None),)
        found = self.each(c)
        if found is MISSING or found is None:
            raise DecodeError("missing_key", f"{self.measurement}: no list/map at {self.each_ref}")
        if isinstance(found, list):
            return ((entry, None) for entry in found)
        if isinstance(found, dict):
            return ((entry, str(key)) for key, entry in found.items())
        raise DecodeError(
            "wrong_type", f"{self.measurement}: {self.each_ref} is not a list or an object"
        )


def _tag_text(name: str, value: FieldValue) -> str:
    text = value if isinstance(value, str) else str(value)
    if "\n" in text or "\r" in text:
        raise DecodeError("bad_value", f"tag {name}: line breaks cannot be stored in a tag")
    if text.endswith("\\"):
        # line protocol reads a final backslash as escaping the separator after it: InfluxDB
        # 1.x refuses such a line whatever the escaping, so the value cannot be stored
        raise DecodeError("bad_value", f"tag {name}: a tag cannot end with a backslash")
    return text


class MessageDecoder:
    """One message spec of one profile, compiled."""

    def __init__(self, profile: str, spec: MessageSpec) -> None:
        self.profile = profile
        self.name = spec.name
        self._format = spec.format
        self._delimited: DelimitedSpec | None = spec.delimited
        text: TextNumbers = None
        if spec.format != "json":
            text = bool(spec.delimited and spec.delimited.decimal_comma)
        self._frame = _Frame(spec.frame) if spec.frame else None
        self._selects = [(name, _compile_select(s)) for name, s in spec.select.items()]
        self._device_refs = spec.device_id
        self._device = [compile_ref(r) for r in spec.device_id]
        self._time = compile_time(spec.time)
        rows = spec.format == "delimited"
        self._points = [_PointMaker(p, text, rows, spec.format == "json") for p in spec.points]

    def _parse(self, payload: bytes) -> Any:
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise DecodeError(
                "too_large", f"payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_BYTES}"
            )
        if self._format == "json":
            try:
                return orjson.loads(payload)
            except orjson.JSONDecodeError as exc:
                try:
                    payload.decode("utf-8")
                except UnicodeDecodeError as utf:
                    raise DecodeError("not_utf8", f"payload is not UTF-8: {utf}") from None
                raise DecodeError("invalid_json", f"payload is not JSON: {exc}") from None
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("not_utf8", f"payload is not UTF-8: {exc}") from None
        if self._format == "text":
            text = text.strip()
            if not text:
                raise DecodeError("empty_payload", "payload is empty")
            return text
        assert self._delimited is not None  # noqa: S101  # checked by MessageSpec
        columns = self._delimited.columns
        separator = self._delimited.separator
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            cells = line.split(separator)
            if len(cells) != len(columns):
                raise DecodeError(
                    "wrong_column_count",
                    f"line {number} has {len(cells)} columns, expected {len(columns)}",
                )
            rows.append(
                {name: cell.strip() or MISSING for name, cell in zip(columns, cells, strict=True)}
            )
        if not rows:
            raise DecodeError("empty_payload", "payload has no lines")
        return rows

    def decode(self, raw: RawMessage, captured: dict[str, str]) -> Decoded:
        """Decode one message whose topic matched this spec (``captured``: topic levels)."""
        root = self._parse(raw.payload)
        if self._format == "json" and not isinstance(root, dict):
            raise DecodeError("wrong_type", f"payload is a JSON {_type_name(root)}, not an object")
        c = Ctx(root, captured)
        if self._frame is not None:
            self._frame.read(c)
        for name, select in self._selects:
            c.picks[name] = select(c)
        device_id = self._device_id(c)
        received = raw.received_ms
        points: list[Point] = []
        problem: str | None = None
        for maker in self._points:
            values = maker.values
            for item, key in maker.items(c):
                c.item, c.key = item, key
                tags, fields = values(c, device_id)
                time_ms, kind = self._time(c, received, device_id)
                problem = problem or kind
                if fields:
                    points.append(Point(maker.measurement, tags, fields, time_ms))
        return Decoded(
            profile=self.profile,
            device_id=device_id,
            points=points,
            time_problem=TimeProblem(device_id, problem) if problem else None,
        )

    def _device_id(self, c: Ctx) -> str:
        for getter in self._device:
            value = getter(c)
            if isinstance(value, str) and value.strip():
                return _tag_text("device_id", value.strip())
            if _is_number(value):
                return str(value)
        raise DecodeError(
            "missing_key", "device id: none of " + ", ".join(self._device_refs) + " is set"
        )
