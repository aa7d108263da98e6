"""The sharing policy, asked as each organisation: devices, latest values, aggregates, views,
alerts and the live feed, against a hub fed through the real broker and InfluxDB.

Four organisations, one policy (``POLICY``): Citelum shares lamp faults and energy per cabinet
and zone with everyone and everything per lamp with the Comune; the Comune shares bay
occupancy per zone with everyone and its traffic counts per site with Cap an hour late; Cap
shares nothing; Gida owns no device here. Every expectation below is written out from the
policy by hand, per organisation.
"""

from __future__ import annotations

import base64
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response as ApiResponse

from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKey, ApiKeys, digest
from hub.api.server import ApiServer
from hub.sharing import Policy
from tests.conftest import HubHarness, MqttProbe, wait_until

pytestmark = pytest.mark.integration

T0 = 1_795_539_600_000  # 2026-11-24T17:00:00Z
MIN = 60_000
ORGS = ("comune", "citelum", "gida", "cap")
POLICY = {
    "organisations": list(ORGS),
    "unowned": ["comune"],
    "shares": [
        {
            "owner": "citelum",
            "with": ["*"],
            "data": {"lighting_lamp": ["energy_wh", "fault_count", "faults", "on"]},
            "aggregate": ["cabinet_id", "zone"],
            "alerts": ["lamp_failure"],
            "interventions": True,
        },
        {
            "owner": "citelum",
            "with": ["comune"],
            "data": {
                "lighting_lamp": "*",
                "lighting_cabinet": "*",
                "lighting_phase": "*",
                "device_status": "*",
            },
            "alerts": True,
        },
        {
            "owner": "comune",
            "with": ["*"],
            "data": {"parking_bay": ["occupied"]},
            "aggregate": ["zone"],
        },
        {"owner": "comune", "with": ["cap"], "data": {"traffic_lane": "*"}, "delay": "1h"},
    ],
}
INVENTORY = [
    ("PO-LP-7-01", "citelum_lighting", "centro", "citelum"),
    ("PO-LP-7-02", "citelum_lighting", "centro", "citelum"),
    ("PO-QE-7", "citelum_lighting", "centro", "citelum"),
    ("PO-PB-1", "parking_bay", "centro", "comune"),
    ("PO-PB-2", "parking_bay", "centro", "comune"),
    ("PO-TC-017", "traffic_counter", "san-paolo", "comune"),
    ("PO-TC-900", "traffic_counter", "iolo", "cap"),
]
# a token per organisation (readers), and operators of two of them
TOKENS = {org: f"token-{org}" for org in ORGS}
OPERATORS = {"citelum": "op-citelum", "gida": "op-gida"}
KEYS = ApiKeys(
    [
        ApiKey(id=f"{org}-wall", org=org, role="reader", sha256=digest(t))
        for org, t in TOKENS.items()
    ]
    + [
        ApiKey(id=f"{org}-op", org=org, role="operator", sha256=digest(t))
        for org, t in OPERATORS.items()
    ]
)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def bay(name: str, eui: str, at: int, flags: int = 0) -> tuple[str, bytes]:
    """A ChirpStack uplink of bay ``name`` (flags bit 0 occupied, bit 1 sensor fault)."""
    frame = base64.b64encode(struct.pack(">BHb", flags, 3700, 12)).decode()
    body = {
        "time": _iso(at),
        "deviceInfo": {"deviceName": name},
        "fCnt": at // 1000,
        "fPort": 2,
        "data": frame,
        "rxInfo": [{"rssi": -90, "snr": 5.0}],
    }
    return f"application/1/device/{eui}/event/up", orjson.dumps(body)


def lamp(
    lamp_id: str, at: int, faults: tuple[str, ...] = (), energy: int = 1000
) -> tuple[str, bytes]:
    """A Citelum lamp state of cabinet PO-QE-7."""
    body = {
        "ts": at // 1000,
        "on": True,
        "dim": 100,
        "p": 50.0,
        "v": 230.0,
        "i": 0.2,
        "pf": 0.9,
        "e": energy,
        "hrs": 10,
        "faults": list(faults),
    }
    return f"citelum/prato/PO-QE-7/lamp/{lamp_id}/state", orjson.dumps(body)


