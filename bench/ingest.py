"""End-to-end ingest benchmark: how fast the hub drains a broker-preloaded burst into InfluxDB,
next to a C client and a naive hand-written consumer; its memory with 10,000 devices; and
alert latency under live load.

::

    .venv/bin/python -m bench.ingest [--messages 200000] [--devices 1000] [--qos 0,1]
                                     [--rss-devices 10000] [--rss-messages 100000]
                                     [--alert-seconds 30] [--alert-rate 5000]
                                     [--skip-c-client] [--skip-naive] [--skip-hub]
                                     [--skip-rss] [--skip-alerts]
                                     [--hub-env KEY=VALUE ...] [--out bench/results/ingest.json]

The run, front to back::

    devservices.start(tmp)          its own Mosquitto + InfluxDB 1.x, stopped at the end
      -> burst                      Fleet.burst(--messages) of a --devices fleet (the city's
                                    mix), device times within the last day; decoded once by
                                    the built-in profiles: the points every consumer must land
      -> for each QoS, each consumer (the same broker-preloaded drain for all):
           session                  the consumer subscribes with a persistent session and
                                    goes away
           preload                  a paho publisher sends the whole burst at that QoS and
                                    waits until the broker has it all (every PUBACK, or a
                                    QoS 1 fence after QoS 0 publishes)
           drain (timed)            the consumer comes back; from its connection until the
                                    last message arrived (C client) or InfluxDB counts every
                                    expected point (naive, hub), polled every 0.5 s
             C client               mosquitto_sub -c -q QOS -t <the hub's filters> -C N
             naive                  bench/naive_baseline.py: paho + json + influxdb client
             hub                    `hub run` (HUB_* env, --hub-env on top), started once to
                                    create its session, SIGTERMed, started again to drain
           clean up                 the session is dropped, the database too
      -> RSS, 10,000 devices        one more hub drain (QoS 1) of a --rss-devices fleet
      -> alert latency              a live hub (QoS 1) notifying alerts over MQTT; a separate
                                    process publishes burst traffic paced at --alert-rate
                                    msg/s, and every 100 ms a probe (a lamp reporting
                                    LAMP_FAILURE, a new lamp each time) fires an alert at
                                    once; publish -> notification received, per probe
      -> report                     table on stdout, JSON results to --out

CPU seconds (utime + stime) and peak RSS (VmHWM) of the naive consumer and of the hub are read
from ``/proc`` for the whole process tree (the process and every child it spawns), sampled
every 0.1 s. The exit status is 0 when every run landed everything it should; missed targets
are reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import IO, Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from bench.api_latency import fleet_spec, percentile
from bench.common import BenchmarkError, with_services
from hub import devservices
from hub.ingest.mqtt import MqttLink, wall_clock_ms
from hub.model import Decoded, RawMessage
from hub.profiles.profile_set import ProfileSet
from hub.settings import MqttEndpoint
from hub.simulate.fleet import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS, Fleet, FleetSpec, SimMessage

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = REPO_ROOT / "device_profiles"
DEFAULT_OUT = Path("bench/results/ingest.json")

#: a burst's device times end this long before the run starts (well inside the hub's
#: plausibility window of 7 days back, 5 minutes ahead)
BURST_MARGIN_MS = 10 * MINUTE_MS
PUBLISH_INFLIGHT = 100
PUBLISH_WINDOW = 1_000
#: a QoS 1 publish to a topic nobody subscribes to: its PUBACK means the broker has handled
#: everything the publisher sent before it (one connection is processed in order)
FENCE_TOPIC = "bench/fence"
POLL_S = 0.5
POLL_END_S = 0.05  # once NEAR_END of the points are there: the end is timed to 50 ms
NEAR_END = 0.9
QUERY_TIMEOUT_S = 30.0
#: a drain fails when nothing new arrived for this long
STALL_S = 60.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
MB = 1024 * 1024

PROBE_EVERY_S = 0.1
PROBE_CABINET = "PO-QE-PRB"
NOTIFY_TOPIC = "bench/alerts/{severity}/{device_id}"
NOTIFY_WAIT_S = 30.0
PACE_WINDOW = 2_000

#: the targets
QOS1_HUB_VS_C = 0.65
QOS0_HUB_VS_NAIVE = 1.5
RSS_LIMIT_MB = 150.0
ALERT_P99_LIMIT_MS = 250.0

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- the burst


@dataclass(frozen=True)
class Burst:
    """A fixed message mix and what it must become in InfluxDB."""

    name: str
    spec: FleetSpec
    devices: int
    messages: list[SimMessage]
    start_ms: int
    inventory: Path
    #: points per measurement, from decoding every message with the built-in profiles
    expected: dict[str, int]
    #: per measurement, a field every expected point carries (what the count counts)
    count_fields: dict[str, str]

    @property
    def points(self) -> int:
        """Every point the burst must land."""
        return sum(self.expected.values())


def expected_points(
    profiles: ProfileSet, messages: Iterable[SimMessage], received_ms: int
) -> tuple[Counter[str], dict[str, set[str]]]:
    """Points per measurement of ``messages``, and the fields every point of each carries."""
    counts: Counter[str] = Counter()
    common: dict[str, set[str]] = {}
    for message in messages:
        decoded = profiles.decode(RawMessage(message.topic, message.payload, received_ms))
        if not isinstance(decoded, Decoded):
            raise BenchmarkError(f"the burst has an undecodable message: {decoded.detail}")
        for point in decoded.points:
            counts[point.measurement] += 1
            fields = common.get(point.measurement)
            if fields is None:
                common[point.measurement] = set(point.fields)
            else:
                fields &= point.fields.keys()
    return counts, common


def make_burst(
    name: str, profiles: ProfileSet, folder: Path, *, devices: int, count: int, seed: int
) -> Burst:
    """``count`` messages of a ``devices`` fleet, stamped within the last day."""
    spec = fleet_spec(devices, seed)
    fleet = Fleet(spec)
    silent = sum(1 for kinds in fleet.faults().values() if "silent" in kinds)
    sending = sum(1 for _ in fleet.devices()) - silent
    # the burst gives each sending device one message per second of device time
    span_ms = -(-count // sending) * SECOND_MS
    if span_ms + BURST_MARGIN_MS > DAY_MS:
        raise BenchmarkError(f"{count:,} messages from {sending:,} devices span over a day")
    now_ms = wall_clock_ms()
    start_ms = now_ms - span_ms - BURST_MARGIN_MS
    messages = fleet.burst(count, start_ms)
    inventory = fleet.write_inventory(folder / f"{name}-devices.csv")
    counts, common = expected_points(profiles, messages, now_ms)
    fields = {}
    for measurement, names in common.items():
        if not names:
            raise BenchmarkError(f"no field is common to every {measurement} point")
        fields[measurement] = sorted(names)[0]
    return Burst(name, spec, devices, messages, start_ms, inventory, dict(counts), fields)


# --------------------------------------------------------------------------- broker


class Publisher:
    """A plain paho client that publishes and waits until the broker has everything."""

    def __init__(self, mqtt_url: str, client_id: str) -> None:
        endpoint = MqttEndpoint(mqtt_url)
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311
        )
        self._client.max_inflight_messages_set(PUBLISH_INFLIGHT)
        self._connected = threading.Event()
        self._client.on_connect = lambda *_: self._connected.set()
        self._unconfirmed: list[mqtt.MQTTMessageInfo] = []
        self._client.connect(endpoint.host, endpoint.port)
        self._client.loop_start()
        if not self._connected.wait(START_TIMEOUT_S):
            self.close()
            raise BenchmarkError(f"publisher: no connection to {mqtt_url}")

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        """Queue one publish (QoS 1 ones are remembered until confirmed)."""
        info = self._client.publish(topic, payload, qos=qos)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BenchmarkError(f"publish to {topic}: {mqtt.error_string(info.rc)}")
        if qos:
            self._unconfirmed.append(info)

    def confirm(self, keep: int = 0, timeout_s: float = 120.0) -> None:
        """Wait for the PUBACKs of every QoS 1 publish but the last ``keep``."""
        deadline = time.monotonic() + timeout_s
        done = max(0, len(self._unconfirmed) - keep)
        for info in self._unconfirmed[:done]:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
            if not info.is_published():
                raise BenchmarkError(f"the broker did not confirm a publish in {timeout_s} s")
        del self._unconfirmed[:done]

    def fence(self) -> None:
        """Return once the broker has handled everything published so far."""
        self.publish(FENCE_TOPIC, b"", 1)
        self.confirm()

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()


def preload(mqtt_url: str, messages: Sequence[SimMessage], qos: int) -> float:
    """Publish ``messages`` at ``qos``; seconds until the broker had them all."""
    started = time.monotonic()
    publisher = Publisher(mqtt_url, f"bench-preload-{os.getpid()}")
    try:
        for k, message in enumerate(messages, start=1):
            publisher.publish(message.topic, message.payload, qos)
            if qos and k % PUBLISH_WINDOW == 0:
                publisher.confirm(keep=PUBLISH_WINDOW)
        publisher.fence()
    finally:
        publisher.close()
    return time.monotonic() - started


def drop_session(mqtt_url: str, client_id: str) -> None:
    """Discard the broker's session of ``client_id`` (a clean-start connection)."""
    link = MqttLink(MqttEndpoint(mqtt_url), client_id, persistent=False, manual_ack=False)
    link.start([], 0, None)
    try:
        link.wait_connected(START_TIMEOUT_S)
    finally:
        link.stop()


