"""The batch commit: retry, split on reject, dead letters, ack only after durable write."""

from __future__ import annotations

import threading

import orjson

from hub.errors import StoreRejected, StoreUnavailable
from hub.metrics import Metrics
from hub.model import DeadLetter, RawMessage
from hub.storage.writer import Batch, BatchWriter, Entry


class FakeStore:
    """Rejects any body containing 'BAD'; fails `outages` times first."""

    def __init__(self, outages: int = 0) -> None:
        self.outages = outages
        self.written: list[str] = []

    def write(self, lines: str) -> None:
        if self.outages:
            self.outages -= 1
            raise StoreUnavailable("down", retry_after_s=0.01)
        if "BAD" in lines:
            raise StoreRejected("unable to parse 'BAD'")
        self.written.extend(lines.split("\n"))


class FakeLetters:
    def __init__(self, confirm: bool = True) -> None:
        self.sent: list[tuple[str, dict[str, object]]] = []
        self.confirm = confirm

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        self.sent.append((topic, orjson.loads(payload)))
        return len(self.sent)

    def wait_published(self, mids: list[int], timeout_s: float) -> bool:
        return self.confirm


def _entry(n: int, bad: bool = False) -> Entry:
    message = RawMessage(f"t/{n}", b"{}", 1_000, qos=1, mid=n)
    return Entry(message, "p", f"m,device_id=d{n} v={'BAD' if bad else n}i {n}", 1)


def _writer(
    store: FakeStore,
    letters: FakeLetters,
    acked: list[RawMessage],
    stopping: threading.Event | None = None,
) -> tuple[BatchWriter, Metrics]:
    metrics = Metrics()
    writer = BatchWriter(
        store,
        letters,
        acked.extend,
        metrics,
        stopping or threading.Event(),
        retry_first_s=0.001,
        retry_max_s=0.01,
        publish_timeout_s=0.01,
    )
    return writer, metrics


def test_rejected_message_is_isolated_and_dead_lettered() -> None:
    store, letters, acked = FakeStore(), FakeLetters(), []  # type: ignore[var-annotated]
    writer, metrics = _writer(store, letters, acked)
    batch = Batch(entries=[_entry(n, bad=(n == 5)) for n in range(8)])
    assert writer.commit(batch)
    assert sorted(store.written) == sorted(
        f"m,device_id=d{n} v={n}i {n}" for n in range(8) if n != 5
    )
    assert [(t, body["reason"], body["topic"]) for t, body in letters.sent] == [
        ("hub/deadletter/p", "rejected_by_store", "t/5")
    ]
    assert sorted(m.mid for m in acked) == list(range(8))
    assert metrics.value("points_rejected_total", profile="p") == 1
    assert metrics.value("points_written_total") == 7


def test_outage_is_retried_and_acks_wait_for_the_write() -> None:
    store, letters, acked = FakeStore(outages=3), FakeLetters(), []  # type: ignore[var-annotated]
    writer, metrics = _writer(store, letters, acked)
    assert writer.commit(Batch(entries=[_entry(1), _entry(2)]))
    assert len(store.written) == 2
    assert [m.mid for m in acked] == [1, 2]
    assert metrics.value("write_retries_total", target="influxdb") == 3


def test_stop_during_outage_acks_nothing() -> None:
    stopping = threading.Event()
    stopping.set()
    store, letters, acked = FakeStore(outages=100), FakeLetters(), []  # type: ignore[var-annotated]
    writer, _ = _writer(store, letters, acked, stopping)
    assert not writer.commit(Batch(entries=[_entry(1)]))
    assert acked == []


def test_dead_letters_carry_reason_and_original_payload() -> None:
    store, letters, acked = FakeStore(), FakeLetters(), []  # type: ignore[var-annotated]
    writer, _ = _writer(store, letters, acked)
    raw = RawMessage("traffic/X/csv", b"\xff\xfe", 1_795_539_600_000, qos=1, mid=9)
    assert writer.commit(Batch(dead=[DeadLetter("traffic_counter", "not_utf8", "bad", raw)]))
    topic, body = letters.sent[0]
    assert topic == "hub/deadletter/traffic_counter"
    assert body["payload_b64"] == "//4="
    assert body["received_at"] == "2026-11-24T17:00:00.000+00:00"
    assert [m.mid for m in acked] == [9]


def test_unconfirmed_dead_letters_block_the_ack_until_stop() -> None:
    stopping = threading.Event()
    store, letters, acked = FakeStore(), FakeLetters(confirm=False), []  # type: ignore[var-annotated]
    writer, metrics = _writer(store, letters, acked, stopping)
    raw = RawMessage("x", b"", 1, qos=1, mid=3)
    timer = threading.Timer(0.2, stopping.set)
    timer.start()
    try:
        assert not writer.commit(Batch(dead=[DeadLetter("p", "empty_payload", "", raw)]))
    finally:
        timer.cancel()
    assert acked == []
    assert metrics.value("write_retries_total", target="deadletter") >= 1
