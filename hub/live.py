"""The live feed of the Situation Room wall: what changes, as it changes, for whom may see it.

Stages publish events here from their own threads (the alert engine's events, the device
registry's online/offline changes, intervention changes, zone-level changes folded by
``ZoneChanges``); the API streams them as server-sent events (``hub.api.live``)::

    alert engine ---------.
    device registry ------+--> LiveFeed.publish --> [replay ring] --> SSE clients
    interventions --------|        (id, kind, data, who may see it)   (each filtered by
    zone changes ---------'                                            its organisation)

Every event has an id ``<epoch>-<seq>``: ``seq`` counts up from 1 in this process, ``epoch``
is the process's start time. A client that reconnects with ``Last-Event-ID`` gets every event
after it that is still in the ring (the newest ``replay_size``), so a reconnect loses nothing
unless it was away longer than the ring holds; when events it missed are gone (or the id is
of an earlier process), the stream starts with a ``reset`` event saying so, and the client
reloads the state from the API. A connected client too slow to keep up with the ring gets a
``reset`` event the same way.

Publishing never blocks a stage: it appends to the ring under a lock and wakes the waiting
streams through their event loops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hub.sharing import Access

Audience = Callable[[Access], bool]
# what one organisation is shown of an event's data (e.g. details it may not see left out)
Shape = Callable[[Access, dict[str, Any]], dict[str, Any]]
REPLAY_SIZE = 10_000
# a lane is congested above this occupancy (the contract's congestion rule; the API's
# congestion view uses the same number)
CONGESTION_PCT = 35.0


def everyone(_: Access) -> bool:
    """An audience of every organisation."""
    return True


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One event of the feed; ``audience`` says which organisations may see it."""

    seq: int
    epoch: int
    kind: str
    data: dict[str, Any]
    audience: Audience
    shape: Shape | None = None

    def view(self, access: Access) -> dict[str, Any]:
        """The data as ``access``'s organisation is shown it."""
        return self.shape(access, self.data) if self.shape is not None else self.data

    @property
    def id(self) -> str:
        """The SSE id: ``<epoch>-<seq>``."""
        return f"{self.epoch}-{self.seq}"


@dataclass(frozen=True, slots=True)
class Replay:
    """What a (re)connecting client gets first: the events after its id, and whether some
    it should have had are gone (``reset``)."""

    events: list[LiveEvent]
    reset: bool
    last_seq: int


