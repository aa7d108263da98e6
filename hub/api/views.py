"""Domain views for the Situation Room: parking occupancy, street lighting, traffic.

Each view reads the stored schema of the contract (``parking_bay``, ``lighting_lamp``,
``traffic_lane``) with a few bounded InfluxQL queries and finishes in Python what InfluxQL
cannot say. "Now" is always ``ctx.clock_ms()``; views of the latest state look up to 5 minutes
past it, because devices may stamp that far ahead of the hub's clock. The definitions:

parking occupancy (now)
    A bay's state is its newest ``occupied`` value of the lookback (default 26 h, the parking
    silence window). ``total`` counts the bays that reported in it, ``occupied`` those whose
    newest value is true, ``percent`` = 100 * occupied / total (null without bays).
    ``inventory_bays`` counts the inventory's parking devices of the zone. Zones are the
    stored ``zone`` tags (the payload's zone, else the inventory's).

parking occupancy history
    For every bucket of the grid (epoch-aligned, all listed), a bay's state at the end of the
    bucket is its newest ``occupied`` value at or before that end: InfluxQL gives
    ``last(occupied)`` per bay and bucket (booleans allow no sum or mean) and a seed query the
    state before ``start``; Python carries states forward (``fill(previous)``). A bay counts
    while its newest report is at most 26 h old at the bucket's end; a report inside the
    window is dated to the start of its bucket (so with 1-day buckets, a bay counts on the
    days it reports).

lighting status
    A lamp's state is its newest message of the lookback (default 2 h: lamps report at least
    hourly). ``on`` + ``off`` = ``total``; ``faulty`` (``fault_count`` > 0 or ``faults``
    not empty in that newest message) overlaps them.

lighting energy
    Per lamp, each hour adds the rise of ``energy_wh`` from the lamp's last reading of its
    previous reporting hour to its last reading of this hour (InfluxDB's
    ``non_negative_difference(last(energy_wh))`` per lamp and UTC hour: one value per lamp-hour
    instead of one per reading, the same sum while the counter only grows). An hour's rise
    belongs to the calendar day (Europe/Rome) of that hour (Rome's offset is whole hours, so
    every hour lies in one local day). Previous readings are looked up to 48 h before the
    first day; a lamp's first hour of data has no previous hour and adds nothing.
    When a lamp's hourly last reading fell (a replaced controller restarts from 0), that lamp
    is summed reading by reading instead: each reading adds its rise since the previous
    reading, or itself when the counter fell.

traffic flows
    Per site, lane and direction and per hour: the sums of ``vehicles`` and of each class, and
    the average speed weighted by vehicles, sum(speed_avg_kmh * vehicles) / sum(vehicles)
    (null in an hour without vehicles).

traffic congestion
    Lanes whose newest ``occupancy_pct`` of the last 20 minutes is above 35 (the contract's
    congestion threshold; ``threshold_pct`` to ask otherwise).
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query

from hub.api.aggregates import (
    FUTURE_TOLERANCE_S,
    Window,
    check_buckets,
    delayed,
    filter_values,
    format_interval,
    from_ms,
    iso,
    parse_interval,
    request_window,
    series_tags,
)
from hub.api.context import ApiContext
from hub.api.influxql import QueryInputError, any_of, duration, ident
from hub.api.scope import Scope, scope_for
from hub.api.security import ApiKey
from hub.live import CONGESTION_PCT
from hub.profiles.profile_set import MeasurementSchema
from hub.sharing import Access

PARKING = "parking_bay"
LAMPS = "lighting_lamp"
TRAFFIC = "traffic_lane"
CLASSES = ("car", "van", "truck", "bus", "moto", "bike")

PARKING_SILENCE_S = 26 * 3_600
LAMP_LOOKBACK_S = 2 * 3_600
CONGESTION_LOOKBACK_S = 20 * 60
MAX_LOOKBACK_S = 7 * 86_400
ENERGY_TZ = ZoneInfo("Europe/Rome")
ENERGY_DEFAULT_DAYS = 7
ENERGY_MAX_DAYS = 31
ENERGY_SEED_S = 48 * 3_600
HOUR_S = 3_600
FLOWS_DEFAULT_S = 86_400
FLOWS_MAX_S = 31 * 86_400
# what tells one lamp's series apart (the GROUP BY of the energy queries)
LAMP_TAGS = f"{ident('device_id')}, {ident('cabinet_id')}, {ident('zone')}"
# lamps read raw per query when their counter fell: keeps each answer a few MB at most
RESET_CHUNK = 50


def _needs(
    ctx: ApiContext, measurement: str, fields: tuple[str, ...], tags: tuple[str, ...] = ()
) -> MeasurementSchema:
    """The schema of a view's measurement; 404 when no loaded profile stores what it reads."""
    schema = ctx.schema.get(measurement)
    missing = (
        [*fields, *tags]
        if schema is None
        else [f for f in fields if f not in schema.fields]
        + [t for t in tags if t not in schema.tags]
    )
    if schema is None or missing:
        raise HTTPException(
            404,
            f"this view reads {measurement} ({', '.join(missing)}), "
            "which no loaded device profile stores",
        )
    return schema


