"""Every example of the contract, published to the real broker, lands in the real InfluxDB.

The golden vectors of the built-in profiles are the contract's acceptance cases. Here each one
is published to Mosquitto and read back from InfluxDB (with InfluxDB's own field types), with
the inventory's zone added as the contract says; every bad-input case arrives on
``hub/deadletter/{profile}`` with its reason and the original topic and payload, and the hub
keeps storing good data afterwards.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from hub.inventory import UNKNOWN_ZONE
from hub.model import Point
from hub.profiles.golden import GoldenCase, _expected_points, case_files, compare_points, load_case
from hub.profiles.profile_set import ProfileSet
from tests.conftest import (
    ROOT,
    HubHarness,
    MqttProbe,
    stored_points,
    wait_until,
    write_inventory,
)

pytestmark = pytest.mark.integration

PROFILES = ProfileSet.load(ROOT / "device_profiles")
CASES = [(name, load_case(path), path.stem) for name, path in case_files(PROFILES)]
GOOD = [(n, c, s) for n, c, s in CASES if c.points is not None]
BAD = [(n, c, s) for n, c, s in CASES if c.error is not None]

INVENTORY = [
    ("PO-LP-118-07", "citelum_lighting", "macrolotto"),
    ("PO-QE-118", "citelum_lighting", "macrolotto"),
    ("PO-TC-017", "traffic_counter", "san-paolo"),
    ("PO-PB-00412", "parking_bay", "ignored-payload-zone-wins"),
]
ZONES = {device: zone for device, _, zone in INVENTORY}


def _with_zone(points: list[Point]) -> list[Point]:
    for point in points:
        point.tags.setdefault("zone", ZONES.get(point.tags["device_id"], UNKNOWN_ZONE))
    return points


@pytest.fixture
def harness(start_hub: Callable[..., HubHarness], tmp_path: Path) -> HubHarness:
    return start_hub(inventory=write_inventory(tmp_path / "devices.csv", INVENTORY))


def _publish(probe: MqttProbe, harness: HubHarness, case: GoldenCase) -> None:
    harness.clock.now_ms = int(case.received_at.timestamp() * 1000)
    raw = case.raw()
    probe.publish(raw.topic, raw.payload)


def test_every_contract_example_lands_as_the_listed_points(
    harness: HubHarness, mqtt_probe: Callable[..., MqttProbe]
) -> None:
    probe = mqtt_probe()
    for _name, case, stem in GOOD:
        expected = _with_zone(_expected_points(case.points or ""))
        # several cases share a series and a timestamp; InfluxDB merges their fields, so
        # each case starts from an empty slot
        for measurement, time_ms in {(x.measurement, x.time_ms) for x in expected}:
            harness.influx.command(f'DELETE FROM "{measurement}" WHERE time = {time_ms}ms')
        _publish(probe, harness, case)

        def landed(expected: list[Point] = expected) -> bool:
            got = [
                p
                for e in {(x.measurement, x.time_ms) for x in expected}
                for p in stored_points(harness.influx, e[0], e[1])
                if p.tags["device_id"] in {x.tags["device_id"] for x in expected}
            ]
            return compare_points(got, expected) is None

        wait_until(landed, what=f"points of case {stem}")
    assert harness.hub.metrics.total("messages_dead_lettered_total") == 0
    assert harness.hub.metrics.value("points_written_total") >= len(GOOD)


def test_every_bad_input_is_dead_lettered_and_the_hub_keeps_going(
    harness: HubHarness, mqtt_probe: Callable[..., MqttProbe]
) -> None:
    letters = mqtt_probe("hub/deadletter/#")
    probe = mqtt_probe()
    cases = [(n, c, s) for n, c, s in BAD]
    for name, case, stem in cases:
        _publish(probe, harness, case)
        raw = case.raw()

        def arrived(
            raw_payload: bytes = raw.payload, topic: str = raw.topic
        ) -> list[dict[str, str]]:
            return [
                body
                for m in letters.messages("hub/deadletter/")
                for body in [orjson.loads(m.payload)]
                if body["topic"] == topic and base64.b64decode(body["payload_b64"]) == raw_payload
            ]

        found = wait_until(arrived, what=f"dead letter of case {stem}")
        assert found[-1]["reason"] == case.error, stem
        assert found[-1]["profile"] == name
    by_topic = {m.topic for m in letters.messages()}
    assert by_topic <= {f"hub/deadletter/{n}" for n, _, _ in CASES}
    assert harness.hub.metrics.total("messages_dead_lettered_total") == len(cases)
    assert harness.hub.metrics.value(
        "messages_dead_lettered_total", profile="parking_bay", reason="truncated_frame"
    ) == sum(1 for n, c, _ in cases if n == "parking_bay" and c.error == "truncated_frame")

    # still running: a good message after all of that is stored
    harness.clock.now_ms = None
    device = f"PO-TC-{uuid.uuid4().hex[:6]}"
    probe.publish(f"traffic/{device}/health", b'{"supply_v": 12.0, "temp_c": 20, "door": "closed"}')
    wait_until(
        lambda: harness.influx.query(
            "SELECT supply_v FROM traffic_health "
            f"WHERE device_id = '{device}' AND time > now() - 1h"
        ),
        what="a good message after the bad ones",
    )


def test_oversized_payload_is_dead_lettered(
    harness: HubHarness, mqtt_probe: Callable[..., MqttProbe]
) -> None:
    letters = mqtt_probe("hub/deadletter/#")
    probe = mqtt_probe()
    payload = b'{"ts": 1, "pad": "' + b"x" * (64 * 1024) + b'"}'
    probe.publish("traffic/PO-TC-017/health", payload)
    found = wait_until(lambda: letters.messages("hub/deadletter/traffic_counter"))
    body = orjson.loads(found[0].payload)
    assert body["reason"] == "too_large"
    assert base64.b64decode(body["payload_b64"]) == payload


def test_redelivered_message_is_stored_once(
    harness: HubHarness, mqtt_probe: Callable[..., MqttProbe]
) -> None:
    probe = mqtt_probe()
    case = next(c for _, c, s in GOOD if s == "status_change")
    for _ in range(3):
        _publish(probe, harness, case)
    wait_until(lambda: harness.hub.metrics.value("points_written_total") >= 3)
    rows = harness.influx.query(
        "SELECT count(f_cnt) FROM parking_bay WHERE device_id = 'PO-PB-00412' "
        "AND time > '2026-11-17T00:00:00Z' AND time < '2026-12-01T00:00:00Z'"
    )
    assert rows[0]["values"][0][1] == 1


def test_unregistered_devices_are_stored_and_listed(
    harness: HubHarness, mqtt_probe: Callable[..., MqttProbe]
) -> None:
    probe = mqtt_probe()
    harness.clock.now_ms = None
    probe.publish("traffic/PO-TC-999/health", b'{"supply_v": 12.1, "temp_c": 20, "door": "closed"}')
    probe.publish("traffic/PO-TC-017/health", b'{"supply_v": 12.2, "temp_c": 20, "door": "closed"}')
    wait_until(lambda: harness.hub.metrics.value("points_written_total") >= 2)
    rows = harness.influx.query(
        'SELECT supply_v, zone FROM traffic_health WHERE time > now() - 1h GROUP BY "device_id"'
    )
    zones = {s["tags"]["device_id"]: s["values"][0][2] for s in rows}
    assert zones == {"PO-TC-999": "unknown", "PO-TC-017": "san-paolo"}
    assert harness.hub.devices.unregistered() == ["PO-TC-999"]
    seen = harness.hub.devices.get("PO-TC-999")
    assert seen is not None
    assert seen.time_problems == {"missing": 1}
    assert (
        harness.hub.metrics.value("time_problems_total", profile="traffic_counter", kind="missing")
        == 2
    )
