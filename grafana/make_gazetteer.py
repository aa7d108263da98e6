#!/usr/bin/env python3
"""Turn the device inventory (devices.csv) into the gazetteer of Grafana's geomap panels.

The hub stores no coordinates in InfluxDB: a parking point carries ``device_id``, ``zone``,
``bay`` and ``dev_eui`` only. The parking dashboard's geomap therefore places each bay with the
panel's *lookup* location mode: it looks the row's ``device_id`` up in a gazetteer, a file that
Grafana loads from its own ``public/`` folder. docker-compose.yml mounts ``grafana/gazetteer/``
at ``/usr/share/grafana/public/gazetteer/prato/``, so the file written here is served as
``public/gazetteer/prato/prato-devices.json``.

The file is GeoJSON: a FeatureCollection with one Point feature per device that has ``lat`` and
``lon`` in the inventory, its ``id`` the device id (Grafana keys the lookup on the ``id`` and on
the ``device_id`` property). An empty inventory still gives a valid, empty collection.

    python3 grafana/make_gazetteer.py devices.csv            # writes the mounted file
    python3 grafana/make_gazetteer.py devices.csv -o out.json

Run it again whenever the inventory changes; Grafana reads the file when a dashboard loads
(reload the browser tab). Standard library only, so it runs anywhere Python 3.11 does.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "gazetteer" / "prato-devices.json"
REQUIRED_COLUMNS = ("device_id", "lat", "lon")
PROPERTIES = ("profile", "zone")


class InventoryError(ValueError):
    """A row of the inventory cannot be placed on the map (file, line, reason)."""


def _coordinate(text: str, limit: float, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InventoryError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(value) or abs(value) > limit:
        raise InventoryError(f"{where}: {what} {text!r} is outside ±{limit:g}")
    return value


def features(inventory: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The GeoJSON features of ``inventory``, and the ids of devices without coordinates."""
    with inventory.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InventoryError(f"{inventory}: no column {', '.join(missing)} in the header")
        found: dict[str, dict[str, Any]] = {}
        unplaced: list[str] = []
        for row in reader:
            where = f"{inventory}:{reader.line_num}"
            device_id = (row.get("device_id") or "").strip()
            if not device_id:
                raise InventoryError(f"{where}: empty device_id")
            if device_id in found or device_id in unplaced:
                raise InventoryError(f"{where}: device {device_id} is listed twice")
            lat_text = (row.get("lat") or "").strip()
            lon_text = (row.get("lon") or "").strip()
            if not lat_text or not lon_text:
                unplaced.append(device_id)
                continue
            lat = _coordinate(lat_text, 90, "lat", where)
            lon = _coordinate(lon_text, 180, "lon", where)
            properties = {"device_id": device_id}
            properties.update({k: (row.get(k) or "").strip() for k in PROPERTIES if row.get(k)})
            found[device_id] = {
                "type": "Feature",
                "id": device_id,
                "geometry": {"type": "Point", "coordinates": [lon, lat]},
                "properties": properties,
            }
    return [found[key] for key in sorted(found)], unplaced


def render(placed: list[dict[str, Any]]) -> str:
    """The FeatureCollection as JSON, one feature per line (readable diffs, small files)."""
    lines = [json.dumps(feature, ensure_ascii=False) for feature in placed]
    body = ",\n".join(lines)
    return '{"type": "FeatureCollection", "features": [\n' + body + ("\n" if body else "") + "]}\n"


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so Grafana never serves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(temporary, 0o644)  # Grafana runs as another user in its container
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    """Command line: read the inventory, write the gazetteer, report what was left out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("inventory", type=Path, help="devices.csv")
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}"
    )
    args = parser.parse_args(argv)
    try:
        placed, unplaced = features(args.inventory)
    except (OSError, InventoryError) as exc:
        print(f"make_gazetteer: {exc}", file=sys.stderr)
        return 1
    write_atomically(args.output, render(placed))
    print(f"{args.output}: {len(placed)} devices")
    if unplaced:
        shown = ", ".join(unplaced[:10]) + (", ..." if len(unplaced) > 10 else "")
        print(f"no lat/lon, not on the map: {len(unplaced)} ({shown})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
