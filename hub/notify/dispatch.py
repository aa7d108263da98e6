"""Delivery of alert events to the channels: queued, retried, counted and persisted.

::

    submit(event) ──accepts?──> lane "mqtt"          ──worker──> MqttAlertChannel.send
                   ──accepts?──> lane "webhook:ops"   ──worker──> WebhookChannel.send
                   ──accepts?──> lane "email:lights"  ──worker──> EmailChannel.send
                          │
                          └──> outbox file (every undelivered item, rewritten atomically
                               by the "notify-outbox" thread)

``submit`` only enqueues, so the alert engine (and through it ingest) never waits for a
channel, nor for the disk: while the dispatcher runs, the outbox is rewritten by its own
thread, which takes a fresh snapshot after each write, so a storm of events costs a few
writes, not one fsync'd rewrite per event (before ``start`` and at ``stop`` the write is
done in place). Each channel has its own queue and worker thread: a dead webhook retries on its own
lane and never delays e-mail or MQTT. The queues are unbounded on purpose: events are alert
transitions, not samples (a handful per minute even in a storm), and each one is owed to a
team, so none is shed; ``notifications_pending`` shows a lane that falls behind. A lane
delivers in order and retries its head item before the next one, so a "resolved" never
overtakes its "fired".

Failures are ``NotifyError``s: a retryable one is tried again after ``first_s`` doubling up to
``max_s`` (or the server's ``Retry-After``), a permanent one, or the ``max_attempts``-th
failure, drops the item (logged and counted). Counters, labelled by channel name:
``notifications_sent_total``, ``notification_failures_total`` (each failed attempt) and
``notifications_dropped_total`` (given up); the gauge ``notifications_pending``.

Delivery is at least once across restarts: an item stays in the outbox file until it was
delivered or dropped, and a new ``Dispatcher`` on the same file queues it again. A crash
between a delivery and the outbox rewrite sends that one item twice; a crash within the few
milliseconds between a submit and the next outbox write loses that event's notification.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from hub.alerts.model import AlertEvent
from hub.durable import write_atomically
from hub.errors import ConfigError, HubError
from hub.metrics import Metrics
from hub.notify.config import RetrySpec

log = logging.getLogger(__name__)


class NotifyError(HubError):
    """A channel could not deliver an event.

    Belongs to the exception tree drawn in ``hub.errors`` (a ``HubError``); it lives here
    because only the notification stage raises and handles it. ``permanent`` says whether
    trying again can help (a 5xx or a timeout can, a 404 or an unknown mailbox cannot);
    ``retry_after_s`` is the wait the receiver asked for, if any.
    """

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after_s: float | None = None
    ) -> None:
        self.permanent = permanent
        self.retry_after_s = retry_after_s
        super().__init__(message)


class Channel(Protocol):
    """One way of delivering events (an MQTT topic, a webhook, a team's mailbox)."""

    @property
    def name(self) -> str:
        """Unique among the channels; names the lane, the outbox entries and the metrics."""

    def accepts(self, event: AlertEvent) -> bool:
        """True when this channel wants ``event`` (its severity, profile, zone and kind)."""

    def send(self, event: AlertEvent) -> None:
        """Deliver ``event`` once, or raise ``NotifyError``."""


@runtime_checkable
class _Closable(Protocol):
    def close(self) -> None: ...


@dataclass(slots=True, eq=False)
class _Item:
    """One event for one channel, with its delivery attempts so far."""

    channel: str
    event: AlertEvent
    attempts: int = 0
    due: float = 0.0  # clock time of the next try

    def to_json(self) -> dict[str, Any]:
        return {"channel": self.channel, "event": self.event.to_json(), "attempts": self.attempts}


@dataclass(eq=False)
class _Lane:
    """A channel's queue and the worker thread that drains it."""

    channel: Channel
    wake: threading.Condition
    queue: deque[_Item] = field(default_factory=deque)
    thread: threading.Thread | None = None


class Dispatcher:
    """Queues every accepted event per channel and delivers it (see the module docstring).

    The outbox is read when the dispatcher is built, so events submitted before ``start``
    join the queues behind the ones left by the previous run. ``clock`` times the retries
    and the stop deadline; waits are condition waits that ``submit`` and ``stop`` cut short.
    """

    def __init__(
        self,
        channels: list[Channel],
        metrics: Metrics,
        outbox_path: Path | None,
        retry: RetrySpec,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._outbox = outbox_path
        self._retry = retry
        self._clock = clock
        # One lock guards every lane's queue, so an outbox snapshot is consistent.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._lanes: dict[str, _Lane] = {}
        for channel in channels:
            if channel.name in self._lanes:
                raise ConfigError(f"two notification channels are named {channel.name!r}")
            self._lanes[channel.name] = _Lane(channel, threading.Condition(self._lock))
        self._started = False
        self._drain_until: float | None = None  # set by stop(): finish, but not after this
        self._halted = False
        # Outbox writes happen outside the queue lock; a generation number lets a late
        # writer skip a snapshot older than the one already on disk.
        self._write_lock = threading.Lock()
        self._generation = 0
        self._written = 0
        # set while the outbox thread runs: _persist() then only wakes it
        self._outbox_wake = threading.Condition(self._lock)
        self._outbox_thread: threading.Thread | None = None
        self._outbox_stop = False
        metrics.gauge("notifications_pending", lambda: float(self.pending()))
        if outbox_path is not None:
            outbox_path.parent.mkdir(parents=True, exist_ok=True)
            self._load_outbox(outbox_path)

    # -- public surface ------------------------------------------------------------------

    @property
    def channel_names(self) -> list[str]:
        """The names of the channels, in the order given."""
        return list(self._lanes)

    def start(self) -> None:
        """Start one worker thread per channel."""
        with self._lock:
            if self._started:
                raise RuntimeError("the dispatcher was already started")
            self._started = True
            for name, lane in self._lanes.items():
                lane.thread = threading.Thread(
                    target=self._run, args=(lane,), name=f"notify-{name}", daemon=True
                )
                lane.thread.start()
            if self._outbox is not None:
                self._outbox_thread = threading.Thread(
                    target=self._outbox_loop, name="notify-outbox", daemon=True
                )
                self._outbox_thread.start()

    def submit(self, event: AlertEvent) -> None:
        """Queue ``event`` for every channel that accepts it. Never blocks on delivery.

        Safe from any thread, also before ``start`` or after ``stop``: the event then waits
        in the outbox for the next start.
        """
        added = False
        for name, lane in self._lanes.items():
            try:
                wanted = lane.channel.accepts(event)
            except Exception:
                # A broken filter must not stop the alert engine or the other channels.
                log.exception("channel %s failed to filter %s", name, _describe(event))
                self._metrics.inc("notifications_dropped_total", channel=name)
                continue
            if wanted:
                with self._lock:
                    lane.queue.append(_Item(name, event))
                    lane.wake.notify()
                added = True
        if added:
            self._persist()

    def pending(self) -> int:
        """Items not yet delivered or dropped, over all channels (including in-flight ones)."""
        with self._lock:
            return sum(len(lane.queue) for lane in self._lanes.values())

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queue is empty; False if that did not happen in ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while any(lane.queue for lane in self._lanes.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(remaining)
        return True

    def stop(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued for up to ``timeout_s``, then stop the workers.

        Whatever is still undelivered stays in the outbox for the next start. A worker
        blocked inside a channel (a hung server) is left behind as a daemon thread; its
        item stays in the outbox too.
        """
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._drain_until = self._clock() + timeout_s
            for lane in self._lanes.values():
                lane.wake.notify_all()
        for lane in self._lanes.values():
            if lane.thread is not None:
                lane.thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._halted = True
            for lane in self._lanes.values():
                lane.wake.notify_all()
        for name, lane in self._lanes.items():
            if lane.thread is not None and lane.thread.is_alive():
                log.warning("channel %s is still sending after stop; left behind", name)
            elif isinstance(lane.channel, _Closable):
                lane.channel.close()
        self._stop_outbox_thread()
        self._persist()  # in place: the final state of the queues is on disk when stop returns
        left = self.pending()
        if left:
            log.warning("stopped with %d notifications undelivered (kept in the outbox)", left)

    # -- workers -------------------------------------------------------------------------

    def _run(self, lane: _Lane) -> None:
        while True:
            item = self._next(lane)
            if item is None:
                return
            self._attempt(lane, item)

    def _next(self, lane: _Lane) -> _Item | None:
        """The lane's head item once it is due; None when the worker should end."""
        with self._lock:
            while True:
                if self._halted:
                    return None
                now = self._clock()
                draining = self._drain_until is not None
                if not lane.queue:
                    if draining:
                        return None
                    timeout: float | None = None
                else:
                    timeout = lane.queue[0].due - now
                    if self._drain_until is not None:
                        if now >= self._drain_until:
                            return None
                        timeout = min(timeout, self._drain_until - now)
                    if timeout <= 0:
                        return lane.queue[0]
                # A condition wait, not a sleep: submit() and stop() wake it at once.
                lane.wake.wait(timeout)

    def _attempt(self, lane: _Lane, item: _Item) -> None:
        """Send ``item`` once; then complete it, drop it or schedule its retry."""
        name = item.channel
        try:
            lane.channel.send(item.event)
        except NotifyError as exc:
            self._failed(lane, item, exc)
        except Exception as exc:
            # A bug or an unmapped client error: retrying is the safe side of losing an alert.
            log.exception("channel %s raised unexpectedly", name)
            self._failed(lane, item, NotifyError(f"unexpected {type(exc).__name__}: {exc}"))
        else:
            with self._lock:
                lane.queue.popleft()
                self._idle.notify_all()
            self._metrics.inc("notifications_sent_total", channel=name)
            log.info("notified %s: %s", name, _describe(item.event))
        self._persist()

    def _failed(self, lane: _Lane, item: _Item, error: NotifyError) -> None:
        name = item.channel
        self._metrics.inc("notification_failures_total", channel=name)
        with self._lock:
            item.attempts += 1
            delay = self._retry.delay_s(item.attempts)
            if error.retry_after_s is not None:
                delay = min(max(delay, error.retry_after_s), self._retry.max_s)
            gave_up = error.permanent or item.attempts >= self._retry.max_attempts
            if gave_up:
                lane.queue.popleft()
                self._idle.notify_all()
            else:
                item.due = self._clock() + delay
        if not gave_up:
            log.warning(
                "notifying %s of %s failed (attempt %d), retrying in %.1f s: %s",
                name,
                _describe(item.event),
                item.attempts,
                delay,
                error,
            )
            return
        self._metrics.inc("notifications_dropped_total", channel=name)
        log.error(
            "gave up notifying %s of %s after %d attempt(s)%s: %s",
            name,
            _describe(item.event),
            item.attempts,
            " (permanent error)" if error.permanent else "",
            error,
        )

    # -- outbox --------------------------------------------------------------------------

    def _persist(self) -> None:
        """Have the outbox rewritten: by the outbox thread while it runs, else right here."""
        if self._outbox is None:
            return
        with self._lock:
            self._generation += 1
            if self._outbox_thread is not None:
                self._outbox_wake.notify()
                return
        self._write_outbox()

    def _outbox_loop(self) -> None:
        while True:
            with self._lock:
                while self._written >= self._generation and not self._outbox_stop:
                    self._outbox_wake.wait()
                if self._outbox_stop:
                    return
            self._write_outbox()

    def _stop_outbox_thread(self) -> None:
        with self._lock:
            thread, self._outbox_thread = self._outbox_thread, None
            self._outbox_stop = True
            self._outbox_wake.notify()
        if thread is not None:
            thread.join(10)

    def _write_outbox(self) -> None:
        """Write a snapshot of every queue (skipped when a newer one is already on disk)."""
        assert self._outbox is not None  # noqa: S101  # callers check
        with self._lock:
            entries = [item.to_json() for lane in self._lanes.values() for item in lane.queue]
            generation = self._generation
        data = orjson.dumps(entries)
        with self._write_lock:
            if generation < self._written:
                return  # a newer snapshot is already on disk
            try:
                write_atomically(self._outbox, data)
            except OSError as exc:
                # Delivery goes on from memory; only a crash now could lose these events.
                self._metrics.inc("notification_outbox_errors_total")
                log.error("cannot write the notification outbox %s: %s", self._outbox, exc)
            # a failed write is not retried in a loop: the next change tries again
            self._written = max(self._written, generation)

    def _load_outbox(self, path: Path) -> None:
        try:
            entries = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, orjson.JSONDecodeError) as exc:
            self._set_aside(path, str(exc))
            return
        if not isinstance(entries, list):
            self._set_aside(path, "not a JSON list")
            return
        for entry in entries:
            name = str(entry.get("channel", "?")) if isinstance(entry, dict) else "?"
            try:
                event = AlertEvent.from_json(entry["event"])
                attempts = int(entry["attempts"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("dropping an unreadable outbox entry for %s: %r", name, exc)
                self._metrics.inc("notifications_dropped_total", channel=name)
                continue
            lane = self._lanes.get(name)
            if lane is None:
                log.error(
                    "dropping a queued notification for channel %s, which is no longer "
                    "configured: %s",
                    name,
                    _describe(event),
                )
                self._metrics.inc("notifications_dropped_total", channel=name)
                continue
            lane.queue.append(_Item(name, event, attempts))
        loaded = sum(len(lane.queue) for lane in self._lanes.values())
        if loaded:
            log.info("re-queued %d undelivered notifications from %s", loaded, path)
        self._persist()

    def _set_aside(self, path: Path, reason: str) -> None:
        """Keep an unreadable outbox for an operator instead of overwriting it."""
        aside = path.with_name(f"{path.name}.unreadable-{time.time_ns()}")
        log.error("notification outbox %s is unreadable (%s); moved to %s", path, reason, aside)
        self._metrics.inc("notification_outbox_errors_total")
        try:
            path.replace(aside)
        except OSError as exc:
            raise ConfigError(f"cannot move the unreadable outbox {path} aside: {exc}") from exc


def _describe(event: AlertEvent) -> str:
    alert = event.alert
    return f"{event.kind} {alert.rule} on {alert.device_id} ({alert.severity}, id {alert.id})"
