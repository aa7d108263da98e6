"""Delivery guarantees of the spine, with the real broker and InfluxDB.

- a message is acknowledged only after its points are written: a hub that could not write
  leaves its messages with the broker, and the next hub with the same client id stores them;
- after the connection drops, the hub reconnects, re-subscribes and keeps storing;
- a point InfluxDB rejects costs only its own message (dead-lettered), not its batch;
- any string survives the trip through line protocol and InfluxDB unchanged;
- a fourth device family works from a profile file alone.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub import devservices
from hub.ingest.mqtt import MqttLink
from hub.inventory import Inventory
from hub.model import Point
from hub.pipeline import Hub
from hub.profiles.profile_set import ProfileSet
from hub.settings import MqttEndpoint, Settings
from hub.storage import lineprotocol
from hub.storage.influx import InfluxClient
from tests.conftest import ROOT, HubHarness, MqttProbe, wait_until

pytestmark = pytest.mark.integration


def _health(volts: float) -> bytes:
    return orjson.dumps({"supply_v": volts, "temp_c": 20, "door": "closed"})


def _count(influx: InfluxClient, measurement: str, field: str) -> int:
    rows = influx.query(f'SELECT count("{field}") FROM "{measurement}" WHERE time > now() - 1h')
    return int(rows[0]["values"][0][1]) if rows else 0


def test_unwritten_messages_stay_with_the_broker_until_a_hub_stores_them(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
) -> None:
    client_id = f"hub-redelivery-{uuid.uuid4().hex[:8]}"
    # a port nobody listens on: every write fails with a connection error
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead_port = sock.getsockname()[1]
    first = start_hub(
        mqtt_client_id=client_id,
        influx_url=f"http://127.0.0.1:{dead_port}",
        retry_max_s=0.2,
        spool_max_bytes=0,  # no spool: the broker is the only place the messages can wait
    )
    probe = mqtt_probe()
    sites = [f"PO-TC-R{n:03d}" for n in range(50)]
    for site in sites:
        probe.publish(f"traffic/{site}/health", _health(12.5))
    wait_until(lambda: first.hub.received >= len(sites), what="the first hub to receive all")
    wait_until(lambda: first.hub.metrics.total("write_retries_total") >= 2, what="retries")
    first.hub.stop(timeout_s=1)  # gives up: InfluxDB is still unreachable, nothing acked
    assert first.hub.metrics.value("points_written_total") == 0

    second = start_hub(mqtt_client_id=client_id)
    wait_until(
        lambda: _count(influx, "traffic_health", "supply_v") == len(sites),
        what="the redelivered messages to be stored by the second hub",
    )
    assert second.hub.received >= len(sites)


def test_stored_messages_are_acknowledged_and_never_redelivered(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
) -> None:
    # the writer acknowledges a whole batch with one buffer of PUBACKs: the broker must
    # take every one of them, or it resends those messages to the next hub of the session
    client_id = f"hub-acked-{uuid.uuid4().hex[:8]}"
    first = start_hub(mqtt_client_id=client_id)
    probe = mqtt_probe()
    sites = [f"PO-TC-A{n:04d}" for n in range(3_000)]
    for site in sites:
        probe.publish(f"traffic/{site}/health", _health(12.5))
    wait_until(
        lambda: _count(influx, "traffic_health", "supply_v") == len(sites),
        what="the first hub to store every message",
    )
    first.hub.stop()

    second = start_hub(mqtt_client_id=client_id)
    # a resumed session gets its unacknowledged messages before any new one: once this one
    # is stored, anything the broker still held for the session would have come first
    probe.publish("traffic/PO-TC-MARKER/health", _health(12.5))
    wait_until(
        lambda: _count(influx, "traffic_health", "supply_v") == len(sites) + 1,
        what="the marker message to be stored",
    )
    assert second.hub.received == 1


class CuttableProxy:
    """A TCP proxy to the broker whose connections the test can cut."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self.accepted = 0
        self.down = False  # while set, connections are closed at once (a dead service)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.down:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self._target))
            with self._lock:
                self._sockets += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # both directions end here: shut down and close, so no socket outlives the pipe
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        """Drop every open connection (the hub sees the broker vanish)."""
        with self._lock:
            for s in self._sockets:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def close(self) -> None:
        """Stop accepting and drop everything."""
        self._server.close()
        self.cut()


@pytest.fixture
def proxy(services: devservices.Services) -> Iterator[CuttableProxy]:
    made = CuttableProxy(services.mqtt_port)
    try:
        yield made
    finally:
        made.close()


