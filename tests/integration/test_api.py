"""The operator API's operations, devices and alerts endpoints, against a hub fed through the
real broker and InfluxDB; security (401/403) and an unreachable InfluxDB (503)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKey, ApiKeys, digest
from hub.storage.influx import InfluxClient
from tests.conftest import HubHarness, MqttProbe, wait_until, write_inventory

pytestmark = pytest.mark.integration

T0 = 1_795_539_600_000  # 2026-11-24T17:00:00Z
READER, OPERATOR = "reader-token-1", "operator-token-1"
KEYS = ApiKeys(
    [
        ApiKey(id="wall", org="comune", role="reader", sha256=digest(READER)),
        ApiKey(id="mario", org="citelum", role="operator", sha256=digest(OPERATOR)),
    ]
)


def _client(harness: HubHarness, store: InfluxClient | None = None) -> TestClient:
    hub = harness.hub
    ctx = ApiContext(
        settings=hub.settings,
        profiles=hub.profiles,
        inventory=hub.inventory,
        store=store or harness.influx,
        metrics=hub.metrics,
        keys=KEYS,
        clock_ms=harness.clock,
        hub=hub,
    )
    return TestClient(create_app(ctx))


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def seeded(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> Iterator[tuple[HubHarness, TestClient]]:
    inventory = write_inventory(
        tmp_path / "devices.csv",
        [
            ("PO-TC-017", "traffic_counter", "san-paolo"),
            ("PO-QE-118", "citelum_lighting", "macrolotto"),
            ("PO-TC-404", "traffic_counter", "iolo"),  # listed, never speaks
        ],
    )
    harness = start_hub(
        inventory=inventory, now_ms=T0, alert_tick_s=0.02, alert_startup_grace_s=3600
    )
    probe = mqtt_probe()
    before = harness.hub.alerts.processed
    probe.publish(
        "traffic/PO-TC-017/health",
        orjson.dumps(
            {"ts": T0 - 1000, "supply_v": 12.4, "temp_c": 35.5, "door": "closed", "lane_faults": []}
        ),
    )
    probe.publish(
        "traffic/PO-TC-999/health",
        orjson.dumps(
            {"ts": T0 - 1000, "supply_v": 12.9, "temp_c": 30.0, "door": "open", "lane_faults": [1]}
        ),
    )
    probe.publish("citelum/prato/PO-QE-118/status", b"offline")
    probe.publish("traffic/PO-TC-017/csv", b"not;a;valid;line")
    wait_until(lambda: harness.hub.alerts.processed >= before + 3, what="three decoded messages")
    wait_until(lambda: harness.hub.metrics.value("points_written_total") >= 3, what="writes")
    wait_until(lambda: harness.hub.dead_letters, what="the dead letter")
    with _client(harness) as client:
        yield harness, client


def test_keys_are_required_and_roles_enforced(seeded: tuple[HubHarness, TestClient]) -> None:
    _, client = seeded
    missing = client.get("/api/v1/devices")
    assert missing.status_code == 401
    assert "missing API key" in missing.json()["detail"]
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/api/v1/devices", headers={"Authorization": "Basic abc"}).status_code == 401
    unknown = client.get("/api/v1/devices", headers=_auth("nope"))
    assert (unknown.status_code, unknown.json()["detail"]) == (401, "unknown API key")
    assert client.get("/api/v1/devices", headers={"X-API-Key": READER}).status_code == 200
    alert_id = client.get("/api/v1/alerts", headers=_auth(READER)).json()["alerts"][0]["id"]
    refused = client.post(f"/api/v1/alerts/{alert_id}/ack", headers=_auth(READER))
    assert refused.status_code == 403
    assert refused.json()["detail"] == "API key 'wall' has role 'reader'; this needs 'operator'"


def test_operations_endpoints(seeded: tuple[HubHarness, TestClient]) -> None:
    _, client = seeded
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert (ready.status_code, ready.json()["checks"]) == (
        200,
        {"influxdb": True, "mqtt": True, "spool_not_full": True},
    )
    text = client.get("/metrics").text
    assert 'hub_messages_decoded_total{profile="traffic_counter"} 2' in text
    assert 'hub_messages_dead_lettered_total{profile="traffic_counter",reason=' in text
    assert "hub_points_written_total 3" in text
    assert "# TYPE hub_inbox_depth gauge" in text
    assert 'hub_alerts_fired_total{profile="citelum_lighting",rule="gateway_offline"' in text
    assert client.get("/api/v1/openapi.json").json()["info"]["title"] == "Prato telemetry hub"
    assert 'hub_api_requests_total{route="/healthz",status="200"}' in client.get("/metrics").text


def test_device_list_and_filters(seeded: tuple[HubHarness, TestClient]) -> None:
    _, client = seeded

    def ids(**params: Any) -> list[str]:
        body = client.get("/api/v1/devices", params=params, headers=_auth(READER)).json()
        return [d["device_id"] for d in body["devices"]]

    assert ids() == ["PO-QE-118", "PO-TC-017", "PO-TC-404", "PO-TC-999"]
    assert ids(unregistered=True) == ["PO-TC-999"]
    assert ids(zone="unknown") == ["PO-TC-999"]
    assert ids(profile="traffic_counter") == ["PO-TC-017", "PO-TC-404", "PO-TC-999"]
    # never spoke, or the gateway says offline
    assert ids(online=False) == ["PO-QE-118", "PO-TC-404"]
    assert ids(online=True) == ["PO-TC-017", "PO-TC-999"]
    assert ids(limit=1, offset=1) == ["PO-TC-017"]
    assert (
        client.get("/api/v1/devices", params={"online": "maybe"}, headers=_auth(READER)).status_code
        == 422
    )


def test_device_detail(seeded: tuple[HubHarness, TestClient]) -> None:
    _, client = seeded
    body = client.get("/api/v1/devices/PO-TC-017", headers=_auth(READER)).json()
    assert (body["zone"], body["registered"], body["online"]) == ("san-paolo", True, True)
    assert body["last_seen"] == "2026-11-24T17:00:00.000+00:00"
    assert body["latest"] == [
        {
            "measurement": "traffic_health",
            "tags": {"device_id": "PO-TC-017", "zone": "san-paolo"},
            "time": "2026-11-24T16:59:59.000+00:00",
            "fields": {"supply_v": 12.4, "temp_c": 35.5, "door": "closed", "lane_fault_count": 0},
        }
    ]
    assert [d["reason"] for d in body["dead_letters"]] == ["wrong_column_count"]
    assert [m["topic"] for m in body["raw_messages"]] == ["traffic/PO-TC-017/health"]
    assert orjson.loads(body["raw_messages"][0]["payload"])["supply_v"] == 12.4
    cabinet = client.get("/api/v1/devices/PO-QE-118", headers=_auth(READER)).json()
    assert [a["rule"] for a in cabinet["open_alerts"]] == ["gateway_offline"]
    assert cabinet["online"] is False
    missing = client.get("/api/v1/devices/PO-XX-1", headers=_auth(READER))
    assert missing.status_code == 404


def test_alerts_listing_and_acknowledgement(seeded: tuple[HubHarness, TestClient]) -> None:
    harness, client = seeded
    listed = client.get(
        "/api/v1/alerts", params={"severity": "critical"}, headers=_auth(READER)
    ).json()
    assert [(a["rule"], a["device_id"], a["zone"]) for a in listed["alerts"]] == [
        ("gateway_offline", "PO-QE-118", "macrolotto")
    ]
    assert (
        client.get("/api/v1/alerts", params={"zone": "iolo"}, headers=_auth(READER)).json()["total"]
        == 0
    )
    alert_id = listed["alerts"][0]["id"]
    harness.clock.now_ms = T0 + 60_000
    done = client.post(
        f"/api/v1/alerts/{alert_id}/ack", json={"note": "team on site"}, headers=_auth(OPERATOR)
    )
    assert done.status_code == 200
    assert done.json()["acknowledged_by"] == "mario (team on site)"
    assert done.json()["acknowledged_at"] == "2026-11-24T17:01:00.000+00:00"
    again = client.get("/api/v1/alerts", headers=_auth(READER)).json()["alerts"][0]
    assert again["acknowledged_by"] == "mario (team on site)"
    assert client.post("/api/v1/alerts/nope/ack", headers=_auth(OPERATOR)).status_code == 404
    bad = client.get("/api/v1/alerts", params={"severity": "urgent"}, headers=_auth(READER))
    assert bad.status_code == 422


def test_unreachable_influxdb_gives_503(seeded: tuple[HubHarness, TestClient]) -> None:
    harness, _ = seeded
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = InfluxClient(f"http://127.0.0.1:{port}", "x", timeout_s=1)
    try:
        with _client(harness, store=dead) as client:
            detail = client.get("/api/v1/devices/PO-TC-017", headers=_auth(READER))
            assert detail.status_code == 503
            assert detail.json()["detail"].startswith("InfluxDB unavailable")
            ready = client.get("/readyz")
            assert (ready.status_code, ready.json()["checks"]["influxdb"]) == (503, False)
    finally:
        dead.close()


def test_cors_is_off_by_default_and_configurable(seeded: tuple[HubHarness, TestClient]) -> None:
    harness, client = seeded
    origin = {"Origin": "https://sala.comune.prato.it"}
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers
    hub = harness.hub
    settings = hub.settings.model_copy(update={"api_cors_origins": [origin["Origin"]]})
    ctx = ApiContext(
        settings=settings,
        profiles=hub.profiles,
        inventory=hub.inventory,
        store=harness.influx,
        metrics=hub.metrics,
        keys=KEYS,
        clock_ms=harness.clock,
        hub=hub,
    )
    with TestClient(create_app(ctx)) as allowed:
        answer = allowed.get("/healthz", headers=origin)
        assert answer.headers["access-control-allow-origin"] == origin["Origin"]
        other = allowed.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_api_alone_serves_inventory_and_stored_data(
    seeded: tuple[HubHarness, TestClient],
) -> None:
    harness, _ = seeded
    hub = harness.hub
    ctx = ApiContext(
        settings=hub.settings,
        profiles=hub.profiles,
        inventory=hub.inventory,
        store=harness.influx,
        metrics=hub.metrics,
        keys=KEYS,
        clock_ms=harness.clock,
        hub=None,
    )
    with TestClient(create_app(ctx)) as alone:
        devices = alone.get("/api/v1/devices", headers=_auth(READER)).json()["devices"]
        assert [d["device_id"] for d in devices] == ["PO-QE-118", "PO-TC-017", "PO-TC-404"]
        assert {d["online"] for d in devices} == {None}  # unknown without ingest
        detail = alone.get("/api/v1/devices/PO-TC-017", headers=_auth(READER)).json()
        assert detail["latest"][0]["fields"]["supply_v"] == 12.4
        alerts = alone.get("/api/v1/alerts", headers=_auth(READER))
        assert alerts.status_code == 503
        assert alone.get("/readyz").json()["checks"] == {"influxdb": True}


HOSTILE_VALUES = [
    "x'; DROP DATABASE prato; --",
    '"; DROP MEASUREMENT "traffic_health',
    "/.*/",
    "' OR ''='",
    "a\\",
    "zone\nDROP DATABASE prato",
    "\u0000",
]


def _census(influx: InfluxClient) -> dict[str, Any]:
    """The databases and, per measurement, the number of stored points around T0."""
    window = f"time > {T0 - 86_400_000}ms AND time < {T0 + 86_400_000}ms"
    databases = sorted(row[0] for s in influx.query("SHOW DATABASES") for row in s["values"])
    counts = {
        measurement: influx.query(f'SELECT count(*) FROM "{measurement}" WHERE {window}')
        for measurement in ("traffic_health", "device_status", "lighting_cabinet")
    }
    return {"databases": databases, "counts": counts}


def test_hostile_requests_get_4xx_or_empty_answers_and_leave_the_data_intact(
    seeded: tuple[HubHarness, TestClient],
) -> None:
    harness, client = seeded
    before = _census(harness.influx)
    assert before["counts"]["traffic_health"], "the seeded data is there to be kept"
    since = {"start": "2026-11-24T00:00:00Z", "end": "2026-11-25T00:00:00Z"}
    health = {"measurement": "traffic_health", "field": "supply_v", "fn": "mean", **since}
    requests: list[tuple[str, dict[str, str]]] = []
    for value in HOSTILE_VALUES:
        requests += [
            ("/api/v1/aggregate", {**health, "zone": value}),
            ("/api/v1/aggregate", {**health, "device_id": value}),
            ("/api/v1/aggregate", {**health, "measurement": value}),
            ("/api/v1/aggregate", {**health, "field": value}),
            ("/api/v1/aggregate", {**health, "group_by": value}),
            ("/api/v1/aggregate", {**health, f"tag.{value}": "x"}),
            ("/api/v1/aggregate", {**health, "start": value}),
            ("/api/v1/aggregate", {**health, "interval": value}),
            ("/api/v1/devices", {"zone": value}),
            ("/api/v1/devices", {"profile": value}),
            ("/api/v1/views/parking/occupancy", {"zone": value}),
            ("/api/v1/views/lighting/energy", {"zone": value, **since}),
            ("/api/v1/views/traffic/flows", {"site": value, **since}),
            ("/api/v1/alerts", {"zone": value}),
        ]
    requests += [  # huge ranges and impossible dates
        ("/api/v1/aggregate", {**health, "start": "1970-01-01T00:00:00Z"}),
        ("/api/v1/aggregate", {**health, "end": "9999-12-31T23:59:59Z"}),
        ("/api/v1/aggregate", {**health, "start": "2026-02-30T00:00:00Z"}),
        ("/api/v1/aggregate", {**health, "interval": "1s", "start": "2025-11-24T00:00:00Z"}),
        ("/api/v1/views/traffic/flows", {"start": "2020-01-01T00:00:00Z"}),
    ]
    answers = []
    for path, params in requests:
        response = client.get(path, params=params, headers=_auth(READER))
        answers.append((path, params, response.status_code))
        assert response.status_code in (200, 404, 422), (path, params, response.text)
        if response.status_code == 200:
            # a strange value is only ever a literal: it matches nothing stored
            lists = [
                v for k, v in response.json().items() if isinstance(v, list) and k != "days"
            ]  # "days": the calendar the energy view reports on, not data
            assert lists, (path, params)
            assert all(v == [] for v in lists), (path, params, response.text)
    refused = [a for a in answers if a[2] == 422]
    assert len(refused) >= len(HOSTILE_VALUES) * 5  # every name, time and interval injection
    assert _census(harness.influx) == before
