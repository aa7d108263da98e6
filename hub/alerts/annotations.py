"""Alert events as InfluxDB points (measurement ``alert_event``), for Grafana annotations.

A notification channel like the others: it goes through the dispatcher, so a slow or down
InfluxDB delays only these points (retried), never ingest or the other channels.
"""

from __future__ import annotations

from hub.alerts.model import AlertEvent
from hub.errors import StoreRejected, StoreUnavailable
from hub.model import Point
from hub.notify.dispatch import NotifyError
from hub.storage import lineprotocol
from hub.storage.influx import InfluxClient

MEASUREMENT = "alert_event"


def event_point(event: AlertEvent) -> Point:
    """``alert_event,rule,device_id,severity,state message="..."`` at the event's time."""
    alert = event.alert
    tags = {
        "rule": alert.rule,
        "device_id": alert.device_id,
        "severity": alert.severity,
        "state": event.kind,
        "zone": alert.zone,
        "profile": alert.profile,
    }
    tags.update({k: v for k, v in alert.series.items() if k not in tags})
    fields = {"message": alert.message, "alert_id": alert.id}
    if alert.explained_by and alert.explained_by.get("id"):
        fields["explained_by"] = str(alert.explained_by["id"])
    return Point(MEASUREMENT, {k: v for k, v in tags.items() if v}, dict(fields), event.at_ms)


class AlertEventStore:
    """Writes each alert event to InfluxDB."""

    name = "influxdb"

    def __init__(self, store: InfluxClient) -> None:
        self._store = store

    def accepts(self, event: AlertEvent) -> bool:
        """Every event is recorded."""
        return True

    def close(self) -> None:
        """Close the InfluxDB connection pool (the dispatcher calls it on stop)."""
        self._store.close()

    def send(self, event: AlertEvent) -> None:
        """Write the event's point; retryable unless InfluxDB calls it invalid."""
        try:
            self._store.write(lineprotocol.encode(event_point(event)))
        except StoreRejected as exc:
            raise NotifyError(str(exc), permanent=True) from exc
        except StoreUnavailable as exc:
            raise NotifyError(str(exc), permanent=False) from exc