def interval(site: str, start: int, cars: int) -> tuple[str, bytes]:
    """A one-lane traffic interval of ``site``."""
    body = {
        "site": site,
        "start": _iso(start),
        "period_s": 300,
        "lanes": [
            {
                "lane": 1,
                "dir": "N",
                "counts": {"car": cars},
                "speed_avg_kmh": 40.0,
                "speed_p85_kmh": 50.0,
                "occupancy_pct": 10.0,
            }
        ],
    }
    return f"traffic/{site}/interval", orjson.dumps(body)


def _inventory(path: Path) -> Path:
    lines = ["device_id,profile,zone,lat,lon,owner,installed_at"]
    lines += [f"{d},{p},{z},43.88,11.1,{o},2025-01-01" for d, p, z, o in INVENTORY]
    path.write_text("\n".join(lines) + "\n")
    return path


def _policy(harness_profiles: Any) -> Policy:
    measurements = {n: list(m.fields) for n, m in harness_profiles.schema().items()}
    return Policy.parse(POLICY, "test policy", measurements)


@dataclass
class Seeded:
    harness: HubHarness
    probe: MqttProbe
    client: TestClient
    ctx: ApiContext

    def get(self, org: str, path: str, **params: Any) -> ApiResponse:
        return self.client.get(
            path, params=params, headers={"Authorization": f"Bearer {TOKENS[org]}"}
        )