class _Waiter:
    """A stream waiting for events: an asyncio.Event set from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.event = asyncio.Event()

    def wake(self) -> None:
        # a closed loop raises RuntimeError: its stream is gone
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.event.set)


class LiveFeed:
    """The ring of recent events and the streams waiting on it."""

    def __init__(self, replay_size: int = REPLAY_SIZE, epoch: int | None = None) -> None:
        self.epoch = epoch if epoch is not None else int(time.time() * 1000)
        self._ring: collections.deque[LiveEvent] = collections.deque(maxlen=replay_size)
        self._seq = itertools.count(1)
        self._last = 0
        self._lock = threading.Lock()
        self._waiters: set[_Waiter] = set()
        self.closed = False

    @property
    def last_seq(self) -> int:
        """The sequence number of the newest event (0 before the first)."""
        return self._last

    def publish(
        self,
        kind: str,
        data: dict[str, Any],
        audience: Audience = everyone,
        shape: Shape | None = None,
    ) -> LiveEvent:
        """Add an event and wake the streams; safe from any thread, never blocks for long."""
        with self._lock:
            event = LiveEvent(next(self._seq), self.epoch, kind, data, audience, shape)
            self._ring.append(event)
            self._last = event.seq
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()
        return event

    def replay(self, last_event_id: str | None) -> Replay:
        """The events after ``last_event_id`` still held (all held ones for a new client
        asks for none: a new client starts from now)."""
        with self._lock:
            held = list(self._ring)
            last = self._last
        if last_event_id is None:
            return Replay([], False, last)
        epoch, _, seq_text = last_event_id.strip().partition("-")
        if not (epoch.isdigit() and seq_text.isdigit()) or int(epoch) != self.epoch:
            # an id of an earlier hub process (or garbage): what it missed is unknown
            return Replay(held, True, last)
        seq = int(seq_text)
        if seq >= last:
            return Replay([], seq > last, last)
        oldest = held[0].seq if held else last + 1
        missing = seq + 1 < oldest
        return Replay([e for e in held if e.seq > seq], missing, last)

    def after(self, seq: int) -> list[LiveEvent]:
        """The held events newer than ``seq``."""
        with self._lock:
            if self._last <= seq:
                return []
            return [e for e in self._ring if e.seq > seq]

    def waiter(self) -> _Waiter:
        """Register a stream of the running event loop; ``release`` it when done."""
        waiter = _Waiter(asyncio.get_running_loop())
        with self._lock:
            self._waiters.add(waiter)
        return waiter

    def release(self, waiter: _Waiter) -> None:
        """Forget a stream."""
        with self._lock:
            self._waiters.discard(waiter)

    def close(self) -> None:
        """End every stream (the API is stopping)."""
        self.closed = True
        with self._lock:
            waiters = list(self._waiters)
        for waiter in waiters:
            waiter.wake()


class ZoneChanges:
    """A count per (owner, zone) of devices in some state (bays occupied, lanes congested),
    published as ``zone`` events at most once per ``min_interval_s`` per key, and always with
    the newest numbers: a thousand bays changing in a second make one event per zone."""

    def __init__(
        self,
        feed: LiveFeed,
        measure: str,
        audience: Callable[[str | None], Audience],
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = 1.0,
    ) -> None:
        self._feed = feed
        self._measure = measure
        self._audience = audience
        self._clock = clock
        self._interval = min_interval_s
        self._lock = threading.Lock()
        self._state: dict[tuple[str | None, str], dict[str, bool]] = {}
        # member -> (its key, on): where each member is, for moves and the fast path
        self._where: dict[str, tuple[tuple[str | None, str], bool]] = {}
        self._dirty: set[tuple[str | None, str]] = set()
        self._sent_at: dict[tuple[str | None, str], float] = {}

    def set(self, owner: str | None, zone: str, member: str, on: bool) -> None:
        """Record that ``member`` (a bay, a lane) of ``zone`` is on (occupied, congested)."""
        key = (owner, zone)
        # the decode thread's fast path: most messages change nothing (a bay still free, a
        # lane still flowing), and those need no lock (only this thread writes ``_where``)
        if self._where.get(member) == (key, on):
            return
        with self._lock:
            previous = self._where.get(member)
            if previous is not None and previous[0] != key:
                # a member seen in another zone before (a moved bay) leaves it
                self._state[previous[0]].pop(member, None)
                self._dirty.add(previous[0])
            self._state.setdefault(key, {})[member] = on
            self._where[member] = (key, on)
            self._dirty.add(key)

    def flush(self, force: bool = False) -> int:
        """Publish the keys that changed and whose last event is old enough; how many."""
        now = self._clock()
        ready: list[tuple[tuple[str | None, str], int, int]] = []
        with self._lock:
            for key in list(self._dirty):
                if force or now - self._sent_at.get(key, -1e18) >= self._interval:
                    members = self._state.get(key, {})
                    ready.append((key, sum(members.values()), len(members)))
                    self._dirty.discard(key)
                    self._sent_at[key] = now
        for (owner, zone), count, total in sorted(ready, key=lambda r: (r[0][1], r[0][0] or "")):
            self._feed.publish(
                "zone",
                {
                    "zone": zone,
                    "owner": owner,
                    "measure": self._measure,
                    "count": count,
                    "total": total,
                },
                self._audience(owner),
            )
        return len(ready)


@dataclass(frozen=True, slots=True)
class ZoneMeasure:
    """A zone-level count the feed follows: members (devices, or series of a device named by
    ``member_tags``) of a zone whose newest ``field`` of ``measurement`` satisfies ``on``."""

    name: str
    measurement: str
    field: str
    on: Callable[[Any], bool]
    member_tags: tuple[str, ...] = ()


class ZoneWatch:
    """Feeds decoded points to one ``ZoneChanges`` per ``ZoneMeasure``."""

    def __init__(
        self,
        feed: LiveFeed,
        measures: tuple[ZoneMeasure, ...],
        owner_of: Callable[[str], str | None],
        audience: Callable[[ZoneMeasure, str | None], Audience],
        *,
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = 1.0,
    ) -> None:
        self._owner_of = owner_of
        self._by_measurement = {m.measurement: m for m in measures}
        self._changes = {
            m.measurement: ZoneChanges(
                feed,
                m.name,
                functools.partial(audience, m),
                clock,
                min_interval_s,
            )
            for m in measures
        }

    def observe(self, device_id: str, measurement: str, tags: dict[str, str], value: Any) -> None:
        """One point's value of a followed measurement (callers check ``follows`` first)."""
        measure = self._by_measurement[measurement]
        if value is None:
            return
        try:
            on = bool(measure.on(value))
        except (TypeError, ValueError):  # a value of an unexpected type counts as off
            on = False
        member = (
            "/".join([device_id, *(tags.get(t, "") for t in measure.member_tags)])
            if measure.member_tags
            else device_id
        )
        zone = tags.get("zone", "")
        self._changes[measurement].set(self._owner_of(device_id), zone, member, on)

    def follows(self, measurement: str) -> ZoneMeasure | None:
        """The measure following ``measurement``, if any."""
        return self._by_measurement.get(measurement)

    def flush(self, force: bool = False) -> int:
        """Publish what changed (``ZoneChanges.flush``) for every measure."""
        return sum(changes.flush(force) for changes in self._changes.values())


def _congested(value: Any) -> bool:
    return isinstance(value, int | float) and value > CONGESTION_PCT


def _occupied(value: Any) -> bool:
    return value is True


# The zone-level changes of the Situation Room wall, on the contract's stored schema.
ZONE_MEASURES = (
    ZoneMeasure("parking_occupied", "parking_bay", "occupied", _occupied),
    ZoneMeasure(
        "lanes_congested", "traffic_lane", "occupancy_pct", _congested, ("lane", "direction")
    ),
)
