"""A simulated City of Prato fleet that produces the MQTT messages of ``field-devices.md``.

``Fleet(FleetSpec(...))`` lays out parking bays, Citelum cabinets with their lamp controllers
and traffic counters over real Prato zones, then:

* ``devices()`` / ``write_inventory(path)`` give the inventory (``devices.csv``);
* ``messages(start_ms, end_ms)`` yields everything the fleet sends in a simulated window, in
  send-time order, at the devices' real cadences and with injected faults;
* ``burst(count, start_ms)`` builds a fixed-size, fully decodable mix for load benchmarks.

It is a pure generator: no MQTT, no network, no threads, no wall clock. Every random draw comes
from ``random.Random`` seeded with ``FleetSpec.seed`` (plus the device and the window), so the
same spec and window always give byte-identical messages.

Device timestamps inside payloads equal ``SimMessage.due_ms`` (the traffic interval ``start``
included), so a hub that receives a message at its ``due_ms`` stores every point at exactly
that time. Local time is Italian civil time (CET, CEST from the last Sunday of March to the
last Sunday of October), computed here so that no time-zone database is needed.
"""

from __future__ import annotations

import base64
import bisect
import csv
import heapq
import math
import random
import struct
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

#: Cadences of the contract.
LAMP_ON_EVERY_MS = 10 * MINUTE_MS
LAMP_OFF_EVERY_MS = 60 * MINUTE_MS
CABINET_EVERY_MS = 5 * MINUTE_MS
HEARTBEAT_EVERY_MS = 12 * HOUR_MS
INTERVAL_EVERY_MS = 5 * MINUTE_MS
HEALTH_EVERY_MS = 15 * MINUTE_MS
INTERVAL_PERIOD_S = 300

#: Profile names as used in ``devices.csv``.
PARKING = "parking_bay"
LIGHTING = "citelum_lighting"
TRAFFIC = "traffic_counter"

#: Prato zones (neighbourhoods and the industrial district) with an approximate centre.
ZONES: dict[str, tuple[float, float]] = {
    "centro-storico": (43.8805, 11.0966),
    "san-paolo": (43.8738, 11.0815),
    "chiesanuova": (43.8915, 11.0838),
    "soccorso": (43.8702, 11.1125),
    "mezzana": (43.8648, 11.1148),
    "viaccia": (43.8795, 11.0562),
    "galciana": (43.8888, 11.0578),
    "narnali": (43.8622, 11.0702),
    "iolo": (43.8468, 11.0842),
    "tavola": (43.8432, 11.1118),
    "macrolotto": (43.8558, 11.0775),
}

_LAT = 43.88
_LON = 11.10
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
#: Lamps burn at full power from dusk to midnight and from 05:00 to dawn, at 50% in between.
NIGHT_DIM_PCT = 50
_DIM_END_MS = 5 * HOUR_MS
#: A controller's own draw while its lamp is off (W), and a failed lamp's driver idling (W).
_STANDBY_W = 0.4
_FAILED_W = 2.4
#: MQTT QoS per family: ChirpStack's integration publishes at 0, the Citelum gateway and the
#: traffic concentrator at 1 (the gateway's retained presence is QoS 1 by contract).
_QOS_PARKING = 0
_QOS_LIGHTING = 1
_QOS_TRAFFIC = 1

_CLASSES = ("car", "van", "truck", "bus", "moto", "bike")
_CLASS_SHARES = (0.78, 0.09, 0.035, 0.015, 0.07, 0.01)

#: Share of parking bays taken, by local hour: low at night, high 9-13 and 16-20.
_PARKING_OCCUPANCY = (
    0.22, 0.20, 0.18, 0.17, 0.17, 0.20, 0.30, 0.50, 0.72, 0.86, 0.90, 0.90,
    0.88, 0.70, 0.62, 0.66, 0.84, 0.88, 0.90, 0.86, 0.60, 0.45, 0.35, 0.28,
)  # fmt: skip
_NIGHT_STAY_MIN = 300.0

#: Weekday traffic as a share of the rush-hour peak, by local hour (linear in between):
#: rush hours 7:30-9:30 and 17-19.
_TRAFFIC_CURVE = (
    (0.0, 0.07), (1.0, 0.04), (2.0, 0.03), (3.0, 0.03), (4.0, 0.04), (5.0, 0.09),
    (6.0, 0.28), (7.0, 0.62), (7.5, 0.96), (8.5, 1.0), (9.5, 0.94), (10.0, 0.66),
    (12.0, 0.62), (13.0, 0.72), (14.0, 0.62), (16.0, 0.70), (17.0, 0.96), (18.0, 1.0),
    (19.0, 0.94), (19.5, 0.68), (20.0, 0.50), (21.0, 0.34), (22.0, 0.24), (23.0, 0.14),
    (24.0, 0.07),
)  # fmt: skip
_TRAFFIC_HOURS = [hour for hour, _ in _TRAFFIC_CURVE]
_WEEKEND = {5: 0.65, 6: 0.45}  # Saturday, Sunday


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One MQTT message a simulated device publishes at simulated time ``due_ms``.

    ``bad_frame`` marks the injected broken payloads (truncated frame, cut-off JSON, garbage
    bytes): the hub must dead-letter exactly these and decode every other message.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    due_ms: int
    bad_frame: bool = False


