"""Alert value types shared by the engine, the notification channels and (later) the API."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

if TYPE_CHECKING:
    from hub.sharing import Access

Severity = Literal["info", "warning", "major", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "major": 2, "critical": 3}
EventKind = Literal["fired", "resolved", "acknowledged"]


def parse_iso_ms(text: str | None) -> int | None:
    """The inverse of ``iso_ms``."""
    if text is None:
        return None
    return round(datetime.fromisoformat(text).timestamp() * 1000)


def alert_for(access: Access, body: dict[str, Any]) -> dict[str, Any]:
    """An alert's JSON (with its device's ``owner``) as ``access``'s organisation is shown it:
    the intervention that explains it only to those who may see that owner's interventions,
    and who acknowledged it (an API key id and a free note) only to the device's owner."""
    shown = dict(body)
    why = shown.get("explained_by")
    if why and not access.sees_interventions(str(why.get("owner", ""))):
        shown["explained_by"] = {"restricted": True}
    if shown.get("acknowledged_by") and not access.owns(shown.get("owner")):
        shown["acknowledged_by"] = f"an operator of {shown.get('owner') or 'the owner'}"
    return shown


def iso_ms(epoch_ms: int | None) -> str | None:
    """An epoch-milliseconds time as ISO 8601 UTC, or ``None``."""
    if epoch_ms is None:
        return None
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat(timespec="milliseconds")


@dataclass(slots=True)
class Alert:
    """One alert of one rule for one device (and series, e.g. a phase or a lane)."""

    id: str
    rule: str
    profile: str
    device_id: str
    series: dict[str, str]
    severity: Severity
    message: str
    zone: str
    started_ms: int  # when the condition began (start of the `for` window)
    fired_ms: int
    state: Literal["firing", "resolved"] = "firing"
    resolved_ms: int | None = None
    acknowledged_by: str | None = None
    acknowledged_ms: int | None = None
    flaps: int = 0  # re-fires within the flap window, folded into this alert
    values: dict[str, Any] = field(default_factory=dict)
    # the intervention under way where and when the alert fired, which probably explains it:
    # {"id", "owner", "kind", "title", "status"}; None when none does
    explained_by: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view with ISO times (what notifications and the API carry)."""
        body = asdict(self)
        for key in ("started_ms", "fired_ms", "resolved_ms", "acknowledged_ms"):
            body[key.replace("_ms", "_at")] = iso_ms(body.pop(key))
        return body

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Alert:
        """Rebuild an alert from ``to_json`` output (state files, outboxes)."""
        data = dict(body)
        for key in ("started", "fired", "resolved", "acknowledged"):
            data[f"{key}_ms"] = parse_iso_ms(data.pop(f"{key}_at", None))
        return cls(**data)


@dataclass(slots=True, frozen=True)
class AlertEvent:
    """A lifecycle transition to notify: an alert fired, resolved or was acknowledged."""

    kind: EventKind
    alert: Alert
    at_ms: int

    def to_json(self) -> dict[str, Any]:
        """The notification body: the event kind, its time and the alert."""
        return {"event": self.kind, "at": iso_ms(self.at_ms), **self.alert.to_json()}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> AlertEvent:
        """Rebuild an event from ``to_json`` output."""
        data = dict(body)
        kind = cast(EventKind, data.pop("event"))
        at_ms = parse_iso_ms(data.pop("at")) or 0
        return cls(kind, Alert.from_json(data), at_ms)
