"""The naive baseline of the ingest benchmark: MQTT -> InfluxDB as a user would hand-write it.

::

    python -m bench.naive_baseline --mqtt-url mqtt://127.0.0.1:1883 --client-id naive --qos 1 \
        --influx-url http://127.0.0.1:8086 --database bench --messages 200000 \
        [--inventory devices.csv] [--subscribe-only]

One paho-mqtt client (MQTT 3.1.1, ``clean_session=False``, a fixed client id) whose
``on_message`` does everything on paho's network thread: ``json.loads`` (or ``;``-split for
the old traffic counters), the minimal per-family decoding of ``field-devices.md`` (the
parking frame from base64, best gateway, units, the inventory's zone, a device time when
plausible), points appended to a list, and every 5,000 points one
``InfluxDBClient.write_points(..., batch_size=5000)`` (the ``influxdb`` v1 client). QoS 1
messages are acknowledged by paho as soon as ``on_message`` returns. No profiles, no dead
letters, no queues, no alerts: the floor a hand-written consumer sets.

``bench/ingest.py`` runs it as its own process. It prints one line per event on stdout:
``subscribed`` (``--subscribe-only``: the persistent session exists, then it exits),
``connected`` (the drain starts), and at the end ``done {json}`` with the messages it took,
the points it wrote and the messages it could not decode. It stops after ``--messages``
messages and the last write.
"""

from __future__ import annotations

import argparse
import base64
import csv
import json
import struct
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from influxdb.client import InfluxDBClient
from paho.mqtt.enums import CallbackAPIVersion

BATCH = 5_000
#: the topic filters of the three families (the same the hub subscribes to)
TOPICS = (
    "application/+/device/+/event/up",
    "citelum/prato/+/lamp/+/state",
    "citelum/prato/+/cabinet/state",
    "citelum/prato/+/status",
    "traffic/+/interval",
    "traffic/+/csv",
    "traffic/+/health",
)
#: a device time is used when at most 7 days old and at most 5 minutes ahead
MAX_AGE_MS = 7 * 24 * 3600 * 1000
MAX_AHEAD_MS = 5 * 60 * 1000
CLASSES = ("car", "van", "truck", "bus", "moto", "bike")

Point = dict[str, Any]


def now_ms() -> int:
    """Milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


def stamp(device_ms: int | None, received_ms: int) -> int:
    """The device time when plausible, else the receive time."""
    if device_ms is None or not -MAX_AGE_MS <= device_ms - received_ms <= MAX_AHEAD_MS:
        return received_ms
    return device_ms


def iso_ms(text: str) -> int:
    """An ISO 8601 time (``Z`` or an offset) as epoch milliseconds."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def comma(text: str) -> float:
    """An Italian decimal: ``38,5``."""
    return float(text.replace(",", "."))


