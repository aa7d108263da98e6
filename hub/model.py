"""Value types that flow between the pipeline stages.

    RawMessage --decode--> Decoded (points) | DeadLetter

They are plain slotted dataclasses: created once per message on the hot path, never mutated
after a stage hands them on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: A stored field value. ``bool`` is tested before ``int`` wherever the type matters, because
#: in Python ``bool`` is a subclass of ``int`` while InfluxDB keeps them apart.
FieldValue = bool | int | float | str


@dataclass(slots=True, frozen=True)
class RawMessage:
    """One MQTT message as received, before any decoding."""

    topic: str
    payload: bytes
    received_ms: int
    qos: int = 0
    mid: int = 0
    retain: bool = False


@dataclass(slots=True)
class Point:
    """One InfluxDB point: measurement, tags, typed fields and a millisecond timestamp."""

    measurement: str
    tags: dict[str, str]
    fields: dict[str, FieldValue]
    time_ms: int


@dataclass(slots=True, frozen=True)
class TimeProblem:
    """A device timestamp that could not be used; the point was stored at receive time."""

    device_id: str
    kind: str  # "missing" | "unparsable" | "too_old" | "in_future"


@dataclass(slots=True)
class Decoded:
    """A message decoded by its profile: the device, its points and any time problem."""

    profile: str
    device_id: str
    points: list[Point]
    time_problem: TimeProblem | None = None


@dataclass(slots=True, frozen=True)
class DeadLetter:
    """A message that could not be decoded, with the reason code and a human detail."""

    profile: str
    reason: str
    detail: str
    message: RawMessage
    extra: dict[str, str] = field(default_factory=dict)
