"""``GET /api/v1/aggregate``: one field of one measurement, aggregated per time bucket.

Also the request parsing both this router and the domain views (``hub.api.views``) use:
times (ISO 8601 with a timezone), bucket intervals (``30s``, ``5m``, ``1h``, ``1d``, ``1w``),
time windows with their limits, and filter values. Every problem a caller can fix is a
``QueryInputError``, which the app answers with 422 and the message, before any query is
built. Names reaching a query are first checked against the stored schema
(``ApiContext.schema``) and then still rendered by ``hub.api.influxql``.

The query is ``SELECT <fn>("<field>") FROM "<measurement>" WHERE <time range> [AND filters]
GROUP BY time(<interval>)[, tags] fill(none)``: buckets without samples are omitted from
``points`` (never filled with null or zero), and buckets are aligned to the Unix epoch (UTC),
as InfluxDB aligns them, so the first bucket may start before ``start``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from hub.alerts.model import iso_ms
from hub.api.context import ApiContext
from hub.api.influxql import QueryInputError, any_of, duration, ident, time_range
from hub.api.scope import scope_for
from hub.api.security import ApiKey
from hub.profiles.profile_set import MeasurementSchema
from hub.times import aware_time, shown

MAX_BUCKETS = 2_000
MAX_RANGE_S = 366 * 86_400
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 31 * 86_400
DEFAULT_SPAN_S = 86_400
# devices may stamp up to 5 minutes ahead of the hub's clock (the contract's plausibility
# window), so "latest" views look that far past now
FUTURE_TOLERANCE_S = 300
# a filter is a chain of ORs in the query: keep it to what a person can ask for
MAX_FILTER_VALUES = 200
MAX_VALUE_LENGTH = 200

NUMERIC = frozenset({"float", "int"})
Aggregate = Literal["mean", "min", "max", "sum", "count", "last"]
NUMERIC_ONLY = frozenset({"mean", "min", "max", "sum"})
# group_by words that are not tag names themselves
GROUP_ALIASES = {"device": "device_id"}
PROFILE = "profile"

_INTERVAL = re.compile(r"^([1-9][0-9]{0,6})([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
# the intervals suggested when a request asks for too many buckets
_FRIENDLY_S = (1, 5, 10, 15, 30, 60, 300, 600, 900, 1_800, 3_600, 7_200, 10_800, 21_600,
               43_200, 86_400, 604_800, MAX_INTERVAL_S)  # fmt: skip


def parse_time(name: str, value: str) -> datetime:
    """An ISO 8601 time with a timezone (``2026-11-24T08:00:00Z``, ``...+01:00``)."""
    try:
        return aware_time(value)
    except ValueError as exc:
        raise QueryInputError(f"{name} {exc}") from None


def format_interval(seconds: int) -> str:
    """``seconds`` in the largest unit that divides it (``300`` -> ``5m``)."""
    for unit in ("w", "d", "h", "m"):
        if seconds % _UNIT_S[unit] == 0:
            return f"{seconds // _UNIT_S[unit]}{unit}"
    return f"{seconds}s"


def parse_interval(
    name: str, value: str, *, low_s: int = MIN_INTERVAL_S, high_s: int = MAX_INTERVAL_S
) -> int:
    """A duration such as ``30s``, ``5m``, ``1h``, ``1d``, ``1w`` in whole seconds."""
    found = _INTERVAL.match(value.strip())
    if found is None:
        raise QueryInputError(
            f"{name} {shown(value)} must be a whole number and one of the units s, m, h, d, w "
            "(e.g. 30s, 5m, 1h, 1d)"
        )
    seconds = int(found.group(1)) * _UNIT_S[found.group(2)]
    if not low_s <= seconds <= high_s:
        raise QueryInputError(
            f"{name} {shown(value)} must be between {format_interval(low_s)} "
            f"and {format_interval(high_s)}"
        )
    return seconds


@dataclass(frozen=True, slots=True)
class Window:
    """A time range ``[start, end)`` of a request, in UTC."""

    start: datetime
    end: datetime

    @property
    def start_ms(self) -> int:
        """``start`` in epoch milliseconds."""
        return _ms(self.start)

    @property
    def end_ms(self) -> int:
        """``end`` in epoch milliseconds."""
        return _ms(self.end)

    @property
    def empty(self) -> bool:
        """Nothing can be in it (a window wholly inside a share's delay)."""
        return self.end <= self.start

    def where(self) -> str:
        """The query's time condition."""
        return time_range(self.start, self.end)

    def to_json(self) -> dict[str, str]:
        """``start`` and ``end`` as ISO 8601 UTC."""
        return {"start": iso(self.start_ms), "end": iso(self.end_ms)}


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def from_ms(epoch_ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=epoch_ms)


def iso(epoch_ms: int) -> str:
    """Epoch milliseconds as the API's time format (ISO 8601 UTC, milliseconds)."""
    return str(iso_ms(epoch_ms))


def request_window(
    now_ms: int,
    start: str | None,
    end: str | None,
    *,
    default_span_s: int = DEFAULT_SPAN_S,
    max_span_s: int = MAX_RANGE_S,
) -> Window:
    """The window a request asks for: ``end`` defaults to now, ``start`` to ``end`` minus
    ``default_span_s``; ``end`` must be after ``start`` and the span at most ``max_span_s``."""
    end_at = parse_time("end", end) if end is not None else from_ms(now_ms)
    start_at = (
        parse_time("start", start)
        if start is not None
        else end_at - timedelta(seconds=default_span_s)
    )
    if end_at <= start_at:
        raise QueryInputError(
            f"end ({iso(_ms(end_at))}) must be after start ({iso(_ms(start_at))})"
        )
    if end_at - start_at > timedelta(seconds=max_span_s):
        days = max_span_s / 86_400
        raise QueryInputError(
            f"the range from start to end is at most {days:g} days; ask for a shorter range"
        )
    return Window(start_at, end_at)


def delayed(window: Window, latest_ms: int) -> Window:
    """``window`` ending no later than ``latest_ms`` (shared data with a delay); a window
    entirely after it shrinks to an ``empty`` one at ``latest_ms``, which callers answer
    without a query."""
    if window.end_ms <= latest_ms:
        return window
    end = from_ms(latest_ms)
    return Window(min(window.start, end), end)


def bucket_count(window: Window, interval_s: int) -> int:
    """How many epoch-aligned buckets of ``interval_s`` the window touches."""
    step = interval_s * 1000
    return (window.end_ms - 1) // step - window.start_ms // step + 1


def check_buckets(window: Window, interval_s: int, limit: int = MAX_BUCKETS) -> int:
    """The number of buckets, or a ``QueryInputError`` saying how to stay within ``limit``."""
    count = bucket_count(window, interval_s)
    if count <= limit:
        return count
    enough = next(
        (s for s in _FRIENDLY_S if s >= interval_s and bucket_count(window, s) <= limit),
        max(interval_s, math.ceil((window.end_ms - window.start_ms) / 1000 / (limit - 1))),
    )
    raise QueryInputError(
        f"this range at interval {format_interval(interval_s)} gives {count} buckets per "
        f"series; at most {limit}: use interval={format_interval(enough)} or longer, "
        "or a shorter range"
    )


def filter_values(name: str, values: Iterable[str]) -> list[str]:
    """The distinct values of a repeatable filter, checked for size (order kept)."""
    chosen = list(dict.fromkeys(values))
    if len(chosen) > MAX_FILTER_VALUES:
        raise QueryInputError(f"at most {MAX_FILTER_VALUES} values for {name}")
    for value in chosen:
        if len(value) > MAX_VALUE_LENGTH:
            raise QueryInputError(f"{name} values are at most {MAX_VALUE_LENGTH} characters")
    return chosen


def series_tags(series: dict[str, Any]) -> dict[str, str]:
    """The tags of one series of a query answer (none when the query had no GROUP BY tag)."""
    tags = series.get("tags") or {}
    return {str(k): str(v) for k, v in tags.items()}


def measurement_of(ctx: ApiContext, name: str) -> MeasurementSchema:
    """The schema of ``name``, or a ``QueryInputError`` listing the stored measurements."""
    schema = ctx.schema.get(name)
    if schema is None:
        raise QueryInputError(
            f"unknown measurement {shown(name)}; allowed: {', '.join(sorted(ctx.schema))}"
        )
    return schema


def _field_type(schema: MeasurementSchema, name: str) -> str:
    kind = schema.fields.get(name)
    if kind is None:
        raise QueryInputError(
            f"unknown field {shown(name)} of {schema.name}; "
            f"allowed: {', '.join(sorted(schema.fields))}"
        )
    return kind


def _group_tags(schema: MeasurementSchema, words: list[str]) -> tuple[list[str], bool]:
    """The tags to group by and whether to group by profile, from ``group_by`` words."""
    tags: list[str] = []
    by_profile = False
    allowed = sorted({*GROUP_ALIASES, PROFILE, *schema.tags})
    for word in (w.strip() for item in words for w in item.split(",")):
        if not word:
            continue
        if word == PROFILE:
            by_profile = True
            continue
        tag = GROUP_ALIASES.get(word, word)
        if tag not in schema.tags:
            raise QueryInputError(
                f"unknown group {shown(word)} of {schema.name}; allowed: {', '.join(allowed)}"
            )
        if tag not in tags:
            tags.append(tag)
    return tags, by_profile


TAG_PREFIX = "tag."
_PARAMETERS = frozenset(
    {"measurement", "field", "fn", "start", "end", "interval", "group_by", "device_id", "zone",
     "profile"}
)  # fmt: skip


def _tag_filters(schema: MeasurementSchema, request: Request) -> dict[str, list[str]]:
    """``tag.<name>=value`` filters (repeatable), with names checked against the schema.

    Unknown parameters are refused too: a misspelt filter must not silently widen a query.
    """
    found: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key in _PARAMETERS:
            continue
        if not key.startswith(TAG_PREFIX):
            raise QueryInputError(
                f"unknown parameter {shown(key)}; allowed: {', '.join(sorted(_PARAMETERS))} "
                f"and {TAG_PREFIX}<tag>"
            )
        tag = key[len(TAG_PREFIX) :]
        if tag not in schema.tags:
            raise QueryInputError(
                f"unknown tag {shown(tag)} of {schema.name}; "
                f"allowed: {', '.join(sorted(schema.tags))}"
            )
        found.setdefault(tag, []).append(value)
    return {tag: filter_values(f"{TAG_PREFIX}{tag}", values) for tag, values in found.items()}


def _profile_matches(ctx: ApiContext, schema: MeasurementSchema, profiles: list[str]) -> bool:
    """Whether the ``profile`` filter keeps this measurement's points at all.

    Every point of a measurement is decoded by the one profile that declares it, whatever the
    inventory says about the device, so the filter keeps all points or none.
    """
    unknown = [p for p in profiles if p not in ctx.profiles.names]
    if unknown:
        raise QueryInputError(
            f"unknown profile {shown(unknown[0])}; allowed: {', '.join(sorted(ctx.profiles.names))}"
        )
    return not profiles or schema.profile in profiles


def router(ctx: ApiContext) -> APIRouter:
    """The aggregate endpoint, reading through ``ctx``."""
    api = APIRouter(prefix="/api/v1", tags=["aggregates"])
    # a default, not an Annotated type: annotations are strings here, and FastAPI could not
    # resolve a local name in them
    reader = Depends(ctx.requires("reader"))

    @api.get("/aggregate")
    def aggregate(
        request: Request,
        measurement: Annotated[str, Query(description="a stored measurement")],
        field: Annotated[str, Query(description="a field of the measurement")],
        key: ApiKey = reader,
        fn: Annotated[
            Aggregate,
            Query(
                description="mean, min, max and sum need a numeric field; count and last "
                "work on any field"
            ),
        ] = "mean",
        start: Annotated[
            str | None, Query(description="ISO 8601 with timezone; default end - 24 h")
        ] = None,
        end: Annotated[str | None, Query(description="ISO 8601 with timezone; default now")] = None,
        interval: Annotated[
            str, Query(description="bucket length, 1s to 31d (30s, 5m, 1h, 1d, 1w)")
        ] = "1h",
        group_by: Annotated[
            list[str] | None,
            Query(
                description="device, zone, profile or tags of the measurement; comma-separated "
                "or repeated"
            ),
        ] = None,
        device_id: Annotated[list[str] | None, Query(description="only these devices")] = None,
        zone: Annotated[list[str] | None, Query(description="only these zones")] = None,
        profile: Annotated[list[str] | None, Query(description="only these profiles")] = None,
    ) -> dict[str, Any]:
        """One field aggregated per time bucket, per group.

        Also filters ``tag.<name>=value`` (repeatable) on any tag of the measurement. Buckets
        are aligned to the Unix epoch (UTC); buckets without samples are omitted. At most 366
        days and 2,000 buckets per series.
        """
        schema = measurement_of(ctx, measurement)
        kind = _field_type(schema, field)
        if fn in NUMERIC_ONLY and kind not in NUMERIC:
            raise QueryInputError(
                f"{fn} needs a numeric field; {schema.name}.{field} is {kind} "
                "(count and last work on any field)"
            )
        tags, by_profile = _group_tags(schema, group_by or [])
        tag_filters = _tag_filters(schema, request)
        interval_s = parse_interval("interval", interval)
        window = request_window(ctx.clock_ms(), start, end)
        check_buckets(window, interval_s)
        devices = filter_values("device_id", device_id or [])
        zones = filter_values("zone", zone or [])
        profiles = filter_values("profile", profile or [])
        # the answer's grain: what it is broken down by, and what it is narrowed to (a
        # filter on one device or lane shows that device's data even when grouped by zone)
        grain = {*tags, "zone"} if zones else set(tags)
        grain.update(tag_filters)
        if devices:
            grain.add("device_id")
        scope = scope_for(ctx, ctx.access(key), schema.name, [field], grain, only=devices)
        if scope.delay_ms:
            window = delayed(window, ctx.clock_ms() - scope.delay_ms)
        answer: dict[str, Any] = {
            "measurement": schema.name,
            "field": field,
            "fn": fn,
            "interval": format_interval(interval_s),
            **window.to_json(),
            "series": [],
        }
        if scope.delay_ms:
            answer["delayed_by"] = format_interval(scope.delay_ms // 1000)
        if not _profile_matches(ctx, schema, profiles) or scope.empty or window.empty:
            return answer
        conditions = [window.where()]
        visible = scope.condition()
        if visible is not None:
            conditions.append(visible)
        for tag, values in [("device_id", devices), ("zone", zones), *tag_filters.items()]:
            if values:
                conditions.append(any_of(tag, values))
        grouping = ", ".join([f"time({duration(interval_s)})", *(ident(t) for t in tags)])
        query = (
            f"SELECT {fn}({ident(field)}) AS {ident('value')} FROM {ident(schema.name)} "
            f"WHERE {' AND '.join(conditions)} GROUP BY {grouping} fill(none)"
        )
        found: list[dict[str, Any]] = []
        for series in ctx.store.query(query):
            group: dict[str, str] = {t: v for t, v in series_tags(series).items() if t in tags}
            if by_profile:
                group[PROFILE] = schema.profile
            points = [[iso(int(row[0])), row[1]] for row in series.get("values", [])]
            found.append({"group": group, "points": points})
        found.sort(key=lambda s: sorted(s["group"].items()))
        answer["series"] = found
        return answer

    return api
