"""API latency benchmark: p50/p95 of the main aggregate endpoints over generated city data,
with the share of each call spent in InfluxDB.

::

    .venv/bin/python -m bench.api_latency [--devices 1000] [--days 30] [--repeat 30]
                                          [--out bench/results/api_latency.json]

The run, front to back::

    devservices.start(tmp)          its own Mosquitto + InfluxDB 1.x, stopped at the end
      -> seed                       Fleet.messages per 6 h chunk, in a process pool:
                                    decode (built-in profiles) -> enrich (inventory zone)
                                    -> line protocol -> InfluxClient.write, 5,000 lines a batch
      -> settle                     wait until InfluxDB has no compaction running
      -> ApiServer(create_app(ctx)) the API alone (hub=None), real HTTP via uvicorn,
                                    its InfluxClient wrapped in an InfluxTimer
      -> measure                    one warm-up call per endpoint, then --repeat rounds of
                                    every endpoint (interleaved, so background noise such as
                                    an InfluxDB cache snapshot spreads over all of them)
      -> report                     table on stdout, JSON results to --out

Seeding writes straight to InfluxDB (the ingest path has its own tests and benchmarks). Each
6-hour chunk is a separate ``Fleet.messages`` window, so the chunks can be generated, decoded
and written by separate processes; the simulator seeds every window on its own, so device
states (a bay's occupancy, for one) restart at chunk edges. Counters (lamp energy, cabinet
kWh) are functions of time in the simulator, so they stay continuous. None of this changes
how much data a query reads, which is what the benchmark is about.

Each call's wall time (client side, from request to full body) splits into:

* **in InfluxDB**: the time inside ``InfluxClient.query`` (HTTP round trip to InfluxDB and
  parsing its JSON answer), summed over the queries the call made;
* **in the hub**: the rest (HTTP into the API, FastAPI, building queries, finishing the
  answer in Python, serialising the response).

The JSON results also give the pure HTTP round trip to InfluxDB (answer received and
decompressed, not yet parsed), so the cost of parsing InfluxDB's answers can be told apart.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.common import BenchmarkError, with_services
from hub import devservices
from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKey, ApiKeys, digest, new_token
from hub.api.server import ApiServer
from hub.inventory import Inventory
from hub.metrics import Metrics
from hub.model import Decoded, RawMessage
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.simulate.fleet import DAY_MS, HOUR_MS, Fleet, FleetSpec
from hub.storage.influx import InfluxClient
from hub.storage.lineprotocol import encode

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "device_profiles"
DEFAULT_OUT = Path("bench/results/api_latency.json")
DATABASE = "bench"

BATCH_LINES = 5_000
CHUNK_MS = 6 * HOUR_MS
# devices publish, the hub receives a moment later: device times stay plausible
RECEIVE_DELAY_MS = 250
LAMPS_PER_CABINET = 12
# the fleet's mix (500 bays, 30 cabinets x 12 lamps, 110 traffic sites for 1,000 devices)
CABINET_SHARE = 0.03
SITE_SHARE = 0.11
MIN_DEVICES = 20

SETTLE_QUIET_POLLS = 3
SETTLE_POLL_S = 1.0
SETTLE_TIMEOUT_S = 300.0
WRITE_TIMEOUT_S = 60.0
API_TIMEOUT_S = 300.0


# --------------------------------------------------------------------------- fleet


def fleet_spec(devices: int, seed: int) -> FleetSpec:
    """A fleet of exactly ``devices`` devices (cabinets and lamps included) in the city's mix."""
    if devices < MIN_DEVICES:
        raise ValueError(f"the fleet needs at least {MIN_DEVICES} devices")
    cabinets = max(1, round(devices * CABINET_SHARE))
    sites = max(1, round(devices * SITE_SHARE))
    bays = devices - cabinets * (1 + LAMPS_PER_CABINET) - sites
    return FleetSpec(
        parking_bays=bays,
        cabinets=cabinets,
        lamps_per_cabinet=LAMPS_PER_CABINET,
        traffic_sites=sites,
        seed=seed,
    )


# --------------------------------------------------------------------------- seeding


@dataclass(frozen=True, slots=True)
class SeedChunk:
    """One window of the fleet's messages for one worker to decode and write."""

    spec: FleetSpec
    inventory: Path
    influx_url: str
    database: str
    start_ms: int
    end_ms: int


