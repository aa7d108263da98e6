"""The simulated fleet: every message decodes with the built-in profiles (except the injected
bad frames), at the contract's cadences, with realistic day/night behaviour, deterministically."""

from __future__ import annotations

import csv
import itertools
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hub.model import DeadLetter, Decoded, FieldValue, RawMessage
from hub.profiles.profile_set import ProfileSet
from hub.simulate.fleet import (
    CABINET_EVERY_MS,
    HEALTH_EVERY_MS,
    HEARTBEAT_EVERY_MS,
    HOUR_MS,
    INTERVAL_EVERY_MS,
    LAMP_OFF_EVERY_MS,
    LAMP_ON_EVERY_MS,
    MINUTE_MS,
    ZONES,
    Fleet,
    FleetSpec,
    SimMessage,
    local_offset_ms,
)

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ProfileSet.load(ROOT / "device_profiles")
DAY_MS = 24 * HOUR_MS


def utc_ms(text: str) -> int:
    """Milliseconds of an ISO 8601 UTC time."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


#: Tuesday 24 November 2026, local midnight (CET, UTC+1) to local midnight.
DAY_START = utc_ms("2026-11-23T23:00:00")
DAY_END = DAY_START + DAY_MS

#: The brief's small fleet: 20 bays, 2 cabinets x 5 lamps, 3 sites of which 1 CSV, with
#: fault shares high enough that each fault occurs at least once in so few devices.
SMALL = FleetSpec(
    parking_bays=20,
    cabinets=2,
    lamps_per_cabinet=5,
    traffic_sites=3,
    seed=11,
    lamp_failure_rate=0.1,
    low_battery_rate=0.1,
    sensor_fault_rate=0.05,
    silent_rate=0.05,
    door_open_rate=0.5,
    low_supply_rate=0.34,
    bad_frame_rate=0.01,
    csv_share=0.34,
)


def decode(message: SimMessage, received_ms: int | None = None) -> Decoded | DeadLetter:
    """Decode as the hub would on receiving ``message`` at its send time."""
    received = message.due_ms if received_ms is None else received_ms
    return PROFILES.decode(RawMessage(message.topic, message.payload, received))


def decoded(message: SimMessage) -> Decoded:
    """Decode a message that must decode."""
    result = decode(message)
    assert isinstance(result, Decoded), (message, result)
    return result


def field(message: SimMessage, name: str, index: int = 0) -> FieldValue:
    """Field ``name`` of point ``index`` of a message that must decode."""
    return decoded(message).points[index].fields[name]


def by_topic(messages: Iterable[SimMessage]) -> dict[str, list[SimMessage]]:
    """Messages grouped by topic, each group in send order."""
    groups: dict[str, list[SimMessage]] = defaultdict(list)
    for message in messages:
        groups[message.topic].append(message)
    return groups


def gaps(messages: list[SimMessage]) -> list[int]:
    """Milliseconds between consecutive messages."""
    return [b.due_ms - a.due_ms for a, b in itertools.pairwise(messages)]


def last_before(messages: list[SimMessage], t_ms: int) -> SimMessage:
    """The last message sent at or before ``t_ms``."""
    found = [m for m in messages if m.due_ms <= t_ms]
    assert found, f"nothing sent before {t_ms}"
    return found[-1]


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return Fleet(SMALL)


@pytest.fixture(scope="module")
def day(fleet: Fleet) -> list[SimMessage]:
    return list(fleet.messages(DAY_START, DAY_END))


@pytest.fixture(scope="module")
def clean_day() -> list[SimMessage]:
    """The same day of the same fleet without bad frames."""
    return list(Fleet(replace(SMALL, bad_frame_rate=0.0)).messages(DAY_START, DAY_END))


# ----------------------------------------------------------------------------------- (a)


def test_a_day_decodes_except_exactly_the_injected_bad_frames(day: list[SimMessage]) -> None:
    bad = [m for m in day if m.bad_frame]
    assert len(bad) >= 10  # about 1% of ~3000 messages
    reasons: set[str] = set()
    for message in day:
        result = decode(message)
        if message.bad_frame:
            assert isinstance(result, DeadLetter), message
            reasons.add(result.reason)
            continue
        assert isinstance(result, Decoded), (message, result)
        assert result.points, message
        assert result.time_problem is None, message
        if not message.topic.endswith("/status"):
            # device timestamps equal the send time, so points are stored exactly there
            assert {p.time_ms for p in result.points} == {message.due_ms}, message
    assert reasons & {"invalid_json", "not_utf8"}
    assert len(reasons) >= 3


def test_the_day_covers_every_message_kind(day: list[SimMessage]) -> None:
    kinds = {m.topic.rsplit("/", 1)[-1] for m in day}
    assert kinds == {"up", "state", "status", "interval", "csv", "health"}
    ports = {
        json.loads(m.payload)["fPort"] for m in day if m.topic.endswith("/up") and not m.bad_frame
    }
    assert ports == {2, 3}
    cabinets = [m for m in day if m.topic.endswith("/cabinet/state") and not m.bad_frame]
    assert {p.measurement for p in decoded(cabinets[0]).points} == {
        "lighting_cabinet",
        "lighting_phase",
    }
    assert len(decoded(cabinets[0]).points) == 4


def test_messages_are_in_send_order_and_the_window(day: list[SimMessage]) -> None:
    due = [m.due_ms for m in day]
    assert due == sorted(due)
    assert due[0] >= DAY_START
    assert due[-1] < DAY_END


def test_bad_frames_only_replace_payloads(
    day: list[SimMessage], clean_day: list[SimMessage]
) -> None:
    assert [(m.topic, m.due_ms) for m in day] == [(m.topic, m.due_ms) for m in clean_day]
    for dirty, clean in zip(day, clean_day, strict=True):
        assert (dirty.payload == clean.payload) is not dirty.bad_frame
    assert not any(m.bad_frame for m in clean_day)


def test_gateway_presence_is_retained_online_once_per_cabinet(day: list[SimMessage]) -> None:
    status = [m for m in day if m.topic.endswith("/status")]
    assert [m.topic for m in status] == [
        "citelum/prato/PO-QE-101/status",
        "citelum/prato/PO-QE-102/status",
    ]
    for message in status:
        assert (message.payload, message.qos, message.retain) == (b"online", 1, True)
        assert message.due_ms == DAY_START
        assert field(message, "online") is True


# ----------------------------------------------------------------------------------- (b)


def test_lamp_cadence(clean_day: list[SimMessage]) -> None:
    lamps = {t: ms for t, ms in by_topic(clean_day).items() if "/lamp/" in t}
    assert len(lamps) == 9  # 10 lamps, one silent
    for messages in lamps.values():
        assert all(0 < gap <= LAMP_OFF_EVERY_MS for gap in gaps(messages))
        assert all(m.due_ms % 1000 == 0 for m in messages)  # "ts" is in whole seconds
        for a, b in itertools.pairwise(messages):
            if field(a, "on") and field(b, "on"):
                assert b.due_ms - a.due_ms <= LAMP_ON_EVERY_MS
        # at once on a change: the first message with a new state is at most seconds late
        states = [(field(m, "on"), field(m, "dim_pct")) for m in messages]
        assert len(set(states)) == 3  # full, dimmed and off over a day
        # on 10 min for ~14.5 h, off 60 min for ~9.5 h, plus the switches
        assert 90 <= len(messages) <= 105


def test_lamps_report_a_switch_at_once(clean_day: list[SimMessage]) -> None:
    switch_off = utc_ms("2026-11-24T06:24:00")  # sunrise in Prato is about 07:24 local
    for topic, messages in by_topic(clean_day).items():
        if "/lamp/" not in topic:
            continue
        first_off = next(m for m in messages if not field(m, "on"))
        previous = messages[messages.index(first_off) - 1]
        assert abs(first_off.due_ms - switch_off) < 5 * MINUTE_MS
        assert first_off.due_ms - previous.due_ms <= LAMP_ON_EVERY_MS


def test_cabinet_cadence_and_counters(clean_day: list[SimMessage]) -> None:
    cabinets = {t: ms for t, ms in by_topic(clean_day).items() if t.endswith("/cabinet/state")}
    assert len(cabinets) == 2
    for messages in cabinets.values():
        assert len(messages) == DAY_MS // CABINET_EVERY_MS
        assert set(gaps(messages)) == {CABINET_EVERY_MS}
        energy = [float(field(m, "energy_kwh")) for m in messages]
        assert energy == sorted(energy)
        assert energy[-1] > energy[0]
        ts = json.loads(messages[0].payload)["ts"]
        assert ts.endswith("+01:00")
        night = [
            p.fields["power_kw"]
            for p in decoded(last_before(messages, 21 * HOUR_MS + DAY_START)).points[1:]
        ]
        noon = [
            p.fields["power_kw"]
            for p in decoded(last_before(messages, 12 * HOUR_MS + DAY_START)).points[1:]
        ]
        assert sum(map(float, night)) > 5 * sum(map(float, noon))


def test_parking_heartbeats_every_12_hours_and_fcnt_counts(
    clean_day: list[SimMessage],
) -> None:
    bays = {t: ms for t, ms in by_topic(clean_day).items() if t.endswith("/event/up")}
    assert len(bays) == 19  # one of the 20 is silent
    for messages in bays.values():
        envelopes = [json.loads(m.payload) for m in messages]
        beats = [m for m, e in zip(messages, envelopes, strict=True) if e["fPort"] == 3]
        assert len(beats) == 2
        assert gaps(beats) == [HEARTBEAT_EVERY_MS]
        assert all("occupancy_changes" in decoded(m).points[0].fields for m in beats)
        counters = [e["fCnt"] for e in envelopes]
        assert counters == list(range(counters[0], counters[0] + len(counters)))
        assert all(1 <= len(e["rxInfo"]) <= 3 for e in envelopes)
        # status changes alternate occupied / free
        changes = [
            field(m, "occupied")
            for m, e in zip(messages, envelopes, strict=True)
            if e["fPort"] == 2
        ]
        assert all(a != b for a, b in itertools.pairwise(changes))


def test_parking_follows_the_daily_curve(clean_day: list[SimMessage]) -> None:
    changes_by_hour = [0] * 24
    for message in clean_day:
        if message.topic.endswith("/event/up") and json.loads(message.payload)["fPort"] == 2:
            changes_by_hour[(message.due_ms - DAY_START) // HOUR_MS] += 1
    assert sum(changes_by_hour[9:13]) + sum(changes_by_hour[16:20]) > 3 * sum(changes_by_hour[1:5])


def test_traffic_cadence(clean_day: list[SimMessage]) -> None:
    groups = by_topic(clean_day)
    intervals = {t: ms for t, ms in groups.items() if t.endswith(("/interval", "/csv"))}
    health = {t: ms for t, ms in groups.items() if t.endswith("/health")}
    assert len(intervals) == len(health) == 3
    assert sum(t.endswith("/csv") for t in intervals) == 1
    for messages in intervals.values():
        assert len(messages) == DAY_MS // INTERVAL_EVERY_MS
        assert set(gaps(messages)) == {INTERVAL_EVERY_MS}
        assert all(m.due_ms % INTERVAL_EVERY_MS == 0 for m in messages)
        assert 2 <= len(decoded(messages[0]).points) <= 4
    for messages in health.values():
        assert set(gaps(messages)) == {HEALTH_EVERY_MS}


def test_csv_counters_use_the_decimal_comma(clean_day: list[SimMessage]) -> None:
    csv_message = next(
        m for m in clean_day if m.topic.endswith("/csv") and m.due_ms > DAY_START + 8 * HOUR_MS
    )
    lines = csv_message.payload.decode().splitlines()
    cells = lines[0].split(";")
    assert len(cells) == 13
    assert "," in cells[10]
    assert "." not in ";".join(cells[1:])
    points = decoded(csv_message).points
    assert len(points) == len(lines)
    assert points[0].fields["speed_avg_kmh"] == float(cells[10].replace(",", "."))


# ----------------------------------------------------------------------------------- (c)


def test_lamps_are_on_at_22_and_off_at_noon(clean_day: list[SimMessage]) -> None:
    lamps = {t: ms for t, ms in by_topic(clean_day).items() if "/lamp/" in t}
    for messages in lamps.values():
        evening = last_before(messages, DAY_START + 22 * HOUR_MS)
        assert (field(evening, "on"), field(evening, "dim_pct")) == (True, 100.0)
        night = last_before(messages, DAY_START + 2 * HOUR_MS)
        assert (field(night, "on"), field(night, "dim_pct")) == (True, 50.0)
        noon = last_before(messages, DAY_START + 12 * HOUR_MS)
        assert field(noon, "on") is False
        assert float(field(noon, "power_w")) < 1.0


def test_summer_time_lamps_and_cabinet_offset() -> None:
    fleet = Fleet(replace(SMALL, bad_frame_rate=0.0))
    evening = list(fleet.messages(utc_ms("2026-07-15T19:30:00"), utc_ms("2026-07-15T20:30:00")))
    noon = list(fleet.messages(utc_ms("2026-07-15T09:30:00"), utc_ms("2026-07-15T10:30:00")))
    # 22:00 and 12:00 local are 20:00 and 10:00 UTC in summer
    for topic, messages in by_topic(evening).items():
        if "/lamp/" in topic:
            assert field(last_before(messages, utc_ms("2026-07-15T20:00:00")), "on") is True
    for topic, messages in by_topic(noon).items():
        if "/lamp/" in topic:
            assert field(last_before(messages, utc_ms("2026-07-15T10:00:00")), "on") is False
    cabinet = next(m for m in noon if m.topic.endswith("/cabinet/state"))
    assert json.loads(cabinet.payload)["ts"].endswith("+02:00")
    assert decoded(cabinet).points[0].time_ms == cabinet.due_ms


def test_local_time_follows_the_eu_summer_time_rule() -> None:
    assert local_offset_ms(utc_ms("2026-03-29T00:59:59")) == HOUR_MS
    assert local_offset_ms(utc_ms("2026-03-29T01:00:00")) == 2 * HOUR_MS
    assert local_offset_ms(utc_ms("2026-10-25T00:59:59")) == 2 * HOUR_MS
    assert local_offset_ms(utc_ms("2026-10-25T01:00:00")) == HOUR_MS


def lane_points(messages: Iterable[SimMessage], start_ms: int) -> list[dict[str, FieldValue]]:
    """Lane fields of every interval report starting at ``start_ms``."""
    return [
        p.fields
        for m in messages
        if m.due_ms == start_ms and m.topic.endswith(("/interval", "/csv")) and not m.bad_frame
        for p in decoded(m).points
    ]


def test_rush_hour_traffic_is_heavier_slower_and_congested() -> None:
    fleet = Fleet(FleetSpec(0, 0, 0, 20, seed=5, silent_rate=0.0, bad_frame_rate=0.0))
    messages = list(fleet.messages(DAY_START, DAY_END))
    rush = lane_points(messages, DAY_START + 8 * HOUR_MS)
    night = lane_points(messages, DAY_START + 3 * HOUR_MS)
    assert len(rush) == len(night) >= 40

    def total(points: list[dict[str, FieldValue]], name: str) -> float:
        return sum(float(p[name]) for p in points)

    assert total(rush, "vehicles") > 8 * total(night, "vehicles")
    moving = [p for p in night if p["vehicles"]]
    night_speed = total(moving, "speed_avg_kmh") / len(moving)
    assert total(rush, "speed_avg_kmh") / len(rush) < night_speed - 5
    assert max(float(p["occupancy_pct"]) for p in rush) > 35  # congestion rules can fire
    assert max(float(p["occupancy_pct"]) for p in rush) <= 48
    assert max(float(p["occupancy_pct"]) for p in night) < 10
    for p in rush:
        assert p["vehicles"] == sum(
            int(p[c]) for c in ("car", "van", "truck", "bus", "moto", "bike")
        )


def test_small_fleet_traffic_is_heavier_at_8_than_at_3(clean_day: list[SimMessage]) -> None:
    rush = lane_points(clean_day, DAY_START + 8 * HOUR_MS)
    night = lane_points(clean_day, DAY_START + 3 * HOUR_MS)
    assert sum(int(p["vehicles"]) for p in rush) > 4 * sum(int(p["vehicles"]) for p in night)


# ----------------------------------------------------------------------------------- faults


def test_injected_faults_show_in_the_data(fleet: Fleet, clean_day: list[SimMessage]) -> None:
    faults = fleet.faults()
    kinds = {kind for found in faults.values() for kind in found}
    assert kinds == {
        "silent",
        "low_battery",
        "sensor_fault",
        "lamp_failure",
        "door_open",
        "low_supply",
    }
    senders = {decoded(m).device_id for m in clean_day}
    per_device: dict[str, list[Decoded]] = defaultdict(list)
    for message in clean_day:
        result = decoded(message)
        per_device[result.device_id].append(result)
    for device, found in faults.items():
        if "silent" in found:
            assert device not in senders
            continue
        points = [p for d in per_device[device] for p in d.points]
        if "low_battery" in found:
            assert float(points[-1].fields["battery_v"]) < 3.3
        if "sensor_fault" in found:
            assert all(p.fields["sensor_fault"] is True for p in points)
        if "lamp_failure" in found:
            assert all(p.fields["faults"] == "LAMP_FAILURE" for p in points)
            assert all(float(p.fields["power_w"]) < 5 for p in points if p.fields["on"])
        if "door_open" in found:
            doors = [p.time_ms for p in points if p.fields.get("door_open") is True]
            assert len(doors) >= 3  # 15 min or more: the 10-minute rule fires
        if "low_supply" in found:
            supply = [p.fields["supply_v"] for p in points if "supply_v" in p.fields]
            assert supply
            assert max(map(float, supply)) < 11.5
    healthy_lamps = [d for d in per_device if d.startswith("PO-LP") and d not in faults]
    assert healthy_lamps
    for device in healthy_lamps:
        assert all(p.points[0].fields["faults"] == "" for p in per_device[device])
    for device, results in per_device.items():
        if device.startswith("PO-QE") and "door_open" not in faults.get(device, ()):
            assert all(
                r.points[0].fields["door_open"] is False for r in results if len(r.points) > 1
            )
        if device.startswith("PO-PB") and "low_battery" not in faults.get(device, ()):
            assert all(float(r.points[0].fields["battery_v"]) > 3.4 for r in results)


# ----------------------------------------------------------------------------------- (d)


def test_same_seed_same_messages_other_seed_other_messages() -> None:
    window = (DAY_START + 7 * HOUR_MS, DAY_START + 10 * HOUR_MS)
    first = list(Fleet(SMALL).messages(*window))
    again = list(Fleet(SMALL).messages(*window))
    other = list(Fleet(replace(SMALL, seed=12)).messages(*window))
    assert first == again
    assert len(first) > 100
    assert first != other
    assert [m.payload for m in first[:50]] != [m.payload for m in other[:50]]
    assert list(Fleet(SMALL).devices()) == list(Fleet(SMALL).devices())
    assert Fleet(SMALL).burst(500, DAY_START) == Fleet(SMALL).burst(500, DAY_START)
    assert Fleet(SMALL).burst(500, DAY_START) != Fleet(replace(SMALL, seed=3)).burst(500, DAY_START)


def test_a_later_end_only_adds_messages() -> None:
    fleet = Fleet(SMALL)
    short = list(fleet.messages(DAY_START, DAY_START + 6 * HOUR_MS))
    longer = list(fleet.messages(DAY_START, DAY_START + 9 * HOUR_MS))
    assert longer[: len(short)] == short
    assert len(longer) > len(short)


def test_empty_window_and_bad_spec() -> None:
    assert list(Fleet(SMALL).messages(DAY_START, DAY_START)) == []
    with pytest.raises(ValueError, match="bad_frame_rate"):
        FleetSpec(1, 1, 1, 1, bad_frame_rate=1.5)
    with pytest.raises(ValueError, match="parking_bays"):
        FleetSpec(-1, 1, 1, 1)


# ----------------------------------------------------------------------------------- (e)


def test_burst_decodes_fully_with_unique_device_timestamps() -> None:
    spec = FleetSpec(parking_bays=50, cabinets=4, lamps_per_cabinet=8, traffic_sites=14, seed=2)
    fleet = Fleet(spec)
    start = utc_ms("2026-11-24T07:00:00")
    burst = fleet.burst(20_000, start)
    assert len(burst) == 20_000
    assert not any(m.bad_frame or m.retain for m in burst)
    assert [m.due_ms for m in burst] == sorted(m.due_ms for m in burst)
    silent = {d for d, kinds in fleet.faults().items() if "silent" in kinds}
    seen: set[tuple[str, str, tuple[tuple[str, str], ...], int]] = set()
    devices: set[str] = set()
    profiles: set[str] = set()
    for message in burst:
        result = decode(message, received_ms=start)
        assert isinstance(result, Decoded), (message, result)
        assert result.points
        assert result.time_problem is None
        devices.add(result.device_id)
        profiles.add(result.profile)
        for point in result.points:
            assert point.time_ms == message.due_ms
            key = (
                result.device_id,
                point.measurement,
                tuple(sorted(point.tags.items())),
                point.time_ms,
            )
            assert key not in seen, key
            seen.add(key)
    expected = {row.device_id for row in fleet.devices()} - silent
    assert devices == expected
    assert profiles == {"parking_bay", "citelum_lighting", "traffic_counter"}


# ----------------------------------------------------------------------------------- (f)


def test_inventory_lists_every_sending_device(
    fleet: Fleet, day: list[SimMessage], tmp_path: Path
) -> None:
    path = fleet.write_inventory(tmp_path)
    assert path == tmp_path / "devices.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "device_id,profile,zone,lat,lon,owner,installed_at"
    rows = {row["device_id"]: row for row in csv.DictReader(lines)}
    assert len(rows) == 20 + 2 + 10 + 3
    sent: dict[str, str] = {}
    for message in day:
        result = decode(message)
        if isinstance(result, Decoded):
            sent[result.device_id] = result.profile
    assert set(sent) <= set(rows)
    for device, profile in sent.items():
        assert rows[device]["profile"] == profile
    silent = {d for d, kinds in fleet.faults().items() if "silent" in kinds}
    assert silent
    assert silent <= set(rows)
    assert not silent & set(sent)
    owners = {
        "parking_bay": {"comune"},
        "citelum_lighting": {"citelum"},
        "traffic_counter": {"comune", "cap"},
    }
    for row in rows.values():
        assert row["zone"] in ZONES
        assert abs(float(row["lat"]) - 43.88) < 0.06
        assert abs(float(row["lon"]) - 11.10) < 0.08
        assert row["owner"] in owners[row["profile"]]
        assert datetime.fromisoformat(row["installed_at"]).year >= 2006
    assert {"PO-QE-101", "PO-LP-101-01", "PO-LP-102-05", "PO-PB-00001", "PO-TC-003"} <= set(rows)


def test_parking_zone_tag_matches_the_inventory(fleet: Fleet, clean_day: list[SimMessage]) -> None:
    zones = {row.device_id: row.zone for row in fleet.devices()}
    for message in clean_day:
        if message.topic.endswith("/event/up"):
            point = decoded(message).points[0]
            assert point.tags["zone"] == zones[point.tags["device_id"]]
            assert point.tags["device_id"] == f"PO-PB-{int(point.tags['bay']):05d}"
