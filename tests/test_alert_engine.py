"""The alert engine's state machine with injected time (no broker, no sleeping)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.alerts.engine import AlertEngine
from hub.alerts.model import AlertEvent
from hub.alerts.rules import AlertRule, compile_rule, parse_duration_ms
from hub.errors import ProfileError
from hub.inventory import Device, Inventory
from hub.metrics import Metrics
from hub.model import Decoded, FieldValue, Point
from hub.profiles.profile_set import ProfileSet

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_795_539_600_000
MIN = 60_000


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def _engine(
    tmp_path: Path,
    clock: Clock,
    events: list[AlertEvent],
    inventory: Inventory | None = None,
    profiles_dir: Path = ROOT / "device_profiles",
) -> AlertEngine:
    profiles = ProfileSet.load(profiles_dir)
    rules = [
        compile_rule(i.profile.profile, r) for i in profiles.profiles for r in i.profile.alerts
    ]
    engine = AlertEngine(
        rules,
        inventory or Inventory([]),
        events.append,
        Metrics(),
        clock,
        state_path=tmp_path / "alerts.json",
    )
    engine.load()
    return engine


def _msg(
    profile: str, device: str, measurement: str, fields: dict[str, FieldValue], **tags: str
) -> Decoded:
    return Decoded(
        profile,
        device,
        [Point(measurement, {"device_id": device, "zone": "z", **tags}, fields, T0)],
    )


def _kinds(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.kind, e.alert.rule, e.alert.device_id) for e in events]


def test_duration_parsing() -> None:
    assert parse_duration_ms("1h30m") == 90 * MIN
    assert parse_duration_ms("26h") == 26 * 60 * MIN
    assert parse_duration_ms(90) == 90_000
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("soon")


def test_low_battery_needs_an_hour_and_clears_with_hysteresis(tmp_path: Path) -> None:
    clock, events = Clock(), []  # type: ignore[var-annotated]
    engine = _engine(tmp_path, clock, events)
    bay = "PO-PB-1"

    def battery(volts: float) -> None:
        engine.process(_msg("parking_bay", bay, "parking_bay", {"battery_v": volts}), clock.now)
        engine.tick()

    battery(3.2)
    clock.now += 59 * MIN
    engine.tick()
    assert events == []
    battery(3.35)  # back above 3.3 before the hour: the window starts again
    clock.now += 30 * MIN
    battery(3.25)
    clock.now += 61 * MIN
    engine.tick()
    assert _kinds(events) == [("fired", "low_battery", bay)]
    assert events[0].alert.message == "battery low: 3.25 V for over an hour"
    battery(3.38)  # between 3.3 and 3.4: still open
    clock.now += 30 * MIN
    engine.tick()
    assert len(events) == 1
    battery(3.45)
    clock.now += 11 * MIN
    engine.tick()
    assert _kinds(events) == [("fired", "low_battery", bay), ("resolved", "low_battery", bay)]


def test_one_alert_while_open_and_flapping_is_not_renotified(tmp_path: Path) -> None:
    clock, events = Clock(), []  # type: ignore[var-annotated]
    engine = _engine(tmp_path, clock, events)
    lamp = "PO-LP-1-01"
    for minute in range(0, 60, 2):
        clock.now = T0 + minute * MIN
        faults = "LAMP_FAILURE" if minute % 4 == 0 else ""
        engine.process(
            _msg("citelum_lighting", lamp, "lighting_lamp", {"faults": faults}), clock.now
        )
        engine.tick()
    assert _kinds(events) == [("fired", "lamp_failure", lamp)]
    assert engine.open_alerts()[0].flaps >= 10
    clock.now += 11 * MIN
    engine.tick()
    assert [e.kind for e in events] == ["fired", "resolved"]


def test_per_series_rule_names_the_phase(tmp_path: Path) -> None:
    clock, events = Clock(), []  # type: ignore[var-annotated]
    engine = _engine(tmp_path, clock, events)
    cab = "PO-QE-7"
    for phase, volts in (("L1", 231.0), ("L2", 229.0), ("L3", 198.4)):
        engine.process(
            _msg("citelum_lighting", cab, "lighting_phase", {"voltage_v": volts}, phase=phase),
            clock.now,
        )
    clock.now += 6 * MIN
    engine.tick()
    assert [(e.alert.series, e.alert.message) for e in events] == [
        ({"phase": "L3"}, "phase L3 voltage 198.4 V out of range for over 5 min")
    ]


def test_silence_fires_on_the_timer_and_inventory_devices_count(tmp_path: Path) -> None:
    clock, events = Clock(), []  # type: ignore[var-annotated]
    inventory = Inventory(
        [
            Device(device_id="PO-TC-NEVER", profile="traffic_counter", zone="iolo"),
            Device(device_id="PO-QE-9", profile="citelum_lighting", zone="iolo"),
            Device(device_id="PO-LP-9-01", profile="citelum_lighting", zone="iolo"),
        ]
    )
    engine = _engine(tmp_path, clock, events, inventory)
    engine._seed_inventory(clock.now)  # what start() does
    engine.process(
        _msg("traffic_counter", "PO-TC-1", "traffic_lane", {"vehicles": 3}, lane="1"), clock.now
    )
    clock.now += 14 * MIN
    engine.tick()
    assert events == []
    clock.now += 2 * MIN
    engine.tick()
    assert sorted(_kinds(events)) == [
        ("fired", "no_interval", "PO-TC-1"),
        ("fired", "no_interval", "PO-TC-NEVER"),
    ]
    assert {e.alert.zone for e in events} == {"z", "iolo"}
    clock.now += 2 * 60 * MIN
    engine.tick()
    # the lamp of the inventory is silent after 2 h; its cabinet does not match the rule
    assert ("fired", "lamp_silent", "PO-LP-9-01") in _kinds(events)
    assert not [e for e in events if e.alert.device_id == "PO-QE-9"]
    engine.process(
        _msg("traffic_counter", "PO-TC-1", "traffic_lane", {"vehicles": 3}, lane="1"), clock.now
    )
    clock.now += 11 * MIN
    engine.tick()
    assert ("resolved", "no_interval", "PO-TC-1") in _kinds(events)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    clock, events = Clock(), []  # type: ignore[var-annotated]
    engine = _engine(tmp_path, clock, events)
    engine.process(
        _msg("citelum_lighting", "PO-QE-1", "device_status", {"online": False}), clock.now
    )
    engine.process(_msg("parking_bay", "PO-PB-9", "parking_bay", {"battery_v": 3.1}), clock.now)
    engine.save()
    assert _kinds(events) == [("fired", "gateway_offline", "PO-QE-1")]

    later: list[AlertEvent] = []
    clock.now += 30 * MIN
    restarted = _engine(tmp_path, clock, later)
    restarted.tick()
    assert later == []  # the open alert is not notified again; the battery window goes on
    assert [a.rule for a in restarted.open_alerts()] == ["gateway_offline"]
    clock.now += 31 * MIN
    restarted.tick()
    assert _kinds(later) == [("fired", "low_battery", "PO-PB-9")]
    assert later[0].alert.started_ms == T0
    alert = restarted.acknowledge(restarted.open_alerts()[0].id, "mario.rossi")
    assert (alert.acknowledged_by, alert.acknowledged_ms) == ("mario.rossi", clock.now)
    assert later[-1].kind == "acknowledged"


def test_unknown_fields_neither_fire_nor_clear(tmp_path: Path) -> None:
    clock, events = Clock(), []  # type: ignore[var-annotated]
    engine = _engine(tmp_path, clock, events)
    engine.process(_msg("traffic_counter", "S", "traffic_health", {"supply_v": 11.0}), clock.now)
    engine.process(_msg("traffic_counter", "S", "traffic_health", {"temp_c": 20.0}), clock.now)
    clock.now += 11 * MIN
    engine.tick()
    assert _kinds(events) == [("fired", "low_supply", "S")]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {
                "name": "x",
                "severity": "urgent",
                "measurement": "m",
                "when": {"field": "a", "is": True},
            },
            "Input should be 'info', 'warning', 'major' or 'critical'",
        ),
        (
            {"name": "x", "severity": "info", "measurement": "m", "when": {"field": "a"}},
            "exactly one test",
        ),
        (
            {"name": "x", "severity": "info", "silence": {"measurement": "m", "after": "soon"}},
            "not a duration",
        ),
        (
            {
                "name": "x",
                "severity": "info",
                "measurement": "m",
                "when": {"field": "a", "between": [5, 1]},
            },
            "a range is",
        ),
    ],
)
def test_bad_rules_are_refused(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AlertRule.model_validate(rule)


def test_rule_on_unknown_field_stops_the_profile(tmp_path: Path) -> None:
    text = (ROOT / "device_profiles" / "traffic_counter" / "profile.yaml").read_text()
    (tmp_path / "t.yaml").write_text(
        text.replace("{field: supply_v, below: 11.5}", "{field: supply_volts, below: 11.5}")
    )
    with pytest.raises(ProfileError, match=r"\['supply_volts'\] are not fields or tags"):
        ProfileSet.load(tmp_path)
