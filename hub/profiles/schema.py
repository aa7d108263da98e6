"""The device profile format: frozen pydantic models that a profile YAML file is validated into.

A profile describes one device family. It lists the MQTT messages the family sends; each
message has a topic pattern, a payload format and the points it becomes. Values are named by
*references* (strings):

==========================  =====================================================
``a.b.0.c``                 a path in the JSON payload (dots; list indexes are numbers)
``topic:name``              a named level of the topic pattern
``frame:name``              a field of the decoded binary frame
``item:a.b``                a path inside the current fan-out item (lane, phase, text row)
``item:@key``               the key of the current item when fanning out over a map
``pick:name.a``             a path inside a named selection (``select:``), e.g. best gateway
``payload``                 the whole payload as text (``format: text``)
==========================  =====================================================

See ``device_profiles/README.md`` for the full guide with examples.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.alerts.rules import AlertRule

Scalar = bool | int | float | str
FieldType = Literal["float", "int", "bool", "string"]
FrameType = Literal["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REF_PREFIXES = ("topic:", "frame:", "item:", "pick:")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_ref(ref: str) -> str:
    if not ref or ref != ref.strip():
        raise ValueError(f"reference {ref!r} is empty or has surrounding spaces")
    prefix, sep, rest = ref.partition(":")
    if sep and f"{prefix}:" not in _REF_PREFIXES:
        raise ValueError(
            f"reference {ref!r} has unknown prefix {prefix!r}; use one of "
            + ", ".join(_REF_PREFIXES)
            + " or a plain JSON path"
        )
    if sep and not rest:
        raise ValueError(f"reference {ref!r} names nothing after the prefix")
    return ref


Ref = Annotated[str, Field(min_length=1)]


class ValueSpec(_Frozen):
    """How one value (field, tag, device id) is computed from a message.

    Exactly one of ``from``, ``sum``, ``count``, ``join`` or ``const`` gives the raw value;
    then ``bit``, ``map``, ``scale``/``divide`` transform it and ``type`` checks/converts it.
    """

    from_: Ref | None = Field(default=None, alias="from")
    sum: list[Ref] | None = None
    count: Ref | None = None
    join: Ref | None = None
    const: Scalar | None = None
    separator: str = ","
    type: FieldType = "float"
    bit: Annotated[int, Field(ge=0, le=31)] | None = None
    map: dict[str, Scalar] | None = None
    scale: float | None = None
    divide: float | None = None
    default: Scalar | None = None
    required: bool = True

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_source(self) -> ValueSpec:
        sources = [
            name
            for name, value in (
                ("from", self.from_),
                ("sum", self.sum),
                ("count", self.count),
                ("join", self.join),
                ("const", self.const),
            )
            if value is not None
        ]
        if len(sources) != 1:
            raise ValueError(
                "give exactly one of from/sum/count/join/const, got "
                + (", ".join(sources) if sources else "none")
            )
        for ref in [self.from_, self.count, self.join, *(self.sum or [])]:
            if ref is not None:
                _check_ref(ref)
        if self.divide == 0:
            raise ValueError("divide must not be 0")
        if self.bit is not None and self.type != "bool":
            raise ValueError("bit extracts a flag: its type must be bool")
        return self


def _value_spec(value: object, default_type: FieldType) -> object:
    """Allow the shorthand ``name: some.ref`` for ``name: {from: some.ref}``."""
    if isinstance(value, str):
        return {"from": value, "type": default_type}
    if isinstance(value, dict) and "type" not in value:
        return {**value, "type": default_type}
    return value


class TimeSpec(_Frozen):
    """Where a point's device timestamp comes from; absent -> receive time."""

    from_: Ref = Field(alias="from")
    format: Literal["iso8601", "epoch_s", "epoch_ms"]

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @field_validator("from_")
    @classmethod
    def _ref(cls, value: str) -> str:
        return _check_ref(value)


class FrameField(_Frozen):
    """One field of a binary frame layout, read at the next offset."""

    name: str
    type: FrameType

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"frame field name {value!r} must be an identifier")
        return value