@pytest.fixture
def seeded(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> Iterator[Seeded]:
    from hub.profiles.profile_set import ProfileSet  # noqa: PLC0415
    from tests.conftest import ROOT  # noqa: PLC0415

    policy = _policy(ProfileSet.load(ROOT / "device_profiles"))
    harness = start_hub(
        inventory=_inventory(tmp_path / "devices.csv"),
        now_ms=T0,
        alert_tick_s=0.02,
        alert_startup_grace_s=3600,
        policy=policy,
    )
    probe = mqtt_probe()
    messages = [
        lamp("PO-LP-7-01", T0 - 5 * MIN, faults=("LAMP_FAILURE",), energy=1500),
        lamp("PO-LP-7-02", T0 - 5 * MIN, energy=2500),
        bay("PO-PB-1", "70b3d57ed0050001", T0 - 4 * MIN, flags=0b01),
        bay("PO-PB-2", "70b3d57ed0050002", T0 - 4 * MIN, flags=0b10),  # sensor fault
        bay("PO-PB-99", "70b3d57ed0050099", T0 - 4 * MIN, flags=0b01),  # not in the inventory
        interval("PO-TC-017", T0 - 2 * 60 * MIN, cars=11),
        interval("PO-TC-017", T0 - 10 * MIN, cars=22),
        interval("PO-TC-900", T0 - 10 * MIN, cars=33),
    ]
    for topic, payload in messages:
        probe.publish(topic, payload)
    hub = harness.hub
    wait_until(lambda: hub.alerts.processed >= len(messages), 20, "hub evaluated the messages")
    wait_until(
        lambda: (
            {a.rule for a in hub.alerts.open_alerts()} >= {"lamp_failure", "sensor_fault_or_tamper"}
        ),
        10,
        "both alerts fired",
    )
    wait_until(
        lambda: (
            len(harness.influx.query('SELECT count("car") FROM "traffic_lane" WHERE time > 0'))
            and harness.influx.query('SELECT count("car") FROM "traffic_lane" WHERE time > 0')[0][
                "values"
            ][0][1]
            == 3
        ),
        20,
        "traffic stored",
    )
    ctx = ApiContext(
        settings=hub.settings,
        profiles=hub.profiles,
        inventory=hub.inventory,
        store=harness.influx,
        metrics=hub.metrics,
        keys=KEYS,
        clock_ms=harness.clock,
        hub=hub,
        policy=policy,
    )
    with TestClient(create_app(ctx)) as client:
        yield Seeded(harness, probe, client, ctx)


def _ids(response: ApiResponse) -> set[str]:
    assert response.status_code == 200, response.text
    return {d["device_id"] for d in response.json()["devices"]}


def test_each_organisation_lists_its_own_devices_and_those_shared_per_device(
    seeded: Seeded,
) -> None:
    lamps = {"PO-LP-7-01", "PO-LP-7-02", "PO-QE-7"}
    comune_own = {"PO-PB-1", "PO-PB-2", "PO-TC-017", "PO-PB-99"}  # 99: unowned -> comune
    assert _ids(seeded.get("comune", "/api/v1/devices")) == comune_own | lamps
    assert _ids(seeded.get("citelum", "/api/v1/devices")) == lamps
    assert _ids(seeded.get("gida", "/api/v1/devices")) == set()  # only aggregates shared
    assert _ids(seeded.get("cap", "/api/v1/devices")) == {"PO-TC-900", "PO-TC-017"}

    # a device the caller may not see does not exist for it
    assert seeded.get("gida", "/api/v1/devices/PO-LP-7-01").status_code == 404
    assert seeded.get("citelum", "/api/v1/devices/PO-PB-1").status_code == 404
    assert seeded.get("comune", "/api/v1/devices/PO-TC-900").status_code == 404

    # the owner sees its raw messages; the Comune (shared per device) sees values, not payloads
    own = seeded.get("citelum", "/api/v1/devices/PO-LP-7-01").json()
    shared = seeded.get("comune", "/api/v1/devices/PO-LP-7-01").json()
    assert own["raw_messages"]
    assert not shared["raw_messages"]
    assert shared["latest"][0]["fields"]["power_w"] == 50.0
    assert [a["rule"] for a in shared["open_alerts"]] == ["lamp_failure"]


def test_latest_values_of_a_delayed_share_are_an_hour_old(seeded: Seeded) -> None:
    cap = seeded.get("cap", "/api/v1/devices/PO-TC-017").json()
    comune = seeded.get("comune", "/api/v1/devices/PO-TC-017").json()
    assert [p["fields"]["car"] for p in comune["latest"]] == [22]
    # the T0 - 10 min interval is inside Cap's hour of delay; the one of T0 - 2 h is not
    assert [p["fields"]["car"] for p in cap["latest"]] == [11]


def _series(response: ApiResponse) -> dict[tuple[tuple[str, str], ...], list[Any]]:
    assert response.status_code == 200, response.text
    return {
        tuple(sorted(s["group"].items())): [p[1] for p in s["points"]]
        for s in response.json()["series"]
    }


def test_aggregates_follow_fields_groupings_and_delays(seeded: Seeded) -> None:
    window = {"start": _iso(T0 - 3 * 60 * MIN), "end": _iso(T0 + MIN), "interval": "1d"}
    energy = {"measurement": "lighting_lamp", "field": "energy_wh", "fn": "sum", **window}
    # per cabinet: shared with everyone; per lamp: with the Comune alone
    for org in ORGS:
        assert _series(seeded.get(org, "/api/v1/aggregate", **energy, group_by="cabinet_id")) == {
            (("cabinet_id", "PO-QE-7"),): [4000]
        }
    by_lamp = {"device_id": "PO-LP-7-01"}
    assert _series(seeded.get("comune", "/api/v1/aggregate", **energy, **by_lamp)) == {(): [1500]}
    for org in ("gida", "cap"):
        assert _series(seeded.get(org, "/api/v1/aggregate", **energy, group_by="device")) == {}
        assert _series(seeded.get(org, "/api/v1/aggregate", **energy, **by_lamp)) == {}
        power = {**energy, "field": "power_w"}
        assert _series(seeded.get(org, "/api/v1/aggregate", **power, group_by="zone")) == {}

    occupied = {"measurement": "parking_bay", "field": "occupied", "fn": "count", **window}
    # the Comune also sees the unregistered bay (unowned), in zone "unknown"
    assert _series(seeded.get("comune", "/api/v1/aggregate", **occupied, group_by="zone")) == {
        (("zone", "centro"),): [2],
        (("zone", "unknown"),): [1],
    }
    for org in ("citelum", "gida", "cap"):
        assert _series(seeded.get(org, "/api/v1/aggregate", **occupied, group_by="zone")) == {
            (("zone", "centro"),): [2]
        }
        assert _series(seeded.get(org, "/api/v1/aggregate", **occupied, group_by="device")) == {}

    cars = {"measurement": "traffic_lane", "field": "car", "fn": "sum", **window}
    assert _series(seeded.get("comune", "/api/v1/aggregate", **cars)) == {(): [33]}
    delayed = seeded.get("cap", "/api/v1/aggregate", **cars)
    # Cap: its own site (33) would be live, but the answer includes the Comune's counts,
    # shared an hour late: the whole answer ends at now - 1 h
    assert _series(delayed) == {(): [11]}
    assert delayed.json()["delayed_by"] == "1h"
    assert _series(seeded.get("gida", "/api/v1/aggregate", **cars)) == {}


def test_views_show_shared_aggregates_but_not_single_devices(seeded: Seeded) -> None:
    def occupancy(org: str) -> dict[str, tuple[int, int]]:
        body = seeded.get(org, "/api/v1/views/parking/occupancy").json()
        return {z["zone"]: (z["occupied"], z["total"]) for z in body["zones"] if z["total"]}

    assert occupancy("comune") == {"centro": (1, 2), "unknown": (1, 1)}
    assert occupancy("gida") == {"centro": (1, 2)}

    def lighting(org: str) -> tuple[dict[str, int], list[str]]:
        body = seeded.get(org, "/api/v1/views/lighting/status").json()
        return body["city"], [lamp["device_id"] for lamp in body["faulty_lamps"]]

    city, faulty = lighting("comune")
    assert (city["total"], city["faulty"], faulty) == (2, 1, ["PO-LP-7-01"])
    city, faulty = lighting("gida")  # counted per cabinet, but no lamp named
    assert (city["total"], city["faulty"], faulty) == (2, 1, [])

    def flows(org: str) -> set[str]:
        body = seeded.get(
            org, "/api/v1/views/traffic/flows", start=_iso(T0 - 3 * 60 * MIN), end=_iso(T0)
        ).json()
        return {lane["site"] for lane in body["series"]}

    assert flows("comune") == {"PO-TC-017"}
    # Cap's answer includes the Comune's counts, shared an hour late: it ends at now - 1 h,
    # before Cap's own interval of T0 - 10 min
    assert flows("cap") == {"PO-TC-017"}
    assert flows("gida") == set()


def test_alerts_are_seen_and_acknowledged_by_policy(seeded: Seeded) -> None:
    def rules(org: str) -> set[str]:
        body = seeded.get(org, "/api/v1/alerts").json()
        return {a["rule"] for a in body["alerts"]}

    assert rules("comune") == {"lamp_failure", "sensor_fault_or_tamper"}
    assert rules("citelum") == {"lamp_failure"}
    assert rules("gida") == {"lamp_failure"}  # the rule Citelum shares with everyone
    assert rules("cap") == {"lamp_failure"}

    hub = seeded.harness.hub
    lamp_alert = next(a for a in hub.alerts.open_alerts() if a.rule == "lamp_failure")
    bay_alert = next(a for a in hub.alerts.open_alerts() if a.rule != "lamp_failure")

    def ack(token: str, alert_id: str) -> int:
        return seeded.client.post(
            f"/api/v1/alerts/{alert_id}/ack", headers={"Authorization": f"Bearer {token}"}
        ).status_code

    assert ack(OPERATORS["gida"], lamp_alert.id) == 403  # seen, but not Gida's to handle
    assert ack(OPERATORS["gida"], bay_alert.id) == 404  # not even seen
    assert ack(OPERATORS["citelum"], bay_alert.id) == 404
    assert ack(OPERATORS["citelum"], lamp_alert.id) == 200

    def acknowledged_by(org: str) -> str:
        body = seeded.get(org, "/api/v1/alerts", rule="lamp_failure").json()
        return str(body["alerts"][0]["acknowledged_by"])

    # who acknowledged (an API key id, a note) stays with the owner's teams
    assert acknowledged_by("citelum") == "citelum-op"
    assert acknowledged_by("gida") == "an operator of citelum"


# --- the live feed -------------------------------------------------------------------------


@dataclass
class SseClient:
    """Reads a server-sent event stream on a thread; events as (id, kind, data, received)."""

    url: str
    token: str
    last_event_id: str | None = None
    events: list[tuple[str, str, dict[str, Any], float]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SseClient:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        wait_until(self.connected.is_set, 10, "live stream connected")
        return self

    def _run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        with (
            httpx.Client(timeout=httpx.Timeout(30, read=None)) as client,
            client.stream("GET", self.url, headers=headers) as response,
        ):
            event: dict[str, str] = {}
            for line in response.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith(": connected"):
                    self.connected.set()
                elif line.startswith(("id: ", "event: ", "data: ")):
                    name, _, value = line.partition(": ")
                    event[name] = value
                elif not line and "event" in event:
                    received = time.monotonic()
                    self.events.append(
                        (event["id"], event["event"], orjson.loads(event["data"]), received)
                    )
                    event = {}

    def stop(self) -> None:
        self._stop.set()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for _, k, data, _ in list(self.events) if k == kind]


@pytest.fixture
def live_api(seeded: Seeded) -> Iterator[str]:
    server = ApiServer(create_app(seeded.ctx), "127.0.0.1", 0)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.port}/api/v1/live"
    finally:
        seeded.harness.hub.live.close()
        server.stop()