def _latest_window(now_ms: int, lookback_s: int, scope: Scope) -> Window:
    """``[now - lookback, now + 5 min)``: the window of "newest value" views; with delayed
    shared data, ``[now - delay - lookback, now - delay)``."""
    if scope.delay_ms:
        end = now_ms - scope.delay_ms
        return Window(from_ms(end - lookback_s * 1000), from_ms(end))
    return Window(from_ms(now_ms - lookback_s * 1000), from_ms(now_ms + FUTURE_TOLERANCE_S * 1000))


def _delayed(ctx: ApiContext, window: Window, scope: Scope) -> Window:
    return delayed(window, ctx.clock_ms() - scope.delay_ms) if scope.delay_ms else window


def _where(window: Window, filters: list[tuple[str, list[str]]]) -> str:
    """The time range AND the non-empty tag filters."""
    conditions = [window.where()]
    conditions += [any_of(tag, values) for tag, values in filters if values]
    return " AND ".join(conditions)


def _percent(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def _rows(series: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of one answer series as dicts (``time`` in epoch ms)."""
    columns = series["columns"]
    return [dict(zip(columns, row, strict=True)) for row in series.get("values", [])]


# --- parking -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Bay:
    zone: str
    occupied: bool
    reported_ms: int


@dataclass(slots=True)
class _Occupancy:
    """Running per-zone counts of the history sweep."""

    occupied: Counter[str] = field(default_factory=Counter)
    total: Counter[str] = field(default_factory=Counter)

    def add(self, bay: _Bay, sign: int) -> None:
        self.total[bay.zone] += sign
        if bay.occupied:
            self.occupied[bay.zone] += sign


def _occupancy_now(
    ctx: ApiContext, access: Access, zone: list[str] | None, lookback: str
) -> dict[str, Any]:
    schema = _needs(ctx, PARKING, ("occupied",))
    lookback_s = parse_interval("lookback", lookback, low_s=60, high_s=MAX_LOOKBACK_S)
    zones = filter_values("zone", zone or [])
    scope = scope_for(ctx, access, PARKING, ("occupied",), ("zone",))
    now = ctx.clock_ms()
    window = _latest_window(now, lookback_s, scope)
    now = min(now, window.end_ms)
    query = (
        f"SELECT last({ident('occupied')}) AS {ident('occupied')} FROM {ident(PARKING)} "
        f"WHERE {_where(window, [('zone', zones)])} "
        f"GROUP BY {ident('device_id')}, {ident('zone')}"
    )
    newest: dict[str, _Bay] = {}
    for series in ctx.store.query(query):
        tags = series_tags(series)
        device = tags.get("device_id", "")
        if not scope.allows(device):
            continue
        for row in _rows(series):
            if row["occupied"] is None:
                continue
            bay = _Bay(tags.get("zone", ""), bool(row["occupied"]), int(row["time"]))
            known = newest.get(device)
            # a bay that moved zone has one series per zone: its newest report decides
            if known is None or bay.reported_ms > known.reported_ms:
                newest[device] = bay
    occupied = Counter(b.zone for b in newest.values() if b.occupied)
    total = Counter(b.zone for b in newest.values())
    listed = Counter(
        d.zone
        for d in ctx.inventory.devices.values()
        if d.profile == schema.profile
        and (not zones or d.zone in zones)
        and scope.allows(d.device_id)
    )
    rows = [
        {
            "zone": name,
            "occupied": occupied[name],
            "free": total[name] - occupied[name],
            "total": total[name],
            "percent": _percent(occupied[name], total[name]),
            "inventory_bays": listed[name],
        }
        for name in sorted(set(total) | set(listed))
    ]
    all_occupied, all_total = sum(occupied.values()), sum(total.values())
    return {
        "at": iso(now),
        "lookback": format_interval(lookback_s),
        "zones": rows,
        "city": {
            "occupied": all_occupied,
            "free": all_total - all_occupied,
            "total": all_total,
            "percent": _percent(all_occupied, all_total),
            "inventory_bays": sum(listed.values()),
        },
    }


def _occupancy_history(
    ctx: ApiContext,
    access: Access,
    zone: list[str] | None,
    start: str | None,
    end: str | None,
    interval: str,
) -> dict[str, Any]:
    _needs(ctx, PARKING, ("occupied",))
    interval_s = parse_interval("interval", interval, low_s=60)
    zones = filter_values("zone", zone or [])
    scope = scope_for(ctx, access, PARKING, ("occupied",), ("zone",))
    window = _delayed(ctx, request_window(ctx.clock_ms(), start, end), scope)
    if window.empty or scope.empty:
        return {**window.to_json(), "interval": format_interval(interval_s), "zones": []}
    buckets = check_buckets(window, interval_s)
    seed = Window(window.start - timedelta(seconds=PARKING_SILENCE_S), window.start)
    select = f"SELECT last({ident('occupied')}) AS {ident('occupied')} FROM {ident(PARKING)}"
    tags = f"{ident('device_id')}, {ident('zone')}"
    # without GROUP BY time, last() answers the sample's own time: the seed is exact
    seeded = ctx.store.query(f"{select} WHERE {_where(seed, [('zone', zones)])} GROUP BY {tags}")
    bucketed = ctx.store.query(
        f"{select} WHERE {_where(window, [('zone', zones)])} "
        f"GROUP BY time({duration(interval_s)}), {tags} fill(none)"
    )
    step = interval_s * 1000
    first = window.start_ms // step * step
    # (bucket index, device, bay) in time order; the seed goes before bucket 0
    events: list[tuple[int, str, _Bay]] = []
    for answer, seeding in ((seeded, True), (bucketed, False)):
        for series in answer:
            series_tag = series_tags(series)
            if not scope.allows(series_tag.get("device_id", "")):
                continue
            for row in _rows(series):
                if row["occupied"] is None:
                    continue
                stamp = int(row["time"])
                index = -1 if seeding else (stamp - first) // step
                reported = stamp if seeding else max(stamp, window.start_ms)
                bay = _Bay(series_tag.get("zone", ""), bool(row["occupied"]), reported)
                events.append((index, series_tag.get("device_id", ""), bay))
    # in time order, so a bay's later report replaces its earlier one
    events.sort(key=lambda e: (e[0], e[2].reported_ms))
    # device -> (serial of its current report, the report); the serial tells a stale
    # expiry (of a report since replaced) from a live one
    state: dict[str, tuple[int, _Bay]] = {}
    counts = _Occupancy()
    expiries: list[tuple[int, int, str]] = []  # (expires after ms, serial, device)
    points: dict[str, list[dict[str, Any]]] = {
        name: [] for name in sorted({bay.zone for _, _, bay in events})
    }
    cursor = 0
    for k in range(buckets):
        bucket_start = first + k * step
        bucket_end = min(bucket_start + step, window.end_ms)
        while cursor < len(events) and events[cursor][0] <= k:
            _, device, bay = events[cursor]
            old = state.get(device)
            if old is not None:
                counts.add(old[1], -1)
            state[device] = (cursor, bay)
            counts.add(bay, +1)
            heapq.heappush(expiries, (bay.reported_ms + PARKING_SILENCE_S * 1000, cursor, device))
            cursor += 1
        while expiries and expiries[0][0] < bucket_end:
            _, serial, device = heapq.heappop(expiries)
            current = state.get(device)
            if current is not None and current[0] == serial:
                counts.add(current[1], -1)
                del state[device]
        for name, series_points in points.items():
            series_points.append(
                {
                    "time": iso(bucket_start),
                    "occupied": counts.occupied[name],
                    "total": counts.total[name],
                    "percent": _percent(counts.occupied[name], counts.total[name]),
                }
            )
    return {
        **window.to_json(),
        "interval": format_interval(interval_s),
        "zones": [{"zone": name, "points": pts} for name, pts in points.items()],
    }


# --- lighting ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Lamp:
    device_id: str
    cabinet_id: str
    zone: str
    time_ms: int
    on: bool | None
    faults: list[str]
    faulty: bool


def _lamp_counts(lamps: list[_Lamp]) -> dict[str, int]:
    return {
        "on": sum(1 for lamp in lamps if lamp.on is True),
        "off": sum(1 for lamp in lamps if lamp.on is False),
        "faulty": sum(1 for lamp in lamps if lamp.faulty),
        "total": len(lamps),
    }


def _lighting_status(
    ctx: ApiContext,
    access: Access,
    cabinet_id: list[str] | None,
    zone: list[str] | None,
    lookback: str,
) -> dict[str, Any]:
    read = ("on", "fault_count", "faults")
    _needs(ctx, LAMPS, read, ("cabinet_id",))
    lookback_s = parse_interval("lookback", lookback, low_s=600, high_s=MAX_LOOKBACK_S)
    cabinets = filter_values("cabinet_id", cabinet_id or [])
    zones = filter_values("zone", zone or [])
    # counts per cabinet and zone may include lamps shared only in aggregate; the list of
    # faulty lamps shows single lamps, so only those shared per device
    counted = scope_for(ctx, access, LAMPS, read, ("cabinet_id", "zone"))
    listed = scope_for(ctx, access, LAMPS, read, None)
    scope = Scope(counted.devices, max(counted.delay_ms, listed.delay_ms))
    now = ctx.clock_ms()
    window = _latest_window(now, lookback_s, scope)
    now = min(now, window.end_ms)
    # the newest row as a whole (not last() per field): faults are judged on the newest
    # message alone, not on an older message that still listed some
    query = (
        f"SELECT {ident('on')}, {ident('fault_count')}, {ident('faults')} FROM {ident(LAMPS)} "
        f"WHERE {_where(window, [('cabinet_id', cabinets), ('zone', zones)])} "
        f"GROUP BY {ident('device_id')}, {ident('cabinet_id')}, {ident('zone')} "
        "ORDER BY time DESC LIMIT 1"
    )
    newest: dict[str, _Lamp] = {}
    for series in ctx.store.query(query):
        tags = series_tags(series)
        for row in _rows(series):
            text = row.get("faults")
            codes = [c for c in str(text).split(",") if c] if text else []
            count = row.get("fault_count")
            lamp = _Lamp(
                device_id=tags.get("device_id", ""),
                cabinet_id=tags.get("cabinet_id", ""),
                zone=tags.get("zone", ""),
                time_ms=int(row["time"]),
                on=row.get("on") if isinstance(row.get("on"), bool) else None,
                faults=codes,
                faulty=bool(codes) or (isinstance(count, int | float) and count > 0),
            )
            if not scope.allows(lamp.device_id):
                continue
            known = newest.get(lamp.device_id)
            if known is None or lamp.time_ms > known.time_ms:
                newest[lamp.device_id] = lamp
    by_cabinet: dict[str, list[_Lamp]] = defaultdict(list)
    by_zone: dict[str, list[_Lamp]] = defaultdict(list)
    for lamp in newest.values():
        by_cabinet[lamp.cabinet_id].append(lamp)
        by_zone[lamp.zone].append(lamp)
    faulty = sorted(
        (lamp for lamp in newest.values() if lamp.faulty and listed.allows(lamp.device_id)),
        key=lambda x: x.device_id,
    )
    return {
        "at": iso(now),
        "lookback": format_interval(lookback_s),
        "cabinets": [
            {
                "cabinet_id": name,
                "zones": sorted({lamp.zone for lamp in lamps}),
                **_lamp_counts(lamps),
            }
            for name, lamps in sorted(by_cabinet.items())
        ],
        "zones": [{"zone": name, **_lamp_counts(lamps)} for name, lamps in sorted(by_zone.items())],
        "city": _lamp_counts(list(newest.values())),
        "faulty_lamps": [
            {
                "device_id": lamp.device_id,
                "cabinet_id": lamp.cabinet_id,
                "zone": lamp.zone,
                "on": lamp.on,
                "faults": lamp.faults,
                "time": iso(lamp.time_ms),
            }
            for lamp in faulty
        ],
    }


def _local_midnight(moment: datetime, days_later: int = 0) -> datetime:
    """The start (in UTC) of the Rome calendar day of ``moment``, ``days_later`` days on.

    Midnight always exists in Rome (clocks change at 02:00/03:00), so this is unambiguous.
    """
    day = moment.astimezone(ENERGY_TZ).date() + timedelta(days=days_later)
    return datetime.combine(day, time(0), tzinfo=ENERGY_TZ).astimezone(UTC)


def _local_day(epoch_ms: int) -> date:
    return from_ms(epoch_ms).astimezone(ENERGY_TZ).date()


def _energy_days(now_ms: int, start: str | None, end: str | None) -> tuple[Window, list[date]]:
    """Whole Rome days covering the request (default: the last 7, today included)."""
    asked = request_window(now_ms, start, end, default_span_s=(ENERGY_DEFAULT_DAYS - 1) * 86_400)
    first = _local_midnight(asked.start)
    last = _local_midnight(asked.end)
    if last != asked.end:
        last = _local_midnight(asked.end, days_later=1)
    first_day = first.astimezone(ENERGY_TZ).date()
    count = (last.astimezone(ENERGY_TZ).date() - first_day).days
    if count > ENERGY_MAX_DAYS:
        raise QueryInputError(
            f"energy is reported for at most {ENERGY_MAX_DAYS} days; ask month by month"
        )
    days = [first_day + timedelta(days=n) for n in range(count)]
    return Window(first, last), days


def _lighting_energy(
    ctx: ApiContext,
    access: Access,
    group: Literal["cabinet", "zone"],
    start: str | None,
    end: str | None,
    cabinet_id: list[str] | None,
    zone: list[str] | None,
) -> dict[str, Any]:
    _needs(ctx, LAMPS, ("energy_wh",), ("cabinet_id",))
    window, days = _energy_days(ctx.clock_ms(), start, end)
    cabinets = filter_values("cabinet_id", cabinet_id or [])
    zones = filter_values("zone", zone or [])
    key = "cabinet_id" if group == "cabinet" else "zone"
    grain = {key, *(["cabinet_id"] if cabinets else []), *(["zone"] if zones else [])}
    scope = scope_for(ctx, access, LAMPS, ("energy_wh",), grain)
    # readings before the first day are read only as the "previous reading" of the first ones
    read = _delayed(ctx, Window(window.start - timedelta(seconds=ENERGY_SEED_S), window.end), scope)
    where = _where(read, [("cabinet_id", cabinets), ("zone", zones)])
    if scope.empty or read.empty:
        return {
            "group": group,
            "timezone": str(ENERGY_TZ),
            **window.to_json(),
            "days": [day.isoformat() for day in days],
            "series": [],
        }
    visible = scope.condition()
    if visible is not None:
        where = f"{where} AND {visible}"
    hour = f"time({duration(HOUR_S)})"

    def hourly(function: str, condition: str) -> str:
        # one value per lamp and hour: the hour's last reading against the previous hour's
        return (
            f"SELECT {function}(last({ident('energy_wh')})) AS {ident('d')} "
            f"FROM {ident(LAMPS)} WHERE {condition} GROUP BY {hour}, {LAMP_TAGS}"
        )

    def add(name: str, stamp_ms: int, value: int | float) -> None:
        # hours and readings before the first day only seeded the differences
        if stamp_ms >= window.start_ms:
            day = _local_day(stamp_ms)
            wh[name][day] = wh[name].get(day, 0) + value

    wh: dict[str, dict[date, int | float]] = defaultdict(dict)
    # InfluxDB also applies the outer time range to the subquery, so both read the seed too
    rises = ctx.store.query(
        f"SELECT sum({ident('d')}) AS {ident('wh')} "
        f"FROM ({hourly('non_negative_difference', where)}) "
        f"WHERE {read.where()} GROUP BY {hour}, {ident(key)} fill(none)"
    )
    for series in rises:
        name = series_tags(series).get(key, "")
        for row in _rows(series):
            if row["wh"] is not None:
                add(name, int(row["time"]), row["wh"])
    falls = ctx.store.query(
        f"SELECT count({ident('d')}) AS {ident('falls')} FROM ({hourly('difference', where)}) "
        f"WHERE {read.where()} AND {ident('d')} < 0 GROUP BY {LAMP_TAGS}"
    )
    fallen = {tuple(sorted(series_tags(s).items())) for s in falls}
    _replay_fallen_lamps(ctx, where, fallen, key, hourly, add)
    series_out = []
    for name in sorted(wh):
        per_day = [
            {
                "date": day.isoformat(),
                "kwh": round(wh[name][day] / 1000, 3) if day in wh[name] else None,
            }
            for day in days
        ]
        series_out.append(
            {
                key: name,
                "days": per_day,
                "total_kwh": round(sum(wh[name].values()) / 1000, 3),
            }
        )
    return {
        "group": group,
        "timezone": str(ENERGY_TZ),
        **window.to_json(),
        "days": [day.isoformat() for day in days],
        "series": series_out,
    }


def _replay_fallen_lamps(
    ctx: ApiContext,
    where: str,
    fallen: set[tuple[tuple[str, str], ...]],
    key: str,
    hourly: Callable[[str, str], str],
    add: Callable[[str, int, int | float], None],
) -> None:
    """Lamps whose counter fell: take back their hourly rises, sum their readings instead."""
    devices = sorted({dict(t)["device_id"] for t in fallen})
    for offset in range(0, len(devices), RESET_CHUNK):
        chunk_where = f"{where} AND {any_of('device_id', devices[offset : offset + RESET_CHUNK])}"
        for series in ctx.store.query(hourly("non_negative_difference", chunk_where)):
            tags = series_tags(series)
            if tuple(sorted(tags.items())) in fallen:
                for row in _rows(series):
                    if row["d"] is not None:
                        add(tags.get(key, ""), int(row["time"]), -row["d"])
        raw = ctx.store.query(
            f"SELECT {ident('energy_wh')} FROM {ident(LAMPS)} WHERE {chunk_where} "
            f"GROUP BY {LAMP_TAGS}"
        )
        for series in raw:
            tags = series_tags(series)
            if tuple(sorted(tags.items())) not in fallen:
                continue
            previous: int | float | None = None
            for row in _rows(series):
                value = row["energy_wh"]
                if value is None:
                    continue
                if previous is not None:
                    rise = value - previous if value >= previous else value
                    add(tags.get(key, ""), int(row["time"]), rise)
                previous = value


# --- traffic -------------------------------------------------------------------------------


def _traffic_flows(
    ctx: ApiContext, access: Access, site: list[str] | None, start: str | None, end: str | None
) -> dict[str, Any]:
    read = ("vehicles", *CLASSES, "speed_avg_kmh")
    _needs(ctx, TRAFFIC, read, ("lane", "direction"))
    sites = filter_values("site", site or [])
    window = request_window(
        ctx.clock_ms(), start, end, default_span_s=FLOWS_DEFAULT_S, max_span_s=FLOWS_MAX_S
    )
    check_buckets(window, HOUR_S)
    scope = scope_for(ctx, access, TRAFFIC, read, None, only=sites)
    window = _delayed(ctx, window, scope)
    counts = ("vehicles", *CLASSES)
    lane_tags = f"{ident('device_id')}, {ident('lane')}, {ident('direction')}"
    if scope.devices is not None:
        sites = scope.filter(sites) if sites else sorted(scope.devices)
    if window.empty or (scope.devices is not None and not sites):
        return {**window.to_json(), "interval": "1h", "series": []}
    where = _where(window, [("device_id", sites)])
    group = f"GROUP BY time({duration(HOUR_S)}), {lane_tags} fill(none)"
    sums = ", ".join(f"sum({ident(c)}) AS {ident(c)}" for c in counts)
    answer = ctx.store.query(f"SELECT {sums} FROM {ident(TRAFFIC)} WHERE {where} {group}")
    # InfluxQL cannot sum a product directly: a subquery makes speed * vehicles per interval
    # (only that one field: a subquery's cost grows with the fields it carries)
    speeds = ctx.store.query(
        f"SELECT sum({ident('speed_x_vehicles')}) AS {ident('speed_x_vehicles')} FROM ("
        f"SELECT {ident('speed_avg_kmh')} * {ident('vehicles')} AS {ident('speed_x_vehicles')} "
        f"FROM {ident(TRAFFIC)} WHERE {where} GROUP BY {lane_tags}) "
        f"WHERE {window.where()} {group}"
    )
    weighted_speed = {
        (tuple(sorted(series_tags(series).items())), int(row["time"])): row["speed_x_vehicles"]
        for series in speeds
        for row in _rows(series)
    }
    lanes = []
    for series in answer:
        tags = series_tags(series)
        lane = tuple(sorted(tags.items()))
        hours = []
        for row in _rows(series):
            vehicles = row["vehicles"] or 0
            weighted = weighted_speed.get((lane, int(row["time"])))
            hours.append(
                {
                    "time": iso(int(row["time"])),
                    **{c: row[c] or 0 for c in counts},
                    "speed_avg_kmh": round(weighted / vehicles, 2)
                    if vehicles and weighted is not None
                    else None,
                }
            )
        lanes.append(
            {
                "site": tags.get("device_id", ""),
                "lane": tags.get("lane", ""),
                "direction": tags.get("direction", ""),
                "hours": hours,
            }
        )
    lanes.sort(key=lambda x: (x["site"], x["lane"], x["direction"]))
    return {**window.to_json(), "interval": "1h", "series": lanes}


def _traffic_congestion(ctx: ApiContext, access: Access, threshold_pct: float) -> dict[str, Any]:
    _needs(ctx, TRAFFIC, ("occupancy_pct",), ("lane", "direction"))
    scope = scope_for(ctx, access, TRAFFIC, ("occupancy_pct",), None)
    now = ctx.clock_ms()
    window = _latest_window(now, CONGESTION_LOOKBACK_S, scope)
    now = min(now, window.end_ms)
    query = (
        f"SELECT {ident('occupancy_pct')} FROM {ident(TRAFFIC)} WHERE {window.where()} "
        f"GROUP BY {ident('device_id')}, {ident('lane')}, {ident('direction')}, {ident('zone')} "
        "ORDER BY time DESC LIMIT 1"
    )
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for series in ctx.store.query(query):
        tags = series_tags(series)
        for row in _rows(series):
            if row["occupancy_pct"] is None:
                continue
            lane = (tags.get("device_id", ""), tags.get("lane", ""))
            if not scope.allows(lane[0]):
                continue
            known = newest.get(lane)
            if known is None or int(row["time"]) > known["time_ms"]:
                newest[lane] = {
                    "site": lane[0],
                    "lane": lane[1],
                    "direction": tags.get("direction", ""),
                    "zone": tags.get("zone", ""),
                    "occupancy_pct": row["occupancy_pct"],
                    "time_ms": int(row["time"]),
                }
    congested = [
        {**{k: v for k, v in lane.items() if k != "time_ms"}, "time": iso(lane["time_ms"])}
        for lane in newest.values()
        if lane["occupancy_pct"] > threshold_pct
    ]
    congested.sort(key=lambda x: (-x["occupancy_pct"], x["site"], x["lane"]))
    return {
        "at": iso(now),
        "lookback": format_interval(CONGESTION_LOOKBACK_S),
        "threshold_pct": threshold_pct,
        "lanes": congested,
    }


# --- routes --------------------------------------------------------------------------------


def router(ctx: ApiContext) -> APIRouter:
    """The domain views, reading through ``ctx``."""
    api = APIRouter(prefix="/api/v1/views", tags=["views"])
    # a default, not an Annotated type: annotations are strings here, and FastAPI could not
    # resolve a local name in them
    reader = Depends(ctx.requires("reader"))

    @api.get("/parking/occupancy")
    def parking_occupancy(
        key: ApiKey = reader,
        zone: Annotated[list[str] | None, Query(description="only these zones")] = None,
        lookback: Annotated[
            str, Query(description="how far back a bay's newest state may be, 1m to 7d")
        ] = "26h",
    ) -> dict[str, Any]:
        """Bays occupied, free and reporting now, per zone and for the city.

        A bay's state is its newest report of the lookback (default 26 h, the parking
        silence window); ``total`` counts the bays that reported in it, ``inventory_bays``
        the inventory's parking devices of the zone.
        """
        return _occupancy_now(ctx, ctx.access(key), zone, lookback)

    @api.get("/parking/occupancy/history")
    def parking_occupancy_history(
        key: ApiKey = reader,
        zone: Annotated[list[str] | None, Query(description="only these zones")] = None,
        start: Annotated[
            str | None, Query(description="ISO 8601 with timezone; default end - 24 h")
        ] = None,
        end: Annotated[str | None, Query(description="ISO 8601 with timezone; default now")] = None,
        interval: Annotated[str, Query(description="bucket length, 1m to 31d")] = "1h",
    ) -> dict[str, Any]:
        """Occupancy per zone at the end of every bucket.

        A bay's state at a bucket's end is its newest report at or before it; bays count while
        that report is at most 26 h old (reports inside the range dated to their bucket's
        start). Every bucket of the (epoch-aligned) grid is listed; ``percent`` is null when
        no bay counts.
        """
        return _occupancy_history(ctx, ctx.access(key), zone, start, end, interval)

    @api.get("/lighting/status")
    def lighting_status(
        key: ApiKey = reader,
        cabinet_id: Annotated[list[str] | None, Query(description="only these cabinets")] = None,
        zone: Annotated[list[str] | None, Query(description="only these zones")] = None,
        lookback: Annotated[
            str, Query(description="how far back a lamp's newest message may be, 10m to 7d")
        ] = "2h",
    ) -> dict[str, Any]:
        """Lamps on, off and faulty per cabinet and per zone, from each lamp's newest message.

        ``on + off = total``; ``faulty`` (fault_count > 0 or faults listed in the newest
        message) overlaps them. Lamps silent for the whole lookback are not counted.
        """
        return _lighting_status(ctx, ctx.access(key), cabinet_id, zone, lookback)

    @api.get("/lighting/energy")
    def lighting_energy(
        key: ApiKey = reader,
        group: Annotated[Literal["cabinet", "zone"], Query(description="per cabinet or zone")] = (
            "cabinet"
        ),
        start: Annotated[
            str | None,
            Query(description="ISO 8601 with timezone; widened to its Rome day's midnight"),
        ] = None,
        end: Annotated[
            str | None,
            Query(description="ISO 8601 with timezone; widened to the next Rome midnight"),
        ] = None,
        cabinet_id: Annotated[list[str] | None, Query(description="only these cabinets")] = None,
        zone: Annotated[list[str] | None, Query(description="only these zones")] = None,
    ) -> dict[str, Any]:
        """Lamp energy (kWh) per calendar day in Europe/Rome, per cabinet or zone.

        From each lamp's cumulative ``energy_wh``: every reading adds its rise since the
        previous reading, or, when the counter fell (a replaced controller restarts from 0),
        the reading itself. Default: the last 7 days, today included; at most 31 days. A day
        without readings is null.
        """
        return _lighting_energy(ctx, ctx.access(key), group, start, end, cabinet_id, zone)

    @api.get("/traffic/flows")
    def traffic_flows(
        key: ApiKey = reader,
        site: Annotated[list[str] | None, Query(description="only these counter sites")] = None,
        start: Annotated[
            str | None, Query(description="ISO 8601 with timezone; default end - 24 h")
        ] = None,
        end: Annotated[str | None, Query(description="ISO 8601 with timezone; default now")] = None,
    ) -> dict[str, Any]:
        """Vehicles per hour per site, lane and class, with the average speed.

        ``speed_avg_kmh`` is weighted by vehicles: sum(speed_avg_kmh * vehicles) /
        sum(vehicles) over the hour's intervals (null without vehicles). At most 31 days.
        """
        return _traffic_flows(ctx, ctx.access(key), site, start, end)

    @api.get("/traffic/congestion")
    def traffic_congestion(
        key: ApiKey = reader,
        threshold_pct: Annotated[
            float, Query(ge=0, le=100, description="occupancy above which a lane is congested")
        ] = CONGESTION_PCT,
    ) -> dict[str, Any]:
        """Lanes whose newest occupancy of the last 20 minutes is above the threshold (35 %)."""
        return _traffic_congestion(ctx, ctx.access(key), threshold_pct)

    return api