class FrameSpec(_Frozen):
    """A binary frame carried inside a JSON envelope (base64 or hex)."""

    source: Ref
    encoding: Literal["base64", "hex"] = "base64"
    byte_order: Literal["big", "little"] = "big"
    port: Ref | None = None
    layouts: dict[int, list[FrameField]]

    @model_validator(mode="after")
    def _layouts(self) -> FrameSpec:
        if not self.layouts:
            raise ValueError("layouts must list at least one layout")
        if self.port is None and len(self.layouts) != 1:
            raise ValueError("several layouts need a port reference to choose between them")
        for port, fields in self.layouts.items():
            names = [f.name for f in fields]
            if len(set(names)) != len(names):
                raise ValueError(f"layout {port} repeats a field name")
        return self


class DelimitedSpec(_Frozen):
    """Delimited text: one point (per point spec) for each non-empty line."""

    separator: str = Field(default=";", min_length=1)
    decimal_comma: bool = False
    columns: list[str] = Field(min_length=1)


class SelectSpec(_Frozen):
    """A named selection: one element of a list, chosen by the max/min of one of its keys."""

    from_: Ref = Field(alias="from")
    max_by: str | None = None
    min_by: str | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _one_order(self) -> SelectSpec:
        if (self.max_by is None) == (self.min_by is None):
            raise ValueError("give exactly one of max_by/min_by")
        return self


class PointSpec(_Frozen):
    """One point (or one point per fan-out item) produced by a message."""

    measurement: str
    each: Ref | None = None
    tags: dict[str, ValueSpec] = Field(default_factory=dict)
    fields: dict[str, ValueSpec] = Field(min_length=1)

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _value_spec(v, "string") for k, v in value.items()}
        return value

    @field_validator("fields", mode="before")
    @classmethod
    def _field_shorthand(cls, value: object) -> object:
        if isinstance(value, dict):
            return {k: _value_spec(v, "float") for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _names(self) -> PointSpec:
        # Stored names are identifiers: they appear unescaped in line protocol and InfluxQL.
        for name in [self.measurement, *self.tags, *self.fields]:
            if not _NAME.match(name):
                raise ValueError(f"{name!r} is not an identifier (letters, digits, _)")
        for name, spec in self.tags.items():
            if name == "device_id":
                raise ValueError("tag device_id is set by the message's device_id")
            if spec.type != "string":
                raise ValueError(f"tag {name!r}: tags are strings")
        clash = set(self.tags) & set(self.fields)
        if clash:
            raise ValueError(f"{sorted(clash)} are both a tag and a field")
        return self


class MessageSpec(_Frozen):
    """One kind of message of a device family: its topic, payload format and points."""

    name: str
    topic: str = Field(min_length=1)
    format: Literal["json", "text", "delimited"] = "json"
    delimited: DelimitedSpec | None = None
    frame: FrameSpec | None = None
    select: dict[str, SelectSpec] = Field(default_factory=dict)
    device_id: list[Ref] = Field(min_length=1)
    time: TimeSpec | None = None
    points: list[PointSpec] = Field(min_length=1)

    @field_validator("device_id", mode="before")
    @classmethod
    def _device_id_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _format(self) -> MessageSpec:
        for ref in self.device_id:
            _check_ref(ref)
        if self.format == "delimited" and self.delimited is None:
            raise ValueError("format delimited needs a 'delimited' section")
        if self.format != "delimited" and self.delimited is not None:
            raise ValueError("a 'delimited' section needs format: delimited")
        if self.frame is not None and self.format != "json":
            raise ValueError("a binary frame is read from a JSON envelope: use format: json")
        return self


class Profile(_Frozen):
    """A device family: its name (used in dead-letter topics and metrics) and its messages."""

    profile: str
    description: str = ""
    messages: list[MessageSpec] = Field(min_length=1)
    alerts: list[AlertRule] = Field(default_factory=list)

    @field_validator("profile")
    @classmethod
    def _profile_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"profile name {value!r} must be an identifier (letters, digits, _)")
        return value

    @model_validator(mode="after")
    def _unique_messages(self) -> Profile:
        names = [m.name for m in self.messages]
        if len(set(names)) != len(names):
            raise ValueError("message names must be unique within a profile")
        rules = [r.name for r in self.alerts]
        if len(set(rules)) != len(rules):
            raise ValueError("alert rule names must be unique within a profile")
        return self

    def measurement_keys(self) -> dict[str, set[str]]:
        """Each measurement of the profile with the tag and field names its points carry."""
        found: dict[str, set[str]] = {}
        for message in self.messages:
            for point in message.points:
                found.setdefault(point.measurement, set()).update(
                    {"device_id", "zone", *point.tags, *point.fields}
                )
        return found
