"""The decode stage's own state, without services: the inbox between the MQTT thread and the
decoder (bounded by ``_receive`` itself) and the ring of each device's last raw messages."""

from __future__ import annotations

import threading
from pathlib import Path

from hub.inventory import Inventory
from hub.model import RawMessage
from hub.pipeline import Hub
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.storage.writer import Batch

ROOT = Path(__file__).resolve().parent.parent


def _hub(tmp_path: Path) -> Hub:
    settings = Settings(
        mqtt_url="mqtt://127.0.0.1:9",  # never connected: start() is not called
        mqtt_receive_maximum=1,
        queue_size=100,
        profiles_dir=ROOT / "device_profiles",
        data_dir=tmp_path,
        stats_interval_s=0,
        spool_max_bytes=0,
    )
    return Hub(settings, ProfileSet.load(settings.profiles_dir), Inventory([]))


def test_a_full_inbox_holds_the_mqtt_thread_until_the_decoder_takes_one(tmp_path: Path) -> None:
    hub = _hub(tmp_path)
    limit = hub.tuning.queue_size  # at least Receive Maximum + 1,000
    message = RawMessage("citelum/lighting/PO-QE-1/status", b"{}", 0, 0)
    for _ in range(limit):
        hub._receive(message)
    assert hub.inbox.qsize() == limit

    extra = threading.Thread(target=hub._receive, args=(message,), daemon=True)
    extra.start()
    extra.join(0.3)
    assert extra.is_alive(), "a QoS 0 message must wait while the inbox is full"
    assert hub.inbox.qsize() == limit

    hub.inbox.get()  # the decoder takes one
    extra.join(10)
    assert not extra.is_alive()
    assert hub.inbox.qsize() == limit
    assert hub.received == limit + 1
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
