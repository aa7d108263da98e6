"""Interventions: planned or ongoing works and significant events that utilities publish.

A message (MQTT ``situation/{org}/events`` or ``POST /api/v1/interventions``) is a JSON
object keyed by ``id``. The first message with an id creates the intervention; later ones
update it: only the keys they carry change, and the merged result is validated as a whole.
``parse_message`` does that, with the organisation that sent it and the stored version::

    {"id": "cap:2026-0412", "kind": "water_main_repair", "title": "Rottura condotta",
     "street": "via Roma 12", "zone": "centro-storico", "lat": 43.8803, "lon": 11.0969,
     "planned_start": "2026-11-24T08:00:00+01:00", "planned_end": "2026-11-24T18:00:00+01:00",
     "status": "planned"}
    {"id": "cap:2026-0412", "status": "active"}            # later: actual_start = now
    {"id": "cap:2026-0412", "status": "done"}              # later: actual_end = now

Keys (``KEYS``): ``id`` (1-64 of ``A-Z a-z 0-9 _ . : -``, city-wide: prefix it with the
organisation, e.g. ``cap:2026-0412``), ``kind`` (``KINDS``), ``title`` (1-200),
``description`` (up to 2000, may span lines), ``zone`` (an inventory zone), ``lat``/``lon``
(both or neither) with ``radius_m`` (default 100 m, at most 50 km), ``street``; at least one
of zone, coordinates or street. ``planned_start`` < ``planned_end`` and the optional
``actual_start`` <= ``actual_end`` are ISO 8601 times with a timezone, between 2000 and 2100.
``status`` is ``planned`` (the default for a new intervention), ``active``, ``done`` or
``cancelled``. ``owner`` may be sent but must be the sender's organisation; ``version`` may
be sent to guard against lost updates (it must be the stored version, 0 for a new id);
``updated_at`` is set by the hub and ignored when sent. A key set to ``null`` clears an
optional value (``"zone": null``).

Unknown keys are refused (``unknown_key``), unlike the device contract, which ignores them:
device firmware grows keys we do not need, but these messages are written by people and
integrations against this description, and a misspelt key in a partial update
(``planed_end``) would otherwise be accepted while changing nothing.

Status rules (checked on every message, with the stored intervention as ``existing``):

- ``planned`` has no actual times; ``active`` has ``actual_start`` (set to now when a
  message makes it active without one) and no ``actual_end``; ``done`` has ``actual_end``
  (set to now when missing); ``cancelled`` may have both or neither (an active intervention
  that is cancelled gets ``actual_end`` = now when missing).
- ``planned`` may become anything; ``active`` may become ``done`` or ``cancelled`` (not
  ``planned`` again: once works started, their start is a fact); ``done`` and ``cancelled``
  are final: their status never changes (fields may still be corrected; new works are a
  new intervention with a new id).
- Actual times may not lie more than 5 minutes after the hub's clock (the device contract's
  tolerance): they record what happened.
- Only the organisation that created an intervention may update it (``not_owner``).

When an intervention is *under way* at a time (``Intervention.under_way_at``): ``active``
from its ``actual_start`` on (until a message ends it: its end is unknown until then);
``planned`` inside its planned window (a utility may not report the start: a road closure
planned for now is most likely in place); ``done`` and ``cancelled`` only inside their actual
window, so never after they ended, but an alert of the past still finds the works that were
under way then. ``explaining`` uses this to tell which intervention explains an alert.

Errors are ``InterventionError(reason, detail)``, a ``DecodeError``: on MQTT they become dead
letters like any undecodable payload, on the API a 422 (403 for ``not_owner``, 409 for
``version_conflict``, 413 for ``too_large``). Reasons: ``too_large``, ``not_json``,
``not_object``, ``unknown_key``, ``missing_key``, ``invalid``, ``owner_mismatch``,
``not_owner``, ``bad_transition``, ``version_conflict``.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from hub.errors import DecodeError
from hub.times import EARLIEST, LATEST, aware_time

MAX_PAYLOAD_BYTES = 64 * 1024
FUTURE_TOLERANCE_MS = 5 * 60 * 1000
DEFAULT_RADIUS_M = 100.0
MAX_RADIUS_M = 50_000.0
EARTH_RADIUS_M = 6_371_008.8
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Kind = Literal[
    "road_closure",  # a street or lane closed to traffic
    "roadworks",  # works on the carriageway or pavement, traffic may still pass
    "water_main_repair",  # water network (cap)
    "sewer_works",  # sewer and wastewater network (gida)
    "lamp_replacement",  # public lighting campaigns and repairs (citelum)
    "power_outage",  # planned or unplanned loss of supply in an area
    "public_event",  # markets, fairs, concerts, demonstrations, sport
    "other",
]
Status = Literal["planned", "active", "done", "cancelled"]
KINDS: tuple[str, ...] = get_args(Kind)
STATUSES: tuple[str, ...] = get_args(Status)
FINAL: frozenset[str] = frozenset({"done", "cancelled"})

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
ORG_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
# what the caller may send; version and updated_at are the hub's, see parse_message
KEYS: tuple[str, ...] = (
    "id",
    "owner",
    "kind",
    "title",
    "description",
    "zone",
    "lat",
    "lon",
    "radius_m",
    "street",
    "planned_start",
    "planned_end",
    "actual_start",
    "actual_end",
    "status",
    "version",
    "updated_at",
)
REQUIRED_NEW: tuple[str, ...] = ("kind", "title", "planned_start", "planned_end")
REQUIRED: frozenset[str] = frozenset({"id", "kind", "title", "status", *REQUIRED_NEW})
# control characters: never in one-line texts (they end up in tags and line protocol)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def check_choice(what: str, value: str, allowed: Sequence[str]) -> None:
    """``ValueError`` naming ``value`` and what is allowed, unless ``value`` is one of them."""
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(allowed)}")


class InterventionError(DecodeError):
    """A message that cannot be applied: ``reason`` is a short stable code (a dead-letter
    reason and metrics label), ``detail`` says what to change."""


def to_ms(moment: datetime) -> int:
    """An aware datetime in epoch milliseconds."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def from_ms(epoch_ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=epoch_ms)


