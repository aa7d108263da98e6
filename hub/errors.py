"""The hub's exception tree. Every error the hub raises on purpose is one of these::

    HubError
    ├── ConfigError            bad settings or inventory; stops start-up
    │   └── ProfileError       a device profile file is wrong (file, key, reason)
    ├── DecodeError            a payload does not match its profile -> dead letter (reason code)
    │   └── InterventionError  an intervention message is invalid (hub.interventions.model)
    ├── StoreError             InfluxDB said no, classified by what to do next
    │   ├── StoreUnavailable   connection error, 5xx, 429: retry after a delay
    │   └── StoreRejected      400/422: the points are invalid; drop them and count
    └── BrokerError            the MQTT broker refused or could not be reached

Third-party exceptions (httpx, paho) are mapped into this tree at the one module that uses
that client, so the rest of the hub never imports them.
"""

from __future__ import annotations


class HubError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigError(HubError):
    """Settings, inventory or another start-up input is invalid."""


class ProfileError(ConfigError):
    """A device profile is invalid. Carries the file, the key path and the reason."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


class DecodeError(HubError):
    """A payload does not match its profile.

    ``reason`` is a short stable code (``truncated_frame``, ``missing_key`` ...) used as the
    dead-letter reason and as a metrics label; ``detail`` says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class StoreError(HubError):
    """InfluxDB did not accept a write or a query."""


class StoreUnavailable(StoreError):
    """Temporary: the store could not be reached or asked us to come back later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


class StoreRejected(StoreError):
    """Permanent for these points: the store rejected them as invalid."""


class BrokerError(HubError):
    """The MQTT broker could not be reached or refused the hub."""