class Decoder:
    """The per-family decoding of ``field-devices.md``, written out by hand."""

    def __init__(self, zones: dict[str, str]) -> None:
        self.zones = zones

    def zone(self, device: str) -> str:
        """The inventory's zone of ``device``."""
        return self.zones.get(device, "unknown")

    def decode(self, topic: str, payload: bytes | bytearray, received_ms: int) -> list[Point]:
        """The points of one message (``ValueError``, ``KeyError``... when it is bad)."""
        levels = topic.split("/")
        if levels[0] == "application":
            return [self.parking(levels[3], json.loads(payload), received_ms)]
        if levels[0] == "citelum":
            cabinet = levels[2]
            if levels[3] == "lamp":
                return [self.lamp(cabinet, levels[4], json.loads(payload), received_ms)]
            if levels[3] == "cabinet":
                return self.cabinet(cabinet, json.loads(payload), received_ms)
            online = payload.decode() == "online"
            tags = {"device_id": cabinet, "zone": self.zone(cabinet)}
            return [point("device_status", tags, {"online": online}, received_ms)]
        site, kind = levels[1], levels[2]
        if kind == "interval":
            return self.interval(site, json.loads(payload), received_ms)
        if kind == "csv":
            return self.interval_csv(site, payload.decode(), received_ms)
        return [self.health(site, json.loads(payload), received_ms)]

    def parking(self, dev_eui: str, body: dict[str, Any], received_ms: int) -> Point:
        """A ChirpStack uplink: the base64 frame of fPort 2 or 3."""
        info = body.get("deviceInfo", {})
        device = info.get("deviceName") or dev_eui
        frame = base64.b64decode(body["data"])
        port = body["fPort"]
        if port not in (2, 3) or len(frame) < (4 if port == 2 else 6):
            raise ValueError(f"fPort {port}, {len(frame)} bytes")
        flags, millivolts, temperature = struct.unpack_from(">BHb", frame)
        fields: dict[str, Any] = {
            "occupied": bool(flags & 1),
            "sensor_fault": bool(flags & 2),
            "tamper": bool(flags & 4),
            "battery_v": millivolts / 1000,
            "temperature_c": float(temperature),
            "f_cnt": int(body["fCnt"]),
        }
        if port == 3:
            fields["occupancy_changes"] = struct.unpack_from(">H", frame, 4)[0]
        if body.get("rxInfo"):
            best = max(body["rxInfo"], key=lambda gateway: gateway["rssi"])
            fields["rssi_dbm"] = int(best["rssi"])
            fields["snr_db"] = float(best["snr"])
        tags = {
            "device_id": device,
            "zone": info.get("tags", {}).get("zone") or self.zone(device),
            "dev_eui": dev_eui,
        }
        if "bay" in info.get("tags", {}):
            tags["bay"] = info["tags"]["bay"]
        return point("parking_bay", tags, fields, stamp(iso_ms(body["time"]), received_ms))

    def lamp(self, cabinet: str, lamp: str, body: dict[str, Any], received_ms: int) -> Point:
        """A lamp controller's state."""
        faults = body.get("faults", [])
        fields = {
            "on": bool(body["on"]),
            "dim_pct": float(body["dim"]),
            "power_w": float(body["p"]),
            "voltage_v": float(body["v"]),
            "current_a": float(body["i"]),
            "power_factor": float(body["pf"]),
            "energy_wh": int(body["e"]),
            "burn_hours": int(body["hrs"]),
            "fault_count": len(faults),
            "faults": ",".join(faults),
        }
        tags = {"device_id": lamp, "cabinet_id": cabinet, "zone": self.zone(lamp)}
        return point("lighting_lamp", tags, fields, stamp(body["ts"] * 1000, received_ms))

    def cabinet(self, cabinet: str, body: dict[str, Any], received_ms: int) -> list[Point]:
        """A cabinet's state: one cabinet point and one point per phase."""
        at = stamp(iso_ms(body["ts"]), received_ms)
        tags = {"device_id": cabinet, "zone": self.zone(cabinet)}
        fields = {
            "mode": str(body["mode"]),
            "door_open": bool(body["door_open"]),
            "energy_kwh": float(body["kwh_total"]),
        }
        points = [point("lighting_cabinet", tags, fields, at)]
        for phase, values in body["phases"].items():
            phase_fields = {
                "voltage_v": float(values["v"]),
                "current_a": float(values["i"]),
                "power_kw": float(values["kw"]),
            }
            points.append(point("lighting_phase", {**tags, "phase": phase}, phase_fields, at))
        return points

    def lane(
        self, site: str, at: int, *, period_s: int, lane: str, direction: str, numbers: list[Any]
    ) -> Point:
        """One lane of an interval: six class counts, then speeds and occupancy."""
        counts = [int(n) for n in numbers[:6]]
        fields: dict[str, Any] = dict(zip(CLASSES, counts, strict=True))
        fields["vehicles"] = sum(counts)
        fields["speed_avg_kmh"] = float(numbers[6])
        fields["speed_p85_kmh"] = float(numbers[7])
        fields["occupancy_pct"] = float(numbers[8])
        fields["period_s"] = period_s
        tags = {"device_id": site, "lane": lane, "direction": direction, "zone": self.zone(site)}
        return point("traffic_lane", tags, fields, at)

    def interval(self, site: str, body: dict[str, Any], received_ms: int) -> list[Point]:
        """A JSON interval report: one point per lane."""
        at = stamp(iso_ms(body["start"]), received_ms)
        points = []
        for lane in body["lanes"]:
            counts = lane["counts"]
            numbers = [counts.get(name, 0) for name in CLASSES]
            numbers += [lane["speed_avg_kmh"], lane["speed_p85_kmh"], lane["occupancy_pct"]]
            points.append(
                self.lane(
                    site,
                    at,
                    period_s=int(body["period_s"]),
                    lane=str(lane["lane"]),
                    direction=lane["dir"],
                    numbers=numbers,
                )
            )
        return points

    def interval_csv(self, site: str, text: str, received_ms: int) -> list[Point]:
        """The old counters' ``;``-separated lines, Italian decimal comma."""
        points = []
        for line in text.splitlines():
            if not line.strip():
                continue
            cells = line.strip().split(";")
            at = stamp(iso_ms(cells[0]), received_ms)
            numbers: list[Any] = [*cells[4:10], *(comma(c) for c in cells[10:13])]
            points.append(
                self.lane(
                    site,
                    at,
                    period_s=int(cells[1]),
                    lane=cells[2],
                    direction=cells[3],
                    numbers=numbers,
                )
            )
        return points

    def health(self, site: str, body: dict[str, Any], received_ms: int) -> Point:
        """A traffic counter's health (``ts`` in epoch milliseconds)."""
        fields = {
            "supply_v": float(body["supply_v"]),
            "temp_c": float(body["temp_c"]),
            "door": str(body["door"]),
            "lane_fault_count": len(body.get("lane_faults", [])),
        }
        tags = {"device_id": site, "zone": self.zone(site)}
        return point("traffic_health", tags, fields, stamp(int(body["ts"]), received_ms))


