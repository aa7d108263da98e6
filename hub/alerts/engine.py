"""The alert engine: evaluates profile rules on decoded points and on timers.

Runs on its own thread, fed by a bounded queue from the decode stage (``offer``), so rule
evaluation never runs on the receive path. Each (rule, device, series) has at most one alert
at a time; its life::

    idle --when--> pending --`for` elapsed (timer)--> firing --clear--> resolved
                      ^--------- when false ---------'           |  (flap window)
                                                                  `--when again--> firing
                                                                     (same alert, no new
                                                                      notification)

A resolve is notified only once the flap window has passed without a re-fire, so a
condition that flaps produces one "fired" and one "resolved" notification. Silence rules
fire on the timer when a device sent nothing for the rule's time (devices of the inventory
that never spoke count from the hub's first start), and resolve on its next message.

State (open, resolving and pending alerts, last-seen times) is saved atomically to
``HUB_DATA_DIR/alerts.json`` after every chunk of messages that fired, resolved or
acknowledged an alert, within a second for opened or closed ``for`` windows (a storm of
windows flipping would otherwise mean a rewrite, fsync included, per chunk) and within five
seconds for last-seen times; it is restored at start. A clean restart loses no alert and
repeats no notification; a crash can at worst restart a ``for`` window opened in its last
second.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from hub.alerts.model import Alert, AlertEvent
from hub.alerts.rules import CompiledRule
from hub.durable import write_atomically
from hub.inventory import Inventory
from hub.metrics import Metrics
from hub.model import Decoded

log = logging.getLogger(__name__)

Key = tuple[str, str, tuple[tuple[str, str], ...]]  # (profile.rule, device_id, series)
EventSink = Callable[[AlertEvent], None]
# what probably explains an alert as it fires (an intervention under way), or None
Explainer = Callable[[Alert], dict[str, Any] | None]
STATE_VERSION = 1
PENDING_SAVE_S = 1.0
SEEN_SAVE_S = 5.0
_STOP = object()
_IDLE = object()


class _Fill(dict[str, Any]):
    """Template values; an unknown name stays visible as ``{name}`` instead of failing."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _key_json(key: Key) -> list[Any]:
    return [key[0], key[1], [list(pair) for pair in key[2]]]


def _render(template: str, values: dict[str, Any]) -> str:
    try:
        return string.Formatter().vformat(template, (), _Fill(values))
    except (ValueError, IndexError, AttributeError):
        return template  # a malformed template is shown as written, never crashes


