"""The hub's pipeline, wired. The stages and the bounded queues between them::

      MQTT broker (QoS 1, persistent session, manual ack)
          |  network thread: only builds RawMessages and enqueues them
          v
    [inbox]   queue of RawMessage lists (one per read of the socket), held under queue_size
              messages (> Receive Maximum; beyond it the network thread waits, pushing back
              on the socket)
          |  decode thread: route by topic -> profile decode -> inventory zone -> line protocol;
          |  bad input becomes a DeadLetter; batches close when full, old, or idle
          v
    [outbox]  bounded queue of Batch (a few batches: backpressure when InfluxDB is slow)
          |  writer thread: points -> InfluxDB /write (gzip, retry, split on reject);
          |  dead letters -> hub/deadletter/{profile} (QoS 1, confirmed)
          v
      ack every message of the batch to the broker

    decode thread --offer--> [alert queue] --> alert engine thread (rules, timers, state;
                                               alerts explained by interventions under way)
          --events--> dispatcher: one thread per channel (MQTT, webhooks, e-mail teams,
                      InfluxDB alert_event), each retrying on its own
                  `-> live feed (hub.live): alerts, online changes, zone counts, interventions

    situation/{org}/events (interventions, JSON): decode thread -> SQLite store
          (hub.interventions) -> live feed, and an annotation point that its own thread
          writes to InfluxDB; acked with the batch like any message

Start is back to front (dispatcher, alert engine, writer, decoder, then the MQTT
subscription); stop is front to back: stop taking messages, drain the inbox through the
decoder, flush the last batch, let the writer commit and ack everything, let the alert
engine evaluate what it was given and the dispatcher deliver, then disconnect. Nothing
decoded is lost on a clean stop.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub.alerts.annotations import AlertEventStore
from hub.alerts.engine import AlertEngine
from hub.alerts.model import Alert, AlertEvent, alert_for
from hub.alerts.rules import compile_rule
from hub.errors import StoreError, StoreRejected
from hub.ingest.mqtt import MqttLink, wall_clock_ms
from hub.interventions import (
    Intervention,
    InterventionError,
    InterventionStore,
    annotation_line,
    explaining,
)
from hub.interventions.model import payload_id, read_payload
from hub.inventory import DeviceRegistry, Inventory
from hub.live import ZONE_MEASURES, LiveFeed, ZoneMeasure, ZoneWatch
from hub.metrics import Metrics
from hub.model import DeadLetter, Decoded, FieldValue, Point, RawMessage
from hub.notify.channels import build_channels
from hub.notify.config import load_notify_config
from hub.notify.dispatch import Dispatcher
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.sharing import Access, Policy
from hub.storage import lineprotocol
from hub.storage.influx import InfluxClient
from hub.storage.spool import Spool
from hub.storage.writer import Batch, BatchWriter, Entry, SpoolReplayer

log = logging.getLogger(__name__)

_STOP = object()
STATS_MEASUREMENT = "hub_stats"
RAW_RING = 3
RAW_PAYLOAD_CAP = 2_048
ALERT_CHUNK = 500
ALERT_CHUNK_S = 0.02
INBOX_FULL_WAIT_S = 0.001
# the organisations' interventions and events (hub.interventions), one topic per organisation
SITUATION_TOPIC = "situation/+/events"
INTERVENTIONS = "interventions"  # their profile name in dead letters and metrics
ANNOTATIONS_PENDING_MAX = 10_000
CURRENT = ("planned", "active")  # interventions that may be under way now
INTERVENTION_PAGE = 1_000
ANNOTATION_FLUSH_S = 0.5  # intervention annotation points: how often pending ones are written
LIVE_FLUSH_S = 0.2  # zone counts: how often changed ones are published (each at most 1/s)


@dataclass(frozen=True, slots=True)
class Tuning:
    """Batching and queue sizes (from ``Settings``)."""

    batch_size: int
    flush_interval_s: float
    flush_idle_s: float
    queue_size: int
    outbox_batches: int = 4


def make_store(settings: Settings) -> InfluxClient:
    """The InfluxDB client described by ``settings``."""
    return InfluxClient(
        settings.influx_url,
        settings.influx_db,
        retention_policy=settings.influx_rp,
        token=settings.influx_token.get_secret_value() if settings.influx_token else None,
        username=settings.influx_user,
        password=(
            settings.influx_password.get_secret_value() if settings.influx_password else None
        ),
        use_gzip=settings.influx_gzip,
        timeout_s=settings.influx_timeout_s,
    )


class Hub:
    """The running pipeline: one MQTT link, a decode thread and a writer thread."""

    def __init__(
        self,
        settings: Settings,
        profiles: ProfileSet,
        inventory: Inventory,
        metrics: Metrics | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        *,
        policy: Policy | None = None,
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.profiles = profiles
        self.inventory = inventory
        self.metrics = metrics or Metrics()
        # the Situation Room's live feed: alerts, online changes, interventions, zone counts
        self.live = LiveFeed()
        self._measurements_of: dict[str, list[str]] = {}
        for name, schema in profiles.schema().items():
            self._measurements_of.setdefault(schema.profile, []).append(name)
        self.devices = DeviceRegistry(on_change=self._device_changed)
        self.zones = ZoneWatch(self.live, ZONE_MEASURES, self.owner_of, _zone_audience)
        self._open_interventions(settings, clock_ms)
        self.tuning = Tuning(
            batch_size=settings.batch_size,
            flush_interval_s=settings.flush_interval_s,
            flush_idle_s=settings.flush_idle_s,
            queue_size=max(settings.queue_size, settings.mqtt_receive_maximum + 1_000),
        )
        # SimpleQueue: a fraction of Queue's cost per message, bounded by _receive_many instead
        # lists of messages: one put per pass over the socket's bytes, not one per message
        self.inbox: queue.SimpleQueue[list[RawMessage] | object] = queue.SimpleQueue()
        self.outbox: queue.Queue[Batch | object] = queue.Queue(self.tuning.outbox_batches)
        self._stopping = threading.Event()
        self.received = 0
        self._taken = 0  # messages the decoder took from the inbox
        self.link = MqttLink(
            settings.mqtt,
            settings.mqtt_client_id,
            session_expiry_s=settings.mqtt_session_expiry_s,
            receive_maximum=settings.mqtt_receive_maximum,
            keepalive_s=settings.mqtt_keepalive_s,
            ca_file=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
            clock_ms=clock_ms,
        )
        self.store = make_store(settings)
        self.spool = (
            Spool(settings.data_dir / "spool", settings.spool_max_bytes)
            if settings.spool_max_bytes > 0
            else None
        )
        self._replay_stop = threading.Event()
        self.replayer = (
            SpoolReplayer(
                self.spool,
                self.store,
                self.metrics,
                self._replay_stop,
                retry_max_s=settings.retry_max_s,
            )
            if self.spool is not None
            else None
        )
        self.writer = BatchWriter(
            self.store,
            self.link,
            self.link.ack_many,
            self.metrics,
            self._stopping,
            retry_max_s=settings.retry_max_s,
            spool=self.spool,
        )
        rules = [
            compile_rule(item.profile.profile, rule)
            for item in profiles.profiles
            for rule in item.profile.alerts
        ]
        notify = load_notify_config(settings.notify_config)
        self.dispatcher = Dispatcher(
            [*build_channels(notify, self.link), AlertEventStore(make_store(settings))],
            self.metrics,
            settings.data_dir / "notify-outbox.json",
            notify.retry,
        )
        self._silence_rules = {
            (item.profile.profile, rule.name)
            for item in profiles.profiles
            for rule in item.profile.alerts
            if rule.silence is not None
        }
        self.alerts = AlertEngine(
            rules,
            inventory,
            self._alert_event,
            self.metrics,
            clock_ms,
            state_path=settings.data_dir / "alerts.json",
            startup_grace_ms=int(settings.alert_startup_grace_s * 1000),
            tick_s=settings.alert_tick_s,
            explain=self._explain,
        )
        # decoded messages for the alert engine, handed over in chunks: one queue operation
        # per chunk instead of per message, at most ALERT_CHUNK_S late
        self._alert_chunk: list[tuple[Decoded, int]] = []
        self._decoded_counters: dict[str, Callable[[], None]] = {}  # per profile
        self._alert_chunk_opened = 0.0
        # for the API: recent dead letters, and the last raw messages of each device
        self.dead_letters: collections.deque[DeadLetter] = collections.deque(maxlen=1_000)
        # a short list per device, oldest first (a deque costs ~600 bytes more per device)
        self.raw_messages: dict[str, list[RawMessage]] = {}
        self._threads: list[threading.Thread] = []
        self._clock_ms = clock_ms
        self._stats_stop = threading.Event()
        self._stats_thread: threading.Thread | None = None
        self._side_threads: list[threading.Thread] = []
        self.metrics.gauge("inbox_depth", lambda: float(self.inbox_depth()))
        if self.spool is not None:
            spool = self.spool
            self.metrics.gauge("spool_bytes", lambda: float(spool.bytes))
            self.metrics.gauge("spool_records", lambda: float(spool.records))
            self.metrics.gauge("spool_full", lambda: float(spool.full))
        self.metrics.gauge("outbox_depth", self.outbox.qsize)
        self.metrics.gauge("mqtt_connected", lambda: float(self.link.connected))
        self.metrics.gauge("messages_received", lambda: float(self.received))

    # -- receive path (paho thread) ----------------------------------------------------------

    def _receive(self, message: RawMessage) -> None:
        self._receive_many([message])

    def _receive_many(self, messages: list[RawMessage]) -> None:
        """Messages read from the socket in one pass, handed to the decoder in one put."""
        # Waiting here pushes back on the TCP socket and the broker queues for us: QoS 0 has
        # no other flow control. QoS 1 should never need it (the inbox holds more than our
        # Receive Maximum), but Mosquitto 2.0.11 resuming a session with a backlog sends past
        # that window once the first acks come back (measured: 51,000 unacked messages
        # received with a window of 20,000), so the bound holds for both. It is checked once
        # per read of the socket (a read holds up to 256 kB of messages). This is the network
        # thread: while it waits, our own publishes are neither sent nor confirmed, and the
        # writer waiting for a dead letter's PUBACK would hold up the decoder and so this
        # wait for ever. So it does not wait while the writer waits for that confirmation.
        writer = self.writer
        while (
            self.inbox_depth() >= self.tuning.queue_size
            and not self._stopping.is_set()
            and not writer.confirming_letters
        ):
            time.sleep(INBOX_FULL_WAIT_S)
        self.received += len(messages)
        self.inbox.put(messages)

    def inbox_depth(self) -> int:
        """Messages received and not yet taken by the decoder."""
        # each counter has one writer (the MQTT thread, the decode thread): no lost updates
        return self.received - self._taken

    # -- decode stage -------------------------------------------------------------------------

    def decode_into(self, message: RawMessage, batch: Batch) -> None:
        """Decode one message into ``batch`` (points, dead letter or ack-only)."""
        if message.topic.startswith("situation/"):
            result: Decoded | DeadLetter | None = self._situation_message(message)
            if result is None:
                batch.no_points.append(message)  # stored in SQLite: ack with the batch
                return
        else:
            result = self.profiles.decode(message)
        if not isinstance(result, Decoded):
            batch.dead.append(result)
            self.dead_letters.append(result)
            self.metrics.inc(
                "messages_dead_lettered_total", profile=result.profile, reason=result.reason
            )
            log.info(
                "dead letter %s/%s on %s: %s",
                result.profile,
                result.reason,
                message.topic,
                result.detail,
            )
            return
        ring = self.raw_messages.get(result.device_id)
        if ring is None:
            ring = self.raw_messages[result.device_id] = []
        # capped copies: the ring is for debugging a profile, not a second store
        ring.append(
            message
            if len(message.payload) <= RAW_PAYLOAD_CAP
            else RawMessage(
                message.topic, message.payload[:RAW_PAYLOAD_CAP], message.received_ms, message.qos
            )
        )
        if len(ring) > RAW_RING:
            del ring[0]
        registered = self.inventory.enrich(result)
        self.devices.observe(result, registered, message.received_ms)
        zones = self.zones
        for point in result.points:
            measure = zones.follows(point.measurement)
            if measure is not None:
                zones.observe(
                    result.device_id, point.measurement, point.tags, point.fields.get(measure.field)
                )
        if not self._alert_chunk:
            self._alert_chunk_opened = time.monotonic()
        self._alert_chunk.append((result, message.received_ms))
        counted = self._decoded_counters.get(result.profile)
        if counted is None:
            counted = self._decoded_counters[result.profile] = self.metrics.counter(
                "messages_decoded_total", profile=result.profile
            )
        counted()
        if result.time_problem is not None:
            self.metrics.inc(
                "time_problems_total", profile=result.profile, kind=result.time_problem.kind
            )
        if not result.points:
            batch.no_points.append(message)
            return
        points = result.points
        lines = (
            lineprotocol.encode(points[0])
            if len(points) == 1
            else "\n".join([lineprotocol.encode(point) for point in points])
        )
        batch.entries.append(Entry(message, result.profile, lines, len(points)))
        batch.points += len(points)

    def _decode_loop(self) -> None:
        batch = Batch()
        size, age = self.tuning.batch_size, self.tuning.flush_interval_s
        # A batch goes to the writer when it is full, when it is `age` old, or when it is
        # `idle` old and the inbox has run dry. Under a backlog batches fill up; whenever the
        # decoder keeps up (light or steady traffic, the end of a burst) a batch goes out
        # about every `idle` seconds - ~10 writes a second, points stored within ~0.1 s.
        idle = min(self.tuning.flush_idle_s, age)
        while True:
            now = time.monotonic()
            timeout = max(0.0, batch.opened + idle - now) if len(batch) else age
            if self._alert_chunk:
                timeout = min(timeout, max(0.0, self._alert_chunk_opened + ALERT_CHUNK_S - now))
            try:
                item = self.inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._hand_over_alerts()
                if len(batch):
                    self.outbox.put(batch)
                self.outbox.put(_STOP)
                return
            if isinstance(item, list):
                batch = self._decode_many(item, batch, size)
            # full batches and alert chunks were handed on by _decode_many: here, their age
            now = time.monotonic()
            if self._alert_chunk and now - self._alert_chunk_opened >= ALERT_CHUNK_S:
                self._hand_over_alerts()
            if len(batch) and (
                now - batch.opened >= age
                or (item is None and now - batch.opened >= idle)  # the inbox ran dry
            ):
                self.outbox.put(batch)
                batch = Batch()

    def _decode_many(self, messages: list[RawMessage], batch: Batch, size: int) -> Batch:
        """Decode ``messages`` into ``batch``, handing it on each time it is full; the batch
        being filled afterwards."""
        if not len(batch):
            batch.opened = time.monotonic()
        for message in messages:
            try:
                self.decode_into(message, batch)
            except Exception:  # the hub never stops on a payload; this is a bug path
                log.exception("unexpected error decoding %s", message.topic)
                self.metrics.inc("decode_bugs_total")
                batch.no_points.append(message)
            if batch.points >= size:
                self.outbox.put(batch)
                batch = Batch()
            if len(self._alert_chunk) >= ALERT_CHUNK:
                self._hand_over_alerts()
        self._taken += len(messages)
        return batch

    def _hand_over_alerts(self) -> None:
        if self._alert_chunk:
            self.alerts.offer_many(self._alert_chunk)
            self._alert_chunk = []

    # -- interventions ------------------------------------------------------------------------

    def _situation_message(self, message: RawMessage) -> DeadLetter | None:
        """Store an intervention published on ``situation/{org}/events``; a dead letter
        (profile ``interventions``) when it cannot be stored."""
        levels = message.topic.split("/")
        org = levels[1] if len(levels) == 3 and levels[2] == "events" else ""
        if not org:
            return DeadLetter(
                INTERVENTIONS, "bad_topic", "expected situation/{org}/events", message
            )
        if self.policy is not None and org not in self.policy.organisations:
            return DeadLetter(
                INTERVENTIONS,
                "unknown_organisation",
                f"{org!r} is not an organisation of the sharing policy",
                message,
            )
        try:
            if message.retain and self._known_intervention(message.payload):
                # the broker replaying its retained copy at subscribe time: the hub got that
                # message live (persistent session) and may have had newer changes since,
                # from the API too; applying it again would undo them
                self.metrics.inc("interventions_retained_skipped_total")
                return None
            self.interventions.apply(org, message.payload, source=f"mqtt:{message.topic}")
        except InterventionError as exc:
            return DeadLetter(INTERVENTIONS, exc.reason, exc.detail, message)
        self.metrics.inc("interventions_stored_total", source="mqtt")
        return None

    def _open_interventions(self, settings: Settings, clock_ms: Callable[[], int]) -> None:
        """SQLite is the interventions' record; each change goes to the live feed and, as an
        annotation point, to InfluxDB (written by a side thread, retried until it lands)."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.interventions = InterventionStore(
            settings.data_dir / "interventions.sqlite", clock_ms=clock_ms
        )
        self._annotations: collections.deque[str] = collections.deque(
            maxlen=ANNOTATIONS_PENDING_MAX
        )
        # the planned and active ones, in memory: alerts are explained without a query
        self._current_lock = threading.Lock()
        self._current: dict[str, Intervention] = {i.id: i for i in self._stored_current()}
        policy = self.policy
        self._accesses = {org: policy.access(org) for org in policy.organisations} if policy else {}
        self.interventions.listen(self._intervention_changed)

    def _stored_current(self) -> list[Intervention]:
        """Every planned or active intervention in the store."""
        found: list[Intervention] = []
        while True:
            page = self.interventions.list(
                status=CURRENT, limit=INTERVENTION_PAGE, offset=len(found)
            )
            found += page
            if len(page) < INTERVENTION_PAGE:
                return found

    def _known_intervention(self, payload: bytes) -> bool:
        """Whether the message is about an intervention already stored."""
        return self.interventions.get(payload_id(read_payload(payload))) is not None

    def _intervention_changed(self, item: Intervention) -> None:
        """A stored change (from MQTT or the API): live feed and annotation point."""
        with self._current_lock:
            if item.status in CURRENT:
                self._current[item.id] = item
            else:
                self._current.pop(item.id, None)
        owner = item.owner
        self.live.publish(
            "intervention", item.to_json(), lambda access: access.sees_interventions(owner)
        )
        self._annotations.append(annotation_line(item))

    def _write_annotations(self, store: InfluxClient) -> None:
        """Write the pending annotation points: kept for the next round while InfluxDB is
        away, dropped (logged, counted) when it calls them invalid: retrying cannot help, and
        the store can always rebuild them."""
        if not self._annotations:
            return
        lines = list(self._annotations)
        try:
            store.write("\n".join(lines))
        except StoreRejected as exc:
            self.metrics.inc("annotation_points_rejected_total", len(lines))
            log.error("InfluxDB refused %d intervention annotation points: %s", len(lines), exc)
        except StoreError as exc:
            self.metrics.inc("annotation_write_failures_total")
            log.debug("intervention annotations not written yet: %s", exc)
            return
        for _ in lines:
            self._annotations.popleft()

    def _explain(self, alert: Alert) -> dict[str, Any] | None:
        """The intervention under way where the alert fired (the alert engine marks the alert
        with it). Only interventions every organisation that sees the alert may see: the
        explanation travels with the alert to all of them (notifications included)."""
        with self._current_lock:
            candidates = [c for c in self._current.values() if c.under_way_at(alert.fired_ms)]
        if self.policy is not None:
            owner = self.owner_of(alert.device_id)
            viewers = [a for a in self._accesses.values() if a.sees_alert(owner, alert.rule)]
            candidates = [
                c for c in candidates if all(v.sees_interventions(c.owner) for v in viewers)
            ]
        listed = self.inventory.devices.get(alert.device_id)
        found = explaining(
            candidates,
            alert.zone,
            listed.lat if listed is not None else None,
            listed.lon if listed is not None else None,
            alert.fired_ms,
        )
        if found is None:
            return None
        return {
            "id": found.id,
            "owner": found.owner,
            "kind": found.kind,
            "title": found.title,
            "status": found.status,
        }

    # -- the live feed ------------------------------------------------------------------------

    def owner_of(self, device_id: str) -> str | None:
        """The inventory owner of a device (``None``: not listed, or no owner)."""
        return self.inventory.owner(device_id)

    def _device_audience(self, device_id: str, profile: str) -> Callable[[Access], bool]:
        owner = self.owner_of(device_id)
        measurements = self._measurements_of.get(profile, [])
        # live: only to those who may see the device without a delay
        return lambda access: access.device_delay(owner, measurements) == 0

    def _device_changed(self, device_id: str, profile: str, online: bool, why: str) -> None:
        listed = self.inventory.devices.get(device_id)
        self.live.publish(
            "device",
            {
                "device_id": device_id,
                "profile": profile,
                "zone": listed.zone if listed is not None else None,
                "owner": self.owner_of(device_id),
                "online": online,
                "why": why,
            },
            self._device_audience(device_id, profile),
        )

    def _alert_event(self, event: AlertEvent) -> None:
        """The alert engine's events: to the notification channels and the live feed."""
        self.dispatcher.submit(event)
        alert = event.alert
        owner = self.owner_of(alert.device_id)
        rule = alert.rule
        self.live.publish(
            "alert",
            {**event.to_json(), "owner": owner},
            lambda access: access.sees_alert(owner, rule),
            alert_for,
        )
        if (alert.profile, rule) in self._silence_rules and event.kind != "acknowledged":
            silent = event.kind == "fired"
            self._device_changed(
                alert.device_id,
                alert.profile,
                not silent,
                f"silent for rule {rule}" if silent else "spoke again",
            )

    def _zone_loop(self, interval_s: float) -> None:
        """Zone counts to the live feed."""
        while not self._stats_stop.wait(interval_s):
            self.zones.flush()
        self.zones.flush(force=True)

    def _annotation_loop(self, interval_s: float) -> None:
        """Intervention annotations to InfluxDB (its own thread: a slow InfluxDB must not hold
        up the live feed)."""
        store = make_store(self.settings)
        try:
            # the store is the record: rewrite what is current (same series and time: one
            # point), so annotations lost with a crash come back; the in-memory copy of the
            # current ones was read from it at start and follows every change
            with self._current_lock:
                current = list(self._current.values())
            self._annotations.extend(annotation_line(item) for item in current)
            while not self._stats_stop.wait(interval_s):
                self._write_annotations(store)
            self._write_annotations(store)
        finally:
            store.close()

    # -- writer stage -------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self.outbox.get()
            if item is _STOP:
                return
            if isinstance(item, Batch) and not self.writer.commit(item):
                # aborted by shutdown: drop the rest unacknowledged (the broker redelivers)
                while self.outbox.get() is not _STOP:
                    pass
                return

    # -- self-monitoring ----------------------------------------------------------------------

    def stats_point(self, now_ms: int) -> Point:
        """The hub's own counters and gauges as a ``hub_stats`` point (for Grafana)."""
        m = self.metrics
        fields: dict[str, FieldValue] = {
            "received": self.received,
            "decoded": int(m.total("messages_decoded_total")),
            "dead_lettered": int(m.total("messages_dead_lettered_total")),
            "points_written": int(m.total("points_written_total")),
            "points_rejected": int(m.total("points_rejected_total")),
            "write_retries": int(m.total("write_retries_total")),
            "write_batches": int(m.total("write_batches_total")),
            "write_seconds": float(m.total("write_seconds_total")),
            "inbox_depth": self.inbox_depth(),
            "outbox_depth": self.outbox.qsize(),
            "alerts_open": len(self.alerts.open_alerts()),
            "notifications_pending": self.dispatcher.pending(),
            "mqtt_connected": self.link.connected,
            "spool_bytes": self.spool.bytes if self.spool is not None else 0,
        }
        return Point(STATS_MEASUREMENT, {"client_id": self.settings.mqtt_client_id}, fields, now_ms)

    def _stats_loop(self, interval_s: float) -> None:
        # best effort: the hub's own stats must never hold up or endanger device data
        store = make_store(self.settings)
        try:
            while not self._stats_stop.wait(interval_s):
                try:
                    store.write(lineprotocol.encode(self.stats_point(self._clock_ms())))
                except StoreError as exc:
                    self.metrics.inc("stats_write_failures_total")
                    log.debug("hub_stats not written: %s", exc)
        finally:
            store.close()

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, connect_timeout_s: float = 30.0) -> None:
        """Start dispatcher, alerts, writer, decoder, then the subscription (back to front)."""
        self.dispatcher.start()
        self.alerts.start()
        if self.replayer is not None:
            self.replayer.start()
        for name, target in (("hub-writer", self._write_loop), ("hub-decoder", self._decode_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        sides: tuple[tuple[str, Callable[[float], None], float], ...] = (
            ("hub-zones", self._zone_loop, LIVE_FLUSH_S),
            ("hub-annotations", self._annotation_loop, ANNOTATION_FLUSH_S),
        )
        for name, loop, interval_s in sides:
            side = threading.Thread(target=loop, args=(interval_s,), name=name, daemon=True)
            side.start()
            self._side_threads.append(side)
        if self.settings.stats_interval_s > 0:
            stats = threading.Thread(
                target=self._stats_loop,
                args=(self.settings.stats_interval_s,),
                name="hub-stats",
                daemon=True,
            )
            stats.start()
            self._stats_thread = stats
        self.link.start(
            [*self.profiles.subscriptions, SITUATION_TOPIC],
            self.settings.mqtt_qos,
            self._receive,
            batch_sink=self._receive_many,
        )
        self.link.wait_connected(connect_timeout_s)
        log.info(
            "hub running: %d profiles, %d subscriptions, %d inventory devices",
            len(self.profiles.profiles),
            len(self.profiles.subscriptions),
            len(self.inventory.devices),
        )

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop taking messages, drain and commit what was taken, then disconnect."""
        self.link.pause()
        self.inbox.put(_STOP)
        deadline = time.monotonic() + timeout_s
        for thread in reversed(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            # InfluxDB or the broker is still down: give up waiting, leave the rest unacked
            self._stopping.set()
            for thread in self._threads:
                thread.join(5)
        self._stats_stop.set()
        if self._stats_thread is not None:
            self._stats_thread.join(5)
        for side in self._side_threads:
            side.join(15)
        self.alerts.stop()
        self.dispatcher.stop(timeout_s=max(1.0, deadline - time.monotonic()))
        self._replay_stop.set()
        if self.replayer is not None:
            self.replayer.join(10)
        if self.spool is not None:
            self.spool.close()
        self.interventions.close()
        self.link.stop()
        self.store.close()
        log.info("hub stopped: %d messages received", self.received)


def _zone_audience(measure: ZoneMeasure, owner: str | None) -> Callable[[Access], bool]:
    """Who sees a zone count of ``owner``'s devices: those granted the field per zone, live."""

    def sees(access: Access) -> bool:
        return access.delay(owner, measure.measurement, (measure.field,), ("zone",)) == 0

    return sees