# --------------------------------------------------------------------------- InfluxDB


class PointCounter:
    """Counts the points of a burst's measurements in one database: one HTTP request, one
    time-bounded ``count()`` per measurement."""

    def __init__(
        self, influx_url: str, database: str, fields: dict[str, str], since_ms: int
    ) -> None:
        self._database = database
        # names come from the loaded profiles, checked as identifiers when they load; an hour
        # of slack below the burst: some payloads carry whole seconds or interval starts
        since_ms -= HOUR_MS
        self._query = ";".join(
            f'SELECT count("{name}") FROM "{measurement}" '  # noqa: S608
            f"WHERE time >= {since_ms}ms AND time <= now() + 1h"
            for measurement, name in sorted(fields.items())
        )
        self._http = httpx.Client(base_url=influx_url, timeout=QUERY_TIMEOUT_S, trust_env=False)
        #: how many counts were made, and the slowest (seconds): polling must stay cheap
        self.polls = 0
        self.slowest_s = 0.0

    def count(self) -> int:
        """Points stored now."""
        started = time.monotonic()
        response = self._http.post("/query", data={"db": self._database, "q": self._query})
        self.polls += 1
        self.slowest_s = max(self.slowest_s, time.monotonic() - started)
        if response.status_code != 200:
            raise BenchmarkError(f"InfluxDB count: HTTP {response.status_code}: {response.text}")
        total = 0
        for result in response.json().get("results", []):
            if "error" in result:
                raise BenchmarkError(f"InfluxDB count: {result['error']}")
            for series in result.get("series", []):
                total += int(series["values"][0][1])
        return total

    def close(self) -> None:
        """Close the HTTP connection."""
        self._http.close()


@dataclass(frozen=True, slots=True)
class Landing:
    """How a wait for the expected points ended."""

    landed: int
    #: monotonic time of the poll that found every point (or gave up)
    at: float
    ok: bool
    detail: str = ""


def wait_landed(counter: PointCounter, expected: int, alive: Callable[[], bool]) -> Landing:
    """Poll until ``expected`` points are stored; give up when nothing new came for STALL_S
    or the consumer exited short of them."""
    last, changed = -1, time.monotonic()
    while True:
        polled = time.monotonic()
        landed = counter.count()
        if landed == expected:
            return Landing(landed, polled, True)
        if landed > expected:
            return Landing(landed, polled, False, f"{landed - expected:,} points too many")
        if not alive():
            # it exited: whatever it wrote is there now
            landed = counter.count()
            ok = landed == expected
            return Landing(landed, time.monotonic(), ok, "" if ok else "the consumer exited")
        if landed != last:
            last, changed = landed, polled
        elif polled - changed > STALL_S:
            return Landing(landed, polled, False, f"no new point for {STALL_S:.0f} s")
        interval = POLL_END_S if landed >= NEAR_END * expected else POLL_S
        time.sleep(max(0.0, polled + interval - time.monotonic()))