@dataclass(frozen=True)
class FleetSpec:
    """Size, seed and fault-injection shares of a simulated fleet.

    Device-level shares (``lamp_failure_rate``, ``low_battery_rate``, ``sensor_fault_rate``,
    ``silent_rate``, ``door_open_rate``, ``low_supply_rate``, ``csv_share``) pick exactly
    ``round(share x devices)`` devices of the family, so small fleets are predictable.
    ``bad_frame_rate`` is a per-message probability.
    """

    parking_bays: int
    cabinets: int
    lamps_per_cabinet: int
    traffic_sites: int
    seed: int = 1
    #: lamps reporting LAMP_FAILURE and drawing almost nothing while on
    lamp_failure_rate: float = 0.02
    #: parking sensors whose battery drifts under 3.3 V
    low_battery_rate: float = 0.03
    #: parking sensors reporting the sensor-fault flag
    sensor_fault_rate: float = 0.01
    #: devices that never send anything (in every family)
    silent_rate: float = 0.01
    #: cabinets whose door is opened for 15-75 min every day
    door_open_rate: float = 0.05
    #: traffic counters whose supply is under 11.5 V
    low_supply_rate: float = 0.05
    #: probability that a message is replaced by a broken payload the hub must dead-letter
    bad_frame_rate: float = 0.001
    #: traffic sites that are first-generation CSV counters
    csv_share: float = 0.25

    def __post_init__(self) -> None:
        for name in ("parking_bays", "cabinets", "lamps_per_cabinet", "traffic_sites"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        for name in (
            "lamp_failure_rate",
            "low_battery_rate",
            "sensor_fault_rate",
            "silent_rate",
            "door_open_rate",
            "low_supply_rate",
            "bad_frame_rate",
            "csv_share",
        ):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")


class InventoryRow(NamedTuple):
    """One ``devices.csv`` row."""

    device_id: str
    profile: str
    zone: str
    lat: float
    lon: float
    owner: str
    installed_at: date


INVENTORY_HEADER = ("device_id", "profile", "zone", "lat", "lon", "owner", "installed_at")


# --------------------------------------------------------------------------- local time, sky


def _rng(*parts: object) -> random.Random:
    """A generator seeded from ``parts`` (string seeds are stable across processes)."""
    return random.Random("/".join(str(p) for p in parts))  # noqa: S311  # simulation, not crypto


@lru_cache(maxsize=64)
def _summer_time_ms(year: int) -> tuple[int, int]:
    """Start and end of Italian summer time in ``year`` (UTC ms): EU rule, 01:00 UTC."""

    def last_sunday_1am(month: int) -> int:
        last = date(year, month, 31)  # March and October both have 31 days
        last -= timedelta(days=(last.weekday() + 1) % 7)
        return (last - _EPOCH_DATE).days * DAY_MS + HOUR_MS

    return last_sunday_1am(3), last_sunday_1am(10)


@lru_cache(maxsize=8192)
def _year_of_day(day: int) -> int:
    return (_EPOCH_DATE + timedelta(days=day)).year


@lru_cache(maxsize=1 << 16)
def _offset_of_hour(hour: int) -> int:
    t_ms = hour * HOUR_MS
    begin, end = _summer_time_ms(_year_of_day(t_ms // DAY_MS))
    return 2 * HOUR_MS if begin <= t_ms < end else HOUR_MS


def local_offset_ms(t_ms: int) -> int:
    """Offset of Prato's civil time from UTC at ``t_ms``: one hour, two in summer."""
    # Clocks change on a whole UTC hour (01:00), so the offset is constant per UTC hour.
    return _offset_of_hour(t_ms // HOUR_MS)


def local_day(t_ms: int) -> int:
    """The local calendar date of ``t_ms`` as days since 1970-01-01."""
    return (t_ms + local_offset_ms(t_ms)) // DAY_MS


def local_hour(t_ms: int) -> float:
    """The local time of day of ``t_ms`` in hours (0 <= h < 24)."""
    return ((t_ms + local_offset_ms(t_ms)) % DAY_MS) / HOUR_MS


def local_to_utc(day: int, ms_of_day: int) -> int:
    """UTC ms of local wall-clock time ``ms_of_day`` on local date ``day``."""
    wall = day * DAY_MS + ms_of_day
    # The offset an hour earlier is the right one everywhere except inside the spring gap.
    return wall - local_offset_ms(wall - HOUR_MS)


@lru_cache(maxsize=8192)
def sun_times(day: int) -> tuple[int, int]:
    """Sunrise and sunset over Prato (UTC ms) on ``day``: textbook declination and equation
    of time, good to a few minutes, which is all an astronomical switch-on clock needs."""
    n = (_EPOCH_DATE + timedelta(days=day)).timetuple().tm_yday
    declination = math.radians(23.44) * math.sin(2 * math.pi * (284 + n) / 365)
    lat = math.radians(_LAT)
    cos_h = (math.sin(math.radians(-0.833)) - math.sin(lat) * math.sin(declination)) / (
        math.cos(lat) * math.cos(declination)
    )
    half_day_min = 4 * math.degrees(math.acos(max(-1.0, min(1.0, cos_h))))
    b = 2 * math.pi * (n - 81) / 364
    equation_of_time = 9.87 * math.sin(2 * b) - 7.53 * math.cos(b) - 1.5 * math.sin(b)
    noon_min = 720 - 4 * _LON - equation_of_time
    base = day * DAY_MS
    return (
        base + round((noon_min - half_day_min) * MINUTE_MS),
        base + round((noon_min + half_day_min) * MINUTE_MS),
    )


class LightingSegment(NamedTuple):
    """A stretch of the lighting programme at one dim level (UTC ms, ``end`` excluded)."""

    start: int
    end: int
    level: int  # dim percent, 0 = off


@lru_cache(maxsize=8192)
def _night_plan(day: int) -> tuple[LightingSegment, ...]:
    """The public-lighting programme of local date ``day``: four constant-level segments."""
    midnight = local_to_utc(day, 0)
    dim_end = local_to_utc(day, _DIM_END_MS)
    sunrise, sunset = sun_times(day)
    # In Prato the sun never rises before 05:00 nor sets after midnight, so the order holds.
    return (
        LightingSegment(midnight, dim_end, NIGHT_DIM_PCT),
        LightingSegment(dim_end, sunrise, 100),
        LightingSegment(sunrise, sunset, 0),
        LightingSegment(sunset, local_to_utc(day + 1, 0), 100),
    )


def lighting_segment(t_ms: int) -> LightingSegment:
    """The lighting programme segment (start, end, dim level) in force at ``t_ms``."""
    day = local_day(t_ms)
    for segment in _night_plan(day):
        if t_ms < segment.end:
            return segment
    return _night_plan(day + 1)[0]


class _Ledger:
    """Cumulative full-power and burning hours of the lighting programme since 2010.

    Counters such as a lamp's ``e`` and ``hrs`` or a cabinet's ``kwh_total`` are functions of
    time, not running sums, so any window of any length gives consistent, monotonic values.
    """

    _START_DAY = (date(2010, 1, 1) - _EPOCH_DATE).days

    def __init__(self) -> None:
        self._full: list[float] = [0.0]
        self._burn: list[float] = [0.0]

    def _prefix(self, day: int) -> tuple[float, float]:
        k = day - self._START_DAY
        if k <= 0:
            return 0.0, 0.0
        while len(self._full) <= k:
            full, burn = self._full[-1], self._burn[-1]
            for segment in _night_plan(self._START_DAY + len(self._full) - 1):
                if segment.level:
                    hours = (segment.end - segment.start) / HOUR_MS
                    full += hours * segment.level / 100
                    burn += hours
            self._full.append(full)
            self._burn.append(burn)
        return self._full[k], self._burn[k]

    def hours(self, t_ms: int) -> tuple[float, float]:
        """(full-power-equivalent hours, burning hours) from 2010 up to ``t_ms``."""
        day = local_day(t_ms)
        full, burn = self._prefix(day)
        for segment in _night_plan(day):
            if segment.start >= t_ms:
                break
            if segment.level:
                hours = (min(t_ms, segment.end) - segment.start) / HOUR_MS
                full += hours * segment.level / 100
                burn += hours
        return full, burn


_LEDGER = _Ledger()


def _ambient_c(t_ms: int) -> float:
    """Air temperature in Prato: seasonal mean (coldest late January) plus a daily swing."""
    return _ambient_at(t_ms // (5 * MINUTE_MS))


@lru_cache(maxsize=4096)
def _ambient_at(five_minutes: int) -> float:
    t_ms = five_minutes * 5 * MINUTE_MS  # five-minute steps are fine enough for weather
    day = local_day(t_ms)
    seasonal = 15.0 - 9.5 * math.cos(2 * math.pi * ((day % 365.2425) - 20) / 365.2425)
    return seasonal + 5.5 * math.cos(2 * math.pi * (local_hour(t_ms) - 15) / 24)


def traffic_factor(t_ms: int) -> float:
    """Expected traffic at ``t_ms`` as a share of a weekday rush-hour peak."""
    hour = local_hour(t_ms)
    k = bisect.bisect_right(_TRAFFIC_HOURS, hour) - 1
    (h0, f0), (h1, f1) = _TRAFFIC_CURVE[k], _TRAFFIC_CURVE[k + 1]
    factor = f0 + (f1 - f0) * (hour - h0) / (h1 - h0)
    weekday = (local_day(t_ms) + 3) % 7  # 1970-01-01 was a Thursday
    return factor * _WEEKEND.get(weekday, 1.0)


@lru_cache(maxsize=1 << 17)
def _iso_seconds(epoch_s: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` of ``epoch_s`` read as UTC (cached: bursts reuse seconds)."""
    return (_EPOCH + timedelta(seconds=epoch_s)).strftime("%Y-%m-%dT%H:%M:%S")


def _iso_utc_ms(t_ms: int) -> str:
    """ChirpStack's ``time``: UTC with milliseconds and ``Z``."""
    return f"{_iso_seconds(t_ms // SECOND_MS)}.{t_ms % SECOND_MS:03d}Z"


def _iso_local(t_ms: int) -> str:
    """A cabinet's ``ts``: local wall time with its offset (``+01:00``, ``+02:00`` in summer)."""
    offset = local_offset_ms(t_ms)
    return f"{_iso_seconds((t_ms + offset) // SECOND_MS)}+{offset // HOUR_MS:02d}:00"


def _comma(value: float) -> str:
    """An Italian decimal: ``38,5``."""
    return f"{value:.1f}".replace(".", ",")


def _next_at(start_ms: int, phase_ms: int, every_ms: int) -> int:
    """The first time >= ``start_ms`` that is ``phase_ms`` past a multiple of ``every_ms``."""
    return start_ms + (phase_ms - start_ms) % every_ms


def _jitter(rng: random.Random, sd: float) -> float:
    """Zero-mean noise with standard deviation ``sd``: the difference of two uniforms, a
    bell-ish triangle that is several times cheaper than ``gauss`` (bursts draw millions)."""
    return (rng.random() - rng.random()) * sd * 2.449489742783178


def _ceil_second(t_ms: int) -> int:
    return -(-t_ms // SECOND_MS) * SECOND_MS


def _pick(rng: random.Random, n: int, share: float) -> set[int]:
    """Exactly ``round(share x n)`` distinct indexes below ``n``."""
    return set(rng.sample(range(n), min(n, int(share * n + 0.5))))


def _date_between(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randint(0, (last - first).days))


def _day_ms(when: date) -> int:
    return (when - _EPOCH_DATE).days * DAY_MS


# --------------------------------------------------------------------------- device models


@dataclass(slots=True)
class _Bay:
    row: InventoryRow
    topic: str
    info: str  # the constant "deviceInfo" JSON object
    gateways: tuple[tuple[str, float, float], ...]  # (gatewayId, mean RSSI, mean SNR)
    battery_mv: float
    drain_mv_per_day: float
    sensor_fault: bool
    popularity: float
    day_stay_min: float
    heartbeat_phase_ms: int
    installed_ms: int


@dataclass(slots=True)
class _Lamp:
    row: InventoryRow
    topic: str
    phase: int  # 0..2, the cabinet phase (L1..L3) feeding it
    rated_w: float
    failed: bool
    switch_offset_ms: int  # controllers switch seconds apart (clock drift, photocells)
    supply_v: float
    since_install: tuple[float, float]  # ledger hours when the controller was installed


@dataclass(slots=True)
class _Cabinet:
    row: InventoryRow
    topic: str
    status_topic: str
    lamps: list[_Lamp]
    legacy_w: tuple[float, float, float]  # lamps on each phase with no smart controller
    phase_v: tuple[float, float, float]
    aux_kw: float
    full_load_kw: float
    door_prone: bool
    phase_ms: int
    kwh_at_install: float
    since_install: tuple[float, float]
    installed_ms: int


@dataclass(slots=True)
class _Lane:
    number: int
    direction: str
    peak_vehicles: float  # per 5 minutes at the weekday peak
    peak_occupancy: float
    free_speed: float


@dataclass(slots=True)
class _Site:
    row: InventoryRow
    csv: bool
    lanes: tuple[_Lane, ...]
    bus_share: float
    low_supply: bool
    health_phase_ms: int
    interval_topic: str
    health_topic: str


# --------------------------------------------------------------------------- payloads


def _bay_frame(
    bay: _Bay, t_ms: int, occupied: bool, drift_days: float, rng: random.Random
) -> bytes:
    flags = int(occupied) | (2 if bay.sensor_fault else 0)
    battery = bay.battery_mv - bay.drain_mv_per_day * drift_days + rng.randint(-4, 4)
    temperature = round(_ambient_c(t_ms) + _jitter(rng, 1.0))
    return struct.pack(
        ">BHb", flags, max(2000, min(65535, int(battery))), max(-128, min(127, temperature))
    )


def _bay_payload(
    bay: _Bay, t_ms: int, *, f_cnt: int, port: int, frame: bytes, rng: random.Random
) -> bytes:
    """A ChirpStack v4 uplink event as in the contract (only the keys it names)."""
    rx = ", ".join(
        f'{{"gatewayId": "{gateway}", "rssi": {round(rssi + _jitter(rng, 2.5))}, '
        f'"snr": {snr + _jitter(rng, 1.2):.1f}}}'
        for gateway, rssi, snr in bay.gateways
    )
    dedup = uuid.UUID(int=rng.getrandbits(128), version=4)
    data = base64.b64encode(frame).decode("ascii")
    return (
        f'{{"deduplicationId": "{dedup}", "time": "{_iso_utc_ms(t_ms)}", '
        f'"deviceInfo": {bay.info}, "fCnt": {f_cnt}, "fPort": {port}, "data": "{data}", '
        f'"rxInfo": [{rx}]}}'
    ).encode()


def _lamp_draw(lamp: _Lamp, level: int) -> tuple[float, float]:
    """(power W, power factor) of a lamp at dim ``level``."""
    if level == 0:
        return _STANDBY_W, 0.35
    if lamp.failed:
        return _FAILED_W, 0.42
    return lamp.rated_w * level / 100, (0.96 if level == 100 else 0.91)


def _lamp_level(lamp: _Lamp, t_ms: int) -> int:
    """The dim level a controller is at: the programme, shifted by its switch offset."""
    return lighting_segment(t_ms - lamp.switch_offset_ms).level


def _lamp_payload(lamp: _Lamp, t_ms: int, level: int, rng: random.Random) -> bytes:
    power, power_factor = _lamp_draw(lamp, level)
    power *= 1.0 + _jitter(rng, 0.01)
    volts = lamp.supply_v + _jitter(rng, 0.8)
    full, burn = _LEDGER.hours(t_ms)
    # Energy counts the rated draw over the programme since the controller was installed.
    energy = int(lamp.rated_w * max(0.0, full - lamp.since_install[0]))
    hours = int(max(0.0, burn - lamp.since_install[1]))
    faults = '["LAMP_FAILURE"]' if lamp.failed else "[]"
    return (
        f'{{"ts": {t_ms // SECOND_MS}, "on": {"true" if level else "false"}, "dim": {level}, '
        f'"p": {power:.1f}, "v": {volts:.1f}, "i": {power / (volts * power_factor):.3f}, '
        f'"pf": {power_factor:.2f}, "e": {energy}, "hrs": {hours}, "faults": {faults}}}'
    ).encode()


@lru_cache(maxsize=4096)
def _door_window(seed: int, cabinet_id: str, day: int) -> tuple[int, int]:
    """When a door-prone cabinet is open on local date ``day`` (a maintenance visit)."""
    rng = _rng(seed, cabinet_id, "door", day)
    opens = local_to_utc(day, rng.randint(8 * 60 + 30, 16 * 60) * MINUTE_MS)
    return opens, opens + rng.randint(15, 75) * MINUTE_MS


def _cabinet_payload(cabinet: _Cabinet, t_ms: int, door_open: bool, rng: random.Random) -> bytes:
    level = lighting_segment(t_ms).level
    watts = [0.0, 0.0, 0.0]
    for lamp in cabinet.lamps:
        watts[lamp.phase] += _lamp_draw(lamp, _lamp_level(lamp, t_ms))[0]
    phases = []
    for k in range(3):
        load = watts[k] + cabinet.legacy_w[k] * level / 100
        if k == 0:
            load += cabinet.aux_kw * 1000  # controller, modem and heater hang on L1
        load *= 1.0 + _jitter(rng, 0.01)
        volts = cabinet.phase_v[k] + _jitter(rng, 0.6)
        power_factor = 0.95 if level == 100 else 0.9 if level else 0.6
        phases.append(
            f'"L{k + 1}": {{"v": {volts:.1f}, "i": {load / (volts * power_factor):.2f}, '
            f'"kw": {load / 1000:.3f}}}'
        )
    full, _ = _LEDGER.hours(t_ms)
    kwh = (
        cabinet.kwh_at_install
        + cabinet.full_load_kw * max(0.0, full - cabinet.since_install[0])
        + cabinet.aux_kw * max(0, t_ms - cabinet.installed_ms) / HOUR_MS
    )
    return (
        f'{{"ts": "{_iso_local(t_ms)}", "mode": "{"manual" if door_open else "auto"}", '
        f'"door_open": {"true" if door_open else "false"}, '
        f'"phases": {{{", ".join(phases)}}}, "kwh_total": {kwh:.1f}}}'
    ).encode()


class _LaneReading(NamedTuple):
    counts: tuple[int, ...]
    speed_avg: float
    speed_p85: float
    occupancy: float


def _lane_reading(lane: _Lane, factor: float, bus_share: float, rng: random.Random) -> _LaneReading:
    mean = lane.peak_vehicles * factor
    vehicles = max(0, round(rng.gauss(mean, math.sqrt(mean) + 0.5)))  # Poisson-like spread
    shares = (*_CLASS_SHARES[:3], bus_share, *_CLASS_SHARES[4:])
    counts = tuple(int(vehicles * share + rng.random()) for share in shares)
    if not any(counts):
        return _LaneReading(counts, 0.0, 0.0, 0.0)
    # Occupancy grows faster than flow near saturation; speeds drop as the lane fills.
    occupancy = lane.peak_occupancy * factor**1.5 * (1.0 + _jitter(rng, 0.05))
    occupancy = max(0.1, min(48.0, occupancy))
    speed = lane.free_speed * (1.0 - 0.55 * (occupancy / 45.0) ** 2) + _jitter(rng, 1.5)
    speed = max(5.0, speed)
    return _LaneReading(counts, speed, speed * 1.3 + abs(_jitter(rng, 1.5)), occupancy)


def _interval_payload(site: _Site, t_ms: int, rng: random.Random) -> bytes:
    """A 5-minute interval report starting at ``t_ms``: JSON, or CSV for old counters."""
    factor = traffic_factor(t_ms)
    readings = [(lane, _lane_reading(lane, factor, site.bus_share, rng)) for lane in site.lanes]
    start = f"{_iso_seconds(t_ms // SECOND_MS)}Z"
    if site.csv:
        return "\n".join(
            f"{start};{INTERVAL_PERIOD_S};{lane.number};{lane.direction};"
            + ";".join(str(c) for c in r.counts)
            + f";{_comma(r.speed_avg)};{_comma(r.speed_p85)};{_comma(r.occupancy)}"
            for lane, r in readings
        ).encode()
    lanes = ", ".join(
        f'{{"lane": {lane.number}, "dir": "{lane.direction}", "counts": {{'
        + ", ".join(f'"{name}": {c}' for name, c in zip(_CLASSES, r.counts, strict=True))
        + f'}}, "speed_avg_kmh": {r.speed_avg:.1f}, "speed_p85_kmh": {r.speed_p85:.1f}, '
        f'"occupancy_pct": {r.occupancy:.1f}}}'
        for lane, r in readings
    )
    return (
        f'{{"site": "{site.row.device_id}", "start": "{start}", '
        f'"period_s": {INTERVAL_PERIOD_S}, "lanes": [{lanes}]}}'
    ).encode()


def _health_payload(site: _Site, t_ms: int, rng: random.Random) -> bytes:
    supply = min(11.45, 11.3 + _jitter(rng, 0.08)) if site.low_supply else 13.3 + _jitter(rng, 0.15)
    # Electronics in a sunlit cabinet run some degrees above the air.
    temperature = _ambient_c(t_ms) + 7.0 + _jitter(rng, 0.7)
    return (
        f'{{"ts": {t_ms}, "supply_v": {supply:.1f}, "temp_c": {temperature:.1f}, '
        f'"door": "closed", "lane_faults": []}}'
    ).encode()


def _garble(topic: str, payload: bytes, rng: random.Random) -> bytes:
    """A broken version of ``payload`` that no profile can decode."""
    kind = rng.randrange(4)
    if kind == 0:
        # Line noise: 0xFF never occurs in UTF-8, so this is neither JSON nor text.
        return b"\xff\xfe" + rng.randbytes(rng.randint(0, 24))
    if topic.endswith("/csv"):
        # A line cut short: two columns missing.
        lines = payload.split(b"\n")
        k = rng.randrange(len(lines))
        lines[k] = b";".join(lines[k].split(b";")[:-2])
        return b"\n".join(lines)
    if topic.endswith("/event/up") and kind in (1, 2):
        head, _, rest = payload.partition(b'"data": "')
        data, _, tail = rest.partition(b'"')
        # kind 1: a truncated radio frame (3 bytes, shorter than either port's layout);
        # kind 2: a frame that is not base64 at all.
        broken = base64.b64encode(base64.b64decode(data)[:3]) if kind == 1 else b"!" + data[1:]
        return head + b'"data": "' + broken + b'"' + tail
    # Cut off in transmission: a proper prefix of a JSON object is never valid JSON.
    return payload[: rng.randint(1, len(payload) - 1)]


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """A deterministic simulated fleet built from a ``FleetSpec``."""

    def __init__(self, spec: FleetSpec) -> None:
        self.spec = spec
        rng = _rng(spec.seed, "fleet")
        #: ChirpStack application id (the ``{application_id}`` topic level).
        self.application_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self._faults: dict[str, list[str]] = {}
        self._silent: set[str] = set()
        self._zones = list(ZONES)
        self._gateways = [f"a840410000{0x01F2A1 + 0x16 * k:06x}" for k in range(8)]
        self._bays = self._make_bays(rng)
        self._cabinets = self._make_cabinets(rng)
        self._sites = self._make_sites(rng)

    # ----------------------------------------------------------------- layout

    def _place(self, rng: random.Random, zone: str, spread: float) -> tuple[float, float]:
        lat, lon = ZONES[zone]
        return (
            round(lat + rng.uniform(-spread, spread), 6),
            round(lon + rng.uniform(-spread, spread), 6),
        )

    def _flag(self, device_id: str, fault: str) -> None:
        self._faults.setdefault(device_id, []).append(fault)
        if fault == "silent":
            self._silent.add(device_id)

    def _make_bays(self, rng: random.Random) -> list[_Bay]:
        n = self.spec.parking_bays
        low = _pick(rng, n, self.spec.low_battery_rate)
        faulty = _pick(rng, n, self.spec.sensor_fault_rate)
        silent = _pick(rng, n, self.spec.silent_rate)
        bays = []
        for k in range(n):
            number = k + 1
            device_id = f"PO-PB-{number:05d}"
            # Paid parking is densest in the historic centre.
            zone = "centro-storico" if rng.random() < 0.3 else rng.choice(self._zones)
            lat, lon = self._place(rng, zone, 0.004)
            installed = _date_between(rng, date(2020, 3, 1), date(2024, 10, 31))
            row = InventoryRow(device_id, PARKING, zone, lat, lon, "comune", installed)
            dev_eui = f"70b3d57ed0{number:06x}"
            info = (
                '{"tenantName": "Comune di Prato", "applicationName": "parking", '
                '"deviceProfileName": "PB-100 parking bay", '
                f'"deviceName": "{device_id}", "devEui": "{dev_eui}", '
                f'"tags": {{"zone": "{zone}", "bay": "{number}"}}}}'
            )
            gateways = []
            for gateway in rng.sample(self._gateways, rng.randint(1, 3)):
                rssi = rng.uniform(-116.0, -84.0)
                gateways.append((gateway, rssi, max(-12.0, min(10.0, (rssi + 110) / 2.5))))
            bays.append(
                _Bay(
                    row=row,
                    topic=f"application/{self.application_id}/device/{dev_eui}/event/up",
                    info=info,
                    gateways=tuple(gateways),
                    battery_mv=rng.uniform(3305, 3320) if k in low else rng.uniform(3520, 3720),
                    drain_mv_per_day=40.0 if k in low else 0.2,
                    sensor_fault=k in faulty,
                    popularity=rng.uniform(0.95, 1.08)
                    if zone == "centro-storico"
                    else rng.uniform(0.7, 1.0),
                    day_stay_min=rng.uniform(40.0, 120.0),
                    heartbeat_phase_ms=rng.randrange(HEARTBEAT_EVERY_MS),
                    installed_ms=_day_ms(installed),
                )
            )
            for index, fault in (
                (low, "low_battery"),
                (faulty, "sensor_fault"),
                (silent, "silent"),
            ):
                if k in index:
                    self._flag(device_id, fault)
        return bays

    def _make_cabinets(self, rng: random.Random) -> list[_Cabinet]:
        n, per = self.spec.cabinets, self.spec.lamps_per_cabinet
        failed = _pick(rng, n * per, self.spec.lamp_failure_rate)
        silent_lamps = _pick(rng, n * per, self.spec.silent_rate)
        doors = _pick(rng, n, self.spec.door_open_rate)
        silent = _pick(rng, n, self.spec.silent_rate)
        cabinets = []
        for c in range(n):
            number = 101 + c
            cabinet_id = f"PO-QE-{number:03d}"
            zone = (
                self._zones[c % len(self._zones)]
                if c < len(self._zones)
                else rng.choice(self._zones)
            )
            lat, lon = self._place(rng, zone, 0.005)
            installed = _date_between(rng, date(2006, 1, 1), date(2018, 12, 31))
            row = InventoryRow(cabinet_id, LIGHTING, zone, lat, lon, "citelum", installed)
            phase_v = (
                230.0 + _jitter(rng, 2.0),
                230.0 + _jitter(rng, 2.0),
                230.0 + _jitter(rng, 2.0),
            )
            heading = rng.uniform(0, 2 * math.pi)  # lamps line up along a street
            lamps = []
            for j in range(per):
                index = c * per + j
                lamp_id = f"PO-LP-{number:03d}-{j + 1:02d}"
                lamp_installed = _date_between(rng, date(2019, 1, 1), date(2024, 6, 30))
                lamp_row = InventoryRow(
                    lamp_id,
                    LIGHTING,
                    zone,
                    round(lat + 0.00025 * (j + 1) * math.sin(heading), 6),
                    round(lon + 0.00035 * (j + 1) * math.cos(heading), 6),
                    "citelum",
                    lamp_installed,
                )
                lamps.append(
                    _Lamp(
                        row=lamp_row,
                        topic=f"citelum/prato/{cabinet_id}/lamp/{lamp_id}/state",
                        phase=j % 3,
                        rated_w=rng.choice((36.0, 54.0, 72.0, 90.0, 110.0)),
                        failed=index in failed,
                        switch_offset_ms=rng.randint(0, 90) * SECOND_MS,
                        supply_v=phase_v[j % 3] - rng.uniform(0.5, 3.0),
                        since_install=_LEDGER.hours(_day_ms(lamp_installed)),
                    )
                )
                if index in failed:
                    self._flag(lamp_id, "lamp_failure")
                if index in silent_lamps:
                    self._flag(lamp_id, "silent")
            legacy = (
                rng.randint(6, 24) * rng.choice((70.0, 100.0, 150.0)),
                rng.randint(6, 24) * rng.choice((70.0, 100.0, 150.0)),
                rng.randint(6, 24) * rng.choice((70.0, 100.0, 150.0)),
            )
            aux_kw = rng.uniform(0.03, 0.06)
            rated = sum(lamp.rated_w for lamp in lamps) + sum(legacy)
            cabinets.append(
                _Cabinet(
                    row=row,
                    topic=f"citelum/prato/{cabinet_id}/cabinet/state",
                    status_topic=f"citelum/prato/{cabinet_id}/status",
                    lamps=lamps,
                    legacy_w=legacy,
                    phase_v=phase_v,
                    aux_kw=aux_kw,
                    full_load_kw=rated / 1000 * 1.03,  # 3% line losses
                    door_prone=c in doors,
                    phase_ms=rng.randrange(0, 60) * SECOND_MS,
                    kwh_at_install=rng.uniform(0.0, 5000.0),
                    since_install=_LEDGER.hours(_day_ms(installed)),
                    installed_ms=_day_ms(installed),
                )
            )
            if c in doors:
                self._flag(cabinet_id, "door_open")
            if c in silent:
                self._flag(cabinet_id, "silent")
        return cabinets

    def _make_sites(self, rng: random.Random) -> list[_Site]:
        n = self.spec.traffic_sites
        old = _pick(rng, n, self.spec.csv_share)
        low = _pick(rng, n, self.spec.low_supply_rate)
        silent = _pick(rng, n, self.spec.silent_rate)
        sites = []
        for k in range(n):
            site_id = f"PO-TC-{k + 1:03d}"
            zone = rng.choice(self._zones)
            lat, lon = self._place(rng, zone, 0.006)
            # The bus company counts on its own corridors.
            owner = "cap" if rng.random() < 0.2 else "comune"
            installed = (
                _date_between(rng, date(2008, 1, 1), date(2014, 12, 31))
                if k in old
                else _date_between(rng, date(2018, 1, 1), date(2024, 12, 31))
            )
            inbound, outbound = rng.choice((("N", "S"), ("E", "W")))
            count = rng.randint(2, 4)
            directions = {2: "ab", 3: "aab", 4: "aabb"}[count]
            lanes = tuple(
                _Lane(
                    number=j + 1,
                    direction=inbound if side == "a" else outbound,
                    peak_vehicles=rng.uniform(40.0, 110.0),
                    # About a third of the lanes saturate in rush hour (congestion alerts).
                    peak_occupancy=rng.uniform(41.0, 46.0)
                    if rng.random() < 0.35
                    else rng.uniform(12.0, 28.0),
                    free_speed=rng.uniform(45.0, 62.0),
                )
                for j, side in enumerate(directions)
            )
            sites.append(
                _Site(
                    row=InventoryRow(site_id, TRAFFIC, zone, lat, lon, owner, installed),
                    csv=k in old,
                    lanes=lanes,
                    bus_share=0.04 if owner == "cap" else _CLASS_SHARES[3],
                    low_supply=k in low,
                    health_phase_ms=rng.randrange(0, 60 * SECOND_MS),
                    interval_topic=f"traffic/{site_id}/{'csv' if k in old else 'interval'}",
                    health_topic=f"traffic/{site_id}/health",
                )
            )
            if k in low:
                self._flag(site_id, "low_supply")
            if k in silent:
                self._flag(site_id, "silent")
        return sites

    # ----------------------------------------------------------------- inventory

    def devices(self) -> Iterator[InventoryRow]:
        """Every simulated device (silent ones included), as ``devices.csv`` rows."""
        for bay in self._bays:
            yield bay.row
        for cabinet in self._cabinets:
            yield cabinet.row
            for lamp in cabinet.lamps:
                yield lamp.row
        for site in self._sites:
            yield site.row

    def write_inventory(self, path: Path) -> Path:
        """Write ``devices.csv`` to ``path`` (or into it, if it is a folder); returns the file."""
        target = path / "devices.csv" if path.is_dir() else path
        with target.open("w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(INVENTORY_HEADER)
            for row in self.devices():
                lat, lon, when = f"{row.lat:.6f}", f"{row.lon:.6f}", row.installed_at.isoformat()
                writer.writerow([row.device_id, row.profile, row.zone, lat, lon, row.owner, when])
        return target

    def faults(self) -> dict[str, tuple[str, ...]]:
        """Injected faults by device id: ``silent``, ``low_battery``, ``sensor_fault``,
        ``lamp_failure``, ``door_open``, ``low_supply`` (the truth alert tests check)."""
        return {device: tuple(kinds) for device, kinds in self._faults.items()}

    # ----------------------------------------------------------------- messages

    def messages(self, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        """Everything the fleet sends in ``[start_ms, end_ms)``, in ``due_ms`` order.

        Each device is a generator of its own sends; ``heapq.merge`` keeps a heap of their
        next send times, so memory stays proportional to the number of devices.
        """
        streams: list[Iterator[SimMessage]] = []
        for bay in self._bays:
            if bay.row.device_id not in self._silent:
                streams.append(
                    self._bad(self._bay_stream(bay, start_ms, end_ms), bay.row, start_ms)
                )
        for cabinet in self._cabinets:
            if cabinet.row.device_id not in self._silent:
                streams.append(self._status_stream(cabinet, start_ms, end_ms))
                cabinet_stream = self._cabinet_stream(cabinet, start_ms, end_ms)
                streams.append(self._bad(cabinet_stream, cabinet.row, start_ms))
            for lamp in cabinet.lamps:
                if lamp.row.device_id not in self._silent:
                    lamp_stream = self._lamp_stream(lamp, start_ms, end_ms)
                    streams.append(self._bad(lamp_stream, lamp.row, start_ms))
        for site in self._sites:
            if site.row.device_id not in self._silent:
                for stream in (
                    self._interval_stream(site, start_ms, end_ms),
                    self._health_stream(site, start_ms, end_ms),
                ):
                    streams.append(self._bad(stream, site.row, start_ms))
        return heapq.merge(*streams, key=attrgetter("due_ms"))

    def _bad(
        self, stream: Iterator[SimMessage], row: InventoryRow, start_ms: int
    ) -> Iterator[SimMessage]:
        """Replace a share of ``stream``'s payloads by broken ones (own generator, so the
        rate does not change the values of the messages that stay intact)."""
        rate = self.spec.bad_frame_rate
        rng = _rng(self.spec.seed, row.device_id, start_ms, "bad")
        for message in stream:
            if rate and rng.random() < rate:
                payload = _garble(message.topic, message.payload, rng)
                yield replace(message, payload=payload, bad_frame=True)
            else:
                yield message

    def _bay_stream(self, bay: _Bay, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        rng = _rng(self.spec.seed, bay.row.device_id, start_ms)
        # Arrivals and departures draw from their own generator: how far ahead they are
        # drawn depends on end_ms, and that must not change the payloads' noise.
        events = _rng(self.spec.seed, bay.row.device_id, start_ms, "events")
        occupied = rng.random() < self._occupancy(bay, start_ms)
        f_cnt = self._first_f_cnt(bay, start_ms, rng)
        changes = rng.randint(0, 6)  # since the last heartbeat, before the window
        heartbeat_at = _next_at(start_ms, bay.heartbeat_phase_ms, HEARTBEAT_EVERY_MS)
        change_at = self._next_change(bay, start_ms, occupied, end_ms, events)
        last = start_ms - 1
        while True:
            heartbeat = heartbeat_at <= change_at
            # Never two uplinks of one bay in the same millisecond (one InfluxDB point).
            t = max(last + 1, heartbeat_at if heartbeat else change_at)
            if t >= end_ms:
                return
            if heartbeat:
                port = 3
                heartbeat_at += HEARTBEAT_EVERY_MS
            else:
                port = 2
                occupied = not occupied
                changes += 1
            frame = _bay_frame(bay, t, occupied, (t - start_ms) / DAY_MS, rng)
            if heartbeat:
                frame += struct.pack(">H", min(changes, 65535))
                changes = 0
            else:
                change_at = self._next_change(bay, t, occupied, end_ms, events)
            payload = _bay_payload(bay, t, f_cnt=f_cnt, port=port, frame=frame, rng=rng)
            yield SimMessage(bay.topic, payload, _QOS_PARKING, False, t)
            f_cnt += 1
            last = t

    @staticmethod
    def _first_f_cnt(bay: _Bay, start_ms: int, rng: random.Random) -> int:
        # Roughly one uplink every 45 minutes since installation.
        return max(0, (start_ms - bay.installed_ms) // (45 * MINUTE_MS)) + rng.randint(0, 40)

    @staticmethod
    def _occupancy(bay: _Bay, t_ms: int) -> float:
        share = _PARKING_OCCUPANCY[int(local_hour(t_ms))] * bay.popularity
        return max(0.03, min(0.95, share))

    def _next_change(
        self, bay: _Bay, t_ms: int, occupied: bool, end_ms: int, rng: random.Random
    ) -> int:
        """The next arrival or departure after ``t_ms`` (``end_ms`` if none before it).

        Rates are constant within a local hour and chosen so the bay's long-run occupancy
        follows the hourly curve; by memorylessness, redrawing at each hour is exact.
        """
        now = float(t_ms)
        while now < end_ms:
            hour_end = float((int(now) // HOUR_MS + 1) * HOUR_MS)
            hour = int(local_hour(int(now)))
            night = hour >= 20 or hour < 7
            stay_min = _NIGHT_STAY_MIN if night else bay.day_stay_min
            leave_rate = 1.0 / (stay_min * MINUTE_MS)
            share = self._occupancy(bay, int(now))
            rate = leave_rate if occupied else leave_rate * share / (1.0 - share)
            candidate = now + rng.expovariate(rate)
            if candidate < hour_end:
                return max(int(candidate), t_ms + 1)
            now = hour_end
        return end_ms

    def _lamp_stream(self, lamp: _Lamp, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        rng = _rng(self.spec.seed, lamp.row.device_id, start_ms)
        offset = lamp.switch_offset_ms
        segment = lighting_segment(start_ms - offset)
        while segment.start + offset < end_ms:
            # A switch is reported at once, then every 10 or 60 min until the next switch.
            # Lamp "ts" is in seconds, so sends fall on whole seconds; the report of a switch
            # is never later than the next periodic send would have been.
            every = LAMP_ON_EVERY_MS if segment.level else LAMP_OFF_EVERY_MS
            stop = min(segment.end + offset, end_ms)
            t = _ceil_second(segment.start + offset)
            if t < start_ms:
                t += -(-(start_ms - t) // every) * every
            while t < stop:
                payload = _lamp_payload(lamp, t, segment.level, rng)
                yield SimMessage(lamp.topic, payload, _QOS_LIGHTING, False, t)
                t += every
            segment = lighting_segment(segment.end)

    def _status_stream(self, cabinet: _Cabinet, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        if start_ms < end_ms:
            yield SimMessage(cabinet.status_topic, b"online", 1, True, start_ms)

    def _door_open(self, cabinet: _Cabinet, t_ms: int) -> bool:
        if not cabinet.door_prone:
            return False
        opens, closes = _door_window(self.spec.seed, cabinet.row.device_id, local_day(t_ms))
        return opens <= t_ms < closes

    def _cabinet_stream(
        self, cabinet: _Cabinet, start_ms: int, end_ms: int
    ) -> Iterator[SimMessage]:
        rng = _rng(self.spec.seed, cabinet.row.device_id, start_ms)
        t = _next_at(start_ms, cabinet.phase_ms, CABINET_EVERY_MS)
        while t < end_ms:
            payload = _cabinet_payload(cabinet, t, self._door_open(cabinet, t), rng)
            yield SimMessage(cabinet.topic, payload, _QOS_LIGHTING, False, t)
            t += CABINET_EVERY_MS

    def _interval_stream(self, site: _Site, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        rng = _rng(self.spec.seed, site.row.device_id, start_ms, "interval")
        t = _next_at(start_ms, 0, INTERVAL_EVERY_MS)
        while t < end_ms:
            payload = _interval_payload(site, t, rng)
            yield SimMessage(site.interval_topic, payload, _QOS_TRAFFIC, False, t)
            t += INTERVAL_EVERY_MS

    def _health_stream(self, site: _Site, start_ms: int, end_ms: int) -> Iterator[SimMessage]:
        rng = _rng(self.spec.seed, site.row.device_id, start_ms, "health")
        t = _next_at(start_ms, site.health_phase_ms, HEALTH_EVERY_MS)
        while t < end_ms:
            payload = _health_payload(site, t, rng)
            yield SimMessage(site.health_topic, payload, _QOS_TRAFFIC, False, t)
            t += HEALTH_EVERY_MS

    # ----------------------------------------------------------------- burst

    def burst(self, count: int, start_ms: int) -> list[SimMessage]:
        """``count`` decodable messages from every sending device, for load benchmarks.

        Devices take turns: message ``i`` comes from device ``i % n`` and is its
        ``i // n``-th, stamped ``start_ms + (i // n)`` seconds. So two messages of one
        device never share a device timestamp (InfluxDB would keep only one point), and the
        messages span ``count / n`` seconds: choose ``start_ms`` so that the span is within
        the hub's plausibility window (7 days back, 5 minutes ahead of its receive time).
        Parking bays alternate occupancy with a heartbeat every 8th uplink, lamps report
        the programme level at that time, traffic sites alternate interval and health.
        No bad frames and no retained presence messages (those carry no timestamp).
        """
        rng = _rng(self.spec.seed, "burst", start_ms)
        senders: list[Callable[[int], SimMessage]] = []
        for bay in self._bays:
            if bay.row.device_id not in self._silent:
                senders.append(self._bay_sender(bay, start_ms, rng))
        for cabinet in self._cabinets:
            if cabinet.row.device_id not in self._silent:
                senders.append(self._cabinet_sender(cabinet, rng))
            for lamp in cabinet.lamps:
                if lamp.row.device_id not in self._silent:
                    senders.append(self._lamp_sender(lamp, rng))
        for site in self._sites:
            if site.row.device_id not in self._silent:
                senders.append(self._site_sender(site, rng))
        if count > 0 and not senders:
            raise ValueError("the fleet has no device that sends")
        out: list[SimMessage] = []
        n = len(senders)
        for i in range(count):
            seq, k = divmod(i, n)
            out.append(senders[k](start_ms + seq * SECOND_MS))
        return out

    def _bay_sender(
        self, bay: _Bay, start_ms: int, rng: random.Random
    ) -> Callable[[int], SimMessage]:
        f_cnt = self._first_f_cnt(bay, start_ms, rng)
        sent = 0
        occupied = rng.random() < 0.5

        def send(t_ms: int) -> SimMessage:
            nonlocal f_cnt, sent, occupied
            heartbeat = sent % 8 == 7
            if not heartbeat:
                occupied = not occupied
            frame = _bay_frame(bay, t_ms, occupied, 0.0, rng)
            if heartbeat:
                frame += struct.pack(">H", 7)
            port = 3 if heartbeat else 2
            payload = _bay_payload(bay, t_ms, f_cnt=f_cnt, port=port, frame=frame, rng=rng)
            f_cnt += 1
            sent += 1
            return SimMessage(bay.topic, payload, _QOS_PARKING, False, t_ms)

        return send

    def _lamp_sender(self, lamp: _Lamp, rng: random.Random) -> Callable[[int], SimMessage]:
        def send(t_ms: int) -> SimMessage:
            payload = _lamp_payload(lamp, t_ms, _lamp_level(lamp, t_ms), rng)
            return SimMessage(lamp.topic, payload, _QOS_LIGHTING, False, t_ms)

        return send

    def _cabinet_sender(self, cabinet: _Cabinet, rng: random.Random) -> Callable[[int], SimMessage]:
        def send(t_ms: int) -> SimMessage:
            payload = _cabinet_payload(cabinet, t_ms, self._door_open(cabinet, t_ms), rng)
            return SimMessage(cabinet.topic, payload, _QOS_LIGHTING, False, t_ms)

        return send

    def _site_sender(self, site: _Site, rng: random.Random) -> Callable[[int], SimMessage]:
        sent = 0

        def send(t_ms: int) -> SimMessage:
            nonlocal sent
            sent += 1
            if sent % 2:
                payload = _interval_payload(site, t_ms, rng)
                return SimMessage(site.interval_topic, payload, _QOS_TRAFFIC, False, t_ms)
            payload = _health_payload(site, t_ms, rng)
            return SimMessage(site.health_topic, payload, _QOS_TRAFFIC, False, t_ms)

        return send