@dataclass(slots=True)
class SeedCount:
    """What seeding produced (per chunk, then summed)."""

    messages: int = 0
    points: int = 0
    dead_letters: int = 0
    time_problems: int = 0

    def add(self, other: SeedCount) -> None:
        """Add ``other``'s counts to these."""
        self.messages += other.messages
        self.points += other.points
        self.dead_letters += other.dead_letters
        self.time_problems += other.time_problems


def seed_chunk(chunk: SeedChunk) -> SeedCount:
    """Generate, decode, enrich, encode and write one window of the fleet's messages.

    A pool task: it builds its own fleet, profiles, inventory and client (a few ms), so
    nothing but this small description crosses the process boundary.
    """
    fleet = Fleet(chunk.spec)
    profiles = ProfileSet.load(PROFILES_DIR)
    inventory = Inventory.load(chunk.inventory, required=True)
    store = InfluxClient(chunk.influx_url, chunk.database, timeout_s=WRITE_TIMEOUT_S)
    count = SeedCount()
    lines: list[str] = []
    try:
        for message in fleet.messages(chunk.start_ms, chunk.end_ms):
            count.messages += 1
            raw = RawMessage(
                message.topic,
                message.payload,
                message.due_ms + RECEIVE_DELAY_MS,
                message.qos,
                0,
                message.retain,
            )
            decoded = profiles.decode(raw)
            if not isinstance(decoded, Decoded):
                count.dead_letters += 1  # the simulator's injected broken frames
                continue
            if decoded.time_problem is not None:
                count.time_problems += 1
            inventory.enrich(decoded)
            lines.extend(encode(point) for point in decoded.points)
            if len(lines) >= BATCH_LINES:
                store.write("\n".join(lines[:BATCH_LINES]))
                count.points += BATCH_LINES
                del lines[:BATCH_LINES]
        if lines:
            store.write("\n".join(lines))
            count.points += len(lines)
    finally:
        store.close()
    return count


def _chunks(whole: SeedChunk) -> list[SeedChunk]:
    """``whole`` cut into windows of ``CHUNK_MS``."""
    starts = range(whole.start_ms, whole.end_ms, CHUNK_MS)
    return [replace(whole, start_ms=at, end_ms=min(at + CHUNK_MS, whole.end_ms)) for at in starts]


def seed(base: SeedChunk, workers: int) -> tuple[SeedCount, float]:
    """Write the fleet's messages of ``[base.start_ms, base.end_ms)``; counts and seconds."""
    chunks = _chunks(base)
    total = SeedCount()
    started = time.perf_counter()
    if workers <= 1:
        _collect(map(seed_chunk, chunks), total, len(chunks), started)
    else:
        # spawn, not fork: the parent may have threads (a test session's), and a forked
        # child would inherit their locks
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            _collect(pool.imap_unordered(seed_chunk, chunks), total, len(chunks), started)
    return total, time.perf_counter() - started


