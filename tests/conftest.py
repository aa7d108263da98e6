"""Shared fixtures: the real local Mosquitto + InfluxDB, a database per test, hubs in-process.

Services are started once per test session by ``hub.devservices`` (the project's own
script, with the project's ``mosquitto/`` config) on free loopback ports, and stopped at the
end. Each test gets its own InfluxDB database and MQTT client ids.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hub import devservices
from hub.ingest.mqtt import MqttLink
from hub.inventory import Inventory
from hub.model import FieldValue, Point, RawMessage
from hub.pipeline import Hub
from hub.profiles.profile_set import ProfileSet
from hub.settings import MqttEndpoint, Settings
from hub.sharing import Policy
from hub.storage.influx import InfluxClient

ROOT = Path(__file__).resolve().parent.parent


def wait_until(
    condition: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns a truthy value; fail the test after the deadline."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(delay)  # polling interval of a deadline-bounded wait, not a fixed wait
        delay = min(delay * 2, 0.2)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[devservices.Services]:
    """Real Mosquitto and InfluxDB for the whole test session."""
    state = tmp_path_factory.mktemp("services")
    running = devservices.start(state)
    try:
        yield running
    finally:
        devservices.stop(state)


@pytest.fixture
def influx_db(services: devservices.Services) -> Iterator[str]:
    """A fresh database for one test (created by the local-only helper)."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    devservices.create_database(services.influx_url, name)
    try:
        yield name
    finally:
        devservices.drop_database(services.influx_url, name)


@pytest.fixture
def influx(services: devservices.Services, influx_db: str) -> Iterator[InfluxClient]:
    """A client on the test's database."""
    client = InfluxClient(services.influx_url, influx_db)
    try:
        yield client
    finally:
        client.close()


class FrozenClock:
    """The hub's receive clock, settable by the test (milliseconds since the epoch)."""

    def __init__(self, now_ms: int | None = None) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms if self.now_ms is not None else time.time_ns() // 1_000_000


_ids = itertools.count()


@dataclass
class MqttProbe:
    """A test MQTT client: publishes and collects what it subscribed to."""

    link: MqttLink
    received: list[RawMessage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish and wait for the broker's confirmation."""
        mid = self.link.publish(topic, payload, qos=qos, retain=retain)
        if qos and not self.link.wait_published([mid], 10):
            pytest.fail(f"broker did not confirm publish to {topic}")

    def messages(self, prefix: str = "") -> list[RawMessage]:
        """What was received so far on topics starting with ``prefix``."""
        with self.lock:
            return [m for m in self.received if m.topic.startswith(prefix)]


@pytest.fixture
def mqtt_probe(services: devservices.Services) -> Iterator[Callable[..., MqttProbe]]:
    """Factory of connected test clients, subscribed to the given topic filters."""
    made: list[MqttProbe] = []

    def make(*subscriptions: str) -> MqttProbe:
        link = MqttLink(
            MqttEndpoint(services.mqtt_url),
            f"probe-{os.getpid()}-{next(_ids)}",
            persistent=False,
            manual_ack=False,
        )
        probe = MqttProbe(link)

        def sink(message: RawMessage) -> None:
            with probe.lock:
                probe.received.append(message)

        link.start(list(subscriptions), 1, sink)
        link.wait_connected(10)  # connected and SUBACKed
        made.append(probe)
        return probe

    try:
        yield make
    finally:
        for probe in made:
            probe.link.stop()


def hub_process_env(
    services: devservices.Services, db: str, tmp_path: Path, **extra: str
) -> dict[str, str]:
    """The environment of a `hub run` process on the test services (no HUB_* leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(
        HUB_MQTT_URL=services.mqtt_url,
        HUB_MQTT_CLIENT_ID=f"hub-proc-{uuid.uuid4().hex[:8]}",
        HUB_INFLUX_URL=services.influx_url,
        HUB_INFLUX_DB=db,
        HUB_PROFILES_DIR=str(ROOT / "device_profiles"),
        HUB_DATA_DIR=str(tmp_path / "data"),
        HUB_FLUSH_INTERVAL_S="0.1",
    )
    env.update(extra)
    return env


def write_inventory(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """A devices.csv with (device_id, profile, zone) rows."""
    lines = ["device_id,profile,zone,lat,lon,owner,installed_at"]
    lines += [f"{d},{p},{z},43.88,11.1,comune,2025-01-01" for d, p, z in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class HubHarness:
    """A hub running in-process against the real services, with its clock and database."""

    hub: Hub
    clock: FrozenClock
    influx: InfluxClient


@pytest.fixture
def start_hub(
    services: devservices.Services, influx_db: str, influx: InfluxClient, tmp_path: Path
) -> Iterator[Callable[..., HubHarness]]:
    """Factory: start a hub on the test database with the given profiles and inventory."""
    started: list[Hub] = []

    def start(
        profiles_dir: Path = ROOT / "device_profiles",
        inventory: Path | None = None,
        now_ms: int | None = None,
        policy: Policy | None = None,
        **overrides: Any,
    ) -> HubHarness:
        options: dict[str, Any] = {
            "mqtt_url": services.mqtt_url,
            "mqtt_client_id": f"hub-test-{uuid.uuid4().hex[:8]}",
            "mqtt_session_expiry_s": 60,
            "influx_url": services.influx_url,
            "influx_db": influx_db,
            "profiles_dir": profiles_dir,
            "inventory": inventory or tmp_path / "none.csv",
            "data_dir": tmp_path / "data",
            "flush_interval_s": 0.05,
        }
        settings = Settings(**(options | overrides))
        clock = FrozenClock(now_ms)
        hub = Hub(
            settings,
            ProfileSet.load(settings.profiles_dir),
            Inventory.load(settings.inventory),
            clock_ms=clock,
            policy=policy,
        )
        hub.start()
        started.append(hub)
        return HubHarness(hub, clock, influx)

    try:
        yield start
    finally:
        for hub in started:
            hub.stop(timeout_s=10)


def stored_points(client: InfluxClient, measurement: str, time_ms: int) -> list[Point]:
    """Every point of ``measurement`` stored at ``time_ms``, with InfluxDB's field types."""
    # SELECT first: the keys shown afterwards then cover every column it returned
    found = client.query(f'SELECT * FROM "{measurement}" WHERE time = {time_ms}ms')
    types: dict[str, str] = {}
    for series in client.query(f'SHOW FIELD KEYS FROM "{measurement}"'):
        types.update(dict(series["values"]))
    tag_keys: set[str] = set()
    for series in client.query(f'SHOW TAG KEYS FROM "{measurement}"'):
        tag_keys.update(row[0] for row in series["values"])
    points: list[Point] = []
    for series in found:
        columns = series["columns"]
        for row in series["values"]:
            record = dict(zip(columns, row, strict=True))
            tags = {k: str(v) for k, v in record.items() if k in tag_keys and v is not None}
            fields: dict[str, FieldValue] = {}
            for name, value in record.items():
                if name in tag_keys or name == "time" or value is None:
                    continue
                kind = types.get(name)
                fields[name] = (
                    int(value)
                    if kind == "integer"
                    else float(value)
                    if kind == "float"
                    else bool(value)
                    if kind == "boolean"
                    else str(value)
                )
            points.append(Point(measurement, tags, fields, int(record["time"])))
    return points
