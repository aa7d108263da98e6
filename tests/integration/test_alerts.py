"""Every default alert rule of the contract fires and clears, driven through the real broker.

Messages go through Mosquitto into a running hub whose clock the test sets; notifications are
read back from ``hub/alerts/{severity}/{device_id}`` by a real MQTT subscriber, and alert
events from InfluxDB's ``alert_event``. No test sleeps for minutes: time is injected.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from hub.alerts.model import AlertEvent
from tests.conftest import HubHarness, MqttProbe, wait_until

pytestmark = pytest.mark.integration

MIN = 60_000
T0 = 1_795_539_600_000  # 2026-11-24T17:00:00Z


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def bay(flags: int = 0, millivolts: int = 3700) -> Callable[[int], tuple[str, bytes]]:
    def make(now: int) -> tuple[str, bytes]:
        frame = base64.b64encode(struct.pack(">BHb", flags, millivolts, 12)).decode()
        body = {
            "time": _iso(now),
            "deviceInfo": {"deviceName": "PO-PB-77"},
            "fCnt": now // 1000,
            "fPort": 2,
            "data": frame,
            "rxInfo": [{"rssi": -90, "snr": 5.0}],
        }
        return "application/1/device/70b3d57ed0051a77/event/up", orjson.dumps(body)

    return make


def lamp(
    on: bool = True, power: float = 50.0, faults: tuple[str, ...] = ()
) -> Callable[[int], tuple[str, bytes]]:
    def make(now: int) -> tuple[str, bytes]:
        body = {
            "ts": now // 1000,
            "on": on,
            "dim": 100,
            "p": power,
            "v": 230.0,
            "i": 0.2,
            "pf": 0.9,
            "e": 1000,
            "hrs": 10,
            "faults": list(faults),
        }
        return "citelum/prato/PO-QE-7/lamp/PO-LP-7-01/state", orjson.dumps(body)

    return make


def cabinet(door_open: bool = False, l3: float = 230.0) -> Callable[[int], tuple[str, bytes]]:
    def make(now: int) -> tuple[str, bytes]:
        phases = {
            p: {"v": v, "i": 10.0, "kw": 2.0} for p, v in (("L1", 231.0), ("L2", 229.0), ("L3", l3))
        }
        body = {
            "ts": _iso(now),
            "mode": "auto",
            "door_open": door_open,
            "phases": phases,
            "kwh_total": 100.0,
        }
        return "citelum/prato/PO-QE-7/cabinet/state", orjson.dumps(body)

    return make


def gateway(state: str) -> Callable[[int], tuple[str, bytes]]:
    return lambda now: ("citelum/prato/PO-QE-7/status", state.encode())


def interval(occupancy: float = 10.0) -> Callable[[int], tuple[str, bytes]]:
    def make(now: int) -> tuple[str, bytes]:
        lane = {
            "lane": 2,
            "dir": "S",
            "counts": {"car": 10},
            "speed_avg_kmh": 30.0,
            "speed_p85_kmh": 40.0,
            "occupancy_pct": occupancy,
        }
        body = {"start": _iso(now - 5 * MIN), "period_s": 300, "lanes": [lane]}
        return "traffic/PO-TC-5/interval", orjson.dumps(body)

    return make


def health(supply: float) -> Callable[[int], tuple[str, bytes]]:
    def make(now: int) -> tuple[str, bytes]:
        body = {"ts": now, "supply_v": supply, "temp_c": 20.0, "door": "closed", "lane_faults": []}
        return "traffic/PO-TC-5/health", orjson.dumps(body)

    return make


Step = tuple[Any, ...]
# (rule, device, severity, steps); steps: ("pub", maker) | ("wait", minutes)
#                                        | ("expect", kind) | ("quiet",)
SCENARIOS: list[tuple[str, str, str, list[Step]]] = [
    (
        "sensor_fault_or_tamper",
        "PO-PB-77",
        "warning",
        [
            ("pub", bay()),
            ("quiet",),
            ("pub", bay(flags=0b010)),
            ("expect", "fired"),
            ("pub", bay(flags=0b100)),
            ("quiet",),
            ("pub", bay()),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "low_battery",
        "PO-PB-77",
        "warning",
        [
            ("pub", bay(millivolts=3200)),
            ("wait", 59),
            ("quiet",),
            ("wait", 2),
            ("expect", "fired"),
            ("pub", bay(millivolts=3380)),
            ("wait", 11),
            ("quiet",),
            ("pub", bay(millivolts=3450)),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "silent",
        "PO-PB-77",
        "warning",
        [
            ("pub", bay()),
            ("wait", 25 * 60),
            ("quiet",),
            ("wait", 61),
            ("expect", "fired"),
            ("pub", bay()),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "lamp_failure",
        "PO-LP-7-01",
        "critical",
        [
            ("pub", lamp(faults=("OVERHEAT",))),
            ("quiet",),
            ("pub", lamp(faults=("DRIVER_FAILURE", "OVERHEAT"))),
            ("expect", "fired"),
            ("pub", lamp(faults=("OVERHEAT",))),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "lamp_no_power",
        "PO-LP-7-01",
        "major",
        [
            ("pub", lamp(power=2.0)),
            ("wait", 19),
            ("quiet",),
            ("wait", 2),
            ("expect", "fired"),
            ("pub", lamp(on=False, power=0.3)),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "lamp_silent",
        "PO-LP-7-01",
        "warning",
        [
            ("pub", lamp()),
            ("wait", 119),
            ("quiet",),
            ("wait", 2),
            ("expect", "fired"),
            ("pub", lamp()),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "cabinet_door_open",
        "PO-QE-7",
        "major",
        [
            ("pub", cabinet(door_open=True)),
            ("wait", 9),
            ("quiet",),
            ("wait", 2),
            ("expect", "fired"),
            ("pub", cabinet()),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "phase_voltage",
        "PO-QE-7",
        "major",
        [
            ("pub", cabinet(l3=198.4)),
            ("wait", 4),
            ("quiet",),
            ("wait", 2),
            ("expect", "fired"),
            ("pub", cabinet(l3=208.0)),
            ("wait", 11),
            ("quiet",),
            ("pub", cabinet(l3=230.0)),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "gateway_offline",
        "PO-QE-7",
        "critical",
        [
            ("pub", gateway("offline")),
            ("expect", "fired"),
            ("pub", gateway("online")),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "no_interval",
        "PO-TC-5",
        "warning",
        [
            ("pub", interval()),
            ("wait", 14),
            ("quiet",),
            ("wait", 2),
            ("expect", "fired"),
            ("pub", interval()),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "congestion",
        "PO-TC-5",
        "info",
        [
            ("pub", interval(occupancy=40.0)),
            ("wait", 5),
            ("pub", interval(occupancy=38.0)),
            ("wait", 5),
            ("pub", interval(occupancy=41.0)),
            ("wait", 6),
            ("expect", "fired"),
            ("pub", interval(occupancy=30.0)),
            ("wait", 11),
            ("quiet",),
            ("pub", interval(occupancy=20.0)),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
    (
        "low_supply",
        "PO-TC-5",
        "warning",
        [
            ("pub", health(11.2)),
            ("expect", "fired"),
            ("pub", health(11.8)),
            ("wait", 11),
            ("quiet",),
            ("pub", health(12.3)),
            ("wait", 11),
            ("expect", "resolved"),
        ],
    ),
]


class Driver:
    """Runs a scenario against a hub and collects its MQTT notifications."""

    def __init__(self, harness: HubHarness, probe: MqttProbe, alerts: MqttProbe) -> None:
        self.harness, self.probe, self.alerts = harness, probe, alerts
        self.seen = 0
        harness.clock.now_ms = T0

    @property
    def engine_ticks(self) -> int:
        return self.harness.hub.alerts.ticks

    def publish(self, maker: Callable[[int], tuple[str, bytes]]) -> None:
        engine = self.harness.hub.alerts
        before = engine.processed
        assert self.harness.clock.now_ms is not None
        topic, payload = maker(self.harness.clock.now_ms)
        self.probe.publish(topic, payload)
        wait_until(lambda: engine.processed > before, what=f"evaluation of {topic}")
        self.settle()

    def settle(self) -> None:
        ticks = self.engine_ticks
        wait_until(lambda: self.engine_ticks >= ticks + 2, what="two engine ticks")

    def advance(self, minutes: int) -> None:
        assert self.harness.clock.now_ms is not None
        self.harness.clock.now_ms += minutes * MIN
        self.settle()

    def events(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.payload) for m in self.alerts.messages("hub/alerts/")]


def _at_least(driver: Driver, count: int) -> Callable[[], list[dict[str, Any]]]:
    def events() -> list[dict[str, Any]]:
        found = driver.events()
        return found if len(found) >= count else []

    return events


@pytest.mark.parametrize(
    ("rule", "device", "severity", "steps"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
def test_default_rule_fires_and_clears(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    rule: str,
    device: str,
    severity: str,
    steps: list[Step],
) -> None:
    harness = start_hub(alert_tick_s=0.02, alert_startup_grace_s=0, now_ms=T0)
    driver = Driver(harness, mqtt_probe(), mqtt_probe("hub/alerts/#"))
    expected: list[str] = []
    for step in steps:
        if step[0] == "pub":
            driver.publish(step[1])
        elif step[0] == "wait":
            driver.advance(step[1])
        elif step[0] == "expect":
            expected.append(step[1])
            found = wait_until(
                _at_least(driver, len(expected)),
                what=f"{step[1]} notification of {rule}",
            )
            event = found[len(expected) - 1]
            assert (event["event"], event["rule"], event["device_id"], event["severity"]) == (
                step[1],
                rule,
                device,
                severity,
            )
        else:  # quiet: nothing new was notified
            driver.settle()
            assert len(driver.events()) == len(expected), driver.events()
    topics = {m.topic for m in driver.alerts.messages()}
    assert topics == {f"hub/alerts/{severity}/{device}"}
    # exactly one fired and one resolved: no flood, no repeats
    assert [e["event"] for e in driver.events()] == ["fired", "resolved"]
    # and both are annotations in InfluxDB
    rows = wait_until(
        lambda: harness.influx.query(
            "SELECT message, state FROM alert_event WHERE time >= '2026-11-20T00:00:00Z' "
            "AND time < '2026-12-01T00:00:00Z'"
        ),
        what="alert_event points",
    )
    assert sorted(v[2] for v in rows[0]["values"]) == ["fired", "resolved"]


def test_phase_alert_names_the_phase(
    start_hub: Callable[..., HubHarness], mqtt_probe: Callable[..., MqttProbe]
) -> None:
    harness = start_hub(alert_tick_s=0.02, alert_startup_grace_s=0, now_ms=T0)
    driver = Driver(harness, mqtt_probe(), mqtt_probe("hub/alerts/#"))
    driver.publish(cabinet(l3=260.0))
    driver.advance(6)
    found = wait_until(driver.events, what="the phase alert")
    assert found[0]["series"] == {"phase": "L3"}
    assert "phase L3 voltage 260.0 V" in found[0]["message"]


def test_restart_mid_window_and_with_open_alerts_loses_and_repeats_nothing(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> None:
    alerts = mqtt_probe("hub/alerts/#")
    options = {
        "alert_tick_s": 0.02,
        "alert_startup_grace_s": 0,
        "now_ms": T0,
        "mqtt_client_id": "hub-restart-test",
        "data_dir": tmp_path / "state",
    }
    first = start_hub(**options)
    driver = Driver(first, mqtt_probe(), alerts)
    driver.publish(gateway("offline"))  # opens an alert at once
    driver.publish(bay(millivolts=3100))  # starts a 1 h window
    driver.advance(30)
    wait_until(lambda: len(driver.events()) == 1, what="the gateway alert")
    first.hub.stop()

    second = start_hub(**{**options, "now_ms": T0 + 30 * MIN})
    driver2 = Driver(second, driver.probe, alerts)
    second.clock.now_ms = T0 + 30 * MIN
    driver2.settle()
    assert len(driver2.events()) == 1  # nothing notified again on restart
    assert [a.rule for a in second.hub.alerts.open_alerts()] == ["gateway_offline"]
    driver2.advance(31)  # the window began before the restart
    wait_until(lambda: len(driver2.events()) == 2, what="low battery after the restart")
    events = [AlertEvent.from_json(e) for e in driver2.events()]
    assert [(e.kind, e.alert.rule) for e in events] == [
        ("fired", "gateway_offline"),
        ("fired", "low_battery"),
    ]
    assert events[1].alert.started_ms == T0
    driver2.publish(gateway("online"))
    driver2.advance(11)
    wait_until(lambda: len(driver2.events()) == 3, what="the gateway alert to resolve")
    assert driver2.events()[-1]["event"] == "resolved"
    assert driver2.events()[-1]["id"] == driver2.events()[0]["id"]