def _collect(results: Iterator[SeedCount], total: SeedCount, chunks: int, started: float) -> None:
    step = max(1, chunks // 10)
    for done, count in enumerate(results, start=1):
        total.add(count)
        if done % step == 0 or done == chunks:
            elapsed = time.perf_counter() - started
            print(
                f"  seeded {done}/{chunks} chunks: {total.points:,} points "
                f"in {elapsed:.1f} s ({total.points / max(elapsed, 1e-9):,.0f} points/s)",
                flush=True,
            )


def settle(influx_url: str) -> float:
    """Wait until InfluxDB runs no compaction (seconds waited).

    Right after a bulk write InfluxDB snapshots its cache and compacts the new TSM files;
    queries measured during that would time the compactions. Reads ``/debug/vars`` (1.x);
    if that is not served, returns at once.
    """
    started = time.monotonic()
    quiet = 0
    with httpx.Client(base_url=influx_url, timeout=10.0, trust_env=False) as http:
        while quiet < SETTLE_QUIET_POLLS and time.monotonic() - started < SETTLE_TIMEOUT_S:
            response = http.get("/debug/vars")
            if response.status_code != 200:
                return 0.0
            active = _compactions_active(response.json())
            quiet = quiet + 1 if active == 0 else 0
            if quiet < SETTLE_QUIET_POLLS:
                time.sleep(SETTLE_POLL_S)  # a poll interval under a deadline
    if quiet < SETTLE_QUIET_POLLS:
        print(f"warning: InfluxDB still compacting after {SETTLE_TIMEOUT_S:.0f} s", flush=True)
    return time.monotonic() - started


def _compactions_active(variables: dict[str, Any]) -> int:
    active = 0
    for name, entry in variables.items():
        if not name.startswith("tsm1_engine") or not isinstance(entry, dict):
            continue
        values = entry.get("values", {})
        # cache snapshots and TSM compactions of every level, running or queued
        active += sum(
            int(v)
            for k, v in values.items()
            if k.endswith(("CompactionsActive", "CompactionQueue"))
        )
    return active


# --------------------------------------------------------------------------- timing


@dataclass(slots=True)
class Spent:
    """Time and traffic of the InfluxDB queries of one API call."""

    query_s: float = 0.0
    round_trip_s: float = 0.0
    answer_bytes: int = 0
    #: each query's time and InfluxQL, in the order the call made them
    each_s: list[float] = field(default_factory=list)
    influxql: list[str] = field(default_factory=list)

    @property
    def queries(self) -> int:
        """How many queries the call made."""
        return len(self.each_s)


class InfluxTimer:
    """Adds up what the API's InfluxDB queries cost; ``take()`` reads and resets.

    The API runs each request on a worker thread, so the sums are guarded by a lock; the
    benchmark makes one call at a time, so one call's queries are exactly what it took.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent = Spent()

    def add_query(self, seconds: float, influxql: str) -> None:
        """One ``InfluxClient.query`` call took ``seconds``."""
        with self._lock:
            self._spent.query_s += seconds
            self._spent.each_s.append(seconds)
            self._spent.influxql.append(influxql)

    def add_round_trip(self, seconds: float, answer_bytes: int) -> None:
        """One HTTP exchange with InfluxDB took ``seconds`` and brought ``answer_bytes``."""
        with self._lock:
            self._spent.round_trip_s += seconds
            self._spent.answer_bytes += answer_bytes

    def take(self) -> Spent:
        """What was spent since the last ``take()``."""
        with self._lock:
            spent, self._spent = self._spent, Spent()
        return spent


class TimedTransport(httpx.BaseTransport):
    """An httpx transport that times each exchange up to the full (decompressed) body."""

    def __init__(self, timer: InfluxTimer) -> None:
        self._inner = httpx.HTTPTransport()
        self._timer = timer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` and read the whole answer, timing both."""
        started = time.perf_counter()
        response = self._inner.handle_request(request)
        # read here, so the time includes receiving the body; the client then finds it read
        body = response.read()
        self._timer.add_round_trip(time.perf_counter() - started, len(body))
        return response

    def close(self) -> None:
        """Close the connection pool."""
        self._inner.close()


class TimedInfluxClient(InfluxClient):
    """The API's InfluxDB client, adding each query's wall time to an ``InfluxTimer``."""

    def __init__(self, url: str, database: str, timer: InfluxTimer) -> None:
        super().__init__(url, database, timeout_s=API_TIMEOUT_S, transport=TimedTransport(timer))
        self._timer = timer

    def query(self, influxql: str, *, epoch: str = "ms") -> list[dict[str, Any]]:
        """``InfluxClient.query``, timed."""
        started = time.perf_counter()
        try:
            return super().query(influxql, epoch=epoch)
        finally:
            self._timer.add_query(time.perf_counter() - started, influxql)


# --------------------------------------------------------------------------- endpoints


def _iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(now_ms: int, span_ms: int) -> list[tuple[str, str]]:
    return [("start", _iso(now_ms - span_ms)), ("end", _iso(now_ms))]


def _series(answer: dict[str, Any]) -> int:
    return sum(len(s.get("points", s.get("hours", s.get("days", [])))) for s in answer["series"])


def _history(answer: dict[str, Any]) -> int:
    return sum(1 for z in answer["zones"] for p in z["points"] if p["total"])


@dataclass(frozen=True)
class Endpoint:
    """One measured call: its path, its parameters at ``now`` and what counts as an answer.

    ``items`` counts what the answer holds (points, bays, lamps, lanes...); 0 means the call
    answered nothing, and the benchmark stops: a fast empty answer measures nothing.
    """

    name: str
    label: str
    path: str
    params: Callable[[int], list[tuple[str, str]]]
    items: Callable[[dict[str, Any]], int]


AGGREGATE = "/api/v1/aggregate"
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "aggregate_lamp_power_zone_1h_7d",
        "aggregate: lamp power_w mean by zone, 1h x 7d",
        AGGREGATE,
        lambda now: [
            ("measurement", "lighting_lamp"),
            ("field", "power_w"),
            ("fn", "mean"),
            ("interval", "1h"),
            ("group_by", "zone"),
            *_since(now, 7 * DAY_MS),
        ],
        _series,
    ),
    Endpoint(
        "aggregate_traffic_vehicles_device_1d_30d",
        "aggregate: vehicles sum by device, 1d x 30d",
        AGGREGATE,
        lambda now: [
            ("measurement", "traffic_lane"),
            ("field", "vehicles"),
            ("fn", "sum"),
            ("interval", "1d"),
            ("group_by", "device"),
            *_since(now, 30 * DAY_MS),
        ],
        _series,
    ),
    Endpoint(
        "aggregate_parking_battery_zone_6h_30d",
        "aggregate: bay battery_v mean by zone, 6h x 30d",
        AGGREGATE,
        lambda now: [
            ("measurement", "parking_bay"),
            ("field", "battery_v"),
            ("fn", "mean"),
            ("interval", "6h"),
            ("group_by", "zone"),
            *_since(now, 30 * DAY_MS),
        ],
        _series,
    ),
    Endpoint(
        "aggregate_parking_occupied_zone_1h_24h",
        "aggregate: bay occupied count by zone, 1h x 24h",
        AGGREGATE,
        lambda now: [
            ("measurement", "parking_bay"),
            ("field", "occupied"),
            ("fn", "count"),
            ("interval", "1h"),
            ("group_by", "zone"),
            *_since(now, DAY_MS),
        ],
        _series,
    ),
    Endpoint(
        "parking_occupancy",
        "views: parking occupancy now",
        "/api/v1/views/parking/occupancy",
        lambda now: [],
        lambda answer: int(answer["city"]["total"]),
    ),
    Endpoint(
        "parking_occupancy_history_7d_1h",
        "views: parking occupancy history, 1h x 7d",
        "/api/v1/views/parking/occupancy/history",
        lambda now: [("interval", "1h"), *_since(now, 7 * DAY_MS)],
        _history,
    ),
    Endpoint(
        "lighting_status",
        "views: lighting status",
        "/api/v1/views/lighting/status",
        lambda now: [],
        lambda answer: int(answer["city"]["total"]),
    ),
    Endpoint(
        "lighting_energy_zone_30d",
        "views: lighting energy by zone, 30 days",
        "/api/v1/views/lighting/energy",
        # 30 days back, widened to whole Rome days: 31 days, the view's maximum
        lambda now: [("group", "zone"), *_since(now, 30 * DAY_MS)],
        _series,
    ),
    Endpoint(
        "traffic_flows_1d",
        "views: traffic flows, all sites, 1 day",
        "/api/v1/views/traffic/flows",
        lambda now: _since(now, DAY_MS),
        _series,
    ),
    Endpoint(
        "traffic_congestion",
        "views: traffic congestion (threshold 0)",
        "/api/v1/views/traffic/congestion",
        # threshold 0 lists every lane with traffic: the same query as the default (35 %),
        # but an answer that is never empty, whatever the hour
        lambda now: [("threshold_pct", "0")],
        lambda answer: len(answer["lanes"]),
    ),
)


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class Call:
    """One checked call: its wall time, what its InfluxDB queries cost, what it answered."""

    seconds: float
    spent: Spent
    response_bytes: int
    items: int


