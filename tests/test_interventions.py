"""Interventions: the message model and its rules, the SQLite store, the alert-correlation
helper, the annotation points and the API router under a three-organisation sharing policy.

The store is the real one on a temporary SQLite file; the API runs in a small FastAPI app
with a TestClient. InfluxDB is not used by these endpoints: the context's client points at a
transport that fails every request, so a stray query would show.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from hub.api import interventions as interventions_api
from hub.api.context import ApiContext
from hub.api.security import ApiKey, ApiKeys, Role, digest
from hub.errors import ConfigError, DecodeError
from hub.interventions import (
    MEASUREMENT,
    Intervention,
    InterventionError,
    InterventionStore,
    annotation_line,
    annotation_point,
    explaining,
    parse_message,
)
from hub.interventions.model import (
    DEFAULT_RADIUS_M,
    EARTH_RADIUS_M,
    KINDS,
    MAX_PAYLOAD_BYTES,
    distance_m,
    iso,
    to_ms,
)
from hub.inventory import Inventory
from hub.metrics import Metrics
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.sharing import Policy
from hub.storage import lineprotocol
from hub.storage.influx import InfluxClient

ROOT = Path(__file__).resolve().parent.parent
MINUTE = 60_000
HOUR = 60 * MINUTE
NOW = int(datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp() * 1000)
# a point in Prato's centre; 0.001 degrees of latitude is about 111 m
LAT, LON = 43.8803, 11.0969


def at(offset_ms: int) -> str:
    """An ISO time ``offset_ms`` from NOW (UTC)."""
    return datetime.fromtimestamp((NOW + offset_ms) / 1000, UTC).isoformat()


def message(ident: str = "cap:2026-0412", **changes: Any) -> dict[str, Any]:
    """A complete new-intervention message, with ``changes`` applied (None removes a key)."""
    body: dict[str, Any] = {
        "id": ident,
        "kind": "water_main_repair",
        "title": "Rottura condotta",
        "street": "via Roma 12",
        "zone": "centro-storico",
        "lat": LAT,
        "lon": LON,
        "planned_start": "2026-11-25T09:00:00+01:00",
        "planned_end": "2026-11-25T19:00:00+01:00",
    }
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def parsed(org: str = "cap", existing: Intervention | None = None, **changes: Any) -> Intervention:
    return parse_message(org, message(**changes), existing, NOW)


def error_of(
    org: str, payload: bytes | dict[str, Any], existing: Intervention | None = None
) -> InterventionError:
    with pytest.raises(InterventionError) as caught:
        parse_message(org, payload, existing, NOW)
    return caught.value


class Clock:
    """A settable clock (epoch ms)."""

    def __init__(self, now_ms: int = NOW) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[InterventionStore]:
    opened = InterventionStore(tmp_path / "interventions.sqlite", clock_ms=clock)
    try:
        yield opened
    finally:
        opened.close()


# --- the model ---------------------------------------------------------------------------------


def test_a_complete_message_makes_a_planned_intervention() -> None:
    item = parsed()
    assert item.owner == "cap"
    assert item.status == "planned"
    assert item.radius_m == DEFAULT_RADIUS_M
    assert item.version == 0
    assert item.updated_at is None
    assert item.planned_start == datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
    assert item.start_ms == NOW - 4 * HOUR
    assert item.end_ms == NOW + 6 * HOUR
    body = item.to_json()
    assert body["planned_start"] == "2026-11-25T08:00:00.000+00:00"
    assert Intervention.model_validate(body) == item


def test_bytes_and_dict_payloads_are_the_same() -> None:
    assert parse_message("cap", orjson.dumps(message()), None, NOW) == parsed()


def test_no_coordinates_means_no_radius() -> None:
    item = parsed(lat=None, lon=None)
    assert (item.lat, item.lon, item.radius_m) == (None, None, None)


@pytest.mark.parametrize(
    ("payload", "reason", "says"),
    [
        (b"{not json", "not_json", "payload is not JSON"),
        (b"\xff\xfe", "not_json", "payload is not JSON"),
        (b"[1, 2]", "not_object", "must be a JSON object, not list"),
        (b'"text"', "not_object", "not str"),
        (b" " * (MAX_PAYLOAD_BYTES + 1), "too_large", "over 65536 (64 KiB)"),
        ({"kind": "other"}, "missing_key", "id is required"),
        ({"id": "has space"}, "invalid", "id 'has space' must be 1 to 64 letters"),
        ({"id": "x" * 65}, "invalid", "must be 1 to 64"),
        ({"id": 12}, "invalid", "id 12 must be"),
        ({"id": "a", "title": "t"}, "missing_key", "missing: kind, planned_start, planned_end"),
        (message(planed_end="x"), "unknown_key", "unknown key 'planed_end'; allowed: id, owner"),
        (message(kind="flood"), "invalid", "kind: unknown kind 'flood'; allowed: road_closure"),
        (message(status="ongoing"), "invalid", "unknown status 'ongoing'; allowed: planned"),
        (message(planned_start="2026-11-25T09:00:00"), "invalid", "has no timezone: add Z"),
        (message(planned_end="tomorrow"), "invalid", "'tomorrow' is not an ISO 8601 time"),
        (message(planned_end=1795000000000), "invalid", "planned_end: must be an ISO 8601 time"),
        (message(planned_start="1999-12-31T00:00:00Z"), "invalid", "out of range (2000-01-01"),
        (
            message(planned_end="2026-11-25T08:00:00+01:00"),
            "invalid",
            "planned_end (2026-11-25T07:00:00.000+00:00) must be after planned_start",
        ),
        (message(lon=None), "invalid", "lat and lon come together"),
        (message(lat=91.0), "invalid", "lat: Input should be less than or equal to 90"),
        (message(lat="43.88"), "invalid", "lat: Input should be a valid number"),
        (message(lat=None, lon=None, radius_m=50), "invalid", "radius_m needs lat and lon"),
        (message(radius_m=0), "invalid", "radius_m: Input should be greater than 0"),
        (
            message(zone=None, lat=None, lon=None, street=None),
            "invalid",
            "say where: give a zone, lat and lon, or a street",
        ),
        (message(title="x" * 201), "invalid", "title: String should have at most 200"),
        (message(title="   "), "invalid", "title: must not be blank"),
        (message(title="two\nlines"), "invalid", "title: must be one line"),
        (message(zone="a\\"), "invalid", "zone: must not contain a backslash"),
        (message(description="d" * 2001), "invalid", "description: String should have at most"),
        (message(description="bell\x07"), "invalid", "description: must not contain control"),
        (message(owner="comune"), "owner_mismatch", "owner 'comune' is not the sender's"),
        ({**message(), "title": None}, "invalid", "title cannot be null"),
        (message(version=3), "version_conflict", "is at version 0, not 3"),
        (
            message(actual_start=at(-HOUR)),
            "invalid",
            "a planned intervention has no actual_start or actual_end",
        ),
    ],
)
def test_every_bad_message_says_what_to_change(
    payload: bytes | dict[str, Any], reason: str, says: str
) -> None:
    error = error_of("cap", payload)
    assert error.reason == reason
    assert says in error.detail
    assert isinstance(error, DecodeError)  # on MQTT it becomes a dead letter with that reason


def test_all_problems_of_a_message_are_reported_together() -> None:
    error = error_of("cap", message(kind="flood", zone=None, lat=None, lon=None, street=None))
    assert "unknown kind 'flood'" in error.detail
    for kind in KINDS:
        assert kind in error.detail
    # the cross-field checks run only on fields that were valid; the next message shows them
    error = error_of(
        "cap",
        message(zone=None, lat=None, lon=None, street=None, planned_end=message()["planned_start"]),
    )
    assert "say where" in error.detail
    assert "must be after planned_start" in error.detail


def test_owner_in_the_payload_may_repeat_the_senders_organisation() -> None:
    assert parsed(owner="cap").owner == "cap"


def test_updated_at_in_the_payload_is_ignored() -> None:
    assert parsed(updated_at="2001-01-01T00:00:00Z").updated_at is None


# --- updates, owners and status rules ----------------------------------------------------------


def stored(item: Intervention, version: int = 1) -> Intervention:
    """``item`` as if the store had saved it."""
    return item.model_copy(update={"version": version, "updated_at": item.planned_start})


def test_a_partial_update_changes_only_the_keys_it_carries() -> None:
    existing = stored(parsed(description="Lavori notturni"))
    updated = parse_message("cap", {"id": existing.id, "title": "Condotta riparata"}, existing, NOW)
    assert updated.title == "Condotta riparata"
    unchanged = {"title", "version", "updated_at"}
    assert updated.model_dump(exclude=unchanged) == existing.model_dump(exclude=unchanged)
    assert updated.version == existing.version  # the store assigns the next one


def test_a_partial_update_is_validated_with_the_stored_values() -> None:
    existing = stored(parsed())
    error = error_of("cap", {"id": existing.id, "planned_end": "2026-11-25T08:00:00Z"}, existing)
    assert error.reason == "invalid"
    assert "must be after planned_start" in error.detail
    error = error_of("cap", {"id": existing.id, "lat": None}, existing)
    assert "lat and lon come together" in error.detail


def test_null_clears_an_optional_value_and_coordinates_take_their_radius_along() -> None:
    existing = stored(parsed(radius_m=250))
    updated = parse_message("cap", {"id": existing.id, "lat": None, "lon": None}, existing, NOW)
    assert (updated.lat, updated.lon, updated.radius_m) == (None, None, None)
    cleared = parse_message("cap", {"id": existing.id, "street": None}, existing, NOW)
    assert cleared.street is None
    # the last place removed: refused, the intervention must say where it is
    error = error_of(
        "cap", {"id": existing.id, "zone": None, "lat": None, "lon": None, "street": None}, existing
    )
    assert "say where" in error.detail


def test_only_the_owner_updates_its_intervention() -> None:
    existing = stored(parsed())
    error = error_of("comune", {"id": existing.id, "title": "mine now"}, existing)
    assert error.reason == "not_owner"
    assert "taken by another organisation" in error.detail
    # owner in the payload does not help: it must be the sender's own organisation
    assert error_of("comune", {"id": existing.id, "owner": "cap"}, existing).reason == (
        "owner_mismatch"
    )


def test_a_stale_version_is_refused_and_the_current_one_accepted() -> None:
    existing = stored(parsed(), version=4)
    error = error_of("cap", {"id": existing.id, "version": 3, "title": "t"}, existing)
    assert error.reason == "version_conflict"
    assert "is at version 4, not 3" in error.detail
    assert parse_message("cap", {"id": existing.id, "version": 4, "title": "t"}, existing, NOW)


def test_becoming_active_and_done_sets_the_actual_times() -> None:
    planned = stored(parsed())
    active = parse_message("cap", {"id": planned.id, "status": "active"}, planned, NOW)
    assert active.actual_start is not None
    assert to_ms(active.actual_start) == NOW
    assert active.actual_end is None
    later = NOW + 2 * HOUR
    done = parse_message("cap", {"id": planned.id, "status": "done"}, stored(active, 2), later)
    assert done.actual_start == active.actual_start
    assert done.actual_end is not None
    assert to_ms(done.actual_end) == later
    # given times win over the implied ones
    given = parse_message(
        "cap", {"id": planned.id, "status": "active", "actual_start": at(-HOUR)}, planned, NOW
    )
    assert given.actual_start is not None
    assert to_ms(given.actual_start) == NOW - HOUR


def test_a_start_reported_slightly_ahead_ends_no_earlier_than_it() -> None:
    item = parsed(status="done", actual_start=at(3 * MINUTE))
    assert item.actual_start == item.actual_end


def test_cancelling_active_works_ends_them_and_cancelling_planned_ones_does_not() -> None:
    planned = stored(parsed())
    assert (
        parse_message("cap", {"id": planned.id, "status": "cancelled"}, planned, NOW).actual_end
        is None
    )
    active = stored(parse_message("cap", {"id": planned.id, "status": "active"}, planned, NOW), 2)
    cancelled = parse_message("cap", {"id": planned.id, "status": "cancelled"}, active, NOW + HOUR)
    assert cancelled.actual_end is not None
    assert to_ms(cancelled.actual_end) == NOW + HOUR


@pytest.mark.parametrize(
    ("before", "after", "says"),
    [
        ("done", "active", "is done: its status cannot change"),
        ("done", "planned", "is done: its status cannot change"),
        ("cancelled", "active", "is cancelled: its status cannot change"),
        ("active", "planned", "is active: it can become done or cancelled, not planned again"),
    ],
)
def test_status_transitions_that_are_refused(before: str, after: str, says: str) -> None:
    times: dict[str, Any] = {"status": before}
    if before in ("active", "done"):
        times["actual_start"] = at(-HOUR)
    if before == "done":
        times["actual_end"] = at(-MINUTE)
    existing = stored(parsed(**times))
    error = error_of("cap", {"id": existing.id, "status": after}, existing)
    assert error.reason == "bad_transition"
    assert says in error.detail


def test_final_interventions_may_still_be_corrected() -> None:
    done = stored(parsed(status="done", actual_start=at(-2 * HOUR), actual_end=at(-HOUR)))
    fixed = parse_message("cap", {"id": done.id, "title": "Condotta sostituita"}, done, NOW)
    assert (fixed.status, fixed.title) == ("done", "Condotta sostituita")


def test_actual_times_in_the_future_are_refused_beyond_five_minutes() -> None:
    error = error_of("cap", message(status="active", actual_start=at(6 * MINUTE)))
    assert error.reason == "invalid"
    assert "actual_start (2026-11-25T12:06:00.000+00:00) is in the future" in error.detail
    assert parsed(status="active", actual_start=at(4 * MINUTE)).actual_start is not None


def test_an_active_intervention_cannot_carry_an_end() -> None:
    error = error_of("cap", message(status="active", actual_start=at(-HOUR), actual_end=at(0)))
    assert "an active intervention has no actual_end" in error.detail


def test_under_way_follows_the_status_and_the_windows() -> None:
    planned = parsed()  # planned 08:00-18:00 UTC, NOW is 12:00
    assert planned.under_way_at(NOW)
    assert planned.under_way_at(planned.start_ms)
    assert not planned.under_way_at(planned.start_ms - 1)
    assert not planned.under_way_at(to_ms(planned.planned_end))
    active = parsed(status="active", actual_start=at(-HOUR))
    assert active.under_way_at(NOW + 30 * 24 * HOUR)  # until a message ends it
    assert not active.under_way_at(NOW - HOUR - 1)
    done = parsed(status="done", actual_start=at(-3 * HOUR), actual_end=at(-HOUR))
    assert done.under_way_at(NOW - 2 * HOUR)  # an alert of that time finds it
    assert not done.under_way_at(NOW)
    assert not parsed(status="cancelled").under_way_at(NOW)


# --- explaining alerts ---------------------------------------------------------------------------


def work(ident: str, **changes: Any) -> Intervention:
    return parsed(ident=ident, **changes)


def test_distance_is_the_great_circle_distance() -> None:
    assert distance_m(LAT, LON, LAT, LON) == 0
    assert distance_m(LAT, LON, LAT + 0.001, LON) == pytest.approx(111.2, abs=0.2)
    # on a sphere of the mean Earth radius: one degree of the equator, half a great circle
    assert distance_m(0, 0, 0, 1) == pytest.approx(2 * math.pi * EARTH_RADIUS_M / 360)
    assert distance_m(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_M)
    assert distance_m(90, 0, -90, 0) == pytest.approx(math.pi * EARTH_RADIUS_M)


def test_an_intervention_in_the_alerts_zone_explains_it() -> None:
    item = work("a", lat=None, lon=None)
    assert explaining([item], "centro-storico", None, None, NOW) == item
    assert explaining([item], "macrolotto", None, None, NOW) is None
    assert explaining([item], None, LAT, LON, NOW) is None


def test_an_intervention_within_its_radius_explains_it() -> None:
    item = work("a", zone="altrove")
    assert explaining([item], None, LAT + 0.0008, LON, NOW) == item  # ~89 m
    assert explaining([item], None, LAT + 0.0010, LON, NOW) is None  # ~111 m
    wide = work("b", zone="altrove", radius_m=200)
    assert explaining([wide], None, LAT + 0.0010, LON, NOW) == wide
    assert explaining([item], None, None, None, NOW) is None


def test_only_interventions_under_way_explain() -> None:
    done = work("a", status="done", actual_start=at(-3 * HOUR), actual_end=at(-HOUR))
    cancelled = work("b", status="cancelled")
    later = work("c", planned_start=at(HOUR), planned_end=at(2 * HOUR))
    assert explaining([done, cancelled, later], "centro-storico", LAT, LON, NOW) is None
    assert explaining([done], "centro-storico", None, None, NOW - 2 * HOUR) == done
    assert explaining([later], "centro-storico", None, None, NOW + HOUR) == later


def test_street_only_interventions_explain_nothing() -> None:
    item = work("a", zone=None, lat=None, lon=None)
    assert explaining([item], "centro-storico", LAT, LON, NOW) is None


def test_zone_and_position_beat_zone_alone_then_the_latest_start_wins() -> None:
    both = work("both", status="active", actual_start=at(-3 * HOUR))
    zone_only = work("zone", lat=None, lon=None, status="active", actual_start=at(-HOUR))
    newer = work("newer", status="active", actual_start=at(-2 * HOUR))
    for candidates in ([both, zone_only], [zone_only, both]):
        assert explaining(candidates, "centro-storico", LAT, LON, NOW) == both
    for candidates in ([both, newer, zone_only], [zone_only, newer, both]):
        assert explaining(candidates, "centro-storico", LAT, LON, NOW) == newer
    # the device's position unknown: zone alone decides, the latest start wins
    assert explaining([both, zone_only, newer], "centro-storico", None, None, NOW) == zone_only
    twin = work("a-twin", status="active", actual_start=at(-2 * HOUR))
    assert explaining([newer, twin], "centro-storico", LAT, LON, NOW) == twin  # smaller id


# --- annotation points -----------------------------------------------------------------------


def test_the_annotation_point_is_stamped_at_the_start_and_carries_the_end() -> None:
    item = stored(
        parsed(description="Chiusura\ncarreggiata nord", status="active", actual_start=at(-HOUR)),
        version=2,
    )
    point = annotation_point(item)
    assert point.measurement == MEASUREMENT == "intervention"
    assert point.time_ms == NOW - HOUR
    assert point.tags == {
        "id": "cap:2026-0412",
        "owner": "cap",
        "kind": "water_main_repair",
        "status": "active",
        "zone": "centro-storico",
    }
    assert point.fields == {
        "title": "Rottura condotta",
        "text": "Rottura condotta — via Roma 12 — Chiusura carreggiata nord",
        "end_ms": NOW + 6 * HOUR,
        "version": 2,
    }
    assert lineprotocol.parse(annotation_line(item)) == point


def test_an_annotation_without_zone_has_no_zone_tag_and_never_ends_before_it_starts() -> None:
    item = parsed(zone=None, status="active", actual_start=at(-MINUTE), planned_end=at(-2 * MINUTE))
    point = annotation_point(item)
    assert "zone" not in point.tags
    assert point.time_ms == NOW - MINUTE
    assert point.fields["end_ms"] == NOW - MINUTE


# --- the store ---------------------------------------------------------------------------------


def test_apply_stores_versions_with_the_hubs_time(store: InterventionStore, clock: Clock) -> None:
    created = store.apply("cap", orjson.dumps(message()), source="mqtt:situation/cap/events")
    assert created.version == 1
    assert created.updated_at is not None
    assert to_ms(created.updated_at) == NOW
    assert store.get(created.id) == created
    clock.now_ms = NOW + MINUTE
    started = store.apply("cap", {"id": created.id, "status": "active"}, source="api:cap-ops")
    assert (started.version, started.status) == (2, "active")
    assert started.updated_at is not None
    assert to_ms(started.updated_at) == NOW + MINUTE
    assert store.get(created.id) == started
    assert store.get("nothing") is None


def test_a_message_that_changes_nothing_stores_nothing(store: InterventionStore) -> None:
    heard: list[Intervention] = []
    store.listen(heard.append)
    first = store.apply("cap", message())
    again = store.apply("cap", message())  # an MQTT redelivery
    assert again == first
    assert [h.version for h in store.history(first.id)] == [1]
    assert heard == [first]


def test_history_keeps_every_version_and_its_source(store: InterventionStore, clock: Clock) -> None:
    store.apply("cap", message(), source="mqtt:situation/cap/events")
    clock.now_ms += MINUTE
    store.apply("cap", {"id": "cap:2026-0412", "status": "active"}, source="api:cap-ops")
    clock.now_ms += HOUR
    store.apply("cap", {"id": "cap:2026-0412", "status": "done"}, source="api:cap-ops")
    changes = store.history("cap:2026-0412")
    assert [(c.version, c.intervention.status, c.source) for c in changes] == [
        (1, "planned", "mqtt:situation/cap/events"),
        (2, "active", "api:cap-ops"),
        (3, "done", "api:cap-ops"),
    ]
    assert [c.updated_ms for c in changes] == [NOW, NOW + MINUTE, NOW + MINUTE + HOUR]
    assert [c.version for c in store.history("cap:2026-0412", limit=2)] == [2, 3]
    assert changes[0].to_json()["intervention"]["status"] == "planned"
    assert store.history("unknown") == []


def test_the_store_refuses_other_owners_and_stale_versions(store: InterventionStore) -> None:
    saved = store.apply("cap", message())
    with pytest.raises(InterventionError) as caught:
        store.upsert(saved.model_copy(update={"owner": "comune", "title": "x"}))
    assert caught.value.reason == "not_owner"
    with pytest.raises(InterventionError) as caught:
        store.apply("comune", {"id": saved.id, "title": "x"})
    assert caught.value.reason == "not_owner"
    # built on version 1, stored meanwhile as version 2: the older change is refused
    stale = parse_message("cap", {"id": saved.id, "title": "first"}, saved, NOW)
    store.upsert(parse_message("cap", {"id": saved.id, "title": "second"}, saved, NOW))
    with pytest.raises(InterventionError) as caught:
        store.upsert(stale)
    assert caught.value.reason == "version_conflict"
    current = store.get(saved.id)
    assert current is not None
    assert (current.title, current.version) == ("second", 2)


def test_the_store_survives_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state" / "interventions.sqlite"
    first = InterventionStore(path, clock_ms=clock)
    first.apply("cap", message())
    started = first.apply("cap", {"id": "cap:2026-0412", "status": "active"})
    first.close()
    again = InterventionStore(path, clock_ms=clock)
    try:
        assert again.get("cap:2026-0412") == started
        assert [c.version for c in again.history("cap:2026-0412")] == [1, 2]
        done = again.apply("cap", {"id": "cap:2026-0412", "status": "done"})
        assert done.version == 3
        assert again.list(status="done") == [done]
    finally:
        again.close()


def test_a_store_of_a_newer_hub_or_an_unusable_path_stops_start(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite"
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(ConfigError, match="schema 99, written by a newer hub"):
        InterventionStore(path)
    folder = tmp_path / "a-folder"
    folder.mkdir()
    with pytest.raises(ConfigError, match="cannot open the interventions store"):
        InterventionStore(folder)


def fill(store: InterventionStore) -> dict[str, Intervention]:
    """Interventions of three owners in several states, zones and windows."""
    made = [
        ("cap", message("cap:1")),  # planned 08-18 today, centro-storico
        ("cap", message("cap:2", zone="macrolotto", lat=None, lon=None)),
        (
            "comune",
            message(
                "comune:fiera",
                kind="public_event",
                zone="macrolotto",
                lat=None,
                lon=None,
                planned_start="2026-11-28T08:00:00Z",
                planned_end="2026-11-29T20:00:00Z",
            ),
        ),
        (
            "citelum",
            message(
                "citelum:lamps",
                kind="lamp_replacement",
                status="active",
                actual_start=at(-30 * 24 * HOUR),
                planned_start=at(-31 * 24 * HOUR),
                planned_end=at(-24 * HOUR),
            ),
        ),
        (
            "comune",
            message(
                "comune:old",
                kind="roadworks",
                status="done",
                planned_start=at(-10 * 24 * HOUR),
                planned_end=at(-9 * 24 * HOUR),
                actual_start=at(-10 * 24 * HOUR),
                actual_end=at(-8 * 24 * HOUR),
            ),
        ),
        ("comune", message("comune:nope", kind="road_closure", status="cancelled")),
    ]
    return {body["id"]: store.apply(org, body) for org, body in made}


def ids(items: list[Intervention]) -> list[str]:
    return [i.id for i in items]


def test_list_filters_by_owner_status_zone_and_window(store: InterventionStore) -> None:
    fill(store)
    assert set(ids(store.list())) == {
        "cap:1",
        "cap:2",
        "comune:fiera",
        "citelum:lamps",
        "comune:old",
        "comune:nope",
    }
    assert set(ids(store.list({"cap", "citelum"}))) == {"cap:1", "cap:2", "citelum:lamps"}
    assert store.list(set()) == []
    assert ids(store.list(status="active")) == ["citelum:lamps"]
    assert set(ids(store.list(status=["done", "cancelled"]))) == {"comune:old", "comune:nope"}
    assert set(ids(store.list(zone="macrolotto"))) == {"cap:2", "comune:fiera"}
    # the window overlaps the planned window, or the actual one, or an active one's open end
    in_two_days = store.list(start_ms=NOW + 2 * 24 * HOUR, end_ms=NOW + 3 * 24 * HOUR)
    assert set(ids(in_two_days)) == {"comune:fiera", "citelum:lamps"}
    # planned to end 9 days ago, finished 8 days ago: found by its actual window
    finished_late = store.list(
        {"comune"}, start_ms=NOW - int(8.5 * 24 * HOUR), end_ms=NOW - 8 * 24 * HOUR
    )
    assert ids(finished_late) == ["comune:old"]
    assert set(ids(store.list(start_ms=NOW + 7 * 24 * HOUR))) == {"citelum:lamps"}
    assert set(ids(store.list(end_ms=NOW - 9 * 24 * HOUR))) == {"citelum:lamps", "comune:old"}
    assert store.count({"comune"}, zone="macrolotto") == 1
    with pytest.raises(ValueError, match="unknown status 'open'"):
        store.list(status="open")


def test_list_is_latest_start_first_and_paged(store: InterventionStore) -> None:
    fill(store)
    everything = store.list()
    starts = [i.start_ms for i in everything]
    assert starts == sorted(starts, reverse=True)
    assert ids(everything)[0] == "comune:fiera"
    assert store.list(limit=2) == everything[:2]
    assert store.list(limit=2, offset=2) == everything[2:4]
    assert store.count() == len(everything) == 6
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="limit must be between 1 and 1000"):
            store.list(limit=bad)


def test_active_at_follows_the_under_way_rule(store: InterventionStore) -> None:
    fill(store)
    assert set(ids(store.active_at(NOW))) == {"cap:1", "cap:2", "citelum:lamps"}
    assert ids(store.active_at(NOW, owners={"citelum"})) == ["citelum:lamps"]
    assert set(ids(store.active_at(NOW - int(8.5 * 24 * HOUR)))) == {
        "citelum:lamps",
        "comune:old",
    }
    assert set(ids(store.active_at(NOW + 3 * 24 * HOUR + 4 * HOUR))) == {
        "citelum:lamps",
        "comune:fiera",
    }
    assert store.owners() == ["cap", "citelum", "comune"]


def test_listeners_hear_each_stored_change_and_a_failing_one_breaks_nothing(
    store: InterventionStore, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[tuple[int, Intervention | None]] = []

    def broken(item: Intervention) -> None:
        raise RuntimeError("listener bug")

    def reading(item: Intervention) -> None:
        # a listener may read the store: the change is committed and the store not locked
        # (read from another thread with a deadline, so a lock held here fails, not hangs)
        found: list[Intervention | None] = []
        reader = threading.Thread(target=lambda: found.append(store.get(item.id)), daemon=True)
        reader.start()
        reader.join(timeout=10)
        heard.append((item.version, found[0] if found else None))

    store.listen(broken)
    remove = store.listen(reading)
    with caplog.at_level(logging.ERROR, logger="hub.interventions.store"):
        saved = store.apply("cap", message())
    assert heard == [(1, saved)]
    assert "intervention listener" in caplog.text
    assert "listener bug" in caplog.text
    assert store.get(saved.id) == saved
    remove()
    store.apply("cap", {"id": saved.id, "status": "active"})
    assert len(heard) == 1


def test_concurrent_writers_lose_no_change(store: InterventionStore) -> None:
    """Threads apply changes at once, to their own ids and to one shared id."""
    store.apply("cap", message("cap:shared", description="0"))
    threads_n, rounds = 6, 15
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    heard: list[int] = []
    store.listen(lambda item: heard.append(item.version) if item.id == "cap:shared" else None)

    def worker(n: int) -> None:
        try:
            barrier.wait(timeout=10)
            for k in range(rounds):
                store.apply("cap", message(f"cap:own-{n}", description=str(k)))
                store.apply("cap", {"id": "cap:shared", "description": f"{n}-{k}"})
                store.list(status="planned", limit=50)
        except BaseException as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in workers)
    assert errors == []
    shared = store.get("cap:shared")
    assert shared is not None
    assert shared.version == 1 + threads_n * rounds
    assert [c.version for c in store.history("cap:shared")] == list(range(1, shared.version + 1))
    assert heard == list(range(2, shared.version + 1))  # listeners hear them in commit order
    for n in range(threads_n):
        own = store.get(f"cap:own-{n}")
        assert own is not None
        assert own.version == rounds


# --- the API -------------------------------------------------------------------------------------

POLICY = {
    "organisations": ["comune", "cap", "citelum"],
    "shares": [
        {"owner": "cap", "with": ["comune"], "interventions": True},
        {"owner": "citelum", "with": ["*"], "interventions": True},
        # a share without interventions: cap sees comune's alerts, not its works
        {"owner": "comune", "with": ["cap"], "alerts": True},
    ],
}
ORGS = ("comune", "cap", "citelum")
VISIBLE = {
    "comune": {"comune", "cap", "citelum"},
    "cap": {"cap", "citelum"},
    "citelum": {"citelum"},
}


def token(org: str, role: Role) -> str:
    return f"token-{org}-{role}"


def auth(org: str, role: Role = "reader") -> dict[str, str]:
    return {"Authorization": f"Bearer {token(org, role)}"}


def context(
    tmp_path: Path, store: InterventionStore | None, policy: Policy | None, clock: Clock
) -> ApiContext:
    keys = [
        ApiKey(id=f"{org}-{role}", org=org, role=role, sha256=digest(token(org, role)))
        for org in ORGS
        for role in ("reader", "operator")
    ]
    failing = InfluxClient(
        "http://influx.test",
        "prato",
        transport=httpx.MockTransport(lambda request: httpx.Response(500)),
    )
    return ApiContext(
        settings=Settings(profiles_dir=ROOT / "device_profiles", data_dir=tmp_path),
        profiles=ProfileSet.load(ROOT / "device_profiles"),
        inventory=Inventory([]),
        store=failing,
        metrics=Metrics(),
        keys=ApiKeys(keys),
        clock_ms=clock,
        policy=policy,
        interventions=store,
    )


Client = Callable[..., TestClient]


@pytest.fixture
def make_client(tmp_path: Path, clock: Clock) -> Iterator[Client]:
    made: list[tuple[TestClient, ApiContext]] = []

    def make(store: InterventionStore | None, policy: Policy | None = None) -> TestClient:
        ctx = context(tmp_path, store, policy, clock)
        app = FastAPI()
        app.include_router(interventions_api.router(ctx))
        client = TestClient(app)
        made.append((client, ctx))
        return client

    try:
        yield make
    finally:
        for client, ctx in made:
            client.close()
            ctx.store.close()


@pytest.fixture
def api(store: InterventionStore, make_client: Client) -> TestClient:
    fill(store)
    return make_client(store, Policy.parse(POLICY, "test policy"))


def listed(api: TestClient, org: str, **params: Any) -> list[str]:
    response = api.get("/api/v1/interventions", params=params, headers=auth(org))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] >= len(body["interventions"])
    return [i["id"] for i in body["interventions"]]


def test_each_organisation_sees_its_own_and_the_shared_interventions(
    api: TestClient, store: InterventionStore
) -> None:
    owner_of = {i.id: i.owner for i in store.list()}
    for org in ORGS:
        seen = listed(api, org)
        assert {owner_of[i] for i in seen} == VISIBLE[org], org
        assert set(seen) == {i for i, o in owner_of.items() if o in VISIBLE[org]}, org
        for ident, owner in owner_of.items():
            response = api.get(f"/api/v1/interventions/{ident}", headers=auth(org))
            if owner in VISIBLE[org]:
                assert response.status_code == 200
                assert response.json()["id"] == ident
            else:
                # the same answer as for an id that does not exist
                assert response.status_code == 404
                assert response.json() == {"detail": f"no intervention {ident!r}"}


def test_without_a_policy_every_key_sees_everything(
    store: InterventionStore, make_client: Client
) -> None:
    fill(store)
    client = make_client(store, None)
    assert len(listed(client, "citelum")) == 6


def test_the_list_filters(api: TestClient) -> None:
    assert listed(api, "comune", status="active") == ["citelum:lamps"]
    assert set(listed(api, "comune", status="done,cancelled")) == {"comune:old", "comune:nope"}
    assert set(listed(api, "comune", status=["planned", "active"], zone="macrolotto")) == {
        "cap:2",
        "comune:fiera",
    }
    assert set(listed(api, "comune", owner="cap")) == {"cap:1", "cap:2"}
    assert listed(api, "citelum", owner="cap") == []  # not visible: nothing, not an error
    window = {"start": "2026-11-27T00:00:00Z", "end": "2026-11-28T12:00:00+01:00"}
    assert set(listed(api, "comune", **window)) == {"comune:fiera", "citelum:lamps"}
    assert set(listed(api, "comune", active_at="now")) == {"cap:1", "cap:2", "citelum:lamps"}
    assert set(listed(api, "cap", active_at="now")) == {"cap:1", "cap:2", "citelum:lamps"}
    assert listed(api, "comune", active_at="now", zone="macrolotto") == ["cap:2"]
    # latest start first: the roadworks began 10 days ago, the lamp campaign 30
    assert listed(api, "comune", active_at="2026-11-16T23:00:00+01:00") == [
        "comune:old",
        "citelum:lamps",
    ]
    page = api.get("/api/v1/interventions", params={"limit": 2}, headers=auth("comune")).json()
    assert page["total"] == 6
    assert len(page["interventions"]) == 2


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"status": "open"}, "status 'open' is not one of: planned, active, done, cancelled"),
        ({"start": "yesterday"}, "start 'yesterday' is not an ISO 8601 time"),
        ({"end": "2026-11-25T10:00:00"}, "has no timezone"),
        ({"active_at": "soon"}, "active_at 'soon' is not an ISO 8601 time"),
        (
            {"start": "2026-11-25T10:00:00Z", "end": "2026-11-25T09:00:00Z"},
            "end (2026-11-25T09:00:00Z) must be after start",
        ),
    ],
)
def test_bad_list_parameters_are_422_naming_the_problem(
    api: TestClient, params: dict[str, str], says: str
) -> None:
    response = api.get("/api/v1/interventions", params=params, headers=auth("comune"))
    assert response.status_code == 422
    assert says in response.json()["detail"]


def test_history_is_shown_to_those_who_see_the_intervention(api: TestClient, clock: Clock) -> None:
    clock.now_ms += MINUTE
    response = api.post(
        "/api/v1/interventions",
        json={"id": "cap:1", "status": "active"},
        headers=auth("cap", "operator"),
    )
    assert response.status_code == 200
    own = api.get("/api/v1/interventions/cap:1/history", headers=auth("cap")).json()
    assert [(c["version"], c["intervention"]["status"]) for c in own["changes"]] == [
        (1, "planned"),
        (2, "active"),
    ]
    assert own["changes"][1]["source"] == "api:cap-operator"
    assert own["changes"][1]["updated_at"] == iso(datetime.fromtimestamp(clock.now_ms / 1000, UTC))
    shared = api.get("/api/v1/interventions/cap:1/history", headers=auth("comune")).json()
    assert [c["source"] for c in shared["changes"]] == [None, None]
    hidden = api.get("/api/v1/interventions/cap:1/history", headers=auth("citelum"))
    assert hidden.status_code == 404


def test_operators_create_and_update_their_organisations_interventions(api: TestClient) -> None:
    body = message("comune:mercato", kind="public_event", lat=None, lon=None)
    created = api.post("/api/v1/interventions", json=body, headers=auth("comune", "operator"))
    assert created.status_code == 201, created.text
    assert created.json()["owner"] == "comune"
    assert created.json()["version"] == 1
    updated = api.post(
        "/api/v1/interventions",
        content=orjson.dumps({"id": "comune:mercato", "title": "Mercato del lunedì"}),
        headers=auth("comune", "operator"),
    )
    assert updated.status_code == 200
    assert (updated.json()["title"], updated.json()["version"]) == ("Mercato del lunedì", 2)
    assert api.get("/api/v1/interventions/comune:mercato", headers=auth("comune")).json() == (
        updated.json()
    )
    # cap does not see comune's interventions: the new one stays hidden from it
    assert api.get("/api/v1/interventions/comune:mercato", headers=auth("cap")).status_code == 404


@pytest.mark.parametrize(
    ("org", "body", "status", "says"),
    [
        ("comune", {"id": "cap:1", "title": "mine"}, 403, "taken by another organisation"),
        # not even visible to citelum: the id is taken all the same
        ("citelum", {"id": "cap:1", "title": "mine"}, 403, "taken by another organisation"),
        ("cap", {"id": "cap:1", "version": 7}, 409, "is at version 1, not 7"),
        ("cap", {"id": "cap:1", "status": "finished"}, 422, "unknown status 'finished'"),
        ("cap", {"id": "cap:9", "kind": "other"}, 422, "missing: title, planned_start"),
        ("cap", {"id": "cap:1", "owner": "comune"}, 422, "owner 'comune' is not the sender's"),
        ("cap", {"id": "cap:1", "colour": "red"}, 422, "unknown key 'colour'"),
        ("cap", [1], 422, "must be a JSON object, not list"),
    ],
)
def test_refused_changes_say_why(
    api: TestClient, org: str, body: Any, status: int, says: str
) -> None:
    response = api.post("/api/v1/interventions", json=body, headers=auth(org, "operator"))
    assert response.status_code == status
    assert says in response.json()["detail"]


def test_bodies_that_are_not_json_or_too_large(api: TestClient) -> None:
    headers = auth("cap", "operator") | {"Content-Type": "application/json"}
    response = api.post("/api/v1/interventions", content=b"{oops", headers=headers)
    assert response.status_code == 422
    assert "payload is not JSON" in response.json()["detail"]
    response = api.post(
        "/api/v1/interventions", content=b" " * (MAX_PAYLOAD_BYTES + 1), headers=headers
    )
    assert response.status_code == 413
    assert "64 KiB" in response.json()["detail"]


def test_readers_may_not_post_and_callers_need_a_key(api: TestClient) -> None:
    response = api.post("/api/v1/interventions", json=message("cap:x"), headers=auth("cap"))
    assert response.status_code == 403
    assert "needs 'operator'" in response.json()["detail"]
    assert api.get("/api/v1/interventions").status_code == 401
    bad_key = api.get("/api/v1/interventions", headers={"X-API-Key": "nope"})
    assert bad_key.status_code == 401


def test_without_the_store_everything_is_503(make_client: Client) -> None:
    client = make_client(None)
    expected = {"detail": "interventions are served by the hub process (hub run)"}
    for response in (
        client.get("/api/v1/interventions", headers=auth("cap")),
        client.get("/api/v1/interventions/cap:1", headers=auth("cap")),
        client.get("/api/v1/interventions/cap:1/history", headers=auth("cap")),
        client.post("/api/v1/interventions", json=message(), headers=auth("cap", "operator")),
    ):
        assert response.status_code == 503
        assert response.json() == expected


def test_api_changes_reach_the_listeners(api: TestClient, store: InterventionStore) -> None:
    heard: list[Intervention] = []
    store.listen(heard.append)
    response = api.post(
        "/api/v1/interventions",
        json={"id": "cap:2", "status": "active"},
        headers=auth("cap", "operator"),
    )
    assert response.status_code == 200
    assert [(h.id, h.status, h.version) for h in heard] == [("cap:2", "active", 2)]