def point(measurement: str, tags: dict[str, str], fields: dict[str, Any], at_ms: int) -> Point:
    """A point as ``InfluxDBClient.write_points`` takes it."""
    return {"measurement": measurement, "tags": tags, "fields": fields, "time": at_ms}


def load_zones(path: Path | None) -> dict[str, str]:
    """``device_id -> zone`` from ``devices.csv``."""
    if path is None:
        return {}
    with path.open(encoding="utf-8", newline="") as rows:
        return {row["device_id"]: row["zone"] for row in csv.DictReader(rows)}


class Consumer:
    """The paho callbacks: decode, collect, write every 5,000 points, stop after N."""

    def __init__(
        self, store: InfluxDBClient, decoder: Decoder, qos: int, expected: int, subscribe_only: bool
    ) -> None:
        self.store = store
        self.decoder = decoder
        self.qos = qos
        self.expected = expected
        self.subscribe_only = subscribe_only
        self.points: list[Point] = []
        self.received = 0
        self.written = 0
        self.undecodable = 0
        self.done = threading.Event()

    def on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: Any,
        properties: Any,
    ) -> None:
        print("connected", flush=True)
        client.subscribe([(topic, self.qos) for topic in TOPICS])

    def on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any
    ) -> None:
        if self.subscribe_only:
            print("subscribed", flush=True)
            self.done.set()

    def on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        try:
            self.points.extend(self.decoder.decode(message.topic, message.payload, now_ms()))
        except (ValueError, KeyError, TypeError, IndexError, struct.error):
            self.undecodable += 1
        if len(self.points) >= BATCH:
            self.flush()
        if self.received >= self.expected:
            self.flush()
            self.done.set()

    def flush(self) -> None:
        """Write the collected points (batches of 5,000)."""
        if self.points:
            self.store.write_points(self.points, time_precision="ms", batch_size=BATCH)
            self.written += len(self.points)
            self.points = []


def main(argv: list[str] | None = None) -> int:
    """Consume ``--messages`` messages into InfluxDB (or only create the session)."""
    parser = argparse.ArgumentParser(prog="python -m bench.naive_baseline")
    parser.add_argument("--mqtt-url", required=True, help="mqtt://host:port")
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--influx-url", required=True, help="http://host:port")
    parser.add_argument("--database", required=True)
    parser.add_argument("--messages", type=int, default=0, help="stop after this many")
    parser.add_argument("--inventory", type=Path, help="devices.csv, for the zone tag")
    parser.add_argument("--subscribe-only", action="store_true", help="create the session")
    args = parser.parse_args(argv)
    broker = urlsplit(args.mqtt_url)
    influx = urlsplit(args.influx_url)
    store = InfluxDBClient(influx.hostname, influx.port, database=args.database, timeout=60)
    consumer = Consumer(
        store, Decoder(load_zones(args.inventory)), args.qos, args.messages, args.subscribe_only
    )
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = consumer.on_connect
    client.on_subscribe = consumer.on_subscribe
    client.on_message = consumer.on_message
    client.connect(broker.hostname or "127.0.0.1", broker.port or 1883)
    client.loop_start()
    try:
        consumer.done.wait()
    finally:
        client.disconnect()
        client.loop_stop()
        store.close()
    summary = {
        "received": consumer.received,
        "points": consumer.written,
        "undecodable": consumer.undecodable,
    }
    if not args.subscribe_only:
        print(f"done {json.dumps(summary)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
