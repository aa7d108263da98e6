"""The device inventory (``devices.csv``) and the enrich step that adds its zone to points.

``devices.csv`` columns: ``device_id,profile,zone,lat,lon,owner,installed_at``. Each row is
validated at start-up; a bad row stops the hub with the file, the line and the reason.
Devices that send but are not listed are stored with ``zone=unknown`` and listed as
unregistered by ``DeviceRegistry``.
"""

from __future__ import annotations

import csv
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.errors import ConfigError
from hub.model import Decoded

UNKNOWN_ZONE = "unknown"
STATUS_MEASUREMENT = "device_status"
COLUMNS = ("device_id", "profile", "zone", "lat", "lon", "owner", "installed_at")


class _Row(BaseModel):
    """One ``devices.csv`` row, as validated at load."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device_id: str = Field(min_length=1)
    profile: str = Field(min_length=1)
    zone: str = Field(min_length=1)
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    owner: str = ""
    installed_at: date | datetime | None = None


@dataclass(frozen=True, slots=True)
class Device:
    """One inventory device. A plain slotted record, not the pydantic row it is validated
    as: the hub keeps one per device (~100 bytes instead of ~1.2 kB)."""

    device_id: str
    profile: str
    zone: str
    lat: float | None = None
    lon: float | None = None
    owner: str = ""
    installed_at: date | datetime | None = None


class Inventory:
    """Known devices by id."""

    def __init__(self, devices: list[Device]) -> None:
        self.devices = {d.device_id: d for d in devices}
        self._zones = {d.device_id: d.zone for d in devices}

    @classmethod
    def load(cls, path: Path, *, required: bool = False) -> Inventory:
        """Read ``path``; a missing file gives an empty inventory unless ``required``."""
        if not path.exists():
            if required:
                raise ConfigError(f"{path}: inventory file does not exist")
            return cls([])
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read the inventory: {exc}") from exc
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path}: header lacks columns {', '.join(missing)}")
        devices: list[Device] = []
        seen: set[str] = set()
        for row in reader:
            line = reader.line_num
            values = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
            cleaned = {k: (v if v != "" else None) for k, v in values.items()}
            for key in ("device_id", "profile", "zone", "owner"):
                cleaned[key] = values.get(key) or ("" if key == "owner" else None)
            try:
                valid = _Row.model_validate(cleaned)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise ConfigError(f"{path}:{line}: {where}: {first['msg']}") from exc
            # profile, zone and owner repeat across thousands of rows: one string each
            device = Device(
                valid.device_id,
                sys.intern(valid.profile),
                sys.intern(valid.zone),
                valid.lat,
                valid.lon,
                sys.intern(valid.owner),
                valid.installed_at,
            )
            if device.device_id in seen:
                raise ConfigError(f"{path}:{line}: device {device.device_id!r} listed twice")
            seen.add(device.device_id)
            devices.append(device)
        return cls(devices)

    def owner(self, device_id: str) -> str | None:
        """The device's owner; ``None`` when it is not listed or has none."""
        listed = self.devices.get(device_id)
        return listed.owner or None if listed is not None else None

    def zone(self, device_id: str) -> str | None:
        """The device's zone, or ``None`` when it is not listed."""
        return self._zones.get(device_id)

    def enrich(self, decoded: Decoded) -> bool:
        """Add the inventory zone (or ``unknown``) to points without one; True if listed."""
        zone = self._zones.get(decoded.device_id)
        fill = zone if zone is not None else UNKNOWN_ZONE
        for point in decoded.points:
            if "zone" not in point.tags:
                point.tags["zone"] = fill
        return zone is not None


@dataclass(slots=True)
class DeviceSeen:
    """What the hub has observed of one device."""

    profile: str
    registered: bool
    last_seen_ms: int = 0
    messages: int = 0
    time_problems: dict[str, int] = field(default_factory=dict)
    online: bool | None = None  # from device_status.online, when the device reports it


OnlineChange = Callable[[str, str, bool, str], None]  # device, profile, online, why


class DeviceRegistry:
    """Devices seen since start: last seen, registered or not, timestamp problems.

    ``on_change`` (optional) hears of every change of a device's reported
    ``device_status.online``, and of a first message since start that reports it offline; it
    runs on the decode thread, so it must be quick.
    """

    def __init__(self, on_change: OnlineChange | None = None) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, DeviceSeen] = {}
        self._on_change = on_change

    def observe(self, decoded: Decoded, registered: bool, received_ms: int) -> None:
        """Record one decoded message of a device."""
        changes: list[tuple[bool, str]] = []
        with self._lock:
            seen = self._seen.get(decoded.device_id)
            first = seen is None
            if seen is None:
                seen = self._seen[decoded.device_id] = DeviceSeen(decoded.profile, registered)
            seen.last_seen_ms = max(seen.last_seen_ms, received_ms)
            seen.messages += 1
            if decoded.time_problem is not None:
                kind = decoded.time_problem.kind
                seen.time_problems[kind] = seen.time_problems.get(kind, 0) + 1
            for point in decoded.points:
                # convention: a profile reports presence as device_status.online (the
                # Citelum gateway's retained LWT); it drives the online state
                if point.measurement == STATUS_MEASUREMENT:
                    online = point.fields.get("online")
                    if isinstance(online, bool):
                        if seen.online is not online and not first:
                            changes.append((online, "device status"))
                        seen.online = online
            if first and seen.online is False:
                # a first message saying "offline" (a gateway's retained will at start-up);
                # a device's first message otherwise is no change worth a live event: after a
                # restart every device sends one
                changes.append((False, "first message"))
        if self._on_change is not None:
            for online, why in changes:
                self._on_change(decoded.device_id, decoded.profile, online, why)

    def get(self, device_id: str) -> DeviceSeen | None:
        """A copy of what was seen of ``device_id``."""
        with self._lock:
            seen = self._seen.get(device_id)
            if seen is None:
                return None
            return DeviceSeen(
                seen.profile,
                seen.registered,
                seen.last_seen_ms,
                seen.messages,
                dict(seen.time_problems),
                seen.online,
            )

    def all(self) -> dict[str, DeviceSeen]:
        """A copy of everything seen, by device id."""
        with self._lock:
            return {
                device: DeviceSeen(
                    s.profile,
                    s.registered,
                    s.last_seen_ms,
                    s.messages,
                    dict(s.time_problems),
                    s.online,
                )
                for device, s in self._seen.items()
            }

    def unregistered(self) -> list[str]:
        """Ids of devices that sent data but are not in the inventory, sorted."""
        with self._lock:
            return sorted(d for d, seen in self._seen.items() if not seen.registered)
