"""Golden test vectors for device profiles, runnable without writing Python.

Each profile folder may hold ``golden/*.yaml``, one case per file::

    description: status change, occupied            # optional
    topic: application/7/device/70b3d57ed0051a2f/event/up
    received_at: 2026-11-24T08:15:03Z               # the hub's receive time for the case
    payload: '{"deviceInfo": ...}'                  # text payload, or
    payload_base64: AQ6S                            # raw bytes (not UTF-8, binary ...)
    points: |                                       # expected points, line protocol;
      parking_bay,device_id=PO-PB-00412 occupied=true 2026-11-24T08:15:02.181Z
    error: truncated_frame                          # ... or the expected dead-letter reason
    time_problem: too_old                           # optional: expected time problem

The timestamp of an expected line may be integer milliseconds or ISO 8601. Zone enrichment
from the inventory is not part of a profile, so expected points carry only the profile's tags.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from hub.errors import ProfileError
from hub.model import Decoded, FieldValue, Point, RawMessage
from hub.profiles.profile_set import ProfileSet
from hub.storage import lineprotocol


class GoldenCase(BaseModel):
    """One golden vector as written in its YAML file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    description: str = ""
    topic: str
    received_at: datetime
    payload: str | None = None
    payload_base64: str | None = None
    points: str | None = None
    error: str | None = None
    time_problem: str | None = None

    @model_validator(mode="after")
    def _one_each(self) -> GoldenCase:
        if (self.payload is None) == (self.payload_base64 is None):
            raise ValueError("give exactly one of payload / payload_base64")
        if (self.points is None) == (self.error is None):
            raise ValueError("give exactly one of points / error")
        if self.received_at.tzinfo is None:
            raise ValueError("received_at needs a timezone (e.g. Z)")
        return self

    def raw(self) -> RawMessage:
        """The case as the message the hub would receive."""
        payload = (
            self.payload.encode("utf-8")
            if self.payload is not None
            else base64.b64decode(self.payload_base64 or "")
        )
        return RawMessage(self.topic, payload, int(self.received_at.timestamp() * 1000))


@dataclass(frozen=True, slots=True)
class CaseResult:
    """The outcome of one golden case."""

    profile: str
    case: str
    ok: bool
    detail: str


def _expected_points(text: str) -> list[Point]:
    points = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        head, _, last = line.rstrip().rpartition(" ")
        if last and not last.lstrip("-").isdigit() and "=" not in last:
            stamp = datetime.fromisoformat(last)
            point = lineprotocol.parse(head)
            point.time_ms = int(stamp.timestamp() * 1000)
        else:
            point = lineprotocol.parse(line)
        points.append(point)
    return points


def _same_value(a: FieldValue, b: FieldValue) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b


def _show(point: Point) -> str:
    return lineprotocol.encode(point)


def compare_points(got: list[Point], expected: list[Point]) -> str | None:
    """``None`` when both lists hold the same points (any order), else what differs."""

    def key(p: Point) -> tuple[str, tuple[tuple[str, str], ...], int]:
        return (p.measurement, tuple(sorted(p.tags.items())), p.time_ms)

    if len(got) != len(expected):
        return f"expected {len(expected)} points, got {len(got)}:\n" + "\n".join(
            _show(p) for p in got
        )
    for g, e in zip(sorted(got, key=key), sorted(expected, key=key), strict=True):
        if key(g) != key(e) or g.fields.keys() != e.fields.keys():
            return f"expected\n  {_show(e)}\ngot\n  {_show(g)}"
        for name, value in e.fields.items():
            if not _same_value(g.fields[name], value):
                return f"field {name}: expected {value!r}, got {g.fields[name]!r} in\n  {_show(g)}"
    return None


def run_case(profiles: ProfileSet, case: GoldenCase) -> str | None:
    """``None`` when the case passes, else a human explanation of the difference."""
    result = profiles.decode(case.raw())
    if not isinstance(result, Decoded):
        if case.error is None:
            return f"expected points, got dead letter {result.reason}: {result.detail}"
        if result.reason != case.error:
            return f"expected error {case.error}, got {result.reason}: {result.detail}"
        return None
    if case.error is not None:
        return f"expected error {case.error}, got {len(result.points)} points"
    problem = result.time_problem.kind if result.time_problem else None
    if problem != case.time_problem:
        return f"expected time problem {case.time_problem}, got {problem}"
    return compare_points(result.points, _expected_points(case.points or ""))


def load_case(path: Path) -> GoldenCase:
    """Read one golden case file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return GoldenCase.model_validate(data)
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(str(path), "", str(exc)) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ProfileError(str(path), key, first["msg"]) from exc


def case_files(profiles: ProfileSet) -> list[tuple[str, Path]]:
    """(profile name, case file) for every golden case next to a loaded profile."""
    found: list[tuple[str, Path]] = []
    for item in profiles.profiles:
        folder = item.path.parent / "golden"
        if item.path.name != "profile.yaml":
            folder = item.path.with_suffix("") / "golden"
        found.extend((item.profile.profile, path) for path in sorted(folder.glob("*.yaml")))
    return found


def run_all(profiles: ProfileSet, only: set[str] | None = None) -> list[CaseResult]:
    """Run every golden case of the loaded profiles (or of the profiles named in ``only``)."""
    results = []
    for name, path in case_files(profiles):
        if only and name not in only:
            continue
        try:
            failure = run_case(profiles, load_case(path))
        except (ProfileError, lineprotocol.LineSyntaxError, ValueError) as exc:
            failure = f"bad case file: {exc}"
        results.append(CaseResult(name, path.stem, failure is None, failure or "ok"))
    return results