def test_hub_reconnects_and_resubscribes_after_the_connection_drops(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
    proxy: CuttableProxy,
) -> None:
    harness = start_hub(mqtt_url=f"mqtt://127.0.0.1:{proxy.port}")
    probe = mqtt_probe()
    probe.publish("traffic/PO-TC-C001/health", _health(12.1))
    wait_until(lambda: _count(influx, "traffic_health", "supply_v") == 1, what="first point")

    proxy.cut()
    wait_until(lambda: not harness.hub.link.connected, what="the hub to notice the drop")
    # published while the hub is away: the broker queues it in the persistent session
    probe.publish("traffic/PO-TC-C002/health", _health(12.2))
    wait_until(lambda: harness.hub.link.connects >= 2, timeout_s=30, what="reconnect")
    probe.publish("traffic/PO-TC-C003/health", _health(12.3))
    wait_until(
        lambda: _count(influx, "traffic_health", "supply_v") == 3,
        what="messages from during and after the outage",
    )
    assert proxy.accepted >= 2


def test_a_point_influxdb_rejects_costs_only_its_own_message(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
) -> None:
    # door is a string field; make it an integer in this shard so that writes conflict
    influx.write("traffic_health,device_id=seed door=1i")
    harness = start_hub(batch_size=10_000, flush_interval_s=0.5)
    letters = mqtt_probe("hub/deadletter/#")
    probe = mqtt_probe()
    probe.publish("traffic/PO-TC-X001/health", _health(12.0))  # conflicts: door is a string
    for n in range(20):
        probe.publish(f"citelum/prato/PO-QE-{n:03d}/status", b"online")
    found = wait_until(lambda: letters.messages("hub/deadletter/traffic_counter"))
    body = orjson.loads(found[0].payload)
    assert body["reason"] == "rejected_by_store"
    assert "field type conflict" in body["detail"]
    assert body["topic"] == "traffic/PO-TC-X001/health"
    wait_until(lambda: _count(influx, "device_status", "online") == 20, what="the good messages")
    assert harness.hub.metrics.value("points_rejected_total", profile="traffic_counter") == 1


NASTY = [
    "plain",
    "with space",
    "comma,inside",
    "equals=inside",
    'double "quotes"',
    "single 'quotes'",
    "back\\slash",
    "two\\\\backslashes",
    "ünïcödé ☃ 北京",
    'mixed ,= "\\ all',
]
# A tag ending with a backslash cannot be written to InfluxDB at all: the decoder refuses it
# (see tests/test_decoder_edges.py); as a string field it round-trips like any other.


@pytest.mark.parametrize("text", NASTY)
def test_strings_round_trip_exactly_through_influxdb(influx: InfluxClient, text: str) -> None:
    point = Point("rt", {"device_id": text}, {"s": text + "\nsecond line"}, 1_795_539_600_000)
    influx.write(lineprotocol.encode(point))
    rows = influx.query(
        "SELECT s, device_id FROM rt WHERE time >= '2026-11-24T17:00:00Z' "
        "AND time <= '2026-11-24T17:00:01Z'"
    )
    assert rows, f"nothing stored for {text!r}"
    assert rows[0]["values"][0][1:] == [text + "\nsecond line", text]


def test_string_fields_ending_with_backslash_round_trip(influx: InfluxClient) -> None:
    point = Point("rt", {"device_id": "x"}, {"s": "ends with \\"}, 1_795_539_600_000)
    influx.write(lineprotocol.encode(point))
    rows = influx.query(
        "SELECT s FROM rt WHERE time >= '2026-11-24T17:00:00Z' AND time <= '2026-11-24T17:00:01Z'"
    )
    assert rows[0]["values"][0][1] == "ends with \\"


def test_a_fourth_family_needs_only_a_profile_file(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
    tmp_path: Path,
) -> None:
    profiles = tmp_path / "profiles"
    shutil.copytree(ROOT / "device_profiles", profiles)
    shutil.copytree(ROOT / "tests" / "data" / "profiles" / "water_level", profiles / "water_level")
    harness = start_hub(profiles_dir=profiles)
    assert "gida/+/level" in harness.hub.profiles.subscriptions
    probe = mqtt_probe()
    harness.clock.now_ms = 1_795_514_401_000
    probe.publish(
        "gida/PO-WL-003/level",
        b'{"sampled_at": 1795514400000, "basin": "bisenzio", "raw": "d204017d00",'
        b' "probes": {"p1": {"ec": 410.5}}}',
    )
    rows = wait_until(
        lambda: influx.query(
            "SELECT level_m, pump_running, water_temp_c, basin, zone FROM water_level "
            "WHERE time >= '2026-11-24T00:00:00Z' AND time < '2026-11-25T00:00:00Z'"
        ),
        what="the water level point",
    )
    assert rows[0]["values"][0][1:] == [1.234, True, 12.5, "bisenzio", "unknown"]
    probes = influx.query(
        "SELECT conductivity_us, probe FROM water_probe "
        "WHERE time >= '2026-11-24T00:00:00Z' AND time < '2026-11-25T00:00:00Z'"
    )
    assert probes[0]["values"][0][1:] == [410.5, "p1"]


