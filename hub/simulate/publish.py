"""Publishing a simulated fleet to the broker, paced in simulated time.

``replay`` publishes the fleet's messages of a window ``[start, end)`` in order. With
``speed`` 60, one minute of the fleet's life passes each wall-clock second; with ``speed`` 0
everything goes out as fast as the broker confirms it. ``follow`` keeps going in real time
after the window, so a demo shows data arriving live.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from hub.ingest.mqtt import MqttLink
from hub.simulate.fleet import Fleet, SimMessage

log = logging.getLogger(__name__)

#: QoS 1 publishes in flight before the simulator waits for the broker's confirmations
WINDOW = 2_000


def publish_all(
    link: MqttLink,
    messages: Iterable[SimMessage],
    *,
    pace: Callable[[SimMessage], bool] | None = None,
) -> int:
    """Publish ``messages``; ``pace`` may sleep before each and return False to stop early."""
    pending: list[int] = []
    sent = 0
    for message in messages:
        if pace is not None and not pace(message):
            break
        mid = link.publish(message.topic, message.payload, qos=message.qos, retain=message.retain)
        if message.qos:
            pending.append(mid)
        sent += 1
        if len(pending) >= WINDOW:
            if not link.wait_published(pending, 60):
                log.warning("broker slow to confirm publishes; continuing")
            pending = []
    if pending:
        link.wait_published(pending, 60)
    return sent


def replay(
    link: MqttLink,
    fleet: Fleet,
    start_ms: int,
    end_ms: int,
    *,
    speed: float,
    stop: threading.Event,
    clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> int:
    """Publish the fleet's messages of ``[start_ms, end_ms)``, ``speed`` x faster than life."""
    wall_start = clock_ms()

    def pace(message: SimMessage) -> bool:
        if speed > 0:
            wait_s = (message.due_ms - start_ms) / speed / 1000 - (clock_ms() - wall_start) / 1000
            if wait_s > 0 and stop.wait(wait_s):
                return False
        return not stop.is_set()

    return publish_all(link, fleet.messages(start_ms, end_ms), pace=pace)
