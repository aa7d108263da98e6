"""The aggregate and domain-view endpoints against a small fleet fed through the real broker
into the real InfluxDB.

The fleet: 7 parking bays in 2 zones (one listed but silent, one silent for more than 26 h),
2 lighting cabinets with 3 lamps each (a lamp failure, a lamp off, a lamp silent for 3 h, a
fault cleared by the newest message, and energy counters over two and a half days with two
counter resets), and 2 traffic sites with 2 lanes each over 2 hours (one congested lane).
Payloads are built exactly as the field devices send them. The numbers the endpoints answer
are compared with numbers computed here, in plain Python, from the messages published.
"""

from __future__ import annotations

import base64
import random
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKey, ApiKeys, digest
from tests.conftest import HubHarness, MqttProbe, wait_until, write_inventory

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # 13:00 in Rome
NOW_MS = int(NOW.timestamp() * 1000)
MINUTE = 60_000
HOUR = 60 * MINUTE
ROME = ZoneInfo("Europe/Rome")
READER = "views-reader-key"
HEADERS = {"Authorization": f"Bearer {READER}"}
CLASSES = ("car", "van", "truck", "bus", "moto", "bike")


def iso(epoch_ms: int) -> str:
    """The API's time format."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


def query_time(epoch_ms: int) -> str:
    """A time as a request parameter."""
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the fleet -----------------------------------------------------------------------------

# bay -> (dev_eui, zone, [(minutes from NOW, occupied)])
BAYS: dict[str, tuple[str, str, list[tuple[int, bool]]]] = {
    "PO-PB-101": ("70b3d57ed0000101", "centro", [(-20 * 60, False), (-330, True), (-110, False)]),
    "PO-PB-102": ("70b3d57ed0000102", "centro", [(-10 * 60, True), (-150, True)]),
    "PO-PB-103": ("70b3d57ed0000103", "centro", [(-(29 * 60 + 30), True)]),  # silent > 26 h
    "PO-PB-201": ("70b3d57ed0000201", "stazione", [(-180, True), (-15, True), (2, False)]),
    "PO-PB-202": ("70b3d57ed0000202", "stazione", [(-420, False), (-250, True), (-40, False)]),
    "PO-PB-203": ("70b3d57ed0000203", "stazione", [(-25 * 60, True)]),
}
SILENT_BAY = ("PO-PB-104", "centro")  # listed, never reports

# lamp -> (cabinet, zone)
LAMPS = {
    "PO-LP-201-01": ("PO-QE-201", "centro"),
    "PO-LP-201-02": ("PO-QE-201", "centro"),
    "PO-LP-201-03": ("PO-QE-201", "centro"),
    "PO-LP-202-01": ("PO-QE-202", "stazione"),
    "PO-LP-202-02": ("PO-QE-202", "stazione"),
    "PO-LP-202-03": ("PO-QE-202", "centro"),  # fed by a cabinet of the other zone
}
# the newest messages: (minutes from NOW, on, faults; None = no "faults" key)
LAMP_LAST: dict[str, list[tuple[int, bool, list[str] | None]]] = {
    "PO-LP-201-01": [(-10, True, [])],
    "PO-LP-201-02": [(-10, True, ["LAMP_FAILURE"])],
    "PO-LP-201-03": [(-20, False, [])],
    "PO-LP-202-01": [(-5, True, [])],
    "PO-LP-202-02": [],  # silent for 3 h and more
    "PO-LP-202-03": [(-25, True, ["DRIVER_FAILURE"]), (-10, True, None)],
}
# (lamp, reading index) -> the counter after a replaced controller
RESETS = {("PO-LP-201-01", 19): 37, ("PO-LP-202-01", 5): 12}
READINGS_FROM = datetime(2026, 11, 23, 1, 30, tzinfo=UTC)  # every 2 h from here

SITES = {"PO-TC-101": "centro", "PO-TC-102": "stazione"}
LANES = ((1, "N"), (2, "S"))


@dataclass(frozen=True)
class BayReport:
    device: str
    zone: str
    time_ms: int
    occupied: bool


@dataclass(frozen=True)
class LampMessage:
    lamp: str
    cabinet: str
    zone: str
    ts: int  # epoch seconds
    on: bool
    energy_wh: int
    faults: list[str] | None


@dataclass(frozen=True)
class LaneInterval:
    site: str
    lane: int
    direction: str
    start_ms: int
    counts: dict[str, int]
    speed: float
    occupancy: float


def bay_reports() -> list[BayReport]:
    return [
        BayReport(device, zone, NOW_MS + minutes * MINUTE, occupied)
        for device, (_, zone, events) in BAYS.items()
        for minutes, occupied in events
    ]


def lamp_messages() -> list[LampMessage]:
    messages: list[LampMessage] = []
    for index, (lamp, (cabinet, zone)) in enumerate(LAMPS.items()):
        energy = 1_234_567 if index == 0 else 500_000 + 1_000 * index
        newest = NOW - timedelta(hours=3 if lamp == "PO-LP-202-02" else 0, minutes=30)
        moment, reading = READINGS_FROM, 0
        while moment <= newest:
            on = moment.hour >= 16 or moment.hour < 7
            energy += (100 + 7 * index if on else 1) + reading % 3
            energy = RESETS.get((lamp, reading), energy)
            messages.append(
                LampMessage(lamp, cabinet, zone, int(moment.timestamp()), on, energy, [])
            )
            moment += timedelta(hours=2)
            reading += 1
        for minutes, on, faults in LAMP_LAST[lamp]:
            energy += 9
            stamp = (NOW_MS + minutes * MINUTE) // 1000
            messages.append(LampMessage(lamp, cabinet, zone, stamp, on, energy, faults))
    return messages


def lane_intervals() -> list[LaneInterval]:
    rng = random.Random(2026)
    found: list[LaneInterval] = []
    for k in range(24):
        start = NOW_MS - 2 * HOUR + k * 5 * MINUTE
        for site in SITES:
            for lane, direction in LANES:
                counts = {c: rng.randint(0, 25) for c in CLASSES}
                occupancy = round(rng.uniform(3, 30), 1)
                if (site, lane, k) == ("PO-TC-102", 2, 23):
                    occupancy = 41.5  # congested now
                if (site, lane, k) == ("PO-TC-101", 1, 18):
                    occupancy = 50.0  # was congested, no longer
                speed = round(rng.uniform(20, 60), 1)
                found.append(LaneInterval(site, lane, direction, start, counts, speed, occupancy))
    return found


def bay_uplink(report: BayReport, f_cnt: int) -> tuple[str, bytes]:
    """A ChirpStack v4 uplink event with a status-change frame (fPort 2)."""
    dev_eui = BAYS[report.device][0]
    frame = bytes([0x01 if report.occupied else 0x00]) + (3_610).to_bytes(2, "big")
    frame += (-3).to_bytes(1, "big", signed=True)
    body = {
        "deduplicationId": str(uuid.uuid4()),
        "time": iso(report.time_ms).replace("+00:00", "Z"),
        "deviceInfo": {
            "tenantName": "Comune di Prato",
            "applicationName": "parking",
            "deviceProfileName": "PB-100 parking bay",
            "deviceName": report.device,
            "devEui": dev_eui,
            "tags": {"zone": report.zone, "bay": report.device[-3:]},
        },
        "fCnt": f_cnt,
        "fPort": 2,
        "data": base64.b64encode(frame).decode("ascii"),
        "rxInfo": [{"gatewayId": "a84041000001f2a1", "rssi": -97, "snr": 7.5}],
    }
    return f"application/1/device/{dev_eui}/event/up", orjson.dumps(body)


def lamp_state(message: LampMessage) -> tuple[str, bytes]:
    """A Citelum lamp controller state message."""
    body: dict[str, Any] = {
        "ts": message.ts,
        "on": message.on,
        "dim": 70 if message.on else 0,
        "p": 54.2 if message.on else 0.4,
        "v": 229.8,
        "i": 0.251 if message.on else 0.002,
        "pf": 0.94,
        "e": message.energy_wh,
        "hrs": 12_034,
    }
    if message.faults is not None:
        body["faults"] = message.faults
    return f"citelum/prato/{message.cabinet}/lamp/{message.lamp}/state", orjson.dumps(body)


def interval_report(site: str, intervals: list[LaneInterval]) -> tuple[str, bytes]:
    """A traffic counter's interval report with its lanes."""
    body = {
        "site": site,
        "start": query_time(intervals[0].start_ms),
        "period_s": 300,
        "lanes": [
            {
                "lane": x.lane,
                "dir": x.direction,
                # a class the counter did not see may be left out: stored as 0
                "counts": {c: n for c, n in x.counts.items() if n or c != "bike"},
                "speed_avg_kmh": x.speed,
                "speed_p85_kmh": x.speed + 12,
                "occupancy_pct": x.occupancy,
            }
            for x in intervals
        ],
    }
    return f"traffic/{site}/interval", orjson.dumps(body)