# --------------------------------------------------------------------------- processes


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(c) for c in (task / "children").read_text().split()]
    return found


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (``/proc/<pid>/task/*/children``, recursively)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo += _children(current)
    return tree


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of ``pid`` in clock ticks (None once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # fields after the ")" that closes the command name: state is field 3, utime 14, stime 15
    values = stat.rpartition(")")[2].split()
    return int(values[11]) + int(values[12])


def _status_kb(pid: int, key: str) -> int | None:
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


class TreeMonitor:
    """CPU time and peak RSS of a process and all its descendants, sampled on a thread.

    CPU is the sum over every process ever seen of its last utime + stime; peak RSS is the sum
    of each process's VmHWM (its own high-water mark), and the main process's alone.
    """

    def __init__(self, pid: int, interval_s: float = 0.1) -> None:
        self.pid = pid
        self.processes = 0
        self._ticks: dict[int, int] = {}
        self._hwm_kb: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(interval_s,), name="tree-monitor", daemon=True
        )
        self._thread.start()

    def _run(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self.sample()

    def sample(self) -> None:
        """Read every process of the tree once."""
        pids = process_tree(self.pid)
        with self._lock:
            self.processes = max(self.processes, len(pids))
            for pid in pids:
                ticks = cpu_ticks(pid)
                if ticks is not None:
                    self._ticks[pid] = ticks
                hwm = _status_kb(pid, "VmHWM")
                if hwm is not None:
                    self._hwm_kb[pid] = max(hwm, self._hwm_kb.get(pid, 0))

    def cpu_s(self) -> float:
        """CPU seconds of the tree so far."""
        self.sample()
        with self._lock:
            return sum(self._ticks.values()) / CLOCK_TICKS

    def peak_rss_mb(self) -> tuple[float, float]:
        """Peak RSS of the tree (summed VmHWM) and of the main process, in MB."""
        self.sample()
        with self._lock:
            tree = sum(self._hwm_kb.values()) * 1024 / MB
            main = self._hwm_kb.get(self.pid, 0) * 1024 / MB
        return tree, main

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join(5)


class OutputWatch:
    """Reads a child's output line by line on a thread, copies it to a log file, and tells
    when a line containing a marker first arrived (monotonic time)."""

    def __init__(self, stream: IO[bytes], log_path: Path) -> None:
        self.log_path = log_path
        self._lines: list[tuple[float, str]] = []
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(
            target=self._read, args=(stream,), name=f"watch-{log_path.name}", daemon=True
        )
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        with stream, self.log_path.open("ab") as log:
            for raw in iter(stream.readline, b""):
                at = time.monotonic()
                log.write(raw)
                log.flush()
                with self._cond:
                    self._lines.append((at, raw.decode("utf-8", "replace").rstrip()))
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_for(self, marker: str, timeout_s: float) -> tuple[float, str] | None:
        """The first line containing ``marker`` and when it came; None if none came in time
        or the output ended."""
        deadline = time.monotonic() + timeout_s
        seen = 0
        with self._cond:
            while True:
                for at, line in self._lines[seen:]:
                    if marker in line:
                        return at, line
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if self._closed or remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def tail(self, lines: int = 15) -> str:
        """The last lines read."""
        with self._cond:
            return "\n".join(line for _, line in self._lines[-lines:])

    def join(self) -> None:
        """Wait for the output to end (the process has exited)."""
        self._thread.join(10)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM ``proc`` and wait; SIGKILL its process group if it outlives ``timeout_s``;
    then SIGKILL whatever is left of the group. Its exit status (None if it was killed)."""
    code: int | None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        code = None
    # started with start_new_session: its group id is its pid, and holds what it spawned
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if code is None:
        proc.wait(10)
    return code


# --------------------------------------------------------------------------- drains


@dataclass
class Drain:
    """One consumer's drain of one preloaded burst."""

    consumer: str  # "c_client" | "naive" | "hub"
    qos: int
    devices: int
    messages: int
    #: messages for the C client, points for the others
    expected: int
    landed: int = 0
    ok: bool = False
    detail: str = ""
    drain_s: float = 0.0
    preload_s: float = 0.0
    #: process start to broker connection (not part of the drain)
    startup_s: float | None = None
    cpu_s: float | None = None
    peak_rss_tree_mb: float | None = None
    peak_rss_main_mb: float | None = None
    processes: int | None = None
    broker_cpu_s: float | None = None
    influx_cpu_s: float | None = None
    exit_code: int | None = None
    #: what the consumer itself reported (the naive baseline's counts)
    reported: dict[str, Any] | None = None
    #: InfluxDB counts made during the drain, and the slowest one
    polls: int = 0
    slowest_poll_s: float = 0.0

    @property
    def rate(self) -> float:
        """Messages per second of drain (0 when it failed)."""
        return self.messages / self.drain_s if self.ok and self.drain_s > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """The JSON result, numbers rounded."""
        body = dataclasses.asdict(self)
        for key, value in body.items():
            if isinstance(value, float):
                body[key] = round(value, 3)
        body["msg_per_s"] = round(self.rate)
        return body


@dataclass
class Setup:
    """What every run shares: the services, the temporary folder, the hub's extra settings."""

    services: devservices.Services
    tmp: Path
    hub_env: dict[str, str]
    subscriptions: list[str]
    runs: int = 0

    def name(self, kind: str) -> str:
        """A fresh client id / database name."""
        self.runs += 1
        return f"bench_{kind}_{self.runs}"

    def service_cpu(self) -> tuple[int, int]:
        """CPU ticks of Mosquitto and InfluxDB so far."""
        services = self.services
        return cpu_ticks(services.mosquitto_pid) or 0, cpu_ticks(services.influx_pid) or 0

    def hub_environment(
        self, client_id: str, qos: int, database: str, burst: Burst
    ) -> dict[str, str]:
        """The environment of a `hub run` (no HUB_* of ours leaks in; --hub-env on top)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
        env.update(
            HUB_MQTT_URL=self.services.mqtt_url,
            HUB_MQTT_CLIENT_ID=client_id,
            HUB_INFLUX_URL=self.services.influx_url,
            HUB_INFLUX_DB=database,
            HUB_PROFILES_DIR=str(PROFILES_DIR),
            HUB_INVENTORY=str(burst.inventory),
            HUB_DATA_DIR=str(self.tmp / client_id / "data"),
            HUB_API_ENABLED="false",
            HUB_LOG_LEVEL="INFO",  # the drain starts at its "connected to" log line
        )
        env["HUB_MQTT_QOS"] = str(qos)
        env.update(self.hub_env)
        return env


def _service_delta(setup: Setup, before: tuple[int, int], drain: Drain) -> None:
    after = setup.service_cpu()
    drain.broker_cpu_s = (after[0] - before[0]) / CLOCK_TICKS
    drain.influx_cpu_s = (after[1] - before[1]) / CLOCK_TICKS


def measure_drain(
    drain: Drain,
    setup: Setup,
    *,
    counter: PointCounter,
    monitor: TreeMonitor,
    proc: subprocess.Popen[bytes],
    connected_at: float,
) -> Landing:
    """Time the drain of a connected consumer until InfluxDB has every expected point; its
    CPU, the services' CPU and the peak RSS go into ``drain``."""
    cpu_before, service_before = monitor.cpu_s(), setup.service_cpu()
    landing = wait_landed(counter, drain.expected, lambda: proc.poll() is None)
    drain.cpu_s = monitor.cpu_s() - cpu_before
    _service_delta(setup, service_before, drain)
    drain.drain_s = landing.at - connected_at
    drain.landed, drain.detail = landing.landed, landing.detail
    drain.polls, drain.slowest_poll_s = counter.polls, counter.slowest_s
    drain.peak_rss_tree_mb, drain.peak_rss_main_mb = monitor.peak_rss_mb()
    drain.processes = monitor.processes
    return landing


def _exited(drain: Drain, who: str, last_line: str) -> str:
    """Why a drain failed, with the consumer's exit status and last log line."""
    why = drain.detail or f"{who} did not stop cleanly on SIGTERM"
    return f"{why}; exit status {drain.exit_code}; last log line: {last_line or '-'}"


def drain_c_client(setup: Setup, burst: Burst, qos: int) -> Drain:
    """mosquitto_sub: the broker's own C client, counting messages (it prints only their size)."""
    drain = Drain("c_client", qos, burst.devices, len(burst.messages), len(burst.messages))
    client_id = setup.name("c")
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        raise BenchmarkError("mosquitto_sub not found (Debian's mosquitto-clients)")
    endpoint = MqttEndpoint(setup.services.mqtt_url)
    command = [binary, "-h", endpoint.host, "-p", str(endpoint.port), "-c", "-i", client_id]
    command += ["-q", str(qos)]
    for topic in setup.subscriptions:
        command += ["-t", topic]
    out = setup.tmp / f"{client_id}.out"
    try:
        subprocess.run([*command, "-E"], check=True, capture_output=True, timeout=START_TIMEOUT_S)
        drain.preload_s = preload(setup.services.mqtt_url, burst.messages, qos)
        before = setup.service_cpu()
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        children_cpu = children.ru_utime + children.ru_stime
        with out.open("wb") as sink:
            started = time.monotonic()
            proc = subprocess.Popen(
                [*command, "-C", str(drain.messages), "-F", "%l"],
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                size, changed = -1, started
                while proc.poll() is None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(POLL_S)
                        break
                    now, grown = time.monotonic(), out.stat().st_size
                    if grown != size:
                        size, changed = grown, now
                    elif now - changed > STALL_S:
                        drain.detail = f"no new message for {STALL_S:.0f} s"
                        break
                ended = time.monotonic()
            finally:
                drain.exit_code = stop_process(proc, 5)
        # it lived less than a sampling interval: its CPU comes from the kernel once reaped
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        drain.cpu_s = after.ru_utime + after.ru_stime - children_cpu
        _service_delta(setup, before, drain)
        drain.drain_s = ended - started
        with out.open("rb") as lines:
            drain.landed = sum(1 for _ in lines)
        drain.ok = drain.exit_code == 0 and drain.landed == drain.expected
        if not drain.ok and not drain.detail:
            drain.detail = f"mosquitto_sub exit {drain.exit_code}"
    finally:
        drop_session(setup.services.mqtt_url, client_id)
    return drain


def drain_naive(setup: Setup, burst: Burst, qos: int) -> Drain:
    """bench/naive_baseline.py, as its own process."""
    drain = Drain("naive", qos, burst.devices, len(burst.messages), burst.points)
    client_id = database = setup.name("naive")
    services = setup.services
    command = [sys.executable, "-m", "bench.naive_baseline", "--mqtt-url", services.mqtt_url]
    command += ["--client-id", client_id, "--qos", str(qos), "--influx-url", services.influx_url]
    command += ["--database", database, "--inventory", str(burst.inventory)]
    devservices.create_database(services.influx_url, database)
    counter = PointCounter(services.influx_url, database, burst.count_fields, burst.start_ms)
    try:
        subprocess.run(
            [*command, "--subscribe-only"],
            check=True,
            capture_output=True,
            timeout=START_TIMEOUT_S,
            cwd=REPO_ROOT,
        )
        drain.preload_s = preload(services.mqtt_url, burst.messages, qos)
        with (setup.tmp / f"{client_id}.err").open("wb") as errors:
            started = time.monotonic()
            proc = subprocess.Popen(
                [*command, "--messages", str(drain.messages)],
                stdout=subprocess.PIPE,
                stderr=errors,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        assert proc.stdout is not None  # noqa: S101  # stdout=PIPE
        watch = OutputWatch(proc.stdout, setup.tmp / f"{client_id}.out")
        monitor = TreeMonitor(proc.pid)
        try:
            connected = watch.wait_for("connected", START_TIMEOUT_S)
            if connected is None:
                raise BenchmarkError(f"the naive baseline did not connect: {watch.tail()}")
            drain.startup_s = connected[0] - started
            landing = measure_drain(
                drain, setup, counter=counter, monitor=monitor, proc=proc, connected_at=connected[0]
            )
            done = watch.wait_for("done ", STOP_TIMEOUT_S if landing.ok else 5)
            if done is not None:
                drain.reported = json.loads(done[1].partition(" ")[2])
        finally:
            monitor.stop()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(STOP_TIMEOUT_S if drain.reported else 1)
            drain.exit_code = stop_process(proc)
            watch.join()
        drain.ok = landing.ok and drain.exit_code == 0
        if not drain.ok:
            stderr = (setup.tmp / f"{client_id}.err").read_text(errors="replace").strip()
            last = stderr.splitlines()[-1] if stderr else ""
            drain.detail = _exited(drain, "the naive baseline", last)
    finally:
        counter.close()
        drop_session(services.mqtt_url, client_id)
        devservices.drop_database(services.influx_url, database)
    return drain


def start_hub(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], OutputWatch]:
    """`hub run` as a process, its log (stderr) watched."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    assert proc.stderr is not None  # noqa: S101  # stderr=PIPE
    return proc, OutputWatch(proc.stderr, log_path)


def _hub_failed(what: str, watch: OutputWatch) -> BenchmarkError:
    return BenchmarkError(f"{what}; last lines of {watch.log_path}:\n{watch.tail()}")


def drain_hub(setup: Setup, burst: Burst, qos: int) -> Drain:
    """`hub run`: started to create its session, stopped, preloaded, started to drain."""
    drain = Drain("hub", qos, burst.devices, len(burst.messages), burst.points)
    client_id = database = setup.name("hub")
    services = setup.services
    env = setup.hub_environment(client_id, qos, database, burst)
    devservices.create_database(services.influx_url, database)
    counter = PointCounter(services.influx_url, database, burst.count_fields, burst.start_ms)
    try:
        proc, watch = start_hub(env, setup.tmp / f"{client_id}-session.log")
        try:
            if watch.wait_for("hub running", START_TIMEOUT_S) is None:
                raise _hub_failed("the hub did not start", watch)
        finally:
            code = stop_process(proc)
            watch.join()
        if code != 0:
            raise _hub_failed(f"the hub exited with {code} on SIGTERM", watch)
        drain.preload_s = preload(services.mqtt_url, burst.messages, qos)

        started = time.monotonic()
        proc, watch = start_hub(env, setup.tmp / f"{client_id}-drain.log")
        monitor = TreeMonitor(proc.pid)
        try:
            connected = watch.wait_for("connected to", START_TIMEOUT_S)
            if connected is None:
                raise _hub_failed("the hub did not connect", watch)
            if "session present: True" not in connected[1]:
                raise _hub_failed("the broker had no session for the hub", watch)
            drain.startup_s = connected[0] - started
            landing = measure_drain(
                drain, setup, counter=counter, monitor=monitor, proc=proc, connected_at=connected[0]
            )
        finally:
            monitor.stop()
            drain.exit_code = stop_process(proc)
            watch.join()
        drain.ok = landing.ok and drain.exit_code == 0
        if not drain.ok:
            drain.detail = _exited(drain, "the hub", watch.tail(1))
    finally:
        counter.close()
        drop_session(services.mqtt_url, client_id)
        devservices.drop_database(services.influx_url, database)
    return drain


# --------------------------------------------------------------------------- alert latency


@dataclass
class AlertRun:
    """Alert latency of a live hub under paced background traffic."""

    seconds: float
    target_rate: float
    probes: int
    notified: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    background_messages: int = 0
    background_sent_s: float = 0.0
    background_confirmed_s: float = 0.0
    #: CPU of the background publisher while it published (it shares the machine)
    background_cpu_s: float = 0.0
    expected: int = 0
    landed: int = 0
    #: from the end of the background traffic until InfluxDB had every point
    catch_up_s: float = 0.0
    cpu_s: float | None = None
    peak_rss_tree_mb: float | None = None
    exit_code: int | None = None
    ok: bool = False
    detail: str = ""

    @property
    def achieved_rate(self) -> float:
        """Background messages per second, until the broker confirmed the last one."""
        seconds = self.background_confirmed_s
        return self.background_messages / seconds if seconds > 0 else 0.0

    def latency(self, pct: float) -> float | None:
        """The ``pct`` percentile of the probes' latency in ms."""
        return percentile(self.latencies_ms, pct) if self.latencies_ms else None

    def to_json(self) -> dict[str, Any]:
        """The JSON result."""
        body = dataclasses.asdict(self)
        body["latencies_ms"] = [round(ms, 2) for ms in self.latencies_ms]
        body["achieved_rate"] = round(self.achieved_rate)
        for pct in (50, 99, 100):
            value = self.latency(pct)
            body[f"p{pct}_ms" if pct < 100 else "max_ms"] = (
                None if value is None else round(value, 1)
            )
        return body


def paced_publisher(
    conn: Connection, mqtt_url: str, *, spec: FleetSpec, count: int, start_ms: int, rate: float
) -> None:
    """Background traffic (its own process): ``count`` burst messages at ``rate`` per second
    of wall time. Sends "ready", waits for "go", publishes, sends its timings."""
    try:
        messages = Fleet(spec).burst(count, start_ms)
        publisher = Publisher(mqtt_url, f"bench-load-{os.getpid()}")
    except Exception as exc:  # reported to the parent, which fails the run
        conn.send({"error": repr(exc)})
        return
    try:
        conn.send("ready")
        conn.recv()
        started, cpu = time.monotonic(), time.process_time()
        for k, message in enumerate(messages):
            ahead = started + k / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # pacing in wall time
            publisher.publish(message.topic, message.payload, message.qos)
            if k % PACE_WINDOW == 0:
                # the broker may be at most one window behind: push back, do not pile up
                publisher.confirm(keep=PACE_WINDOW, timeout_s=60)
        sent_s = time.monotonic() - started
        publisher.fence()
        confirmed_s = time.monotonic() - started
        cpu_s = time.process_time() - cpu
        conn.send({"sent_s": sent_s, "confirmed_s": confirmed_s, "cpu_s": cpu_s})
    except Exception as exc:  # reported to the parent, which fails the run
        conn.send({"error": repr(exc)})
    finally:
        publisher.close()


def probe_message(k: int) -> SimMessage:
    """A lamp (a new one for each ``k``) reporting LAMP_FAILURE: an alert without `for`."""
    lamp = f"PO-LP-PRB-{k:05d}"
    now = wall_clock_ms()
    body = {
        "ts": now // 1000,
        "on": True,
        "dim": 100,
        "p": 2.4,
        "v": 229.5,
        "i": 0.011,
        "pf": 0.5,
        "e": 1000 + k,
        "hrs": 100,
        "faults": ["LAMP_FAILURE"],
    }
    topic = f"citelum/prato/{PROBE_CABINET}/lamp/{lamp}/state"
    return SimMessage(topic, orjson.dumps(body), 1, False, now)


class Probes:
    """Probe lamps: when each was published, and when its alert's notification arrived."""

    def __init__(self, mqtt_url: str, client_id: str) -> None:
        self.sent: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.messages: list[SimMessage] = []
        self._lock = threading.Lock()
        self._subscriber = MqttLink(
            MqttEndpoint(mqtt_url), f"{client_id}-sub", persistent=False, manual_ack=False
        )
        self._subscriber.start(
            [NOTIFY_TOPIC.format(severity="critical", device_id="+")], 1, self._sink
        )
        self._publisher: Publisher | None = None
        try:
            self._subscriber.wait_connected(START_TIMEOUT_S)
            self._publisher = Publisher(mqtt_url, f"{client_id}-probe")
        except BaseException:
            self.close()
            raise

    def _sink(self, message: RawMessage) -> None:
        """The subscriber's callback (paho's thread): the first arrival per device."""
        at = time.monotonic()
        device = message.topic.rsplit("/", 1)[-1]
        with self._lock:
            self.arrived.setdefault(device, at)

    def send(self, k: int) -> str:
        """Publish probe ``k``; its device id."""
        assert self._publisher is not None  # noqa: S101  # connected in __init__
        message = probe_message(k)
        device = message.topic.split("/")[4]
        self.messages.append(message)
        self.sent[device] = time.monotonic()
        self._publisher.publish(message.topic, message.payload, 1)
        return device

    def send_every(self, every_s: float, numbers: Iterable[int]) -> list[str]:
        """Send the probes ``numbers``, one every ``every_s`` of wall time; their devices."""
        started = time.monotonic()
        devices = []
        for done, k in enumerate(numbers):
            ahead = started + done * every_s - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)  # the probe schedule, in wall time
            devices.append(self.send(k))
        return devices

    def wait(self, devices: Sequence[str], timeout_s: float) -> bool:
        """True once every device in ``devices`` has been notified."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if all(d in self.arrived for d in devices):
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)  # poll interval under a deadline

    def latencies_ms(self, devices: Sequence[str]) -> list[float]:
        """Publish -> notification of each notified device, in ms."""
        with self._lock:
            return [(self.arrived[d] - self.sent[d]) * 1000 for d in devices if d in self.arrived]

    def close(self) -> None:
        """Disconnect both clients."""
        if self._publisher is not None:
            self._publisher.close()
        self._subscriber.stop()


class Background:
    """The paced background publisher, in its own process (spawned: this one has threads)."""

    def __init__(self, mqtt_url: str, burst: Burst, rate: float) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=paced_publisher,
            args=(child, mqtt_url),
            kwargs={
                "spec": burst.spec,
                "count": len(burst.messages),
                "start_ms": burst.start_ms,
                "rate": rate,
            },
            daemon=True,
        )
        self._process.start()
        child.close()  # the child has its own copy

    def _receive(self, timeout_s: float, what: str) -> Any:
        if not self._conn.poll(timeout_s):
            raise BenchmarkError(f"the background publisher did not {what}")
        answer = self._conn.recv()
        if isinstance(answer, dict) and "error" in answer:
            raise BenchmarkError(f"background publisher: {answer['error']}")
        return answer

    def start(self) -> None:
        """Wait until it is ready, then let it go."""
        self._receive(START_TIMEOUT_S * 2, "get ready")
        self._conn.send("go")

    def result(self, timeout_s: float) -> dict[str, float]:
        """Its timings once it is done."""
        answer: dict[str, float] = self._receive(timeout_s, "finish")
        return answer

    def close(self) -> None:
        """Wait for it to exit; terminate it if it does not."""
        self._process.join(10)
        for stop in (self._process.terminate, self._process.kill):
            if self._process.is_alive():
                stop()
                self._process.join(10)
        self._conn.close()


def write_notify_config(path: Path) -> Path:
    """A notification config that publishes critical alerts to NOTIFY_TOPIC, nothing else."""
    path.write_text(
        f'mqtt:\n  enabled: true\n  topic: "{NOTIFY_TOPIC}"\n  min_severity: critical\n',
        encoding="utf-8",
    )
    return path


def _probe_under_load(run: AlertRun, probe: Probes, load: Background) -> tuple[float, list[str]]:
    """Start the background traffic and the probes together, until both are sent; when they
    started, and the probe lamps."""
    load.start()
    started = time.monotonic()
    lamps = probe.send_every(PROBE_EVERY_S, range(1, run.probes + 1))
    timings = load.result(run.seconds + STALL_S * 2)
    run.background_sent_s = timings["sent_s"]
    run.background_confirmed_s = timings["confirmed_s"]
    run.background_cpu_s = timings["cpu_s"]
    return started, lamps


def alert_latency(
    setup: Setup, profiles: ProfileSet, *, devices: int, seconds: float, rate: float, seed: int
) -> AlertRun:
    """A live hub notifying alerts over MQTT; probe latency under paced background traffic."""
    probes = max(1, round(seconds / PROBE_EVERY_S))
    run = AlertRun(seconds, rate, probes)
    services = setup.services
    count = max(1, round(rate * seconds))
    background = make_burst("alerts", profiles, setup.tmp, devices=devices, count=count, seed=seed)
    run.background_messages = len(background.messages)
    client_id = database = setup.name("alerts")
    env = setup.hub_environment(client_id, 1, database, background)
    env["HUB_NOTIFY_CONFIG"] = str(write_notify_config(setup.tmp / "notify.yaml"))
    devservices.create_database(services.influx_url, database)
    counter = PointCounter(
        services.influx_url, database, background.count_fields, background.start_ms
    )
    load = Background(services.mqtt_url, background, rate)
    proc, watch = start_hub(env, setup.tmp / f"{client_id}.log")
    monitor = TreeMonitor(proc.pid)
    probe: Probes | None = None
    try:
        if watch.wait_for("hub running", START_TIMEOUT_S) is None:
            raise _hub_failed("the hub did not start", watch)
        probe = Probes(services.mqtt_url, client_id)
        if not probe.wait([probe.send(0)], NOTIFY_WAIT_S):  # the path works, and is warm
            raise _hub_failed("the warm-up probe was never notified", watch)
        cpu_before = monitor.cpu_s()
        started, lamps = _probe_under_load(run, probe, load)
        probe_points, _ = expected_points(profiles, probe.messages, wall_clock_ms())
        run.expected = background.points + sum(probe_points.values())
        # the hub may be behind the load: the probes' alerts come once it has caught up
        landing = wait_landed(counter, run.expected, lambda: proc.poll() is None)
        run.landed = landing.landed
        all_notified = probe.wait(lamps, NOTIFY_WAIT_S)
        run.latencies_ms = probe.latencies_ms(lamps)
        run.notified = len(run.latencies_ms)
        run.catch_up_s = max(0.0, landing.at - (started + run.background_confirmed_s))
        run.cpu_s = monitor.cpu_s() - cpu_before
        run.peak_rss_tree_mb = monitor.peak_rss_mb()[0]
        run.ok = all_notified and landing.ok
        run.detail = landing.detail or (
            "" if all_notified else f"{probes - run.notified} probes never notified"
        )
    finally:
        monitor.stop()
        run.exit_code = stop_process(proc)
        watch.join()
        if probe is not None:
            probe.close()
        load.close()
        counter.close()
        drop_session(services.mqtt_url, client_id)
        devservices.drop_database(services.influx_url, database)
    if run.exit_code != 0:
        run.ok = False
        run.detail = run.detail or f"the hub exited with {run.exit_code} on SIGTERM"
    return run


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Target:
    """One target: what it asks, what was measured, met or not (None: not measured)."""

    name: str
    measured: str
    met: bool | None

    @property
    def verdict(self) -> str:
        """PASS, MISS or "-" when not measured."""
        return "-" if self.met is None else "PASS" if self.met else "MISS"


def _find(drains: list[Drain], consumer: str, qos: int) -> Drain | None:
    for drain in drains:
        if drain.consumer == consumer and drain.qos == qos:
            return drain
    return None


def _ratio(top: Drain | None, bottom: Drain | None) -> float | None:
    if top is None or bottom is None or not top.ok or not bottom.ok:
        return None
    return top.rate / bottom.rate


def influx_ceiling(drain: Drain | None) -> float | None:
    """The fastest any consumer could land ``drain``'s burst here, msg/s: InfluxDB's own CPU
    for its points (measured during the drain), were InfluxDB given every core."""
    if drain is None or not drain.ok or not drain.influx_cpu_s:
        return None
    return drain.messages / (drain.influx_cpu_s / (os.cpu_count() or 1))


def targets(drains: list[Drain], rss: Drain | None, alerts: AlertRun | None) -> list[Target]:
    """The benchmark's targets, each met, missed or not measured."""
    found: list[Target] = []
    c_client = _find(drains, "c_client", 1)
    ratio = _ratio(_find(drains, "hub", 1), c_client)
    ceiling = influx_ceiling(_find(drains, "hub", 1))
    measured = "-" if ratio is None else f"{ratio:.2f} x"
    if ratio is not None and ceiling is not None and c_client is not None:
        measured += f" (InfluxDB's own CPU caps it at {ceiling / c_client.rate:.2f} x)"
    found.append(
        Target(
            f"QoS 1 hub >= {QOS1_HUB_VS_C} x C client",
            measured,
            None if ratio is None else ratio >= QOS1_HUB_VS_C,
        )
    )
    ratio = _ratio(_find(drains, "hub", 0), _find(drains, "naive", 0))
    found.append(
        Target(
            f"QoS 0 hub >= {QOS0_HUB_VS_NAIVE} x naive",
            "-" if ratio is None else f"{ratio:.2f} x",
            None if ratio is None else ratio >= QOS0_HUB_VS_NAIVE,
        )
    )
    runs: list[Drain | AlertRun] = [*drains, *(r for r in (rss, alerts) if r is not None)]
    lost = [r for r in runs if not r.ok]
    found.append(
        Target(
            "no message lost",
            f"{len(runs) - len(lost)}/{len(runs)} runs complete",
            None if not runs else not lost,
        )
    )
    peak = rss.peak_rss_tree_mb if rss is not None and rss.ok else None
    found.append(
        Target(
            f"hub RSS < {RSS_LIMIT_MB:.0f} MB with {rss.devices if rss else 10_000:,} devices",
            "-" if peak is None else f"{peak:.0f} MB",
            None if peak is None else peak < RSS_LIMIT_MB,
        )
    )
    p99 = alerts.latency(99) if alerts is not None and alerts.ok else None
    found.append(
        Target(
            f"alert p99 < {ALERT_P99_LIMIT_MS:.0f} ms under load",
            "-" if p99 is None else f"{p99:.0f} ms",
            None if p99 is None else p99 < ALERT_P99_LIMIT_MS,
        )
    )
    return found


def _grid(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width columns: the first left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _num(value: float | None, digits: int = 0, suffix: str = "") -> str:
    return "-" if value is None else f"{value:,.{digits}f}{suffix}"


def _summary(detail: str) -> str:
    """A failure's first line, and its last one when there are more (the log's last line)."""
    lines = (detail or "failed").strip().splitlines()
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def table(
    drains: list[Drain], rss: Drain | None, alerts: AlertRun | None, goals: list[Target]
) -> str:
    """The results as fixed-width text."""
    header = (
        "QoS",
        "C client msg/s",
        "naive msg/s",
        "hub msg/s",
        "hub/C",
        "hub/naive",
        "hub CPU s",
        "hub RSS MB",
        "naive CPU s",
        "naive RSS MB",
        "landed == sent",
    )
    rows = []
    for qos in sorted({d.qos for d in drains}):
        c, naive, hub = (_find(drains, name, qos) for name in ("c_client", "naive", "hub"))
        ran = [d for d in (c, naive, hub) if d is not None]
        rows.append(
            (
                str(qos),
                _num(c.rate if c and c.ok else None),
                _num(naive.rate if naive and naive.ok else None),
                _num(hub.rate if hub and hub.ok else None),
                _num(_ratio(hub, c), 2),
                _num(_ratio(hub, naive), 2),
                _num(hub.cpu_s if hub else None, 1),
                _num(hub.peak_rss_tree_mb if hub else None, 1),
                _num(naive.cpu_s if naive else None, 1),
                _num(naive.peak_rss_tree_mb if naive else None, 1),
                "yes" if all(d.ok for d in ran) else "NO",
            )
        )
    parts = [_grid(header, rows)]
    for qos in sorted({d.qos for d in drains}):
        hub = _find(drains, "hub", qos)
        ceiling = influx_ceiling(hub)
        if hub is not None and ceiling is not None:
            parts.append(
                f"\nQoS {qos}: InfluxDB used {hub.influx_cpu_s:.1f} s of CPU for the hub's "
                f"{hub.expected:,} points: no consumer could land this burst faster than "
                f"{ceiling:,.0f} msg/s on {os.cpu_count()} cores"
            )
    if rss is not None:
        parts.append(
            f"\nhub with {rss.devices:,} devices (QoS 1, {rss.messages:,} messages): peak RSS "
            f"{_num(rss.peak_rss_tree_mb, 1)} MB (main process {_num(rss.peak_rss_main_mb, 1)} MB,"
            f" {rss.processes} processes), {_num(rss.rate)} msg/s, landed "
            f"{rss.landed:,}/{rss.expected:,}"
        )
    if alerts is not None:
        parts.append(
            f"\nalert latency under {alerts.target_rate:,.0f} msg/s for {alerts.seconds:g} s "
            f"(achieved {alerts.achieved_rate:,.0f} msg/s, the publisher using "
            f"{alerts.background_cpu_s:.0f} s of CPU): {alerts.notified}/{alerts.probes} "
            f"probes notified, p50 {_num(alerts.latency(50), 1)} ms, p99 "
            f"{_num(alerts.latency(99), 1)} ms, max {_num(alerts.latency(100), 1)} ms; points "
            f"{alerts.landed:,}/{alerts.expected:,}, caught up {alerts.catch_up_s:.1f} s after "
            "the load"
        )
    failed = [
        f"  {d.consumer} QoS {d.qos}, {d.devices:,} devices: {_summary(d.detail)}"
        for d in (*drains, *([rss] if rss else []))
        if not d.ok
    ]
    if alerts is not None and not alerts.ok:
        failed.append(f"  alert run: {_summary(alerts.detail)}")
    if failed:
        parts.append("\nfailed runs:\n" + "\n".join(failed))
    parts.append(
        "\ntargets:\n"
        + _grid(("target", "measured", ""), [(t.name, t.measured, t.verdict) for t in goals])
    )
    return "\n".join(parts)


def describe(drain: Drain) -> str:
    """One progress line for a finished drain."""
    unit = "messages" if drain.consumer == "c_client" else "points"
    text = (
        f"  QoS {drain.qos} {drain.consumer}: {drain.messages:,} messages in "
        f"{drain.drain_s:.2f} s = {drain.rate:,.0f} msg/s; {drain.landed:,}/{drain.expected:,} "
        f"{unit}"
    )
    if drain.cpu_s is not None:
        text += f"; CPU {drain.cpu_s:.1f} s"
    if drain.peak_rss_tree_mb is not None:
        text += f"; peak RSS {drain.peak_rss_tree_mb:.1f} MB"
    if drain.startup_s is not None:
        text += f"; start-up {drain.startup_s:.2f} s"
    text += f" (preload {drain.preload_s:.1f} s)"
    if not drain.ok:
        text += f"\n  FAILED: {drain.detail}"
    return text


def _git_commit() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "describe", "--always", "--dirty"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


def machine(influx_url: str) -> dict[str, Any]:
    """Where the numbers were taken."""
    with httpx.Client(base_url=influx_url, timeout=10.0, trust_env=False) as http:
        influx_version = http.get("/ping").headers.get("X-Influxdb-Version")
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    mosquitto_version = None
    if mosquitto is not None:
        done = subprocess.run(
            [mosquitto, "-h"], capture_output=True, text=True, check=False, timeout=10
        )
        mosquitto_version = (done.stdout or done.stderr).splitlines()[0].strip() or None
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    memory_kb = None
    with contextlib.suppress(OSError, IndexError, ValueError):
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "memory_mb": None if memory_kb is None else round(memory_kb / 1024),
        "load_average": os.getloadavg(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "influxdb_version": influx_version,
        "mosquitto_version": mosquitto_version,
        "hub_commit_at_end": _git_commit(),
    }


# --------------------------------------------------------------------------- main


def _qos_list(text: str) -> list[int]:
    levels = sorted({int(part) for part in text.split(",") if part.strip()})
    if not levels or any(q not in (0, 1) for q in levels):
        raise argparse.ArgumentTypeError("QoS levels are 0 and 1, e.g. 0,1 or 1")
    return levels


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.startswith("HUB_"):
        raise argparse.ArgumentTypeError(f"{text!r} is not HUB_KEY=VALUE")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description="Ingest throughput of the hub against a C client and a naive consumer, "
        "its RSS with many devices, and alert latency under load. Starts and stops its own "
        "services.",
    )
    add = parser.add_argument
    add("--messages", type=int, default=200_000, help="burst size (default 200000)")
    add("--devices", type=int, default=1_000, help="fleet size (default 1000)")
    add("--qos", type=_qos_list, default=[0, 1], help="QoS levels to drain at (default 0,1)")
    add("--rss-devices", type=int, default=10_000, help="fleet of the RSS run (default 10000)")
    add("--rss-messages", type=int, default=100_000, help="burst of the RSS run (default 100000)")
    add("--alert-seconds", type=float, default=30.0, help="load duration (default 30)")
    add("--alert-rate", type=float, default=5_000.0, help="background msg/s (default 5000)")
    add("--seed", type=int, default=1, help="the fleet's random seed")
    for part in ("c-client", "naive", "hub", "rss", "alerts"):
        add(f"--skip-{part}", action="store_true", help=f"skip the {part} runs")
    add(
        "--hub-env",
        type=_key_value,
        action="append",
        default=[],
        metavar="HUB_KEY=VALUE",
        help="a setting for every hub process (repeatable)",
    )
    add("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every run landed everything, 1 on a loss or failure."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.messages < 1 or args.rss_messages < 1 or args.alert_seconds <= 0:
        parser.error("--messages, --rss-messages and --alert-seconds must be positive")
    if args.alert_rate <= 0:
        parser.error("--alert-rate must be positive")
    # MqttLink logs every disconnect (and paho a race of its loop thread on disconnect): the
    # benchmark's own disconnects come by the dozen
    quiet = [logging.getLogger(name) for name in ("hub.ingest.mqtt", "hub.mqtt.paho")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        return with_services("bench-ingest-", lambda services, tmp: _run(args, services, tmp))
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _attempt(run: Callable[[], Drain], failed: Drain) -> Drain:
    """``run()``, or ``failed`` with the reason when it could not be set up."""
    try:
        return run()
    except (BenchmarkError, subprocess.SubprocessError, OSError) as exc:
        failed.detail = str(exc)
        return failed


def _run(args: argparse.Namespace, services: devservices.Services, tmp: Path) -> int:
    began, commit = time.monotonic(), _git_commit()
    profiles = ProfileSet.load(PROFILES_DIR)
    setup = Setup(services, tmp, dict(args.hub_env), list(profiles.subscriptions))
    burst = make_burst(
        "burst", profiles, tmp, devices=args.devices, count=args.messages, seed=args.seed
    )
    spec = burst.spec
    print(
        f"burst: {len(burst.messages):,} messages from {args.devices:,} devices "
        f"({spec.parking_bays} bays, {spec.cabinets} cabinets x {spec.lamps_per_cabinet} lamps, "
        f"{spec.traffic_sites} traffic sites) -> {burst.points:,} points "
        f"({', '.join(f'{m} {n:,}' for m, n in sorted(burst.expected.items()))})",
        flush=True,
    )
    drains: list[Drain] = []
    consumers = (
        ("c_client", args.skip_c_client, drain_c_client),
        ("naive", args.skip_naive, drain_naive),
        ("hub", args.skip_hub, drain_hub),
    )
    for qos in args.qos:
        for name, skip, drain_with in consumers:
            if skip:
                continue
            print(f"QoS {qos} {name}: preload and drain...", flush=True)
            expected = len(burst.messages) if name == "c_client" else burst.points
            failed = Drain(name, qos, burst.devices, len(burst.messages), expected)
            drain = _attempt(functools.partial(drain_with, setup, burst, qos), failed)
            drains.append(drain)
            print(describe(drain), flush=True)
    del burst  # the RSS and alert runs make their own

    rss = None
    if not args.skip_rss:
        print(f"hub with {args.rss_devices:,} devices: preload and drain...", flush=True)
        rss_burst = make_burst(
            "rss", profiles, tmp, devices=args.rss_devices, count=args.rss_messages, seed=args.seed
        )
        failed = Drain("hub", 1, args.rss_devices, args.rss_messages, rss_burst.points)
        rss = _attempt(lambda: drain_hub(setup, rss_burst, 1), failed)
        print(describe(rss), flush=True)
        del rss_burst

    alerts = None
    if not args.skip_alerts:
        print(
            f"alert latency: {args.alert_seconds:g} s of {args.alert_rate:,.0f} msg/s...",
            flush=True,
        )
        try:
            alerts = alert_latency(
                setup,
                profiles,
                devices=args.devices,
                seconds=args.alert_seconds,
                rate=args.alert_rate,
                seed=args.seed + 1,
            )
        except (BenchmarkError, subprocess.SubprocessError, OSError) as exc:
            alerts = AlertRun(args.alert_seconds, args.alert_rate, 0, detail=str(exc))
        if not alerts.ok:
            print(f"  FAILED: {alerts.detail}", flush=True)

    goals = targets(drains, rss, alerts)
    print()
    print(table(drains, rss, alerts, goals))
    if _git_commit() != commit:
        print(f"\nwarning: the hub's code changed during the run (from {commit})")
    total_s = time.monotonic() - began
    document = {
        "benchmark": "ingest",
        "run_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total_s": round(total_s, 1),
        "config": {
            "messages": args.messages,
            "devices": args.devices,
            "qos": args.qos,
            "rss_devices": args.rss_devices,
            "rss_messages": args.rss_messages,
            "alert_seconds": args.alert_seconds,
            "alert_rate": args.alert_rate,
            "seed": args.seed,
            "hub_env": dict(args.hub_env),
            "subscriptions": setup.subscriptions,
            "poll_s": POLL_S,
            "poll_end_s": POLL_END_S,
        },
        # every `hub run` runs the code on disk when it starts: a commit in between mixes them
        "machine": {"hub_commit": commit, **machine(services.influx_url)},
        "drains": [
            d.to_json() | {"influx_ceiling_msg_per_s": round(influx_ceiling(d) or 0) or None}
            for d in drains
        ],
        "rss": None if rss is None else rss.to_json(),
        "alerts": None if alerts is None else alerts.to_json(),
        "targets": [dataclasses.asdict(t) | {"verdict": t.verdict} for t in goals],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {args.out} (total {total_s:.0f} s)")
    runs: list[Drain | AlertRun] = [*drains, *(r for r in (rss, alerts) if r is not None)]
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