def test_live_feed_delivers_alerts_within_a_second_filtered_by_policy(
    seeded: Seeded, live_api: str
) -> None:
    gida = SseClient(live_api, TOKENS["gida"]).start()
    comune = SseClient(live_api, TOKENS["comune"]).start()
    citelum = SseClient(live_api, TOKENS["citelum"]).start()
    clients = (gida, comune, citelum)

    # a bay fault (the Comune's, shared with nobody) and then a lamp fault (shared)
    published = time.monotonic()
    seeded.probe.publish(*bay("PO-PB-1", "70b3d57ed0050001", T0 - 3 * MIN, flags=0b10))
    seeded.probe.publish(*lamp("PO-LP-7-02", T0 - 3 * MIN, faults=("DRIVER_FAILURE",)))

    def fired(client: SseClient, device: str) -> list[dict[str, Any]]:
        return [a for a in client.of("alert") if a["device_id"] == device and a["event"] == "fired"]

    wait_until(lambda: all(fired(c, "PO-LP-7-02") for c in clients), 5, "lamp alert on every feed")
    wait_until(lambda: fired(comune, "PO-PB-1"), 5, "bay alert on the Comune's feed")
    for client in clients:
        arrival = next(
            r for _, k, d, r in client.events if k == "alert" and d["device_id"] == "PO-LP-7-02"
        )
        assert arrival - published < 1.0, f"{client.token}: {arrival - published:.3f} s"
    assert not fired(gida, "PO-PB-1")
    assert not fired(citelum, "PO-PB-1")

    # zone counts: bays occupied per zone (shared per zone with everyone)
    wait_until(lambda: any(z["measure"] == "parking_occupied" for z in gida.of("zone")), 5, "zone")
    assert all(z["owner"] == "comune" for z in gida.of("zone"))
    # online changes: Citelum's gateway goes offline; the Comune sees it (Citelum shares its
    # cabinets per device with it), Gida does not
    seeded.probe.publish("citelum/prato/PO-QE-7/status", b"online")
    seeded.probe.publish("citelum/prato/PO-QE-7/status", b"offline")
    wait_until(lambda: comune.of("device"), 5, "device event on the Comune's feed")
    wait_until(lambda: citelum.of("device"), 5, "device event on Citelum's feed")
    assert [(d["device_id"], d["online"]) for d in comune.of("device")] == [("PO-QE-7", False)]
    assert not gida.of("device")
    for client in clients:
        client.stop()