class AlertEngine:
    """Evaluates the rules of every loaded profile; see the module docstring."""

    def __init__(
        self,
        rules: Iterable[CompiledRule],
        inventory: Inventory,
        sink: EventSink,
        metrics: Metrics,
        clock_ms: Callable[[], int],
        *,
        state_path: Path | None = None,
        startup_grace_ms: int = 0,
        tick_s: float = 1.0,
        queue_size: int = 8,
        history_size: int = 1_000,
        explain: Explainer | None = None,
    ) -> None:
        self._rules = list(rules)
        self._by_measurement: dict[str, list[CompiledRule]] = {}
        self._silence: dict[str, list[CompiledRule]] = {}
        for rule in self._rules:
            if rule.kind == "threshold":
                assert rule.rule.measurement is not None  # noqa: S101  # threshold rules have one
                self._by_measurement.setdefault(rule.rule.measurement, []).append(rule)
            else:
                assert rule.rule.silence is not None  # noqa: S101  # silence rules have one
                self._silence.setdefault(rule.rule.silence.measurement, []).append(rule)
        self._rule_by_key = {rule.key: rule for rule in self._rules}
        self._inventory = inventory
        self._sink = sink
        self._explain = explain
        self._metrics = metrics
        self._clock = clock_ms
        self._state_path = state_path
        self._grace_ms = startup_grace_ms
        self._tick_s = tick_s
        self._lock = threading.RLock()
        self._open: dict[Key, Alert] = {}
        self._resolving: dict[Key, Alert] = {}
        self._pending: dict[Key, dict[str, Any]] = {}
        self._last_seen: dict[tuple[str, str], int] = {}  # (measurement, device) -> ms
        self._zones: dict[str, str] = {}
        self.history: collections.deque[Alert] = collections.deque(maxlen=history_size)
        self._queue: queue.Queue[list[tuple[Decoded, int]] | object] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._dirty = False  # an alert changed: saved after the chunk that changed it
        self._pending_dirty = False  # a window opened or closed: saved within PENDING_SAVE_S
        self._seen_dirty = False  # last-seen times: saved within SEEN_SAVE_S
        self._last_save = 0.0
        self._started_ms = clock_ms()
        self.processed = 0
        self.ticks = 0
        metrics.gauge("alerts_open", lambda: float(len(self._open) + len(self._resolving)))
        metrics.gauge("alert_queue_depth", self._queue.qsize)

    # -- feeding (decode thread) -------------------------------------------------------------

    def offer_many(self, items: list[tuple[Decoded, int]]) -> None:
        """Queue decoded messages (with their receive times) for evaluation.

        Blocks when the engine is ``queue_size`` chunks (up to 500 messages each) behind.
        Evaluation is cheaper than decoding, but under a burst the GIL shares the core and the
        engine does fall behind: with 1,000 chunks of room the decoded messages waiting here
        were a large part of the hub's peak memory (10,000 devices: 171-185 MB peak RSS; 146 MB
        with 20 chunks, at the same ingest rate) and the alerts ran seconds late. A short queue
        pushes back on the decoder instead, and pushing back beats losing alerts. Once the
        receive path got faster (more messages waiting in the inbox), 20 chunks made 151 MB
        and 8 chunks 145.5-146.6 MB, at the same ingest rate.
        """
        self._queue.put(items)

    # -- evaluation (engine thread, or tests directly) ---------------------------------------

    def process(self, decoded: Decoded, received_ms: int) -> None:
        """Evaluate one decoded message (the hot path of this stage: kept lean)."""
        with self._lock:
            self.processed += 1
            device = decoded.device_id
            for point in decoded.points:
                measurement = point.measurement
                silence = self._silence.get(measurement)
                if silence is not None:
                    self._last_seen[(measurement, device)] = received_ms
                    self._seen_dirty = True
                    if self._open:
                        for rule in silence:
                            key: Key = (rule.key, device, ())
                            if key in self._open:
                                self._resolve(key, received_ms)
                rules = self._by_measurement.get(measurement)
                if rules is None:
                    continue
                zone = point.tags.get("zone")
                if zone:
                    self._zones[device] = zone
                values = {**point.tags, **point.fields}
                for rule in rules:
                    if rule.profile == decoded.profile:
                        self._evaluate(rule, device, values, received_ms)

    def _evaluate(self, rule: CompiledRule, device: str, values: dict[str, Any], now: int) -> None:
        per = rule.rule.per
        series = tuple((tag, str(values.get(tag, ""))) for tag in per) if per else ()
        key: Key = (rule.key, device, series)
        alert = self._open.get(key)
        if alert is not None:
            alert.values = values
            if rule.clear(values) is True:  # type: ignore[misc]  # set for threshold rules
                self._resolve(key, now)
            return
        fired = rule.when(values)  # type: ignore[misc]  # set for threshold rules
        if fired is True:
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = {"started_ms": now, "zone": values.get("zone", "")}
                self._pending_dirty = True  # a new window is state worth saving; a refresh is not
            pending["values"] = values
            if rule.rule.for_ == 0:
                self._fire(key, now)
        elif fired is False and key in self._pending:
            del self._pending[key]
            self._pending_dirty = True

    def _fire(self, key: Key, now: int) -> None:
        rule = self._rule_by_key[key[0]]
        pending = self._pending.pop(key, None) or {}
        values = pending.get("values", {})
        started = pending.get("started_ms", now)
        self._dirty = True
        folded = self._resolving.pop(key, None)
        if folded is not None:
            # flapping: the same alert is open again; nobody is told twice
            folded.state, folded.resolved_ms = "firing", None
            folded.flaps += 1
            folded.values = values or folded.values
            self._open[key] = folded
            self._metrics.inc("alert_flaps_total", profile=rule.profile, rule=rule.rule.name)
            return
        device = key[1]
        zone = (
            pending.get("zone")
            or self._zones.get(device)
            or self._inventory.zone(device)
            or "unknown"
        )
        alert = Alert(
            id=uuid.uuid4().hex[:16],
            rule=rule.rule.name,
            profile=rule.profile,
            device_id=device,
            series=dict(key[2]),
            severity=rule.rule.severity,
            message=_render(rule.rule.message, {"device_id": device, **values}),
            zone=str(zone),
            started_ms=started,
            fired_ms=now,
            values=values,
        )
        if self._explain is not None:
            try:
                alert.explained_by = self._explain(alert)
            except Exception:  # an explanation is a courtesy: never lose the alert over it
                log.exception("explaining alert %s failed", alert.id)
        self._open[key] = alert
        self._metrics.inc(
            "alerts_fired_total",
            profile=rule.profile,
            rule=rule.rule.name,
            severity=rule.rule.severity,
        )
        self._emit(AlertEvent("fired", alert, now))

    def _resolve(self, key: Key, now: int) -> None:
        alert = self._open.pop(key)
        alert.state, alert.resolved_ms = "resolved", now
        self._dirty = True
        rule = self._rule_by_key[key[0]]
        if rule.rule.flap_window <= 0:
            self._finish(alert)
        else:
            self._resolving[key] = alert

    def _finish(self, alert: Alert) -> None:
        self.history.append(alert)
        self._metrics.inc("alerts_resolved_total", profile=alert.profile, rule=alert.rule)
        self._emit(AlertEvent("resolved", alert, alert.resolved_ms or self._clock()))

    def _emit(self, event: AlertEvent) -> None:
        log.info(
            "alert %s: %s %s on %s %s: %s",
            event.kind,
            event.alert.severity,
            event.alert.rule,
            event.alert.device_id,
            event.alert.series or "",
            event.alert.message,
        )
        try:
            self._sink(event)
        except Exception:  # a broken channel must not stop alert evaluation
            log.exception("alert event sink failed")
            self._metrics.inc("alert_sink_errors_total")

    def tick(self, now: int | None = None) -> None:
        """Timers: `for` windows, flap windows, silence. Called every ``tick_s``."""
        now = self._clock() if now is None else now
        with self._lock:
            self.ticks += 1
            for key, pending in list(self._pending.items()):
                rule = self._rule_by_key.get(key[0])
                if rule is None:
                    del self._pending[key]
                elif now - pending["started_ms"] >= rule.rule.for_:
                    self._fire(key, now)
            for key, alert in list(self._resolving.items()):
                rule = self._rule_by_key.get(key[0])
                window = rule.rule.flap_window if rule else 0
                if now - (alert.resolved_ms or now) >= window:
                    del self._resolving[key]
                    self._dirty = True
                    self._finish(alert)
            if now - self._started_ms >= self._grace_ms:
                self._check_silence(now)

    def _check_silence(self, now: int) -> None:
        for measurement, rules in self._silence.items():
            for (seen_measurement, device), last in list(self._last_seen.items()):
                if seen_measurement != measurement:
                    continue
                for rule in rules:
                    assert rule.rule.silence is not None  # noqa: S101  # silence rule
                    if rule.devices is not None and not rule.devices.search(device):
                        continue
                    if not self._applies(rule, device):
                        continue
                    key: Key = (rule.key, device, ())
                    if key not in self._open and now - last >= rule.rule.silence.after:
                        # the silence began with the last message: that is the start
                        self._pending[key] = {"started_ms": last, "values": {}}
                        self._fire(key, now)

    def _applies(self, rule: CompiledRule, device: str) -> bool:
        listed = self._inventory.devices.get(device)
        return listed is None or listed.profile == rule.profile

    def acknowledge(self, alert_id: str, who: str) -> Alert:
        """Record who acknowledged an open alert, and when; ``KeyError`` if not open."""
        with self._lock:
            for alert in [*self._open.values(), *self._resolving.values()]:
                if alert.id == alert_id:
                    now = self._clock()
                    alert.acknowledged_by, alert.acknowledged_ms = who, now
                    self._dirty = True
                    self._emit(AlertEvent("acknowledged", alert, now))
                    self.save()
                    return alert
        raise KeyError(alert_id)

    def open_alerts(self) -> list[Alert]:
        """Alerts currently open (firing, or resolved within their flap window)."""
        with self._lock:
            return [*self._open.values(), *self._resolving.values()]

    def pending(self) -> dict[Key, int]:
        """Conditions currently inside their `for` window, with their start time."""
        with self._lock:
            return {key: p["started_ms"] for key, p in self._pending.items()}

    # -- inventory devices that never spoke --------------------------------------------------

    def _seed_inventory(self, now: int) -> None:
        for measurement, rules in self._silence.items():
            for device, listed in self._inventory.devices.items():
                for rule in rules:
                    if listed.profile != rule.profile:
                        continue
                    if rule.devices is not None and not rule.devices.search(device):
                        continue
                    self._last_seen.setdefault((measurement, device), now)
                    self._zones.setdefault(device, listed.zone)

    # -- persistence ------------------------------------------------------------------------

    def save(self) -> None:
        """Write the state atomically (``hub.durable.write_atomically``)."""
        if self._state_path is None:
            return
        with self._lock:
            body = {
                "version": STATE_VERSION,
                "open": [[_key_json(k), a.to_json()] for k, a in self._open.items()],
                "resolving": [[_key_json(k), a.to_json()] for k, a in self._resolving.items()],
                "pending": [[_key_json(k), p] for k, p in self._pending.items()],
                "last_seen": [[m, d, ms] for (m, d), ms in self._last_seen.items()],
                "zones": self._zones,
            }
            self._dirty = self._pending_dirty = self._seen_dirty = False
        self._state_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self._state_path, orjson.dumps(body, default=str))
        self._last_save = time.monotonic()

    def load(self) -> None:
        """Restore the saved state, if any (rules that no longer exist are dropped)."""
        if self._state_path is None or not self._state_path.exists():
            return
        body = json.loads(self._state_path.read_text(encoding="utf-8"))

        def key_of(raw: list[Any]) -> Key:
            return (raw[0], raw[1], tuple((str(a), str(b)) for a, b in raw[2]))

        with self._lock:
            for raw, alert in body.get("open", []):
                if raw[0] in self._rule_by_key:
                    self._open[key_of(raw)] = Alert.from_json(alert)
            for raw, alert in body.get("resolving", []):
                if raw[0] in self._rule_by_key:
                    self._resolving[key_of(raw)] = Alert.from_json(alert)
            for raw, pending in body.get("pending", []):
                if raw[0] in self._rule_by_key:
                    self._pending[key_of(raw)] = pending
            for measurement, device, ms in body.get("last_seen", []):
                self._last_seen[(measurement, device)] = int(ms)
            self._zones.update(body.get("zones", {}))
        log.info("alert state restored: %d open, %d pending", len(self._open), len(self._pending))

    # -- thread -----------------------------------------------------------------------------

    def start(self) -> None:
        """Restore state, seed inventory devices, and start the engine thread."""
        self.load()
        with self._lock:
            self._started_ms = self._clock()
            self._seed_inventory(self._started_ms)
        self.save()
        self._thread = threading.Thread(target=self._run, name="hub-alerts", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_tick = time.monotonic()
        while True:
            timeout = max(0.0, next_tick - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = _IDLE
            if item is _STOP:
                self.save()
                return
            if isinstance(item, list):
                with self._lock:
                    for decoded, received_ms in item:
                        self.process(decoded, received_ms)
            if time.monotonic() >= next_tick:
                self.tick()
                next_tick = time.monotonic() + self._tick_s
            since = time.monotonic() - self._last_save
            if (
                self._dirty
                or (self._pending_dirty and since >= PENDING_SAVE_S)
                or (self._seen_dirty and since >= SEEN_SAVE_S)
            ):
                self.save()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Evaluate what is queued, save, and stop the thread."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._thread = None
