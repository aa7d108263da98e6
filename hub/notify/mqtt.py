"""Alerts published to the hub's broker, for dashboards and other subscribers.

Each event becomes one QoS 1 message on ``hub/alerts/{severity}/{device_id}`` (the topic is
configurable) whose payload is ``AlertEvent.to_json()``. Delivery counts once the broker
confirmed it (PUBACK). The broker connection is the hub's ``MqttLink``, seen here only
through the small ``AlertPublisher`` protocol: this module does not import paho.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import orjson

from hub.alerts.model import AlertEvent
from hub.errors import BrokerError
from hub.notify.config import MqttChannelSpec
from hub.notify.dispatch import NotifyError

# Characters with a meaning in MQTT topics: a device id must stay one topic level.
_TOPIC_UNSAFE = str.maketrans({"+": "_", "#": "_", "/": "_"})


class AlertPublisher(Protocol):
    """What the channel needs of an MQTT connection (``MqttLink`` in production)."""

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Queue one publish; returns its message id."""

    def wait_published(self, mids: Sequence[int], timeout_s: float) -> bool:
        """True once every publish in ``mids`` is confirmed by the broker."""


class MqttAlertChannel:
    """Publishes alert events as JSON, QoS 1, and waits for the broker's confirmation."""

    name = "mqtt"

    def __init__(
        self, publisher: AlertPublisher, spec: MqttChannelSpec, *, confirm_timeout_s: float = 10.0
    ) -> None:
        self._publisher = publisher
        self._spec = spec
        self._confirm_timeout_s = confirm_timeout_s

    def topic(self, event: AlertEvent) -> str:
        """The topic of ``event``: the template with its severity and device id."""
        alert = event.alert
        return self._spec.topic.format(
            severity=alert.severity, device_id=alert.device_id.translate(_TOPIC_UNSAFE)
        )

    def accepts(self, event: AlertEvent) -> bool:
        """True when the channel is enabled and the alert is at least ``min_severity``."""
        return self._spec.matches(event)

    def send(self, event: AlertEvent) -> None:
        """Publish ``event``; a retryable ``NotifyError`` when unconfirmed or refused."""
        topic = self.topic(event)
        try:
            mid = self._publisher.publish(topic, orjson.dumps(event.to_json()), qos=1)
        except BrokerError as exc:
            raise NotifyError(f"publish to {topic} failed: {exc}") from exc
        if not self._publisher.wait_published([mid], self._confirm_timeout_s):
            # paho keeps the message queued and may still deliver it: a retry can duplicate
            # it, which at-least-once allows.
            raise NotifyError(
                f"broker did not confirm the publish to {topic} in {self._confirm_timeout_s} s"
            )
