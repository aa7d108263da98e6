"""Every query of every Grafana dashboard, run against data stored by the real ingest path.

A small known fleet publishes the contract's exact payload shapes (ChirpStack uplinks with
base64 frames, Citelum lamp/cabinet/gateway JSON, traffic interval JSON and CSV, traffic health)
to the real Mosquitto; a hub running in-process with a settable clock decodes them into the real
InfluxDB, and its alert engine writes ``alert_event`` points for the alerts that fire. The
dashboards in ``grafana/dashboards/`` are then walked: every panel target (rows' nested panels
included), every template variable query and every annotation query is interpolated the way
Grafana's InfluxDB datasource does it (``$timeFilter``, ``$__interval``, ``$__interval_ms``,
template variables as escaped regular expressions, or their ``allValue`` for "All") and run with
InfluxQL. Each must return at least one series, both with one value per variable and with All;
for the key panels the values must be the ones computed here from what was published.

What this cannot cover is Grafana itself: transformations, field overrides and the geomap's
gazetteer lookup run in the browser. Where a panel relies on them, the test computes what they
would show from the query result (e.g. summing the per-bay series of the occupancy panel).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import struct
import subprocess
import sys
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from hub.errors import StoreRejected, StoreUnavailable
from tests.conftest import ROOT, HubHarness, MqttProbe, wait_until, write_inventory

pytestmark = pytest.mark.integration

DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
MAKE_GAZETTEER = ROOT / "grafana" / "make_gazetteer.py"

SECOND = 1000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
NOW = int(datetime(2026, 11, 25, 11, 0, tzinfo=UTC).timestamp() * 1000)
# The dashboards' time range in this test: everything published lies inside it.
START = NOW - 36 * HOUR
END = NOW + HOUR
# The datasource's timeInterval (grafana/provisioning/datasources/influxdb.yaml): the
# interval Grafana uses for a panel without its own minimum interval.
DEFAULT_INTERVAL = "1m"
ROME = ZoneInfo("Europe/Rome")

CENTRO = "centro-storico"
MACROLOTTO = "macrolotto"
STATS_CLIENT = "grafana-test"
# One value per template variable: each has data in every dashboard that uses it.
CHOSEN = {
    "zone": CENTRO,
    "cabinet": "PO-QE-120",
    "site": "PO-TC-017",
    "lane": "1",
    "severity": "warning",
    "profile": "parking_bay",
    "client_id": STATS_CLIENT,
}
# Grafana escapes these in a variable's value when it goes into a regular expression.
REGEX_SPECIALS = re.compile(r"[\\^$*+?.()|\[\]{}/]")
VARIABLE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")
DURATION = re.compile(r"^(\d+)(ms|s|m|h|d)$")
UNIT_MS = {"ms": 1, "s": SECOND, "m": MINUTE, "h": HOUR, "d": 24 * HOUR}


# --- the fleet --------------------------------------------------------------------------------


@dataclass(frozen=True)
class BayMessage:
    device: str
    zone: str
    bay: str
    at: int
    occupied: bool
    fault: bool = False
    millivolts: int = 3700
    heartbeat: bool = False


@dataclass(frozen=True)
class LampMessage:
    cabinet: str
    lamp: str
    at: int
    on: bool
    energy_wh: int
    faults: tuple[str, ...] = ()


@dataclass(frozen=True)
class CabinetMessage:
    cabinet: str
    at: int
    volts: tuple[float, float, float]
    door_open: bool = False


@dataclass(frozen=True)
class Lane:
    lane: int
    direction: str
    counts: dict[str, int]
    speed_avg: float
    speed_p85: float
    occupancy: float

    @property
    def vehicles(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class IntervalMessage:
    site: str
    start: int
    lanes: tuple[Lane, ...]
    csv: bool = False


CLASSES = ("car", "van", "truck", "bus", "moto", "bike")

BAYS = [
    BayMessage("PO-PB-00001", CENTRO, "1", NOW - 20 * HOUR, occupied=False, heartbeat=True),
    BayMessage("PO-PB-00001", CENTRO, "1", NOW - 3 * HOUR, occupied=True),
    BayMessage("PO-PB-00002", CENTRO, "2", NOW - 10 * HOUR, occupied=True),
    BayMessage("PO-PB-00002", CENTRO, "2", NOW - 2 * HOUR, occupied=False),
    BayMessage("PO-PB-00003", CENTRO, "3", NOW - 6 * HOUR, occupied=True),
    BayMessage("PO-PB-00003", CENTRO, "3", NOW - 90 * MINUTE, occupied=False),
    BayMessage("PO-PB-00004", CENTRO, "4", NOW - 5 * HOUR, occupied=True, fault=True),
    BayMessage("PO-PB-00101", MACROLOTTO, "101", NOW - 8 * HOUR, occupied=True),
    BayMessage("PO-PB-00102", MACROLOTTO, "102", NOW - 4 * HOUR, occupied=False),
    BayMessage("PO-PB-00102", MACROLOTTO, "102", NOW - HOUR, occupied=True, millivolts=3200),
]
LAMPS = [
    LampMessage("PO-QE-118", "PO-LP-118-01", NOW - 28 * HOUR, True, 100_000),
    LampMessage("PO-QE-118", "PO-LP-118-01", NOW - 20 * HOUR, False, 100_400),
    LampMessage("PO-QE-118", "PO-LP-118-01", NOW - 14 * HOUR, True, 100_500),
    LampMessage("PO-QE-118", "PO-LP-118-01", NOW - 4 * HOUR, True, 101_000),
    LampMessage("PO-QE-118", "PO-LP-118-01", NOW - HOUR, True, 101_200),
    LampMessage("PO-QE-118", "PO-LP-118-02", NOW - 28 * HOUR, True, 200_000),
    LampMessage("PO-QE-118", "PO-LP-118-02", NOW - 14 * HOUR, True, 200_600),
    LampMessage("PO-QE-118", "PO-LP-118-02", NOW - HOUR, True, 201_000, ("LAMP_FAILURE",)),
    # a replaced controller: its energy counter starts again from 0
    LampMessage("PO-QE-118", "PO-LP-118-03", NOW - 28 * HOUR, True, 500_000),
    LampMessage("PO-QE-118", "PO-LP-118-03", NOW - 20 * HOUR, True, 500_300),
    LampMessage("PO-QE-118", "PO-LP-118-03", NOW - 4 * HOUR, True, 100),
    LampMessage("PO-QE-118", "PO-LP-118-03", NOW - HOUR, False, 350),
    LampMessage("PO-QE-120", "PO-LP-120-01", NOW - 27 * HOUR, True, 10_000),
    LampMessage("PO-QE-120", "PO-LP-120-01", NOW - 3 * HOUR, True, 10_800),
    LampMessage("PO-QE-120", "PO-LP-120-01", NOW - HOUR, True, 11_000, ("OVERHEAT",)),
    LampMessage("PO-QE-120", "PO-LP-120-02", NOW - 27 * HOUR, False, 20_000),
    LampMessage("PO-QE-120", "PO-LP-120-02", NOW - 90 * MINUTE, False, 20_000),
]
CABINETS = [
    CabinetMessage("PO-QE-118", NOW - 10 * MINUTE, (231.2, 229.0, 230.5)),
    CabinetMessage("PO-QE-118", NOW - 5 * MINUTE, (231.0, 229.4, 230.1), door_open=True),
    CabinetMessage("PO-QE-120", NOW - 10 * MINUTE, (230.2, 228.0, 199.0)),
    CabinetMessage("PO-QE-120", NOW - 5 * MINUTE, (230.0, 228.8, 198.4)),
]
LANE_1 = Lane(1, "N", dict(zip(CLASSES, (42, 5, 2, 1, 3, 0), strict=True)), 38.5, 51.0, 12.4)
LANE_2 = Lane(2, "S", dict(zip(CLASSES, (37, 4, 0, 2, 6, 1), strict=True)), 41.0, 55.5, 10.1)
INTERVALS = [
    IntervalMessage("PO-TC-017", NOW - 70 * MINUTE, (LANE_1, LANE_2)),
    IntervalMessage(
        "PO-TC-017",
        NOW - 65 * MINUTE,
        (
            Lane(1, "N", dict(zip(CLASSES, (50, 6, 3, 0, 2, 1), strict=True)), 22.0, 31.5, 40.0),
            Lane(2, "S", dict(zip(CLASSES, (30, 2, 1, 1, 4, 2), strict=True)), 44.5, 57.0, 9.0),
        ),
    ),
    IntervalMessage("PO-TC-021", NOW - 70 * MINUTE, (LANE_1, LANE_2), csv=True),
]
HEALTH = [("PO-TC-017", NOW - 20 * MINUTE, 11.2), ("PO-TC-021", NOW - 20 * MINUTE, 12.4)]

INVENTORY = sorted(
    {(m.device, "parking_bay", m.zone) for m in BAYS}
    | {(m.lamp, "citelum_lighting", MACROLOTTO if "118" in m.cabinet else CENTRO) for m in LAMPS}
    | {("PO-QE-118", "citelum_lighting", MACROLOTTO), ("PO-QE-120", "citelum_lighting", CENTRO)}
    | {("PO-TC-017", "traffic_counter", CENTRO), ("PO-TC-021", "traffic_counter", MACROLOTTO)}
)
ZONE_OF = {device: zone for device, _, zone in INVENTORY}

# Alerts that the published data makes fire and stay open, and one that fires and resolves.
OPEN_ALERTS = {
    ("gateway_offline", "PO-QE-118"),
    ("lamp_failure", "PO-LP-118-02"),
    ("sensor_fault_or_tamper", "PO-PB-00004"),
    ("low_supply", "PO-TC-017"),
}
RESOLVED_ALERT = ("gateway_offline", "PO-QE-120")

# hub_stats, one line every 10 s for 3 whole minutes (see _write_hub_stats).
STATS_START = NOW - 10 * MINUTE
STATS_POINTS = 18


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _bay_payload(message: BayMessage, count: int) -> tuple[str, bytes]:
    flags = int(message.occupied) | (int(message.fault) << 1)
    if message.heartbeat:
        frame, port = struct.pack(">BHbH", flags, message.millivolts, 12, 5), 3
    else:
        frame, port = struct.pack(">BHb", flags, message.millivolts, 12), 2
    dev_eui = f"70b3d57ed0{int(message.device[-5:]):06x}"
    body = {
        "deduplicationId": str(uuid.uuid4()),
        "time": _iso(message.at),
        "deviceInfo": {
            "tenantName": "Comune di Prato",
            "applicationName": "parking",
            "deviceProfileName": "PB-100 parking bay",
            "deviceName": message.device,
            "devEui": dev_eui,
            "tags": {"zone": message.zone, "bay": message.bay},
        },
        "fCnt": 1000 + count,
        "fPort": port,
        "data": base64.b64encode(frame).decode(),
        "rxInfo": [
            {"gatewayId": "a84041000001f2a1", "rssi": -97, "snr": 7.5},
            {"gatewayId": "a84041000001f2b7", "rssi": -104, "snr": 1.0},
        ],
    }
    return f"application/7/device/{dev_eui}/event/up", orjson.dumps(body)


def _lamp_payload(message: LampMessage) -> tuple[str, bytes]:
    body = {
        "ts": message.at // 1000,
        "on": message.on,
        "dim": 70 if message.on else 0,
        "p": 54.2 if message.on else 0.4,
        "v": 229.8,
        "i": 0.251 if message.on else 0.002,
        "pf": 0.94,
        "e": message.energy_wh,
        "hrs": 12034,
        "faults": list(message.faults),
    }
    topic = f"citelum/prato/{message.cabinet}/lamp/{message.lamp}/state"
    return topic, orjson.dumps(body)


def _cabinet_payload(message: CabinetMessage) -> tuple[str, bytes]:
    # Italian local time with its offset, as the Citelum gateway sends it
    local = datetime.fromtimestamp(message.at / 1000, ROME).isoformat(timespec="seconds")
    phases = {
        name: {"v": volts, "i": 12.0, "kw": 2.5}
        for name, volts in zip(("L1", "L2", "L3"), message.volts, strict=True)
    }
    body = {
        "ts": local,
        "mode": "auto",
        "door_open": message.door_open,
        "phases": phases,
        "kwh_total": 882341.5,
    }
    return f"citelum/prato/{message.cabinet}/cabinet/state", orjson.dumps(body)


def _interval_payload(message: IntervalMessage) -> tuple[str, bytes]:
    if message.csv:
        lines = [
            ";".join(
                [_iso(message.start).replace(".000+00:00", "Z"), "300", str(lane.lane)]
                + [lane.direction]
                + [str(lane.counts[c]) for c in CLASSES]
                + [f"{v:.1f}".replace(".", ",") for v in (lane.speed_avg, lane.speed_p85)]
                + [f"{lane.occupancy:.1f}".replace(".", ",")]
            )
            for lane in message.lanes
        ]
        return f"traffic/{message.site}/csv", ("\n".join(lines) + "\n").encode()
    body = {
        "site": message.site,
        "start": _iso(message.start).replace("+00:00", "Z"),
        "period_s": 300,
        "lanes": [
            {
                "lane": lane.lane,
                "dir": lane.direction,
                "counts": lane.counts,
                "speed_avg_kmh": lane.speed_avg,
                "speed_p85_kmh": lane.speed_p85,
                "occupancy_pct": lane.occupancy,
            }
            for lane in message.lanes
        ],
    }
    return f"traffic/{message.site}/interval", orjson.dumps(body)


def _health_payload(site: str, at: int, supply: float) -> tuple[str, bytes]:
    body = {"ts": at, "supply_v": supply, "temp_c": 35.5, "door": "closed", "lane_faults": []}
    return f"traffic/{site}/health", orjson.dumps(body)


# --- filling InfluxDB through the hub ----------------------------------------------------------


def _in_range(series: list[dict[str, Any]]) -> int:
    """The single count a ``SELECT count(...)`` returned, 0 when it returned nothing."""
    return int(series[0]["values"][0][1]) if series else 0


def _count(harness: HubHarness, measurement: str, field_name: str, where: str = "") -> int:
    condition = f"{where} AND " if where else ""
    return _in_range(
        harness.influx.query(
            f'SELECT count("{field_name}") FROM "{measurement}" WHERE {condition}'
            f"time >= {START}ms AND time <= {END}ms"
        )
    )


def _wait_for_alert(harness: HubHarness, rule: str, device: str, state: str) -> None:
    wait_until(
        lambda: _count(
            harness,
            "alert_event",
            "alert_id",
            f"\"rule\" = '{rule}' AND \"device_id\" = '{device}' AND \"state\" = '{state}'",
        ),
        what=f"alert_event {state} of {rule} for {device}",
    )


def _publish_settled(harness: HubHarness, probe: MqttProbe, topic: str, payload: bytes) -> None:
    """Publish and wait until the alert engine has evaluated the message."""
    engine = harness.hub.alerts
    before = engine.processed
    probe.publish(topic, payload)
    wait_until(lambda: engine.processed > before, what=f"evaluation of {topic}")


def _write_hub_stats(harness: HubHarness) -> None:
    """hub_stats lines as the hub writes them every 10 s, for a client id of this test's own.

    The hub's own hub_stats points (when the hub writes them: they are being added) carry the
    hub's client id and its cadence is real time; these give the health panels a known input
    whatever the hub does: rates of 10 received and 9 decoded messages per second, 0.05 s per
    write batch, 2 dead letters.
    """
    lines = []
    for k in range(STATS_POINTS):
        fields = {
            "received": f"{1000 + 100 * k}i",
            "decoded": f"{900 + 90 * k}i",
            "dead_lettered": f"{k // 6}i",
            "points_written": f"{5000 + 200 * k}i",
            "points_rejected": "0i",
            "write_retries": "0i",
            "write_batches": f"{10 * k}i",
            "write_seconds": f"{0.5 * k}",
            "inbox_depth": f"{k % 4}i",
            "outbox_depth": "1i",
            "alerts_open": "4i",
            "notifications_pending": "0i",
            "mqtt_connected": "true",
        }
        body = ",".join(f"{name}={value}" for name, value in fields.items())
        lines.append(f"hub_stats,client_id={STATS_CLIENT} {body} {STATS_START + 10 * SECOND * k}")
    harness.influx.write("\n".join(lines))


@dataclass
class Filled:
    """A hub whose database holds the fleet's data and alerts, and the inventory file."""

    harness: HubHarness
    inventory: Path


