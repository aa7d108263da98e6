"""Batches and their commit: points to InfluxDB, dead letters to MQTT, then acks.

A ``Batch`` collects decoded messages (with their encoded lines), dead letters and messages
that produced no point. ``BatchWriter.commit`` makes a batch durable, in this order:

1. write the lines to InfluxDB, retrying with backoff while it is unavailable; when InfluxDB
   rejects the batch as invalid, split it in halves until the offending message is alone,
   and turn that message into a dead letter (``rejected_by_store``): one bad message never
   blocks or loses the others;
2. publish every dead letter (QoS 1) and wait for the broker's confirmation;
3. acknowledge every message of the batch to the broker.

A message is acknowledged only after step 1 and 2 succeeded for it. While InfluxDB is
unreachable, step 1 appends the batch to the on-disk ``Spool`` instead (fsync'd, so the
messages can be acknowledged) and ``SpoolReplayer`` writes it to InfluxDB, in order, when it
is back; while the spool holds anything, new batches queue behind it to keep that order. When
the spool is full, the writer keeps retrying and stops acknowledging: the broker keeps the
messages. If the hub stops while nothing can take a batch, it is left unacknowledged and the
broker redelivers it after restart (device timestamps make that idempotent).
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import orjson

from hub.errors import BrokerError, StoreRejected, StoreUnavailable
from hub.metrics import Metrics
from hub.model import DeadLetter, RawMessage
from hub.storage.spool import Spool

log = logging.getLogger(__name__)

DEAD_LETTER_TOPIC = "hub/deadletter/{profile}"


def dead_letter_payload(letter: DeadLetter) -> bytes:
    """The JSON published for a dead letter: reason, detail, original topic and payload."""
    message = letter.message
    return orjson.dumps(
        {
            "profile": letter.profile,
            "reason": letter.reason,
            "detail": letter.detail,
            "topic": message.topic,
            "payload_b64": base64.b64encode(message.payload).decode("ascii"),
            "received_at": datetime.fromtimestamp(message.received_ms / 1000, UTC).isoformat(
                timespec="milliseconds"
            ),
            "qos": message.qos,
            "retain": message.retain,
            **letter.extra,
        }
    )


class LineStore(Protocol):
    """Where lines go (``InfluxClient`` in production)."""

    def write(self, lines: str) -> None:
        """Write newline-separated line protocol or raise a ``StoreError``."""


class LetterOut(Protocol):
    """Where dead letters go (the MQTT link in production)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue one publish; returns its message id."""

    def wait_published(self, mids: list[int], timeout_s: float) -> bool:
        """True once every publish in ``mids`` is confirmed."""


@dataclass(slots=True, frozen=True)
class Entry:
    """One decoded message of a batch: its encoded lines and how many points they hold."""

    message: RawMessage
    profile: str
    lines: str
    points: int


@dataclass(slots=True)
class Batch:
    """Messages decoded since the last flush, ready to be committed together."""

    entries: list[Entry] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    no_points: list[RawMessage] = field(default_factory=list)
    points: int = 0
    opened: float = field(default_factory=time.monotonic)

    def __len__(self) -> int:
        return len(self.entries) + len(self.dead) + len(self.no_points)


class Aborted(Exception):
    """The hub is stopping while a retry loop waits; the batch stays unacknowledged."""


class BatchWriter:
    """Commits batches (see the module docstring). Runs on the writer thread only."""

    def __init__(
        self,
        store: LineStore,
        letters: LetterOut,
        ack: Callable[[list[RawMessage]], None],
        metrics: Metrics,
        stopping: threading.Event,
        *,
        retry_first_s: float = 0.5,
        retry_max_s: float = 30.0,
        publish_timeout_s: float = 10.0,
        spool: Spool | None = None,
    ) -> None:
        self._spool = spool
        self._store = store
        self._letters = letters
        self._ack = ack
        self._metrics = metrics
        self._stopping = stopping
        self._retry_first = retry_first_s
        self._retry_max = retry_max_s
        self._publish_timeout = publish_timeout_s
        self.last_write_s = 0.0
        #: True while dead letters wait for the broker's confirmation (see Hub._receive_many)
        self.confirming_letters = False

    def commit(self, batch: Batch) -> bool:
        """Make ``batch`` durable and ack it; False if aborted by shutdown (nothing acked)."""
        try:
            rejected = self._write(batch.entries) if batch.entries else []
            letters = batch.dead + rejected
            if letters:
                self._send_letters(letters)
        except Aborted:
            log.warning(
                "stopping with %d messages not yet durable: left unacknowledged", len(batch)
            )
            return False
        # one call for the whole batch: the MQTT link sends the PUBACKs in one write
        self._ack(
            [entry.message for entry in batch.entries]
            + [letter.message for letter in batch.dead]
            + batch.no_points
        )
        return True

    def _retrying(self, action: Callable[[], None], what: str) -> None:
        delay = self._retry_first
        while True:
            try:
                action()
                return
            except (StoreUnavailable, BrokerError) as exc:
                wait = delay
                if isinstance(exc, StoreUnavailable) and exc.retry_after_s is not None:
                    wait = min(max(exc.retry_after_s, 0.1), self._retry_max)
                self._metrics.inc("write_retries_total", target=what)
                log.warning("%s failed, retrying in %.1f s: %s", what, wait, exc)
                if self._stopping.wait(wait):
                    raise Aborted from exc
                delay = min(delay * 2, self._retry_max)

    def _spooled(self, entries: list[Entry], body: str) -> bool:
        if self._spool is None or not self._spool.append(body):
            return False
        self._metrics.inc("points_spooled_total", sum(entry.points for entry in entries))
        return True

    def _write(self, entries: list[Entry]) -> list[DeadLetter]:
        """Write ``entries`` (or spool them); returns dead letters for rejected messages."""
        body = "\n".join(entry.lines for entry in entries)
        rejected: list[DeadLetter] = []

        def attempt() -> None:
            nonlocal rejected
            if self._spool is not None and self._spool.records and self._spooled(entries, body):
                return  # older batches wait in the spool: stay behind them
            started = time.monotonic()
            try:
                self._store.write(body)
            except StoreRejected as exc:
                rejected = self._rejected(entries, exc)
                return
            except StoreUnavailable as exc:
                if self._spooled(entries, body):
                    log.warning("InfluxDB unavailable, batch spooled to disk: %s", exc)
                    return
                raise  # spool full or off: retried below, nothing acknowledged meanwhile
            self.last_write_s = time.monotonic() - started
            self._metrics.inc("points_written_total", sum(entry.points for entry in entries))
            self._metrics.inc("write_batches_total")
            self._metrics.inc("write_seconds_total", self.last_write_s)

        self._retrying(attempt, "influxdb")
        return rejected

    def _rejected(self, entries: list[Entry], exc: StoreRejected) -> list[DeadLetter]:
        if len(entries) == 1:
            entry = entries[0]
            self._metrics.inc("points_rejected_total", entry.points, profile=entry.profile)
            log.error("InfluxDB rejected a message on %s: %s", entry.message.topic, exc)
            return [
                DeadLetter(
                    entry.profile,
                    "rejected_by_store",
                    str(exc),
                    entry.message,
                    {"lines": entry.lines},
                )
            ]
        half = len(entries) // 2
        return self._write(entries[:half]) + self._write(entries[half:])

    def _send_letters(self, letters: list[DeadLetter]) -> None:
        def send() -> None:
            # only the MQTT thread sends them and reads their PUBACKs: it must not wait for
            # room in the inbox meanwhile (the decoder that frees it waits for this batch)
            self.confirming_letters = True
            try:
                mids = [
                    self._letters.publish(
                        DEAD_LETTER_TOPIC.format(profile=letter.profile),
                        dead_letter_payload(letter),
                        qos=1,
                    )
                    for letter in letters
                ]
                if not self._letters.wait_published(mids, self._publish_timeout):
                    raise BrokerError("dead letters not confirmed by the broker in time")
            finally:
                self.confirming_letters = False

        self._retrying(send, "deadletter")
        for letter in letters:
            self._metrics.inc("dead_letters_published_total", profile=letter.profile)


class SpoolReplayer:
    """Writes spooled batches to InfluxDB, oldest first, on its own thread."""

    def __init__(
        self,
        spool: Spool,
        store: LineStore,
        metrics: Metrics,
        stopping: threading.Event,
        *,
        retry_first_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self._spool = spool
        self._store = store
        self._metrics = metrics
        self._stopping = stopping
        self._retry_first = retry_first_s
        self._retry_max = retry_max_s
        self._thread = threading.Thread(target=self._run, name="hub-spool", daemon=True)

    def start(self) -> None:
        """Start replaying (what a previous run left in the spool comes first)."""
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        """Wait for the thread after ``stopping`` was set."""
        self._thread.join(timeout_s)

    def _run(self) -> None:
        delay = self._retry_first
        while not self._stopping.is_set():
            with self._spool.not_empty:
                if not self._spool.records:
                    self._spool.not_empty.wait(0.5)
                    continue
            lines = self._spool.peek()
            if lines is None:
                continue
            try:
                self._write(lines.split("\n"))
            except StoreUnavailable as exc:
                self._metrics.inc("write_retries_total", target="spool")
                log.debug("spool replay waits for InfluxDB: %s", exc)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_first
            self._spool.pop()

    def _write(self, lines: list[str]) -> None:
        try:
            self._store.write("\n".join(lines))
        except StoreRejected as exc:
            if len(lines) == 1:
                # the message was acknowledged when spooled: log the line, count it
                self._metrics.inc("points_rejected_total", profile="spool")
                log.error("InfluxDB rejected a spooled point, dropped: %s: %s", lines[0], exc)
                return
            half = len(lines) // 2
            self._write(lines[:half])
            self._write(lines[half:])
            return
        self._metrics.inc("points_replayed_total", len(lines))