def test_live_feed_resumes_after_a_reconnect_without_gaps(seeded: Seeded, live_api: str) -> None:
    first = SseClient(live_api, TOKENS["comune"]).start()
    seeded.probe.publish(*bay("PO-PB-1", "70b3d57ed0050001", T0 - 3 * MIN, flags=0b10))
    wait_until(lambda: first.of("alert"), 5, "first alert")
    first.stop()
    last_id = first.events[-1][0]
    # while no client listens: two more alerts
    seeded.probe.publish(*lamp("PO-LP-7-02", T0 - 3 * MIN, faults=("DRIVER_FAILURE",)))
    seeded.probe.publish(*bay("PO-PB-1", "70b3d57ed0050001", T0 - 2 * MIN, flags=0))
    hub = seeded.harness.hub
    wait_until(lambda: hub.live.last_seq > int(last_id.split("-")[1]) + 1, 5, "events published")
    seen_after = [e.id for e in hub.live.after(int(last_id.split("-")[1]))]

    again = SseClient(live_api, TOKENS["comune"], last_event_id=last_id).start()
    wait_until(lambda: len(again.events) >= len(seen_after), 5, "replayed events")
    replayed = [event_id for event_id, *_ in again.events]
    # exactly the events after the last one seen, in order, none twice, no reset
    assert replayed[: len(seen_after)] == seen_after
    assert "reset" not in {kind for _, kind, *_ in again.events}
    again.stop()

    # an id of another hub process: the stream says events were lost
    stale = SseClient(live_api, TOKENS["comune"], last_event_id="1-5").start()
    wait_until(lambda: stale.events, 5, "reset event")
    assert stale.events[0][1] == "reset"
    stale.stop()