# --- the running hub and API ---------------------------------------------------------------


@dataclass
class Fleet:
    harness: HubHarness
    client: TestClient

    def get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=HEADERS)
        assert response.status_code == 200, response.text
        return response.json()


def _count(harness: HubHarness, measurement: str, field: str) -> int:
    found = harness.influx.query(
        f'SELECT count("{field}") FROM "{measurement}" '
        "WHERE time >= '2026-11-20T00:00:00Z' AND time < '2026-11-26T00:00:00Z'"
    )
    return int(found[0]["values"][0][1]) if found else 0


@pytest.fixture
def fleet(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> Iterator[Fleet]:
    rows = [(device, "parking_bay", zone) for device, (_, zone, _) in BAYS.items()]
    rows.append((SILENT_BAY[0], "parking_bay", SILENT_BAY[1]))
    rows += [(lamp, "citelum_lighting", zone) for lamp, (_, zone) in LAMPS.items()]
    rows += [("PO-QE-201", "citelum_lighting", "centro")]
    rows += [("PO-QE-202", "citelum_lighting", "stazione")]
    rows += [(site, "traffic_counter", zone) for site, zone in SITES.items()]
    # device timestamps are plausible: at most 7 days before, 5 minutes after receive time
    harness = start_hub(inventory=write_inventory(tmp_path / "devices.csv", rows), now_ms=NOW_MS)
    probe = mqtt_probe()
    for f_cnt, report in enumerate(bay_reports()):
        probe.publish(*bay_uplink(report, f_cnt))
    lamps = lamp_messages()
    for message in lamps:
        probe.publish(*lamp_state(message))
    by_report: dict[tuple[str, int], list[LaneInterval]] = defaultdict(list)
    intervals = lane_intervals()
    for interval in intervals:
        by_report[(interval.site, interval.start_ms)].append(interval)
    for (site, _), lanes in by_report.items():
        probe.publish(*interval_report(site, lanes))
    wait_until(
        lambda: (
            _count(harness, "parking_bay", "f_cnt") == len(bay_reports())
            and _count(harness, "lighting_lamp", "energy_wh") == len(lamps)
            and _count(harness, "traffic_lane", "vehicles") == len(intervals)
        ),
        timeout_s=30,
        what="every published point stored",
    )
    assert harness.hub.metrics.total("messages_dead_lettered_total") == 0
    assert harness.hub.metrics.total("time_problems_total") == 0  # device times were used
    hub = harness.hub
    ctx = ApiContext(
        settings=hub.settings,
        profiles=hub.profiles,
        inventory=hub.inventory,
        store=harness.influx,
        metrics=hub.metrics,
        keys=ApiKeys([ApiKey(id="wall", org="comune", role="reader", sha256=digest(READER))]),
        clock_ms=harness.clock,
        hub=hub,
    )
    with TestClient(create_app(ctx)) as client:
        yield Fleet(harness, client)


# --- parking -------------------------------------------------------------------------------


def test_parking_occupancy_now(fleet: Fleet) -> None:
    newest: dict[str, BayReport] = {}
    for report in bay_reports():
        in_window = NOW_MS - 26 * HOUR <= report.time_ms < NOW_MS + 5 * MINUTE
        if in_window and (
            report.device not in newest or report.time_ms > newest[report.device].time_ms
        ):
            newest[report.device] = report
    listed = defaultdict(int, {"centro": 1})  # the silent bay
    for _, zone, _ in BAYS.values():
        listed[zone] += 1
    expected = []
    for zone in sorted(listed):
        bays = [r for r in newest.values() if r.zone == zone]
        taken = sum(r.occupied for r in bays)
        expected.append(
            {
                "zone": zone,
                "occupied": taken,
                "free": len(bays) - taken,
                "total": len(bays),
                "percent": round(100 * taken / len(bays), 1),
                "inventory_bays": listed[zone],
            }
        )
    body = fleet.get("/api/v1/views/parking/occupancy")
    assert body["zones"] == expected
    # spelled out, so a mistake above cannot hide one below
    assert [(z["zone"], z["occupied"], z["total"]) for z in expected] == [
        ("centro", 1, 2),
        ("stazione", 1, 3),
    ]
    assert body["city"]["total"] == 5
    assert body["at"] == iso(NOW_MS)
    only = fleet.get("/api/v1/views/parking/occupancy", zone="stazione")
    assert only["zones"] == [expected[1]]


def test_parking_occupancy_history(fleet: Fleet) -> None:
    start, end = NOW_MS - 6 * HOUR, NOW_MS
    expected: dict[str, list[tuple[str, int, int]]] = {"centro": [], "stazione": []}
    for k in range(6):
        bucket_end = start + (k + 1) * HOUR
        state: dict[str, BayReport] = {}
        for report in sorted(bay_reports(), key=lambda r: r.time_ms):
            if report.time_ms < bucket_end:
                state[report.device] = report
        for zone, points in expected.items():
            live = [
                r for r in state.values() if r.zone == zone and bucket_end - r.time_ms <= 26 * HOUR
            ]
            points.append((iso(start + k * HOUR), sum(r.occupied for r in live), len(live)))
    body = fleet.get(
        "/api/v1/views/parking/occupancy/history",
        start=query_time(start),
        end=query_time(end),
        interval="1h",
    )
    got = {z["zone"]: [(p["time"], p["occupied"], p["total"]) for p in z["points"]]
           for z in body["zones"]}  # fmt: skip
    assert got == expected
    # the bay silent since 06:30 yesterday drops out after 08:00 (26 h)
    assert [total for _, _, total in expected["centro"]] == [3, 3, 2, 2, 2, 2]


# --- lighting ------------------------------------------------------------------------------


def test_lighting_status(fleet: Fleet) -> None:
    newest: dict[str, LampMessage] = {}
    for message in lamp_messages():
        if message.ts * 1000 >= NOW_MS - 2 * HOUR and (
            message.lamp not in newest or message.ts > newest[message.lamp].ts
        ):
            newest[message.lamp] = message

    def counts(lamps: list[LampMessage]) -> dict[str, int]:
        return {
            "on": sum(m.on for m in lamps),
            "off": sum(not m.on for m in lamps),
            "faulty": sum(bool(m.faults) for m in lamps),
            "total": len(lamps),
        }

    cabinets = sorted({m.cabinet for m in newest.values()})
    zones = sorted({m.zone for m in newest.values()})
    body = fleet.get("/api/v1/views/lighting/status")
    assert body["cabinets"] == [
        {
            "cabinet_id": cabinet,
            "zones": sorted({m.zone for m in newest.values() if m.cabinet == cabinet}),
            **counts([m for m in newest.values() if m.cabinet == cabinet]),
        }
        for cabinet in cabinets
    ]
    assert body["zones"] == [
        {"zone": zone, **counts([m for m in newest.values() if m.zone == zone])} for zone in zones
    ]
    assert [(f["device_id"], f["faults"]) for f in body["faulty_lamps"]] == [
        ("PO-LP-201-02", ["LAMP_FAILURE"])
    ]
    assert body["city"] == {"on": 4, "off": 1, "faulty": 1, "total": 5}
    one = fleet.get("/api/v1/views/lighting/status", cabinet_id="PO-QE-202")
    assert [c["cabinet_id"] for c in one["cabinets"]] == ["PO-QE-202"]
    assert one["city"]["total"] == 2


def _expected_energy(group: str, first_day: datetime, last_day: datetime) -> dict[str, Any]:
    """kWh per group and Rome day: rises between readings, the reading itself after a fall."""
    start, end = first_day.timestamp(), last_day.timestamp()
    wh: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    previous: dict[str, LampMessage] = {}
    for message in sorted(lamp_messages(), key=lambda m: (m.lamp, m.ts)):
        before = previous.get(message.lamp)
        previous[message.lamp] = message
        if before is None or not start <= message.ts < end:
            continue
        rise = message.energy_wh - before.energy_wh
        if rise < 0:
            rise = message.energy_wh
        day = datetime.fromtimestamp(message.ts, ROME).date().isoformat()
        wh[message.cabinet if group == "cabinet" else message.zone][day] += rise
    return {name: {day: round(v / 1000, 3) for day, v in days.items()} for name, days in wh.items()}


@pytest.mark.parametrize("group", ["cabinet", "zone"])
def test_lighting_energy_per_rome_day(fleet: Fleet, group: str) -> None:
    first_day = datetime(2026, 11, 24, tzinfo=ROME)
    last_day = datetime(2026, 11, 26, tzinfo=ROME)
    expected = _expected_energy(group, first_day, last_day)
    body = fleet.get(
        "/api/v1/views/lighting/energy",
        group=group,
        start="2026-11-24T00:00:00+01:00",
        end="2026-11-26T00:00:00+01:00",
    )
    key = "cabinet_id" if group == "cabinet" else "zone"
    assert body["days"] == ["2026-11-24", "2026-11-25"]
    got = {s[key]: {d["date"]: d["kwh"] for d in s["days"]} for s in body["series"]}
    assert got == expected
    for series in body["series"]:
        assert series["total_kwh"] == pytest.approx(sum(expected[series[key]].values()), abs=2e-3)


def test_lighting_energy_counts_a_reset_as_the_new_reading(fleet: Fleet) -> None:
    # lamp 201-01's controller was replaced at 15:30 UTC on the 24th: its counter fell to 37
    readings = [m for m in lamp_messages() if m.lamp == "PO-LP-201-01"]
    falls = [
        (after.ts, after.energy_wh)
        for before, after in pairwise(readings)
        if after.energy_wh < before.energy_wh
    ]
    assert falls == [(int(datetime(2026, 11, 24, 15, 30, tzinfo=UTC).timestamp()), 37)]
    day = datetime(2026, 11, 24, tzinfo=ROME)
    expected = _expected_energy("cabinet", day, day + timedelta(days=1))["PO-QE-201"]
    body = fleet.get(
        "/api/v1/views/lighting/energy",
        start="2026-11-24T00:00:00+01:00",
        end="2026-11-25T00:00:00+01:00",
        cabinet_id="PO-QE-201",
    )
    assert body["days"] == ["2026-11-24"]
    assert body["series"] == [
        {
            "cabinet_id": "PO-QE-201",
            "days": [{"date": "2026-11-24", "kwh": expected["2026-11-24"]}],
            "total_kwh": expected["2026-11-24"],
        }
    ]


# --- traffic -------------------------------------------------------------------------------


def test_traffic_flows_per_hour(fleet: Fleet) -> None:
    sums: dict[tuple[str, str, str, int], dict[str, float]] = defaultdict(
        lambda: defaultdict(float)
    )
    for x in lane_intervals():
        hour = x.start_ms // HOUR * HOUR
        bucket = sums[(x.site, str(x.lane), x.direction, hour)]
        vehicles = sum(x.counts.values())
        bucket["vehicles"] += vehicles
        for name, count in x.counts.items():
            bucket[name] += count
        bucket["speed_x_vehicles"] += x.speed * vehicles
    body = fleet.get(
        "/api/v1/views/traffic/flows",
        start=query_time(NOW_MS - 2 * HOUR),
        end=query_time(NOW_MS),
    )
    got = {
        (s["site"], s["lane"], s["direction"], h["time"]): h
        for s in body["series"]
        for h in s["hours"]
    }
    assert len(got) == len(sums) == 2 * 2 * 2
    for (site, lane, direction, hour), bucket in sums.items():
        row = got[(site, lane, direction, iso(hour))]
        for name in ("vehicles", *CLASSES):
            assert row[name] == bucket[name], (site, lane, hour, name)
        weighted = bucket["speed_x_vehicles"] / bucket["vehicles"]
        assert row["speed_avg_kmh"] == pytest.approx(weighted, abs=0.006)
    only = fleet.get(
        "/api/v1/views/traffic/flows",
        site="PO-TC-102",
        start=query_time(NOW_MS - 2 * HOUR),
        end=query_time(NOW_MS),
    )
    assert {s["site"] for s in only["series"]} == {"PO-TC-102"}


def test_traffic_congestion(fleet: Fleet) -> None:
    newest: dict[tuple[str, int], LaneInterval] = {}
    for x in lane_intervals():
        if NOW_MS - 20 * MINUTE <= x.start_ms < NOW_MS + 5 * MINUTE and (
            (x.site, x.lane) not in newest or x.start_ms > newest[(x.site, x.lane)].start_ms
        ):
            newest[(x.site, x.lane)] = x
    expected = [
        {
            "site": x.site,
            "lane": str(x.lane),
            "direction": x.direction,
            "zone": SITES[x.site],
            "occupancy_pct": x.occupancy,
            "time": iso(x.start_ms),
        }
        for x in newest.values()
        if x.occupancy > 35
    ]
    body = fleet.get("/api/v1/views/traffic/congestion")
    assert body["lanes"] == expected
    assert [(x["site"], x["lane"]) for x in expected] == [("PO-TC-102", "2")]
    assert body["threshold_pct"] == 35


# --- aggregate -----------------------------------------------------------------------------


def test_aggregate_against_the_published_data(fleet: Fleet) -> None:
    start, end = NOW_MS - 2 * HOUR, NOW_MS
    vehicles: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for x in lane_intervals():
        hour = iso(x.start_ms // HOUR * HOUR)
        vehicles[(x.site, str(x.lane))][hour] += sum(x.counts.values())
    body = fleet.get(
        "/api/v1/aggregate",
        measurement="traffic_lane",
        field="vehicles",
        fn="sum",
        interval="1h",
        group_by="device,lane",
        start=query_time(start),
        end=query_time(end),
    )
    got = {(s["group"]["device_id"], s["group"]["lane"]): dict(s["points"]) for s in body["series"]}
    assert got == {k: dict(v) for k, v in vehicles.items()}

    southbound = sum(sum(x.counts.values()) for x in lane_intervals() if x.direction == "S")
    by_profile = fleet.get(
        "/api/v1/aggregate",
        measurement="traffic_lane",
        field="vehicles",
        fn="sum",
        interval="2h",
        group_by="profile",
        profile="traffic_counter",
        start=query_time(start),
        end=query_time(end),
        **{"tag.direction": "S"},
    )
    assert by_profile["series"] == [
        {"group": {"profile": "traffic_counter"}, "points": [[iso(start), southbound]]}
    ]
    other = fleet.get(
        "/api/v1/aggregate", measurement="traffic_lane", field="vehicles", profile="parking_bay"
    )
    assert other["series"] == []

    day_start = NOW_MS - 2 * 24 * HOUR
    reports: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for report in bay_reports():
        if day_start <= report.time_ms < NOW_MS + 5 * MINUTE:
            reports[report.zone][iso(report.time_ms // (24 * HOUR) * 24 * HOUR)] += 1
    counted = fleet.get(
        "/api/v1/aggregate",
        measurement="parking_bay",
        field="occupied",
        fn="count",
        interval="1d",
        group_by="zone",
        start=query_time(day_start),
        end=query_time(NOW_MS + 5 * MINUTE),
    )
    assert {s["group"]["zone"]: dict(s["points"]) for s in counted["series"]} == {
        zone: dict(days) for zone, days in reports.items()
    }
    newest = fleet.get(
        "/api/v1/aggregate",
        measurement="lighting_lamp",
        field="faults",
        fn="last",
        interval="1h",
        device_id="PO-LP-201-02",
        start=query_time(NOW_MS - HOUR),
        end=query_time(NOW_MS),
    )
    assert newest["series"] == [{"group": {}, "points": [[iso(NOW_MS - HOUR), "LAMP_FAILURE"]]}]