def _fill(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> Filled:
    inventory = write_inventory(tmp_path / "devices.csv", INVENTORY)
    harness = start_hub(
        inventory=inventory,
        now_ms=NOW - 30 * MINUTE,
        alert_tick_s=0.02,
        alert_startup_grace_s=0,
    )
    probe = mqtt_probe()

    # A gateway that goes offline and comes back a minute later (a separate device_status
    # point): its alert fires, then resolves. Then the clock stands at NOW for everything else.
    _publish_settled(harness, probe, "citelum/prato/PO-QE-120/status", b"offline")
    _wait_for_alert(harness, *RESOLVED_ALERT, "fired")
    harness.clock.now_ms = NOW - 29 * MINUTE
    _publish_settled(harness, probe, "citelum/prato/PO-QE-120/status", b"online")
    harness.clock.now_ms = NOW
    _wait_for_alert(harness, *RESOLVED_ALERT, "resolved")

    messages = [_bay_payload(m, n) for n, m in enumerate(BAYS)]
    messages += [_lamp_payload(m) for m in LAMPS]
    messages += [_cabinet_payload(m) for m in CABINETS]
    messages += [_interval_payload(m) for m in INTERVALS]
    messages += [_health_payload(*h) for h in HEALTH]
    messages.append(("citelum/prato/PO-QE-118/status", b"offline"))
    # works under way in the chosen zone, for the intervention annotations
    messages.append(
        (
            "situation/comune/events",
            orjson.dumps(
                {
                    "id": "comune:grafana-test",
                    "kind": "roadworks",
                    "title": "Lavori in via Roma",
                    "zone": CENTRO,
                    "status": "active",
                    "planned_start": _iso(NOW - 3 * HOUR),
                    "planned_end": _iso(NOW + 2 * HOUR),
                }
            ),
        )
    )
    for topic, payload in messages:
        probe.publish(topic, payload)

    lanes = sum(len(m.lanes) for m in INTERVALS)
    expected = [
        ("parking_bay", "battery_v", len(BAYS)),
        ("lighting_lamp", "energy_wh", len(LAMPS)),
        ("lighting_cabinet", "energy_kwh", len(CABINETS)),
        ("lighting_phase", "voltage_v", 3 * len(CABINETS)),
        ("traffic_lane", "vehicles", lanes),
        ("traffic_health", "supply_v", len(HEALTH)),
        ("device_status", "online", 3),
        ("intervention", "version", 1),
    ]
    for measurement, field_name, count in expected:

        def all_stored(
            measurement: str = measurement, name: str = field_name, n: int = count
        ) -> bool:
            return _count(harness, measurement, name) == n

        wait_until(all_stored, what=f"{count} {measurement} points")
    for rule, device in sorted(OPEN_ALERTS):
        _wait_for_alert(harness, rule, device, "fired")
    # Silence rules may fire more (no traffic interval for 15 min...). The clock stands still
    # now, so after two more engine ticks nothing else fires; then every event emitted must be
    # in InfluxDB before the panels are read.
    engine = harness.hub.alerts
    ticks = engine.ticks
    wait_until(lambda: engine.ticks >= ticks + 2, what="two alert engine ticks")
    metrics = harness.hub.metrics
    wait_until(
        lambda: (
            _count(harness, "alert_event", "alert_id")
            == metrics.total("alerts_fired_total") + metrics.total("alerts_resolved_total")
        ),
        what="every alert event in InfluxDB",
    )
    assert metrics.total("messages_dead_lettered_total") == 0

    _write_hub_stats(harness)
    return Filled(harness, inventory)


@pytest.fixture
def filled(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> Filled:
    return _fill(start_hub, mqtt_probe, tmp_path)


# --- walking the dashboards and interpolating like Grafana --------------------------------------


@dataclass(frozen=True)
class Variable:
    name: str
    kind: str
    query: str
    all_value: str


@dataclass(frozen=True)
class DashboardQuery:
    """One query of a dashboard, where it comes from, and the interval Grafana would use."""

    dashboard: str
    where: str
    text: str
    interval: str = DEFAULT_INTERVAL


@dataclass(frozen=True)
class Dashboard:
    name: str
    model: Mapping[str, Any]

    @property
    def variables(self) -> list[Variable]:
        found = []
        for variable in self.model.get("templating", {}).get("list", []):
            query = variable.get("query", "")
            if isinstance(query, dict):
                query = query.get("query", "")
            found.append(
                Variable(variable["name"], variable["type"], str(query), variable.get("allValue"))
            )
        return found

    def panels(self) -> Iterator[Mapping[str, Any]]:
        def walk(panels: list[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
            for panel in panels:
                yield panel
                yield from walk(panel.get("panels", []))

        yield from walk(self.model.get("panels", []))

    def panel(self, title: str) -> Mapping[str, Any]:
        matches = [p for p in self.panels() if p.get("title") == title]
        assert len(matches) == 1, f"{self.name}: {len(matches)} panels titled {title!r}"
        return matches[0]

    def queries(self) -> list[DashboardQuery]:
        found = []
        for panel in self.panels():
            for target in panel.get("targets", []):
                if "query" in target:
                    where = f"panel {panel['id']} {panel.get('title')!r} {target['refId']}"
                    interval = panel.get("interval") or DEFAULT_INTERVAL
                    found.append(DashboardQuery(self.name, where, target["query"], interval))
        for annotation in self.model.get("annotations", {}).get("list", []):
            query = annotation.get("target", {}).get("query") or annotation.get("query")
            if query:
                found.append(DashboardQuery(self.name, f"annotation {annotation['name']!r}", query))
        return found


def _dashboards() -> list[Dashboard]:
    paths = sorted(DASHBOARDS_DIR.glob("*.json"))
    assert paths, f"no dashboards in {DASHBOARDS_DIR}"
    return [Dashboard(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in paths]


def _dashboard(name: str) -> Dashboard:
    found = [d for d in _dashboards() if d.name == name]
    assert found, f"no dashboard {name}"
    return found[0]


def _milliseconds(duration: str) -> int:
    match = DURATION.match(duration)
    assert match, f"not an interval: {duration!r}"
    return int(match.group(1)) * UNIT_MS[match.group(2)]


def interpolate(text: str, values: Mapping[str, str], interval: str = DEFAULT_INTERVAL) -> str:
    """``text`` as Grafana's InfluxDB datasource sends it, for this test's time range.

    ``values`` maps each template variable to its already formatted text (an escaped value or
    the variable's allValue). An unknown ``$name`` fails: Grafana would send it verbatim.
    """
    text = text.replace("$timeFilter", f"time >= {START}ms and time <= {END}ms")
    text = text.replace("$__interval_ms", str(_milliseconds(interval)))
    text = text.replace("$__interval", interval)

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"unknown variable ${name} in {text!r}"
        return values[name]

    return VARIABLE.sub(replace, text)


def _escaped(value: str) -> str:
    """A variable's value as Grafana puts it into a regular expression."""
    return REGEX_SPECIALS.sub(lambda match: "\\" + match.group(), value)


def _specific(dashboard: Dashboard) -> dict[str, str]:
    values = {}
    for variable in dashboard.variables:
        assert variable.name in CHOSEN, f"{dashboard.name}: no test value for ${variable.name}"
        values[variable.name] = _escaped(CHOSEN[variable.name])
    return values


def _all(dashboard: Dashboard) -> dict[str, str]:
    values = {}
    for variable in dashboard.variables:
        assert variable.all_value, f"{dashboard.name}: ${variable.name} has no allValue"
        values[variable.name] = variable.all_value
    return values


def _run(harness: HubHarness, query: DashboardQuery, values: Mapping[str, str]) -> Any:
    text = interpolate(query.text, values, query.interval)
    try:
        return harness.influx.query(text)
    except (StoreRejected, StoreUnavailable) as exc:
        pytest.fail(f"{query.dashboard} {query.where}: {exc}\n{text}")


def _rows(series: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every returned row as a dict of its columns and its series' tags."""
    return [
        dict(zip(s["columns"], row, strict=True)) | s.get("tags", {})
        for s in series
        for row in s["values"]
    ]


def _panel_rows(
    harness: HubHarness,
    dashboard: Dashboard,
    title: str,
    ref: str = "A",
    values: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    panel = dashboard.panel(title)
    target = next(t for t in panel["targets"] if t["refId"] == ref)
    query = DashboardQuery(
        dashboard.name,
        f"{title!r} {ref}",
        target["query"],
        panel.get("interval") or DEFAULT_INTERVAL,
    )
    return _rows(_run(harness, query, _all(dashboard) if values is None else values))


def _value(rows: list[dict[str, Any]], column: str) -> Any:
    assert len(rows) == 1, rows
    return rows[0][column]


# --- the tests ----------------------------------------------------------------------------------


def test_every_dashboard_query_returns_series(filled: Filled) -> None:
    harness = filled.harness
    failures = []
    ran = 0
    for dashboard in _dashboards():
        specific = _specific(dashboard)
        # variable queries: each lists the value chosen for it, given the others' values
        for variable in dashboard.variables:
            if variable.kind == "custom":
                assert CHOSEN[variable.name] in variable.query.split(","), variable
                continue
            query = DashboardQuery(dashboard.name, f"variable ${variable.name}", variable.query)
            listed = {row["value"] for row in _rows(_run(harness, query, specific))}
            ran += 1
            if CHOSEN[variable.name] not in listed:
                failures.append(f"{query.dashboard} {query.where}: {sorted(listed)}")
        for query in dashboard.queries():
            for label, values in (("one value each", specific), ("All", _all(dashboard))):
                ran += 1
                if not _run(harness, query, values):
                    failures.append(f"{query.dashboard} {query.where} ({label}): no series")
    assert not failures, "\n".join(failures)
    # the walk found the queries: every panel target, annotation and variable of every file
    expected = sum(
        2 * len(d.queries()) + sum(v.kind == "query" for v in d.variables) for d in _dashboards()
    )
    assert ran == expected > 100


def test_hub_stats_of_other_clients_run_too(filled: Filled) -> None:
    """The health dashboard's queries also run for the hub's own client id, if it reports."""
    harness = filled.harness
    dashboard = _dashboard("hub-health.json")
    query = DashboardQuery(dashboard.name, "variable", dashboard.variables[0].query)
    clients = {row["value"] for row in _rows(_run(harness, query, {}))}
    assert STATS_CLIENT in clients
    for client in sorted(clients - {STATS_CLIENT}):
        for each in dashboard.queries():
            _run(harness, each, {"client_id": _escaped(client)})


def _last_bay_states() -> dict[str, BayMessage]:
    last: dict[str, BayMessage] = {}
    for message in sorted(BAYS, key=lambda m: m.at):
        last[message.device] = message
    return last


def test_parking_panels_show_the_published_bays(filled: Filled, tmp_path: Path) -> None:
    harness = filled.harness
    board = _dashboard("parking.json")
    last = _last_bay_states()
    free = [m for m in last.values() if not m.occupied]
    occupied = [m for m in last.values() if m.occupied]

    assert _value(_panel_rows(harness, board, "Free bays now"), "free") == len(free)
    assert _value(_panel_rows(harness, board, "Occupied bays now"), "occupied") == len(occupied)
    assert _value(_panel_rows(harness, board, "Bays reporting"), "bays") == len(last)
    assert _value(_panel_rows(harness, board, "Bays with a sensor fault or tamper"), "bays") == 1

    per_zone = "Free bays now per zone"
    bays = {r["zone"]: r["bays"] for r in _panel_rows(harness, board, per_zone, "A")}
    free_by_zone = {r["zone"]: r["free"] for r in _panel_rows(harness, board, per_zone, "B")}
    assert bays == {CENTRO: 4, MACROLOTTO: 2}
    # every macrolotto bay is occupied: no row, which the table shows as 0 (noValue)
    assert free_by_zone == {CENTRO: 2}

    attention = _panel_rows(harness, board, "Bays needing attention")
    assert {r["device_id"]: (r["sensor_fault"], r["battery_v"]) for r in attention} == {
        "PO-PB-00004": (True, 3.7),
        "PO-PB-00102": (False, 3.2),
    }

    # the geomap: one row per bay with its last state, each bay found in the gazetteer that
    # make_gazetteer.py builds from the same inventory
    located = _panel_rows(harness, board, "Bays on the map")
    assert {r["device_id"]: r["occupied"] for r in located} == {
        d: m.occupied for d, m in last.items()
    }
    gazetteer = tmp_path / "gazetteer.json"
    subprocess.run(
        [sys.executable, str(MAKE_GAZETTEER), str(filled.inventory), "-o", str(gazetteer)],
        check=True,
        capture_output=True,
    )
    keys = {f["id"] for f in json.loads(gazetteer.read_text(encoding="utf-8"))["features"]}
    assert {r["device_id"] for r in located} <= keys

    # occupancy over time: Grafana sums the per-bay 0/1 series of the repeated panel
    title = "Occupied bays over time: $zone"
    interval = _milliseconds(board.panel(title)["interval"])
    for zone in (CENTRO, MACROLOTTO):
        series = _run(
            harness,
            DashboardQuery(board.name, title, board.panel(title)["targets"][0]["query"], "5m"),
            {"zone": zone},
        )
        summed: dict[int, int] = defaultdict(int)
        for row in _rows(series):
            summed[row["time"]] += row["count"]
        assert summed, zone
        for bucket, count in summed.items():
            states = {}
            for message in sorted(BAYS, key=lambda m: m.at):
                if message.zone == zone and message.at < bucket + interval:
                    states[message.device] = message.occupied
            assert count == sum(states.values()), (zone, _iso(bucket))
        assert summed[max(summed)] == sum(m.occupied for m in last.values() if m.zone == zone)


def _energy_per_cabinet_day() -> dict[tuple[str, int], int]:
    """Wh per (cabinet, Europe/Rome day start): increases between a lamp's reports."""
    expected: dict[tuple[str, int], int] = defaultdict(int)
    by_lamp: dict[str, list[LampMessage]] = defaultdict(list)
    for message in LAMPS:
        by_lamp[message.lamp].append(message)
    for reports in by_lamp.values():
        reports.sort(key=lambda m: m.at)
        for before, after in itertools.pairwise(reports):
            step = after.energy_wh - before.energy_wh
            if step < 0:  # a replaced controller: its counter restarted
                continue
            local = datetime.fromtimestamp(after.at / 1000, ROME)
            midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
            expected[(after.cabinet, int(midnight.timestamp() * 1000))] += step
    return dict(expected)


def test_lighting_panels_show_the_published_lamps(filled: Filled) -> None:
    harness = filled.harness
    board = _dashboard("lighting.json")
    last: dict[str, LampMessage] = {}
    for message in sorted(LAMPS, key=lambda m: m.at):
        last[message.lamp] = message

    assert _value(_panel_rows(harness, board, "Lamps on now"), "on") == sum(
        m.on for m in last.values()
    )
    faulty = {m.lamp: ",".join(m.faults) for m in last.values() if m.faults}
    assert _value(_panel_rows(harness, board, "Lamps faulty now"), "faulty") == len(faulty)
    assert _value(_panel_rows(harness, board, "Lamps reporting"), "lamps") == len(last)
    assert _value(_panel_rows(harness, board, "Phases outside 207-253 V now"), "phases") == 1

    per_cabinet = "Lamps on and faulty per cabinet"
    columns = {"A": "lamps", "B": "on", "C": "faulty"}
    table = {
        column: {r["cabinet_id"]: r[column] for r in _panel_rows(harness, board, per_cabinet, ref)}
        for ref, column in columns.items()
    }
    assert table == {
        "lamps": {"PO-QE-118": 3, "PO-QE-120": 2},
        "on": {"PO-QE-118": 2, "PO-QE-120": 1},
        "faulty": {"PO-QE-118": 1, "PO-QE-120": 1},
    }
    listed = _panel_rows(harness, board, "Faulty lamps")
    assert {r["device_id"]: r["faults"] for r in listed} == faulty

    energy = _panel_rows(harness, board, "Energy per day per cabinet")
    assert {(r["cabinet_id"], r["time"]): r["sum"] for r in energy} == _energy_per_cabinet_day()

    # one cabinet chosen: only its phases, with the contract's three phase tags
    volts = _panel_rows(
        harness, board, "Cabinet phase voltage", values={"zone": ".*", "cabinet": "PO-QE-120"}
    )
    assert {(r["device_id"], r["phase"]) for r in volts} == {
        ("PO-QE-120", p) for p in ("L1", "L2", "L3")
    }

    cabinets = _panel_rows(harness, board, "Cabinets now", "A")
    assert {r["device_id"]: r["door_open"] for r in cabinets} == {
        "PO-QE-118": True,
        "PO-QE-120": False,
    }
    gateways = _panel_rows(harness, board, "Cabinets now", "B")
    assert {r["device_id"]: r["online"] for r in gateways} == {
        "PO-QE-118": False,
        "PO-QE-120": True,
    }


def test_traffic_panels_show_the_published_counts(filled: Filled) -> None:
    harness = filled.harness
    board = _dashboard("traffic.json")
    lanes = [(m.site, lane) for m in INTERVALS for lane in m.lanes]

    total = _value(_panel_rows(harness, board, "Vehicles in the time range"), "vehicles")
    assert total == sum(lane.vehicles for _, lane in lanes)
    by_class = _panel_rows(harness, board, "Vehicles by class")
    assert {c: by_class[0][c] for c in CLASSES} == {
        c: sum(lane.counts[c] for _, lane in lanes) for c in CLASSES
    }

    flows = _panel_rows(harness, board, "Flows by site, lane and class")
    expected: dict[tuple[str, str, str], int] = defaultdict(int)
    for site, lane in lanes:
        expected[(site, str(lane.lane), lane.direction)] += lane.vehicles
    assert {(r["device_id"], r["lane"], r["direction"]): r["vehicles"] for r in flows} == dict(
        expected
    )

    site_only = {"zone": ".*", "site": "PO-TC-017", "lane": ".*"}
    hourly = _panel_rows(harness, board, "Vehicles per hour by site", values=site_only)
    assert [r["sum"] for r in hourly] == [
        sum(lane.vehicles for site, lane in lanes if site == "PO-TC-017")
    ]

    now = _panel_rows(harness, board, "Lane occupancy now", values=site_only)
    assert {r["lane"]: r["last"] for r in now} == {"1": 40.0, "2": 9.0}

    health = _panel_rows(harness, board, "Counters now")
    assert {r["device_id"]: r["supply_v"] for r in health} == {s: v for s, _, v in HEALTH}


def test_alert_panels_and_annotations_show_the_alerts(filled: Filled) -> None:
    harness = filled.harness
    board = _dashboard("alerts.json")

    open_rows = _panel_rows(harness, board, "Open alert list")
    found = {(r["rule"], r["device_id"]) for r in open_rows}
    assert found >= OPEN_ALERTS
    assert RESOLVED_ALERT not in found
    assert {r["state"] for r in open_rows} <= {"fired", "acknowledged"}
    assert all(r["alert_id"] and r["message"] for r in open_rows)
    assert _value(_panel_rows(harness, board, "Open alerts"), "open") == len(open_rows)
    by_severity = {
        r["severity"]: r["count"] for r in _panel_rows(harness, board, "Open alerts by severity")
    }
    assert by_severity == dict(Counter(r["severity"] for r in open_rows))

    # one severity chosen: only its alerts
    warnings = _panel_rows(
        harness,
        board,
        "Open alert list",
        values={"severity": "warning", "profile": ".*", "zone": ".*"},
    )
    assert {(r["rule"], r["device_id"]) for r in warnings} >= {
        ("sensor_fault_or_tamper", "PO-PB-00004"),
        ("low_supply", "PO-TC-017"),
    }
    assert {r["severity"] for r in warnings} == {"warning"}

    fired = _value(_panel_rows(harness, board, "Alerts fired in the time range"), "fired")
    assert fired == len(open_rows) + 1  # the gateway that came back online

    # annotations: the lighting dashboard marks the offline gateway's fired and resolved
    lighting = _dashboard("lighting.json")
    annotation = next(q for q in lighting.queries() if q.where.startswith("annotation"))
    events = _rows(_run(harness, annotation, _all(lighting)))
    assert {(e["rule"], e["device_id"], e["state"]) for e in events} >= {
        ("gateway_offline", "PO-QE-120", "fired"),
        ("gateway_offline", "PO-QE-120", "resolved"),
        ("gateway_offline", "PO-QE-118", "fired"),
    }
    assert all(e["message"] for e in events)


def test_hub_health_panels_show_the_reported_stats(filled: Filled) -> None:
    harness = filled.harness
    board = _dashboard("hub-health.json")
    only = {"client_id": STATS_CLIENT}

    ingest = _panel_rows(harness, board, "Ingest rate", values=only)
    assert [(r["received"], r["decoded"]) for r in ingest] == [(10.0, 9.0)] * 2
    latency = _panel_rows(harness, board, "Write latency (mean per batch)", values=only)
    assert [r["latency"] for r in latency] == pytest.approx([0.05, 0.05])
    dead = _panel_rows(harness, board, "Dead letters in the time range", values=only)
    assert _value(dead, "dead_lettered") == (STATS_POINTS - 1) // 6
    queues = _panel_rows(harness, board, "Queue depths", values=only)
    assert [(r["inbox"], r["outbox"]) for r in queues] == [(3, 1)] * 3
    connected = _panel_rows(harness, board, "MQTT connected", values=only)
    assert _value(connected, "last") is True
    assert _value(_panel_rows(harness, board, "Open alerts now", values=only), "last") == 4