def test_the_hub_writes_its_own_stats(
    start_hub: Callable[..., HubHarness],
    mqtt_probe: Callable[..., MqttProbe],
    influx: InfluxClient,
) -> None:
    harness = start_hub(stats_interval_s=0.05)
    probe = mqtt_probe()
    probe.publish("traffic/PO-TC-S01/health", _health(12.0))
    probe.publish("traffic/PO-TC-S01/csv", b"broken")
    rows = wait_until(
        lambda: [
            r
            for s in influx.query(
                "SELECT received, decoded, dead_lettered, points_written, mqtt_connected "
                "FROM hub_stats WHERE time > now() - 1h GROUP BY client_id"
            )
            for r in s["values"]
            if r[1:] == [2, 1, 1, 1, True]
        ],
        what="a hub_stats point counting both messages",
    )
    assert rows
    assert harness.hub.settings.mqtt_client_id.startswith("hub-test-")


tag_strings = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n\x00"), min_size=1, max_size=40
).filter(lambda s: not s.endswith("\\") and s.strip() == s and s != "")
field_strings = st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=80
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(tag=tag_strings, text=field_strings)
def test_any_string_round_trips_through_influxdb(influx: InfluxClient, tag: str, text: str) -> None:
    time_ms = 1_795_539_600_000 + abs(hash((tag, text))) % 1_000_000
    influx.write(lineprotocol.encode(Point("fuzz", {"device_id": tag}, {"s": text}, time_ms)))
    rows = influx.query(f"SELECT s, device_id FROM fuzz WHERE time = {time_ms}ms")
    found = {(r[2], r[1]) for s in rows for r in s["values"]}
    assert (tag, text) in found


def test_a_hub_resuming_its_session_behind_a_qos0_backlog_starts_and_loses_nothing(
    start_hub: Callable[..., HubHarness],
    services: devservices.Services,
    influx_db: str,
    influx: InfluxClient,
    tmp_path: Path,
) -> None:
    # The broker sends a resumed session's backlog before the SUBACK of the hub's renewed
    # subscriptions; a hub that waited for that SUBACK gave up after its connect timeout
    # (exit 3) with QoS 0 messages already taken from the broker, and so lost them.
    client_id = f"hub-backlog-{uuid.uuid4().hex[:8]}"
    first = start_hub(mqtt_client_id=client_id, mqtt_qos=0, mqtt_session_expiry_s=600)
    first.hub.stop()

    sites, rounds = 3_000, 10
    publisher = MqttLink(MqttEndpoint(services.mqtt_url), f"pub-{client_id}", persistent=False)
    publisher.start([], 0, None)
    publisher.wait_connected(10)
    try:
        for n in range(rounds):
            for k in range(sites):
                publisher.publish(f"traffic/PO-TC-B{k:04d}/health", _health(12.0 + n), qos=0)
        fence = publisher.publish("traffic/PO-TC-FENCE/health", _health(12.5), qos=1)
        assert publisher.wait_published([fence], 60), "the backlog did not reach the broker"
    finally:
        publisher.stop()

    settings = Settings(
        mqtt_url=services.mqtt_url,
        mqtt_client_id=client_id,
        mqtt_qos=0,
        mqtt_session_expiry_s=600,
        influx_url=services.influx_url,
        influx_db=influx_db,
        profiles_dir=ROOT / "device_profiles",
        data_dir=tmp_path / "second",
        flush_interval_s=0.05,
    )
    second = Hub(settings, ProfileSet.load(settings.profiles_dir), Inventory([]))
    try:
        second.start(connect_timeout_s=0.5)  # far less than reading the backlog takes
        wait_until(
            lambda: _count(influx, "traffic_health", "supply_v") == sites * rounds + 1,
            what="every message of the backlog to be stored",
        )
    finally:
        second.stop(timeout_s=10)