@dataclass(slots=True)
class Samples:
    """The measured calls of one endpoint."""

    endpoint: Endpoint
    calls: list[Call] = field(default_factory=list)


def call(http: httpx.Client, timer: InfluxTimer, endpoint: Endpoint, now_ms: int) -> Call:
    """One call of ``endpoint``, checked, with its time split."""
    timer.take()
    started = time.perf_counter()
    # a tuple: httpx types a list of pairs invariantly
    response = http.get(endpoint.path, params=tuple(endpoint.params(now_ms)))
    elapsed = time.perf_counter() - started
    spent = timer.take()
    if response.status_code != 200:
        raise BenchmarkError(f"{endpoint.name}: HTTP {response.status_code}: {response.text[:500]}")
    items = endpoint.items(response.json())
    if items <= 0:
        raise BenchmarkError(f"{endpoint.name}: empty answer: {response.text[:500]}")
    return Call(elapsed, spent, len(response.content), items)


def measure(http: httpx.Client, timer: InfluxTimer, now_ms: int, repeat: int) -> list[Samples]:
    """A warm-up call per endpoint, then ``repeat`` rounds over all of them."""
    print("warm-up calls:", flush=True)
    for endpoint in ENDPOINTS:
        warm = call(http, timer, endpoint, now_ms)
        print(f"  {endpoint.label}: {warm.seconds * 1000:,.0f} ms", flush=True)
    found = [Samples(endpoint) for endpoint in ENDPOINTS]
    started = time.perf_counter()
    for done in range(1, repeat + 1):
        for samples in found:
            samples.calls.append(call(http, timer, samples.endpoint, now_ms))
        if done % max(1, repeat // 5) == 0 or done == repeat:
            elapsed = time.perf_counter() - started
            print(f"  round {done}/{repeat} done after {elapsed:.0f} s", flush=True)
    return found


def percentile(samples: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile, interpolated between the closest ranks (non-decreasing in
    ``pct``, so p50 <= p95 always)."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * pct / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples: Samples, now_ms: int) -> dict[str, Any]:
    """The JSON result of one endpoint."""
    calls = samples.calls
    total_s = [c.seconds for c in calls]
    query_s = [c.spent.query_s for c in calls]
    hub_s = [c.seconds - c.spent.query_s for c in calls]
    total = sum(total_s)
    last = calls[-1]
    endpoint = samples.endpoint

    def ms(seconds: float) -> float:
        return round(seconds * 1000, 2)

    return {
        "name": endpoint.name,
        "label": endpoint.label,
        "path": endpoint.path,
        "params": endpoint.params(now_ms),
        "calls": len(calls),
        "p50_ms": ms(percentile(total_s, 50)),
        "p95_ms": ms(percentile(total_s, 95)),
        "mean_ms": ms(total / len(calls)),
        "influx_share_pct": round(100 * sum(query_s) / total, 1),
        "influx_round_trip_share_pct": round(
            100 * sum(c.spent.round_trip_s for c in calls) / total, 1
        ),
        "influx_p50_ms": ms(percentile(query_s, 50)),
        "hub_p50_ms": ms(percentile(hub_s, 50)),
        "influx_queries": last.spent.queries,
        # per query of the call (in order): p50 over the calls, and the InfluxQL
        "influx_query_p50_ms": [
            ms(percentile([c.spent.each_s[k] for c in calls], 50))
            for k in range(min(c.spent.queries for c in calls))
        ],
        "influxql": last.spent.influxql,
        "influx_answer_bytes": last.spent.answer_bytes,
        "response_bytes": last.response_bytes,
        "items": last.items,
        "samples_ms": [ms(t) for t in total_s],
        "influx_samples_ms": [ms(q) for q in query_s],
    }


# --------------------------------------------------------------------------- report


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f} kB"
    return f"{count / 1024 / 1024:.1f} MB"


def table(results: list[dict[str, Any]]) -> str:
    """The results as a fixed-width text table."""
    header = ("endpoint", "p50 ms", "p95 ms", "InfluxDB", "queries", "size")
    rows = [
        (
            r["label"],
            f"{r['p50_ms']:.1f}",
            f"{r['p95_ms']:.1f}",
            f"{r['influx_share_pct']:.0f} %",
            str(r["influx_queries"]),
            _size(r["response_bytes"]),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def _machine(influx_url: str) -> dict[str, Any]:
    version = None
    with httpx.Client(base_url=influx_url, timeout=10.0, trust_env=False) as http:
        version = http.get("/ping").headers.get("X-Influxdb-Version")
    cpu = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "influxdb_version": version,
    }


# --------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.api_latency",
        description="p50/p95 latency of the API's aggregate endpoints over generated data, "
        "with the share of time spent in InfluxDB. Starts and stops its own services.",
    )
    parser.add_argument("--devices", type=int, default=1_000, help="fleet size (default 1000)")
    parser.add_argument("--days", type=int, default=30, help="days of data (default 30)")
    parser.add_argument("--repeat", type=int, default=30, help="calls per endpoint (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="the fleet's random seed")
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="seeding processes (default: one per CPU; 1 seeds in this process)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 when an endpoint failed or answered nothing."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.devices < MIN_DEVICES:
        parser.error(f"--devices must be at least {MIN_DEVICES}")
    if args.days < 1 or args.repeat < 1 or args.workers < 1:
        parser.error("--days, --repeat and --workers must be at least 1")
    return with_services("bench-api-latency-", lambda services, tmp: _run(args, services, tmp))


def _run(args: argparse.Namespace, services: devservices.Services, tmp: Path) -> int:
    spec = fleet_spec(args.devices, args.seed)
    fleet = Fleet(spec)
    inventory_path = fleet.write_inventory(tmp / "devices.csv")
    devservices.create_database(services.influx_url, DATABASE)
    # whole minutes: the same "now" for the data's end and the API's clock
    now_ms = int(time.time() * 1000) // 60_000 * 60_000
    start_ms = now_ms - args.days * DAY_MS
    print(
        f"fleet: {spec.parking_bays} parking bays, {spec.cabinets} cabinets x "
        f"{spec.lamps_per_cabinet} lamps, {spec.traffic_sites} traffic sites "
        f"({sum(1 for _ in fleet.devices())} devices); {args.days} days to {_iso(now_ms)}",
        flush=True,
    )
    base = SeedChunk(spec, inventory_path, services.influx_url, DATABASE, start_ms, now_ms)
    counts, seed_s = seed(base, args.workers)
    print(
        f"seeded {counts.points:,} points from {counts.messages:,} messages "
        f"({counts.dead_letters:,} broken frames dead-lettered) in {seed_s:.1f} s "
        f"({counts.points / seed_s:,.0f} points/s, {args.workers} workers)",
        flush=True,
    )
    settle_s = settle(services.influx_url)
    print(f"InfluxDB settled (no compaction running) after {settle_s:.1f} s", flush=True)

    timer = InfluxTimer()
    store = TimedInfluxClient(services.influx_url, DATABASE, timer)
    token = new_token()
    settings = Settings(
        influx_url=services.influx_url,
        influx_db=DATABASE,
        profiles_dir=PROFILES_DIR,
        inventory=inventory_path,
        data_dir=tmp,
    )
    ctx = ApiContext(
        settings=settings,
        profiles=ProfileSet.load(PROFILES_DIR),
        inventory=Inventory.load(inventory_path, required=True),
        store=store,
        metrics=Metrics(),
        keys=ApiKeys([ApiKey(id="bench", org="comune", role="reader", sha256=digest(token))]),
        clock_ms=lambda: now_ms,
    )
    server = ApiServer(create_app(ctx), "127.0.0.1", 0)
    server.start()
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=API_TIMEOUT_S,
            trust_env=False,
        ) as http:
            measured = measure(http, timer, now_ms, args.repeat)
    finally:
        server.stop()
        store.close()

    results = [summary(s, now_ms) for s in measured]
    print()
    print(table(results))
    document = {
        "benchmark": "api_latency",
        "run_at": _iso(int(time.time() * 1000)),
        "config": {
            "devices": args.devices,
            "days": args.days,
            "repeat": args.repeat,
            "seed": args.seed,
            "workers": args.workers,
            "fleet": {
                "parking_bays": spec.parking_bays,
                "cabinets": spec.cabinets,
                "lamps_per_cabinet": spec.lamps_per_cabinet,
                "traffic_sites": spec.traffic_sites,
            },
            "data_start": _iso(start_ms),
            "data_end": _iso(now_ms),
        },
        "machine": _machine(services.influx_url),
        "seeding": {
            "messages": counts.messages,
            "points_written": counts.points,
            "dead_letters": counts.dead_letters,
            "time_problems": counts.time_problems,
            "seconds": round(seed_s, 1),
            "points_per_s": round(counts.points / seed_s),
            "settle_s": round(settle_s, 1),
        },
        "endpoints": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