# --- interventions ---------------------------------------------------------------------------


def _intervention(**fields: Any) -> bytes:
    return orjson.dumps(fields)


def test_interventions_over_mqtt_reach_the_api_feed_and_grafana_and_explain_alerts(
    seeded: Seeded, live_api: str, mqtt_probe: Callable[..., MqttProbe]
) -> None:
    hub = seeded.harness.hub
    gida_feed = SseClient(live_api, TOKENS["gida"]).start()
    comune_feed = SseClient(live_api, TOKENS["comune"]).start()
    notifications = mqtt_probe("hub/alerts/#")
    window = {"planned_start": _iso(T0 - 60 * MIN), "planned_end": _iso(T0 + 4 * 60 * MIN)}
    # Citelum replaces lamps in centro (shared with everyone); Gida repairs a main in
    # san-paolo (shared with nobody); a message of an organisation the policy does not list
    seeded.probe.publish(
        "situation/citelum/events",
        _intervention(
            id="citelum:led-centro",
            kind="lamp_replacement",
            title="Sostituzione lampade LED",
            zone="centro",
            status="active",
            actual_start=_iso(T0 - 60 * MIN),
            **window,
        ),
    )
    seeded.probe.publish(
        "situation/gida/events",
        _intervention(
            id="gida:condotta",
            kind="water_main_repair",
            title="Rottura condotta",
            zone="san-paolo",
            status="active",
            **window,
        ),
    )
    # the Comune's market in centro, shared with nobody, started after Citelum's works
    seeded.probe.publish(
        "situation/comune/events",
        _intervention(
            id="comune:mercato",
            kind="public_event",
            title="Mercato",
            zone="centro",
            status="active",
            actual_start=_iso(T0 - 30 * MIN),
            planned_start=_iso(T0 - 30 * MIN),
            planned_end=_iso(T0 + 60 * MIN),
        ),
    )
    seeded.probe.publish("situation/acme/events", _intervention(id="acme:x"))
    wait_until(
        lambda: all(
            hub.interventions.get(i) is not None
            for i in ("gida:condotta", "citelum:led-centro", "comune:mercato")
        ),
        10,
        "interventions stored",
    )
    wait_until(
        lambda: any(d.profile == "interventions" for d in hub.dead_letters), 10, "dead letter"
    )
    assert {d.reason for d in hub.dead_letters if d.profile == "interventions"} == {
        "unknown_organisation"
    }

    def listed(org: str) -> set[str]:
        response = seeded.get(org, "/api/v1/interventions")
        assert response.status_code == 200, response.text
        return {i["id"] for i in response.json()["interventions"]}

    assert listed("gida") == {"gida:condotta", "citelum:led-centro"}
    assert listed("comune") == {"citelum:led-centro", "comune:mercato"}
    assert listed("citelum") == {"citelum:led-centro"}
    assert seeded.get("comune", "/api/v1/interventions/gida:condotta").status_code == 404

    # the live feed: each organisation gets the changes it may see
    wait_until(lambda: len(gida_feed.of("intervention")) == 2, 5, "Gida's feed")
    wait_until(lambda: len(comune_feed.of("intervention")) == 2, 5, "the Comune's feed")
    assert {i["id"] for i in comune_feed.of("intervention")} == {
        "citelum:led-centro",
        "comune:mercato",
    }

    # Grafana: the dashboards' annotation query finds the works as a region
    from tests.integration.test_interventions_grafana import (  # noqa: PLC0415
        dashboard_annotations,
        regions,
        rows,
    )

    lighting = next(a for a in dashboard_annotations() if a.dashboard == "lighting.json")
    values = dict.fromkeys(lighting.variables, "") | {"zone": "centro"}
    wait_until(
        lambda: (
            "citelum:led-centro" in regions(lighting, rows(seeded.harness.influx, lighting, values))
        ),
        10,
        "annotation stored",
    )
    found = regions(lighting, rows(seeded.harness.influx, lighting, values))["citelum:led-centro"]
    assert found["text"].startswith("Sostituzione lampade LED")

    # alerts under way in the works' zone and time are marked as explained by them
    seeded.probe.publish(*lamp("PO-LP-7-02", T0 - 3 * MIN, faults=("DRIVER_FAILURE",)))
    seeded.probe.publish(*_health("PO-TC-017", T0 - 3 * MIN, supply_v=11.0))
    seeded.probe.publish(*bay("PO-PB-1", "70b3d57ed0050001", T0 - 3 * MIN, flags=0b10))

    def alert(device: str) -> dict[str, Any] | None:
        body = seeded.get("comune", "/api/v1/alerts", device_id=device).json()
        return next(iter(body["alerts"]), None)

    wait_until(
        lambda: all(alert(d) for d in ("PO-LP-7-02", "PO-TC-017", "PO-PB-1")), 10, "the alerts"
    )
    # the lamp alert reaches every organisation: only works all of them may see explain it
    # (the Comune's market, newer, is hidden from Gida and Cap)
    explained = alert("PO-LP-7-02")
    assert explained is not None
    assert explained["explained_by"]["id"] == "citelum:led-centro"
    # the bay alert is the Comune's alone: its own market, the newest works there, explains it
    bay_alert = alert("PO-PB-1")
    assert bay_alert is not None
    assert bay_alert["explained_by"]["id"] == "comune:mercato"
    # Gida's works in san-paolo are not shared with the Comune, owner of the counter there
    low_supply = alert("PO-TC-017")
    assert low_supply is not None
    assert low_supply["explained_by"] is None
    # the notification says so too
    wait_until(
        lambda: any(b"citelum:led-centro" in m.payload for m in notifications.messages()),
        5,
        "notification with the explanation",
    )
    gida_feed.stop()
    comune_feed.stop()


def _health(site: str, at: int, supply_v: float) -> tuple[str, bytes]:
    body = {"ts": at, "supply_v": supply_v, "temp_c": 20.0, "door": "closed", "lane_faults": []}
    return f"traffic/{site}/health", orjson.dumps(body)


def test_a_filter_naming_thousands_of_devices_works_on_the_real_influxdb(seeded: Seeded) -> None:
    from hub.api.influxql import any_of  # noqa: PLC0415

    devices = [f"PO-XX-{n:05d}" for n in range(3_000)] + ["PO-TC-017"]
    query = (
        f'SELECT sum("car") FROM "traffic_lane" WHERE time > {T0 - 3 * 60 * MIN}ms '
        f"AND time < {T0}ms AND {any_of('device_id', devices)}"
    )
    assert len(query) > 50_000
    series = seeded.harness.influx.query(query)
    assert series[0]["values"][0][1] == 33  # PO-TC-017's two intervals, 11 + 22
