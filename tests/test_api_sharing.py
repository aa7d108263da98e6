"""The sharing policy in the API's queries, the live stream's edge cases and the intervention
path of the decode stage, without services (InfluxDB replaced at its seam, as in
``tests/test_api_queries.py``; the live stream read straight from its generator)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.live import _stream
from hub.api.security import ApiKey, ApiKeys, digest
from hub.inventory import Device, Inventory
from hub.live import LiveFeed
from hub.metrics import Metrics
from hub.model import RawMessage
from hub.pipeline import Hub
from hub.settings import Settings
from hub.sharing import Policy, access_for
from hub.storage.writer import Batch
from tests.test_api_queries import NOW, PROFILES, ROOT, FakeInflux

NOW_MS = int(NOW.timestamp() * 1000)
SCHEMA = {n: list(m.fields) for n, m in PROFILES.schema().items()}
POLICY = {
    "organisations": ["comune", "citelum", "cap", "gida"],
    "shares": [
        # energy per zone, and per cabinet: two shares, each grouping allowed
        {
            "owner": "citelum",
            "with": ["cap"],
            "data": {"lighting_lamp": ["energy_wh"]},
            "aggregate": ["zone"],
        },
        {
            "owner": "citelum",
            "with": ["cap"],
            "data": {"lighting_lamp": ["energy_wh"]},
            "aggregate": ["cabinet_id"],
        },
        # Cap's counters to the Comune a quarter of an hour late, per device
        {"owner": "cap", "with": ["comune"], "data": {"traffic_lane": "*"}, "delay": "15m"},
    ],
}
INVENTORY = [
    Device(device_id="PO-LP-1", profile="citelum_lighting", zone="centro", owner="citelum"),
    Device(device_id="PO-TC-1", profile="traffic_counter", zone="centro", owner="comune"),
    Device(device_id="PO-TC-9", profile="traffic_counter", zone="iolo", owner="cap"),
]


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    fake = FakeInflux()
    try:
        yield fake
    finally:
        fake.client.close()


@pytest.fixture
def api(influx: FakeInflux, tmp_path: Path) -> Iterator[TestClient]:
    ctx = ApiContext(
        settings=Settings(profiles_dir=ROOT / "device_profiles", data_dir=tmp_path),
        profiles=PROFILES,
        inventory=Inventory(INVENTORY),
        store=influx.client,
        metrics=Metrics(),
        keys=ApiKeys(
            [
                ApiKey(id=f"{org}-key", org=org, role="reader", sha256=digest(org))
                for org in ("comune", "citelum", "cap", "gida")
            ]
        ),
        clock_ms=lambda: NOW_MS,
        policy=Policy.parse(POLICY, "policy", SCHEMA),
    )
    with TestClient(create_app(ctx)) as client:
        yield client


def get(api: TestClient, org: str, path: str, **params: Any) -> Any:
    response = api.get(path, params=params, headers={"Authorization": f"Bearer {org}"})
    assert response.status_code == 200, response.text
    return response.json()


ENERGY = {"measurement": "lighting_lamp", "field": "energy_wh", "fn": "sum", "interval": "1h"}


def test_every_share_of_a_field_counts_not_only_the_first(
    api: TestClient, influx: FakeInflux
) -> None:
    for grouping in ("zone", "cabinet_id"):
        get(api, "cap", "/api/v1/aggregate", **ENERGY, group_by=grouping)
    assert len(influx.queries) == 2
    assert all("\"device_id\" = 'PO-LP-1'" in q for q in influx.queries)
    # per lamp: neither share allows it
    get(api, "cap", "/api/v1/aggregate", **ENERGY, group_by="device")
    assert len(influx.queries) == 2


def test_nothing_visible_means_an_empty_answer_and_no_query(
    api: TestClient, influx: FakeInflux
) -> None:
    body = get(api, "gida", "/api/v1/views/lighting/energy")
    assert body["series"] == []
    assert get(api, "gida", "/api/v1/aggregate", **ENERGY)["series"] == []
    assert influx.queries == []


def test_a_window_inside_the_delay_is_an_empty_answer(api: TestClient, influx: FakeInflux) -> None:
    recent = {"start": "2026-11-25T11:50:00Z", "end": "2026-11-25T12:00:00Z"}
    cars = {"measurement": "traffic_lane", "field": "car", "fn": "sum", "interval": "5m"}
    body = get(api, "comune", "/api/v1/aggregate", **cars, **recent)
    assert body["series"] == []
    assert body["delayed_by"] == "15m"
    flows = get(api, "comune", "/api/v1/views/traffic/flows", **recent)
    assert flows["series"] == []
    assert influx.queries == []


def test_a_filter_on_own_devices_is_not_held_back_by_another_owners_delay(
    api: TestClient, influx: FakeInflux
) -> None:
    cars = {"measurement": "traffic_lane", "field": "car", "fn": "sum", "interval": "5m"}
    own = get(api, "comune", "/api/v1/aggregate", **cars, device_id="PO-TC-1")
    assert "delayed_by" not in own
    assert own["end"] == "2026-11-25T12:00:00.000+00:00"
    mixed = get(api, "comune", "/api/v1/aggregate", **cars)
    assert mixed["delayed_by"] == "15m"
    assert mixed["end"] == "2026-11-25T11:45:00.000+00:00"


def test_a_device_shared_with_a_delay_is_listed_without_its_live_state(api: TestClient) -> None:
    devices = get(api, "comune", "/api/v1/devices")["devices"]
    assert {d["device_id"] for d in devices} == {"PO-TC-1", "PO-TC-9"}
    capped = get(api, "comune", "/api/v1/devices/PO-TC-9")
    assert capped["last_seen"] is None
    assert capped["online"] is None
    assert capped["messages"] is None
    assert capped["raw_messages"] == []


# --- the live stream -------------------------------------------------------------------------


class _Request:
    async def is_disconnected(self) -> bool:
        return False


async def _frames(feed: LiveFeed, org: str, count: int, during: Any = None) -> list[bytes]:
    stream = _stream(feed, _Request(), access_for(None, org), None, {"zone"}, 0.05)  # type: ignore[arg-type]
    out = [await anext(stream)]  # ": connected"
    if during is not None:
        during()
    while len(out) < count + 1:
        out.append(await asyncio.wait_for(anext(stream), 5))
    await stream.aclose()
    return out[1:]


def test_a_stream_that_falls_behind_the_ring_is_told_so() -> None:
    feed = LiveFeed(replay_size=3, epoch=1)

    def burst() -> None:
        for n in range(6):
            feed.publish("zone", {"n": n})

    frames = asyncio.run(_frames(feed, "comune", 4, burst))
    assert frames[0].startswith(b"id: 1-3\nevent: reset\n")
    assert [f.split(b"\n")[0] for f in frames[1:]] == [b"id: 1-4", b"id: 1-5", b"id: 1-6"]


def test_hidden_events_move_the_clients_id_on_in_keepalives() -> None:
    feed = LiveFeed(epoch=1)

    def hidden() -> None:
        for n in range(3):
            feed.publish("zone", {"n": n}, lambda access: False)

    frames = asyncio.run(_frames(feed, "comune", 1, hidden))
    assert frames == [b"id: 1-3\n\n"]


# --- interventions in the decode stage -------------------------------------------------------


def _hub(tmp_path: Path) -> Hub:
    settings = Settings(
        mqtt_url="mqtt://127.0.0.1:9",  # never connected: start() is not called
        profiles_dir=ROOT / "device_profiles",
        data_dir=tmp_path,
        stats_interval_s=0,
        spool_max_bytes=0,
    )
    return Hub(settings, PROFILES, Inventory([]), policy=Policy.parse(POLICY, "p", SCHEMA))


WORKS = {
    "id": "gida:1",
    "kind": "water_main_repair",
    "title": "Condotta",
    "zone": "centro",
    "planned_start": "2026-11-25T08:00:00Z",
    "planned_end": "2026-11-25T18:00:00Z",
}


def _decode(hub: Hub, topic: str, payload: bytes, retain: bool = False) -> Batch:
    batch = Batch()
    hub.decode_into(RawMessage(topic, payload, NOW_MS, 1, 1, retain), batch)
    return batch


def test_interventions_are_stored_or_dead_lettered_with_the_reason(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    stored = _decode(hub, "situation/gida/events", orjson.dumps(WORKS))
    assert len(stored.no_points) == 1
    assert not stored.dead
    assert hub.interventions.get("gida:1") is not None
    for topic, payload, reason in [
        ("situation/acme/events", orjson.dumps(WORKS | {"id": "acme:1"}), "unknown_organisation"),
        ("situation/gida/other", orjson.dumps(WORKS), "bad_topic"),
        ("situation/cap/events", orjson.dumps(WORKS | {"title": "mine"}), "not_owner"),
        ("situation/gida/events", b"{not json", "not_json"),
    ]:
        batch = _decode(hub, topic, payload)
        assert [d.reason for d in batch.dead] == [reason], (topic, batch.dead)


def test_a_store_failure_is_a_dead_letter_not_a_silent_ack(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    hub.interventions._db.close()  # SQLite fails from now on
    batch = _decode(hub, "situation/gida/events", orjson.dumps(WORKS))
    assert [d.reason for d in batch.dead] == ["store_failed"]
    assert not batch.no_points


def test_a_retained_copy_of_a_known_intervention_does_not_undo_later_changes(
    tmp_path: Path,
) -> None:
    hub = _hub(tmp_path)
    _decode(hub, "situation/gida/events", orjson.dumps(WORKS))
    _decode(hub, "situation/gida/events", orjson.dumps({"id": "gida:1", "status": "active"}))
    replayed = _decode(hub, "situation/gida/events", orjson.dumps(WORKS), retain=True)
    assert len(replayed.no_points) == 1
    stored = hub.interventions.get("gida:1")
    assert stored is not None
    assert stored.status == "active"
    # a redelivered change made on an older version is no conflict when it changes nothing
    again = _decode(
        hub,
        "situation/gida/events",
        orjson.dumps({"id": "gida:1", "status": "active", "version": 1}),
    )
    assert not again.dead
    conflict = _decode(
        hub, "situation/gida/events", orjson.dumps({"id": "gida:1", "title": "X", "version": 1})
    )
    assert [d.reason for d in conflict.dead] == ["version_conflict"]
