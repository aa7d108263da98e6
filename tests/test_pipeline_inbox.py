"""The decode stage's own state, without services: the inbox between the MQTT thread and the
decoder (bounded by ``_receive_many`` itself) and the ring of each device's last raw messages."""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from hub.inventory import Inventory
from hub.model import RawMessage
from hub.pipeline import _STOP, Hub
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.storage.writer import Batch

ROOT = Path(__file__).resolve().parent.parent


def _hub(tmp_path: Path, **overrides: Any) -> Hub:
    settings = Settings(
        **{
            "mqtt_url": "mqtt://127.0.0.1:9",  # never connected: start() is not called
            "mqtt_receive_maximum": 1,
            "queue_size": 100,
            "profiles_dir": ROOT / "device_profiles",
            "data_dir": tmp_path,
            "stats_interval_s": 0,
            "spool_max_bytes": 0,
            **overrides,
        }
    )
    return Hub(settings, ProfileSet.load(settings.profiles_dir), Inventory([]))


def test_a_full_inbox_holds_the_mqtt_thread_until_the_decoder_takes_one(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    limit = hub.tuning.queue_size  # at least Receive Maximum + 1,000
    message = RawMessage("citelum/lighting/PO-QE-1/status", b"{}", 0, 0)
    hub._receive_many([message] * (limit - 1))  # as one read of the socket hands them over
    hub._receive_many([message])
    assert hub.inbox_depth() == limit

    extra = threading.Thread(target=hub._receive, args=(message,), daemon=True)
    extra.start()
    extra.join(0.3)
    assert extra.is_alive(), "a QoS 0 message must wait while the inbox is full"
    assert hub.inbox_depth() == limit

    hub.inbox.get()  # the decoder takes the first read's worth
    hub._taken += limit - 1
    extra.join(10)
    assert not extra.is_alive()
    assert hub.inbox_depth() == 2
    assert hub.received == limit + 1
    hub.store.close()


def test_a_full_inbox_never_holds_the_mqtt_thread_while_dead_letters_await_confirmation(
    tmp_path: Path,
) -> None:
    # The MQTT thread is the only one that sends our publishes and reads their PUBACKs: the
    # writer waiting for a dead letter's PUBACK holds the decoder, which is what would free
    # the inbox; waiting here then would wait for ever.
    hub = _hub(tmp_path)
    limit = hub.tuning.queue_size
    message = RawMessage("citelum/lighting/PO-QE-1/status", b"{}", 0, 0)
    hub._receive_many([message] * limit)
    confirming = threading.Event()
    released = threading.Event()

    def wait_published(mids: Sequence[int], timeout_s: float) -> bool:
        confirming.set()
        return released.wait(timeout_s)  # the PUBACK the MQTT thread must read

    hub.link.wait_published = wait_published  # type: ignore[method-assign]
    batch = Batch()
    hub.decode_into(RawMessage("traffic/PO-TC-1/health", b"not json", 0, 1, 7), batch)
    writer = threading.Thread(target=hub.writer.commit, args=(batch,), daemon=True)
    writer.start()
    assert confirming.wait(5)
    assert hub.writer.confirming_letters
    extra = threading.Thread(target=hub._receive, args=(message,), daemon=True)
    extra.start()
    extra.join(5)
    assert not extra.is_alive(), "the MQTT thread waited while a dead letter needed it"
    assert hub.inbox_depth() == limit + 1  # over the bound, for as long as it takes
    released.set()
    writer.join(5)
    assert not hub.writer.confirming_letters
    hub.store.close()


def test_each_device_keeps_its_last_three_raw_messages_capped_in_size(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    batch = Batch()
    for n in range(5):
        payload = b'{"supply_v": %d.5, "temp_c": 20, "door": "closed", "note": "%s"}' % (
            n,
            b"x" * (3_000 if n == 4 else 1),
        )
        hub.decode_into(RawMessage("traffic/PO-TC-9/health", payload, 1_000 + n, 0), batch)
    ring = hub.raw_messages["PO-TC-9"]
    assert [m.received_ms for m in ring] == [1_002, 1_003, 1_004]
    assert len(ring[-1].payload) == 2_048  # the big one is cut to the cap
    assert ring[0].payload.startswith(b'{"supply_v": 2.5')
    hub.store.close()


def _health(n: int) -> RawMessage:
    payload = b'{"supply_v": 12.5, "temp_c": 20, "door": "closed"}'
    return RawMessage(f"traffic/PO-TC-{n}/health", payload, 1_000 + n, 0)


def _batches(hub: Hub, count: int) -> list[Batch]:
    """The next ``count`` batches the decode stage hands to the writer (5 s for each)."""
    found: list[Batch] = []
    for _ in range(count):
        try:
            item = hub.outbox.get(timeout=5)
        except queue.Empty:
            pytest.fail(f"no batch {len(found) + 1} within 5 s")
        assert isinstance(item, Batch)
        found.append(item)
    return found


def test_a_backlog_fills_batches_and_its_tail_goes_out_once_the_inbox_runs_dry(
    tmp_path: Path,
) -> None:
    # a flush interval of 60 s: only the idle rule can write the tail within the test's 5 s
    hub = _hub(tmp_path, batch_size=1_000, flush_interval_s=60, flush_idle_s=0.05, queue_size=5_000)
    hub.alerts.offer_many = lambda items: None  # type: ignore[method-assign]  # no engine here
    for first in range(0, 2_500, 250):  # as reads of the socket hand them over
        hub._receive_many([_health(n) for n in range(first, first + 250)])
    decoder = threading.Thread(target=hub._decode_loop, daemon=True)
    decoder.start()
    try:
        batches = _batches(hub, 3)
        assert not any(b.dead for b in batches)
        assert [b.points for b in batches] == [1_000, 1_000, 500]
        hub._receive(_health(9_999))  # light traffic: one message, written on its own
        assert [b.points for b in _batches(hub, 1)] == [1]
    finally:
        hub.inbox.put(_STOP)
        decoder.join(5)
        hub.store.close()
    assert hub.outbox.get(timeout=1) is _STOP
    assert hub.inbox_depth() == 0
