"""Notification stage: delivers alert lifecycle events to the maintenance teams.

::

    alert engine --submit(AlertEvent)--> Dispatcher --one queue + worker per channel-->
        MqttAlertChannel   hub/alerts/{severity}/{device_id}, JSON, QoS 1
        WebhookChannel     JSON POST signed with HMAC-SHA256, one per configured endpoint
        EmailChannel       SMTP (STARTTLS), one per team

``config`` reads the notification YAML file, ``channels.build_channels`` turns it into
channels, and ``dispatch.Dispatcher`` queues, retries, counts and persists the deliveries.
"""
