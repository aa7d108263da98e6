"""Nothing lost: InfluxDB outages (spool), a full spool, kill -9, broker restarts, bursts.

Each scenario runs real Mosquitto, InfluxDB and hub processes (or a hub in-process against
them) and counts: published, stored, duplicated (0), lost (0).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from hub import devservices
from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKeys
from hub.ingest.mqtt import MqttLink
from hub.inventory import Inventory
from hub.model import Decoded, RawMessage
from hub.pipeline import Hub
from hub.profiles.profile_set import ProfileSet
from hub.settings import MqttEndpoint, Settings
from hub.simulate.fleet import Fleet, FleetSpec, SimMessage
from hub.simulate.publish import publish_all
from hub.storage.influx import InfluxClient
from tests.conftest import ROOT, HubHarness, MqttProbe, hub_process_env, wait_until
from tests.integration.test_delivery import CuttableProxy

pytestmark = pytest.mark.integration

ALWAYS = {  # a field every point of the measurement carries, to count points
    "parking_bay": "f_cnt",
    "lighting_lamp": "power_w",
    "lighting_cabinet": "energy_kwh",
    "lighting_phase": "voltage_v",
    "traffic_lane": "vehicles",
    "traffic_health": "supply_v",
    "device_status": "online",
}


def stored_counts(influx: InfluxClient) -> Counter[str]:
    """Points per measurement in the last 2 days (the scenarios write recent data)."""
    counts: Counter[str] = Counter()
    for measurement, field in ALWAYS.items():
        rows = influx.query(
            f'SELECT count("{field}") FROM "{measurement}" '
            "WHERE time > now() - 2d AND time < now() + 1h"
        )
        if rows:
            counts[measurement] = int(rows[0]["values"][0][1])
    return counts


def expected_counts(messages: list[SimMessage]) -> Counter[str]:
    """Points per measurement the messages decode to (computed apart from the hub)."""
    profiles = ProfileSet.load(ROOT / "device_profiles")
    counts: Counter[str] = Counter()
    for message in messages:
        decoded = profiles.decode(RawMessage(message.topic, message.payload, message.due_ms))
        assert isinstance(decoded, Decoded)
        counts.update(point.measurement for point in decoded.points)
    return counts


def burst(count: int) -> list[SimMessage]:
    fleet = Fleet(
        FleetSpec(
            parking_bays=300,
            cabinets=20,
            lamps_per_cabinet=10,
            traffic_sites=60,
            silent_rate=0,
            bad_frame_rate=0,
            seed=7,
        )
    )
    start = time.time_ns() // 1_000_000 - 10 * 60_000
    return [replace(m, qos=1, retain=False) for m in fleet.burst(count, start)]


def _health(site: str, volts: float) -> tuple[str, bytes]:
    return f"traffic/{site}/health", orjson.dumps(
        {"supply_v": volts, "temp_c": 20.0, "door": "closed", "lane_faults": []}
    )


@pytest.fixture
def influx_proxy(services: devservices.Services) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(int(services.influx_url.rsplit(":", 1)[1]))
    try:
        yield proxy
    finally:
        proxy.close()


def _readyz(harness: HubHarness) -> dict[str, object]:
    hub = harness.hub
    ctx = ApiContext(
        settings=hub.settings,
        profiles=hub.profiles,
        inventory=hub.inventory,
        store=hub.store,
        metrics=hub.metrics,
        keys=ApiKeys([]),
        clock_ms=harness.clock,
        hub=hub,
    )
    with TestClient(create_app(ctx)) as client:
        answer = client.get("/readyz")
        body: dict[str, object] = answer.json()
        body["status"] = answer.status_code
        return body


def test_influxdb_outage_is_spooled_survives_a_restart_and_is_replayed(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
    influx_proxy: CuttableProxy,
    tmp_path: Path,
) -> None:
    options = {
        "influx_url": f"http://127.0.0.1:{influx_proxy.port}",
        "retry_max_s": 0.2,
        "mqtt_client_id": f"hub-spool-{uuid.uuid4().hex[:6]}",
        "data_dir": tmp_path / "state",
    }
    influx_proxy.down = True
    first = start_hub(**options)
    probe = mqtt_probe()
    sites = [f"PO-TC-O{n:03d}" for n in range(300)]
    for site in sites:
        probe.publish(*_health(site, 12.0))
    wait_until(
        lambda: first.hub.metrics.value("points_spooled_total") == len(sites),
        what="every point spooled",
    )
    ready = _readyz(first)
    assert ready["status"] == 503  # InfluxDB is down ...
    assert ready["checks"] == {"influxdb": False, "mqtt": True, "spool_not_full": True}
    assert ready["spool"]["bytes"] > 0  # type: ignore[index]  # JSON object
    assert "hub_spool_bytes" in first.hub.metrics.render_prometheus()
    first.hub.stop()  # everything was acknowledged: it is on disk

    second = start_hub(**options)
    assert second.hub.spool is not None
    assert second.hub.spool.records > 0
    influx_proxy.down = False
    wait_until(
        lambda: stored_counts(influx)["traffic_health"] == len(sites),
        timeout_s=30,
        what="the spool replayed",
    )
    wait_until(
        lambda: second.hub.spool is not None and second.hub.spool.records == 0,
        what="an empty spool",
    )
    rows = influx.query(
        'SELECT count("supply_v") FROM traffic_health WHERE time > now() - 1h GROUP BY "device_id"'
    )
    assert sorted(r["tags"]["device_id"] for r in rows) == sites
    assert {r["values"][0][1] for r in rows} == {1}  # stored once each
    # published 300, stored 300, duplicated 0, lost 0


def test_a_full_spool_stops_acknowledging_and_loses_nothing(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
    influx_proxy: CuttableProxy,
) -> None:
    influx_proxy.down = True
    harness = start_hub(
        influx_url=f"http://127.0.0.1:{influx_proxy.port}",
        retry_max_s=0.2,
        spool_max_bytes=2_000,
        batch_size=20,
    )
    probe = mqtt_probe()
    sites = [f"PO-TC-F{n:03d}" for n in range(200)]
    for site in sites:
        probe.publish(*_health(site, 11.9))
    spool = harness.hub.spool
    assert spool is not None
    wait_until(
        lambda: harness.hub.metrics.total("write_retries_total") > 2,
        what="the writer retrying with a full spool",
    )
    ready = _readyz(harness)
    assert ready["checks"]["spool_not_full"] is False  # type: ignore[index]  # JSON object
    assert harness.hub.metrics.value("points_spooled_total") < len(sites)
    influx_proxy.down = False
    wait_until(
        lambda: stored_counts(influx)["traffic_health"] == len(sites),
        timeout_s=30,
        what="every message stored once InfluxDB is back",
    )
    wait_until(lambda: spool.records == 0, what="the spool drained")


def _hub_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    try:
        return subprocess.Popen([sys.executable, "-m", "hub.cli", "run"], env=env, stderr=out)
    finally:
        out.close()


@pytest.mark.slow
def test_kill_9_in_the_middle_of_a_burst_loses_and_duplicates_nothing(
    services: devservices.Services,
    influx_db: str,
    influx: InfluxClient,
    tmp_path: Path,
) -> None:
    messages = burst(20_000)
    expected = expected_counts(messages)
    env = hub_process_env(
        services,
        influx_db,
        tmp_path,
        HUB_FLUSH_INTERVAL_S="1.0",
        HUB_API_ENABLED="false",
        HUB_STATS_INTERVAL_S="0",
        HUB_BATCH_SIZE="500",
    )
    log = tmp_path / "hub.log"
    hub = _hub_process(env, log)
    wait_until(lambda: "hub running" in log.read_text(), what="hub start")
    publisher = MqttLink(
        MqttEndpoint(services.mqtt_url),
        f"pub-{uuid.uuid4().hex[:6]}",
        persistent=False,
        manual_ack=False,
    )
    publisher.start([], 1, None)
    publisher.wait_connected(10)
    try:
        publish_all(publisher, messages[:10_000])
        wait_until(lambda: sum(stored_counts(influx).values()) > 2_000, what="some stored")
        hub.send_signal(signal.SIGKILL)  # mid-burst: batches in flight, messages unacked
        hub.wait(10)
        publish_all(publisher, messages[10_000:])  # the broker queues them for the session
    finally:
        publisher.stop()
    restarted = _hub_process(env, log)
    try:
        wait_until(
            lambda: stored_counts(influx) == expected,
            timeout_s=120,
            what="every message stored after the restart",
        )
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(60) == 0
    assert sum(expected.values()) >= 20_000  # published 20,000 messages, lost 0
    assert stored_counts(influx) == expected  # duplicated 0: one point per series and time


@pytest.mark.slow
def test_a_200k_burst_is_stored_whole(
    start_hub: Callable[..., HubHarness],
    services: devservices.Services,
    influx: InfluxClient,
) -> None:
    messages = burst(200_000)
    expected = expected_counts(messages)
    start_hub(alert_startup_grace_s=3600, stats_interval_s=0)
    publisher = MqttLink(
        MqttEndpoint(services.mqtt_url),
        f"pub-{uuid.uuid4().hex[:6]}",
        persistent=False,
        manual_ack=False,
    )
    publisher.start([], 1, None)
    publisher.wait_connected(10)
    try:
        assert publish_all(publisher, messages) == 200_000
    finally:
        publisher.stop()
    wait_until(
        lambda: stored_counts(influx) == expected, timeout_s=300, what="all 200,000 messages stored"
    )


def test_broker_restart_loses_nothing(tmp_path: Path) -> None:
    state = tmp_path / "services"
    own = devservices.start(state)
    try:
        _broker_restart_scenario(own, state, tmp_path)
    finally:
        devservices.stop(state)


def _broker_restart_scenario(own: devservices.Services, state: Path, tmp_path: Path) -> None:
    record = json.loads((state / "services.json").read_text())
    devservices.create_database(own.influx_url, "restart")
    influx = InfluxClient(own.influx_url, "restart")
    settings = Settings(
        mqtt_url=own.mqtt_url,
        mqtt_client_id="hub-broker-restart",
        influx_url=own.influx_url,
        influx_db="restart",
        profiles_dir=ROOT / "device_profiles",
        data_dir=tmp_path / "data",
        flush_interval_s=0.05,
        stats_interval_s=0,
        alert_startup_grace_s=3600,
    )

    def start() -> Hub:
        hub = Hub(settings, ProfileSet.load(settings.profiles_dir), Inventory([]))
        hub.start()
        return hub

    def publish(prefix: str, count: int) -> None:
        link = MqttLink(
            MqttEndpoint(own.mqtt_url), f"pub-{prefix}", persistent=False, manual_ack=False
        )
        link.start([], 1, None)
        link.wait_connected(10)
        mids = [link.publish(*_health(f"PO-TC-{prefix}{n:03d}", 12.0)) for n in range(count)]
        assert link.wait_published(mids, 10)
        link.stop()

    brokers: list[subprocess.Popen[bytes]] = []

    def restart_broker() -> None:
        os.kill(record["mosquitto_pid"], signal.SIGTERM)  # it saves its persistence file
        for mine in brokers:
            mine.wait(10)
        wait_until(lambda: not devservices.tcp_accepts(own.mqtt_port), what="broker down")
        broker = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", record["mosquitto_config"]],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        record["mosquitto_pid"] = broker.pid
        brokers.append(broker)
        wait_until(lambda: devservices.tcp_accepts(own.mqtt_port), what="broker up")

    def stored() -> set[str]:
        rows = influx.query(
            'SELECT count("supply_v") FROM traffic_health '
            'WHERE time > now() - 1h GROUP BY "device_id"'
        )
        return {r["tags"]["device_id"] for r in rows}

    def sites(prefix: str) -> set[str]:
        return {f"PO-TC-{prefix}{n:03d}" for n in range(100)}

    hub = start()
    try:
        publish("A", 100)
        wait_until(lambda: stored() == sites("A"), what="batch A")
        hub.stop()
        publish("B", 100)  # queued in the hub's session while the hub is away ...
        restart_broker()  # ... and kept across a broker restart (persistence)
        hub = start()
        wait_until(lambda: stored() == sites("A") | sites("B"), what="batch B")
        restart_broker()  # with the hub connected: it reconnects and re-subscribes
        wait_until(
            lambda: hub.link.connected and hub.link.connects >= 2,
            timeout_s=40,
            what="the hub reconnected",
        )
        publish("C", 100)
        wait_until(lambda: stored() == sites("A") | sites("B") | sites("C"), what="batch C")
    finally:
        hub.stop(timeout_s=10)
        influx.close()
        os.kill(record["mosquitto_pid"], signal.SIGTERM)
        for mine in brokers:
            mine.wait(10)
