"""Turning the notification config into channels for the ``Dispatcher``."""

from __future__ import annotations

from hub.errors import ConfigError
from hub.notify.config import NotifyConfig
from hub.notify.dispatch import Channel
from hub.notify.email import EmailChannel
from hub.notify.mqtt import AlertPublisher, MqttAlertChannel
from hub.notify.webhook import WebhookChannel


def build_channels(config: NotifyConfig, publisher: AlertPublisher | None) -> list[Channel]:
    """One channel for MQTT (when enabled), one per webhook and one per team.

    ``publisher`` is the hub's MQTT link; it may be ``None`` only when the MQTT channel is
    disabled in ``config``.
    """
    channels: list[Channel] = []
    if config.mqtt.enabled:
        if publisher is None:
            raise ConfigError("the MQTT alert channel is enabled but no MQTT link was given")
        channels.append(MqttAlertChannel(publisher, config.mqtt))
    channels.extend(WebhookChannel(spec) for spec in config.webhooks)
    if config.smtp is not None:
        channels.extend(EmailChannel(config.smtp, team) for team in config.teams)
    return channels