def iso(moment: datetime) -> str:
    """The API's time format: ISO 8601 UTC with milliseconds."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _moment(value: Any) -> datetime:
    """An ISO 8601 string (or aware datetime) as UTC, to the millisecond."""
    if isinstance(value, str):
        utc = aware_time(value)
    elif isinstance(value, datetime) and value.utcoffset() is not None:
        utc = value.astimezone(UTC)
        if not EARLIEST <= utc < LATEST:
            raise ValueError(f"{value!s} is out of range")
    else:
        raise ValueError("must be an ISO 8601 time with a timezone, as a string")
    return utc.replace(microsecond=utc.microsecond // 1000 * 1000)


Moment = Annotated[
    datetime, BeforeValidator(_moment), PlainSerializer(iso, return_type=str, when_used="json")
]


class Intervention(BaseModel):
    """One intervention as stored: validated as a whole (see the module docstring).

    ``version`` counts the stored changes (0: never stored); ``updated_at`` is when the hub
    stored the last one. Both are set by ``InterventionStore``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=ID_PATTERN)
    owner: str = Field(pattern=ORG_PATTERN)
    kind: Kind
    title: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2_000)
    zone: str | None = Field(default=None, min_length=1, max_length=64)
    lat: float | None = Field(default=None, ge=-90, le=90, strict=True)
    lon: float | None = Field(default=None, ge=-180, le=180, strict=True)
    radius_m: float | None = Field(default=None, gt=0, le=MAX_RADIUS_M, strict=True)
    street: str | None = Field(default=None, min_length=1, max_length=200)
    planned_start: Moment
    planned_end: Moment
    actual_start: Moment | None = None
    actual_end: Moment | None = None
    status: Status = "planned"
    updated_at: Moment | None = None
    version: int = Field(default=0, ge=0, strict=True)

    @field_validator("kind", mode="before")
    @classmethod
    def _known_kind(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_choice("kind", value, KINDS)
        return value

    @field_validator("status", mode="before")
    @classmethod
    def _known_status(cls, value: Any) -> Any:
        if isinstance(value, str):
            check_choice("status", value, STATUSES)
        return value

    @field_validator("title", "zone", "street")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if _CONTROL.search(value):
            raise ValueError("must be one line without control characters")
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("zone")
    @classmethod
    def _zone_tag(cls, value: str | None) -> str | None:
        # the zone becomes an InfluxDB tag: a trailing backslash would escape its delimiter
        if value is not None and "\\" in value:
            raise ValueError("must not contain a backslash")
        return value

    @field_validator("description")
    @classmethod
    def _text(cls, value: str | None) -> str | None:
        if value is not None and _CONTROL_BUT_LINES.search(value):
            raise ValueError("must not contain control characters other than line breaks")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Intervention:
        problems = [p for p in self._where_problems() + self._time_problems() if p]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _where_problems(self) -> list[str]:
        return [
            "lat and lon come together: give both or neither"
            if (self.lat is None) != (self.lon is None)
            else "",
            "radius_m needs lat and lon"
            if self.radius_m is not None and (self.lat is None or self.lon is None)
            else "",
            "say where: give a zone, lat and lon, or a street (or several)"
            if self.zone is None and self.lat is None and self.lon is None and self.street is None
            else "",
        ]

    def _time_problems(self) -> list[str]:
        start, end = self.actual_start, self.actual_end
        status = self.status
        return [
            f"planned_end ({iso(self.planned_end)}) must be after planned_start "
            f"({iso(self.planned_start)})"
            if self.planned_end <= self.planned_start
            else "",
            f"actual_end ({iso(end)}) must not be before actual_start ({iso(start)})"
            if start is not None and end is not None and end < start
            else "",
            "a planned intervention has no actual_start or actual_end: set status active "
            "(or done) when the works start"
            if status == "planned" and (start is not None or end is not None)
            else "",
            "an active intervention needs actual_start"
            if status == "active" and start is None
            else "",
            "an active intervention has no actual_end: set status done or cancelled to end it"
            if status == "active" and end is not None
            else "",
            "a done intervention needs actual_end" if status == "done" and end is None else "",
        ]

    # -- derived values ---------------------------------------------------------------------

    @property
    def start_ms(self) -> int:
        """When it started, or is planned to start (epoch ms)."""
        return to_ms(self.actual_start or self.planned_start)

    @property
    def end_ms(self) -> int:
        """When it ended, or is planned to end, never before ``start_ms`` (epoch ms)."""
        return max(to_ms(self.actual_end or self.planned_end), self.start_ms)

    @property
    def span_ms(self) -> tuple[int, int | None]:
        """The hull of the planned and actual windows, ``[start, end)``; the end is ``None``
        (open) while the intervention is active: when it ends is not known yet."""
        start = to_ms(self.planned_start)
        if self.actual_start is not None:
            start = min(start, to_ms(self.actual_start))
        if self.status == "active":
            return start, None
        end = to_ms(self.planned_end)
        if self.actual_end is not None:
            end = max(end, to_ms(self.actual_end))
        return start, end

    def under_way_at(self, at_ms: int) -> bool:
        """Whether the works are under way at ``at_ms`` (rule in the module docstring)."""
        if self.status == "active":
            return self.actual_start is not None and to_ms(self.actual_start) <= at_ms
        if self.status == "planned":
            return to_ms(self.planned_start) <= at_ms < to_ms(self.planned_end)
        if self.actual_start is None or self.actual_end is None:
            return False
        return to_ms(self.actual_start) <= at_ms < to_ms(self.actual_end)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (ISO 8601 UTC times), as the API and the live feed carry it."""
        return self.model_dump(mode="json")


# --- parsing messages ------------------------------------------------------------------------


def _describe(exc: ValidationError) -> str:
    """Every problem pydantic found, as ``key: what is wrong`` joined by ``; ``."""
    parts = []
    for error in exc.errors()[:5]:
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "missing":
            message = "is required"
        parts.append(f"{where}: {message}" if where else message)
    return "; ".join(parts)


def read_payload(payload: bytes | Mapping[str, Any]) -> dict[str, Any]:
    """The message as a JSON object (size, JSON and object checks), or ``InterventionError``."""
    if isinstance(payload, Mapping):
        return dict(payload)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InterventionError(
            "too_large", f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES} (64 KiB)"
        )
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InterventionError("not_json", f"payload is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InterventionError(
            "not_object", f"payload must be a JSON object, not {type(body).__name__}"
        )
    return body


def _check_transition(existing: Intervention | None, status: str) -> None:
    if existing is None or existing.status == status:
        return
    if existing.status in FINAL:
        raise InterventionError(
            "bad_transition",
            f"intervention {existing.id!r} is {existing.status}: its status cannot change "
            "(publish new works under a new id)",
        )
    if existing.status == "active" and status == "planned":
        raise InterventionError(
            "bad_transition",
            f"intervention {existing.id!r} is active: it can become done or cancelled, "
            "not planned again",
        )


def _fill_times(merged: dict[str, Any], existing: Intervention | None, now_ms: int) -> None:
    """Actual times a status change implies, when the message does not give them."""
    status = merged.get("status")
    now = iso(from_ms(now_ms))
    if status == "active" and merged.get("actual_start") is None:
        merged["actual_start"] = now
    ended = status == "done" or (
        status == "cancelled" and existing is not None and existing.status == "active"
    )
    if ended and merged.get("actual_end") is None:
        merged["actual_end"] = now
        started = merged.get("actual_start")
        # a start reported a little ahead of our clock: the end is no earlier than it
        with contextlib.suppress(ValueError):  # a bad actual_start is the model's to report
            if started is not None and to_ms(_moment(started)) > now_ms:
                merged["actual_end"] = started


def parse_message(
    org: str,
    payload: bytes | Mapping[str, Any],
    existing: Intervention | None,
    now_ms: int,
) -> Intervention:
    """The intervention ``payload`` from organisation ``org`` describes, merged over
    ``existing`` (the stored intervention with the payload's id, ``None`` for a new one).

    Returns it validated, with ``version``/``updated_at`` still those of ``existing`` (the
    store sets them). Raises ``InterventionError`` naming what to change. The caller looks
    ``existing`` up by the payload's id: ``payload_id`` gives it.
    """
    body = read_payload(payload)
    _check_keys(body)
    ident = payload_id(body)
    if existing is not None and existing.id != ident:
        raise ValueError(f"existing intervention {existing.id!r} is not {ident!r}")
    _check_sender(org, body, ident, existing)
    merged = _merge(org, body, existing)
    status = merged.get("status")
    if isinstance(status, str):
        _check_transition(existing, status)
    _fill_times(merged, existing, now_ms)
    try:
        result = Intervention.model_validate(merged)
    except ValidationError as exc:
        raise InterventionError("invalid", f"intervention {ident!r}: {_describe(exc)}") from None
    for name in ("actual_start", "actual_end"):
        moment: datetime | None = getattr(result, name)
        if name in body and moment is not None and to_ms(moment) > now_ms + FUTURE_TOLERANCE_MS:
            raise InterventionError(
                "invalid",
                f"intervention {ident!r}: {name} ({iso(moment)}) is in the future: actual "
                f"times record what happened (now is {iso(from_ms(now_ms))})",
            )
    return result


def _check_keys(body: Mapping[str, Any]) -> None:
    unknown = sorted(set(body) - set(KEYS))
    if unknown:
        raise InterventionError(
            "unknown_key",
            f"unknown key {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; allowed: {', '.join(KEYS)}",
        )
    nulled = sorted(k for k, v in body.items() if v is None and k in REQUIRED)
    if nulled:
        raise InterventionError("invalid", f"{nulled[0]} cannot be null: it is required")


def _check_sender(
    org: str, body: Mapping[str, Any], ident: str, existing: Intervention | None
) -> None:
    """The sender may send this: its own intervention, on top of the stored version."""
    owner = body.get("owner")
    if owner is not None and owner != org:
        raise InterventionError(
            "owner_mismatch",
            f"owner {owner!r} is not the sender's organisation {org!r}: leave owner out or "
            f"set it to {org!r}",
        )
    if existing is not None and existing.owner != org:
        raise InterventionError(
            "not_owner",
            f"intervention id {ident!r} is taken by another organisation: use another id",
        )
    stored_version = existing.version if existing is not None else 0
    if "version" in body and body["version"] != stored_version:
        raise InterventionError(
            "version_conflict",
            f"intervention {ident!r} is at version {stored_version}, not {body['version']!r}: "
            "read it again and send the change on top of it",
        )


def _merge(org: str, body: Mapping[str, Any], existing: Intervention | None) -> dict[str, Any]:
    """The message's keys over the stored intervention (or the defaults of a new one)."""
    changes = {k: v for k, v in body.items() if k not in ("version", "updated_at", "owner")}
    if existing is None:
        missing = [k for k in REQUIRED_NEW if k not in changes]
        if missing:
            raise InterventionError(
                "missing_key",
                f"a new intervention needs {', '.join(REQUIRED_NEW)}; missing: "
                f"{', '.join(missing)}",
            )
        merged: dict[str, Any] = {"status": "planned"}
    else:
        merged = existing.model_dump(mode="json")
    merged.update(changes)
    merged["owner"] = org
    merged["version"] = existing.version if existing is not None else 0
    merged["updated_at"] = iso(existing.updated_at) if existing and existing.updated_at else None
    # coordinates removed without a word about the radius: the radius goes with them
    if merged.get("lat") is None and merged.get("lon") is None and "radius_m" not in changes:
        merged["radius_m"] = None
    has_position = merged.get("lat") is not None and merged.get("lon") is not None
    if has_position and merged.get("radius_m") is None:
        merged["radius_m"] = DEFAULT_RADIUS_M
    return merged


def payload_id(payload: Mapping[str, Any]) -> str:
    """The valid ``id`` of a message, or ``InterventionError``."""
    ident = payload.get("id")
    if ident is None:
        raise InterventionError("missing_key", "id is required: every message names its id")
    if not isinstance(ident, str) or not re.match(ID_PATTERN, ident):
        raise InterventionError(
            "invalid",
            f"id {ident!r} must be 1 to 64 letters, digits or _ . : - (e.g. cap:2026-0412)",
        )
    return ident


# --- which intervention explains an alert ------------------------------------------------------


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres (haversine, mean Earth radius)."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    dphi = phi2 - phi1
    dlmb = math.radians(lon2 - lon1)
    h = math.sin(dphi / 2) ** 2 + math.cos(phi1) * math.cos(phi2) * math.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def _near(item: Intervention, lat: float | None, lon: float | None) -> bool:
    if item.lat is None or item.lon is None or lat is None or lon is None:
        return False
    radius = item.radius_m if item.radius_m is not None else DEFAULT_RADIUS_M
    return distance_m(item.lat, item.lon, lat, lon) <= radius


def explaining(
    candidates: Iterable[Intervention],
    zone: str | None,
    lat: float | None,
    lon: float | None,
    at_ms: int,
) -> Intervention | None:
    """The intervention that explains an alert at ``at_ms`` on a device in ``zone`` at
    ``lat``/``lon`` (any may be ``None``), or ``None``.

    One explains it when it is under way at ``at_ms`` (``Intervention.under_way_at``) and is
    in the same zone or within its ``radius_m`` of the device. Preferred: the ones matching
    both zone and position, then the most recently started, then the smallest id (so the
    answer never depends on the order of ``candidates``). Street-only interventions match
    nothing: the hub does not geocode.
    """
    matches: list[tuple[bool, Intervention]] = []
    for item in candidates:
        if not item.under_way_at(at_ms):
            continue
        in_zone = zone is not None and item.zone is not None and item.zone == zone
        near = _near(item, lat, lon)
        if in_zone or near:
            matches.append((in_zone and near, item))
    if not matches:
        return None
    return min(matches, key=lambda m: (not m[0], -m[1].start_ms, m[1].id))[1]
