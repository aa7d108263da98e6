"""Local development and test services: one Mosquitto and one InfluxDB 1.x.

NEVER for production. Production runs the broker from ``mosquitto/mosquitto.conf`` (docker
compose); this module starts throw-away child processes for a developer or a test run:

* Mosquitto on a free loopback port, anonymous access (loopback only), with the queue and
  in-flight limits shared with production (``mosquitto/conf.d/``);
* InfluxDB 1.x (``influxd``) on two free loopback ports (HTTP API and the backup/restore
  RPC port), configured from ``influxdb/influxdb.local.conf``.

Everything (data, logs, generated configs, ``services.json``) lives under one state
directory, so several runs side by side never share anything, and nothing already running
on the machine (a system Mosquitto on 1883, a system InfluxDB on 8086) is used or touched.

The binaries come from Debian's ``mosquitto`` and ``influxdb`` packages: ``scripts/setup.sh``
installs them. Command line::

    python -m hub.devservices up       # start (or find running); prints `export ...` lines
    python -m hub.devservices env      # the export lines for the running services
    python -m hub.devservices status   # services.json plus "running", as JSON
    python -m hub.devservices down     # stop

    eval "$(python -m hub.devservices up)"   # then HUB_MQTT_URL / HUB_INFLUX_URL are set
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO_CONF_D = REPO_ROOT / "mosquitto" / "conf.d"
INFLUX_CONFIG_TEMPLATE = REPO_ROOT / "influxdb" / "influxdb.local.conf"
DEFAULT_STATE_DIR = Path(".state/services")

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
SERVICES_FILE = "services.json"

# Debian installs mosquitto in /usr/sbin, which is not on every user's PATH.
_SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")
_LOG_TAIL_LINES = 20
# A port found free can be taken by someone else before our service binds it; that race
# is the only start-up failure worth retrying.
_START_ATTEMPTS = 3
_POLL_S = 0.05

# Popen objects of the services this process started. Keeping them referenced stops
# Python from warning "subprocess N is still running" when they are garbage collected
# (the services are meant to outlive the Popen), and lets stop() reap its own children.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

# Never route loopback (or test) InfluxDB traffic through an HTTP(S)_PROXY from the
# environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True)
class Services:
    """The running local services, as recorded in ``<state_dir>/services.json``."""

    mqtt_port: int
    influx_port: int
    mqtt_url: str
    influx_url: str
    mosquitto_pid: int
    influx_pid: int
    state_dir: Path

    def env(self) -> dict[str, str]:
        """Return the hub's environment variables pointing at these services."""
        return {"HUB_MQTT_URL": self.mqtt_url, "HUB_INFLUX_URL": self.influx_url}


class _PortTakenError(RuntimeError):
    """A service could not bind the port we picked: someone took it in between."""


@dataclass(frozen=True)
class _Layout:
    """Where each file of one state directory lives."""

    root: Path

    @property
    def services_file(self) -> Path:
        return self.root / SERVICES_FILE

    @property
    def lock_file(self) -> Path:
        return self.root / ".lock"

    @property
    def mosquitto_dir(self) -> Path:
        return self.root / "mosquitto"

    @property
    def mosquitto_config(self) -> Path:
        return self.mosquitto_dir / "mosquitto.conf"

    @property
    def mosquitto_log(self) -> Path:
        return self.mosquitto_dir / "mosquitto.log"

    @property
    def influx_dir(self) -> Path:
        return self.root / "influxdb"

    @property
    def influx_config(self) -> Path:
        return self.influx_dir / "influxdb.conf"

    @property
    def influx_log(self) -> Path:
        return self.influx_dir / "influxd.log"


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def start(state_dir: Path) -> Services:
    """Start Mosquitto and InfluxDB under ``state_dir``, or return the ones already running.

    Idempotent: if ``services.json`` names two live processes of this state directory that
    answer (MQTT port accepts TCP, InfluxDB ``/ping`` gives 204), those are returned. A
    half-dead pair is stopped and replaced. Raises ``RuntimeError`` if a binary is missing
    (run ``scripts/setup.sh``) or a service does not become ready within 30 s; the message
    then carries the end of that service's log, and nothing is left running.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    layout = _Layout(state_dir.resolve())
    _check_path_is_safe(layout.root)
    with _locked(layout):
        found = _running(layout)
        if found is not None:
            return found
        mosquitto = _find_binary("mosquitto")
        influxd = _find_binary("influxd")
        _stop(layout)
        attempt = 1
        while True:
            try:
                return _start_fresh(layout, mosquitto, influxd)
            except _PortTakenError:
                if attempt >= _START_ATTEMPTS:
                    raise
                attempt += 1


def running(state_dir: Path) -> Services | None:
    """Return the services recorded under ``state_dir`` if they are up and answering."""
    layout = _Layout(state_dir.resolve())
    if not layout.services_file.exists():
        return None
    return _running(layout)


def stop(state_dir: Path) -> None:
    """Stop the services recorded under ``state_dir`` and remove ``services.json``.

    Each PID gets SIGTERM, then SIGKILL if it is still there after 10 s. A PID is only
    signalled while its command line still names this state directory's config file, so a
    stale ``services.json`` can never kill an unrelated process that reused the PID. No
    error if nothing runs.
    """
    layout = _Layout(state_dir.resolve())
    if not layout.root.is_dir():
        return
    with _locked(layout):
        _stop(layout)


def create_database(influx_url: str, name: str) -> None:
    """Create an InfluxDB 1.x database (``CREATE DATABASE``); a no-op if it exists.

    For LOCAL development and tests only. The hub itself never creates databases:
    production InfluxDB 2.x / 3 refuse InfluxQL ``CREATE DATABASE`` (buckets and their
    retention are provisioned by operations), so only this module's InfluxDB 1.x uses it.
    """
    _influxql(influx_url, f"CREATE DATABASE {_quote_ident(name)}")


def drop_database(influx_url: str, name: str) -> None:
    """Drop an InfluxDB 1.x database (``DROP DATABASE``); a no-op if it does not exist.

    For LOCAL development and tests only, like :func:`create_database`.
    """
    _influxql(influx_url, f"DROP DATABASE {_quote_ident(name)}")


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m hub.devservices {up,down,env,status} [--state-dir DIR]``.

    ``up`` and ``env`` print ``export VAR=value`` lines on stdout (for ``eval``), all other
    messages go to stderr. Exit status: 0 on success, 1 on an error or, for ``env`` and
    ``status``, when the services are not running.
    """
    parser = argparse.ArgumentParser(
        prog="python -m hub.devservices",
        description="Local Mosquitto + InfluxDB for development and tests (never production).",
    )
    parser.add_argument("command", choices=("up", "down", "env", "status"))
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help=f"where data, logs and configs live (default: {DEFAULT_STATE_DIR})",
    )
    args = parser.parse_args(argv)
    state_dir: Path = args.state_dir
    try:
        if args.command == "up":
            _print_exports(start(state_dir))
            return 0
        if args.command == "down":
            stop(state_dir)
            print(f"stopped the services of {state_dir}", file=sys.stderr)
            return 0
        services = running(state_dir)
        if args.command == "env":
            if services is None:
                print(
                    f"not running; start them: python -m hub.devservices up --state-dir "
                    f"{shlex.quote(str(state_dir))}",
                    file=sys.stderr,
                )
                return 1
            _print_exports(services)
            return 0
        print(json.dumps(_status(state_dir, services), indent=2, sort_keys=True))
        return 0 if services is not None else 1
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------------------------------
# Starting
# ---------------------------------------------------------------------------------------


def _start_fresh(layout: _Layout, mosquitto: str, influxd: str) -> Services:
    """Start both services on newly picked ports; on any failure leave nothing running."""
    mqtt_port, influx_port, rpc_port = _free_ports(3)
    for directory in (
        layout.mosquitto_dir / "data",
        layout.influx_dir / "meta",
        layout.influx_dir / "data",
        layout.influx_dir / "wal",
    ):
        directory.mkdir(parents=True, exist_ok=True)
    layout.mosquitto_config.write_text(_mosquitto_config(layout, mqtt_port), encoding="utf-8")
    layout.influx_config.write_text(_influx_config(layout, influx_port, rpc_port), encoding="utf-8")
    mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"
    influx_url = f"http://127.0.0.1:{influx_port}"

    started: list[subprocess.Popen[bytes]] = []
    try:
        mosq = _spawn([mosquitto, "-c", str(layout.mosquitto_config)], layout.mosquitto_log)
        started.append(mosq)
        # influxd would let INFLUXDB_* variables of the caller override the config file
        # (a developer's INFLUXDB_HTTP_BIND_ADDRESS would move it to another port).
        influx_env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        influx = _spawn(
            [influxd, "-config", str(layout.influx_config)], layout.influx_log, env=influx_env
        )
        started.append(influx)

        deadline = time.monotonic() + READY_TIMEOUT_S
        _wait_ready(
            "Mosquitto", mosq, lambda: tcp_accepts(mqtt_port), layout.mosquitto_log, deadline
        )
        _wait_ready(
            "InfluxDB", influx, lambda: _influx_pings(influx_url), layout.influx_log, deadline
        )
    except BaseException:
        # Our own children: stop them through their Popen objects. A PID/cmdline check would
        # miss a child that has forked but not yet exec'd influxd, and leak it.
        for proc in reversed(started):
            _terminate_child(proc)
        raise

    services = Services(
        mqtt_port=mqtt_port,
        influx_port=influx_port,
        mqtt_url=mqtt_url,
        influx_url=influx_url,
        mosquitto_pid=mosq.pid,
        influx_pid=influx.pid,
        state_dir=layout.root,
    )
    record: dict[str, Any] = {
        "mqtt_port": mqtt_port,
        "influx_port": influx_port,
        "influx_rpc_port": rpc_port,
        "mqtt_url": mqtt_url,
        "influx_url": influx_url,
        "mosquitto_pid": mosq.pid,
        "influx_pid": influx.pid,
        "state_dir": str(layout.root),
        "mosquitto_config": str(layout.mosquitto_config),
        "influx_config": str(layout.influx_config),
        "mosquitto_log": str(layout.mosquitto_log),
        "influx_log": str(layout.influx_log),
        "started_at_unix": round(time.time(), 3),
    }
    # Write-then-rename: a reader never sees half a file.
    tmp = layout.services_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(layout.services_file)
    return services


def _mosquitto_config(layout: _Layout, port: int) -> str:
    lines = [
        "# Generated by hub/devservices.py for LOCAL development and tests; rewritten on",
        "# every start. The production broker config is mosquitto/mosquitto.conf.",
        "per_listener_settings false",
        f"listener {port} 127.0.0.1",
        "# Anonymous access is acceptable only because the listener is loopback-only.",
        "allow_anonymous true",
        "persistence true",
        # The trailing slash matters: Mosquitto appends the file name without adding one.
        f"persistence_location {layout.mosquitto_dir / 'data'}/",
        f"log_dest file {layout.mosquitto_log}",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
    ]
    if os.geteuid() == 0:
        # Started as root, Mosquitto switches to the "mosquitto" user, which cannot write
        # a state dir owned by root. "user root" keeps it as root (it logs a warning).
        lines.append("user root")
    # Last, as the Mosquitto docs advise: the limits shared with production.
    lines.append(f"include_dir {MOSQUITTO_CONF_D}")
    return "\n".join(lines) + "\n"


def _influx_config(layout: _Layout, http_port: int, rpc_port: int) -> str:
    template = string.Template(INFLUX_CONFIG_TEMPLATE.read_text(encoding="utf-8"))
    return template.substitute(
        state_dir=str(layout.root), http_port=str(http_port), rpc_port=str(rpc_port)
    )


def _check_path_is_safe(root: Path) -> None:
    """Refuse state paths that would break the generated config files.

    The path goes unescaped into Mosquitto's line-based config and into TOML strings.
    """
    bad = [c for c in ('"', "\\", "\n", "\r") if c in str(root)]
    if bad:
        raise RuntimeError(f"state dir {str(root)!r} contains {bad!r}: choose a plainer path")


def _spawn(
    argv: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` detached in its own session, stdout and stderr appended to the log.

    Its own session: a Ctrl-C in the developer's terminal must not kill the services that
    ``up`` left running. Append mode: Mosquitto also writes its log_dest file there. The
    previous run's log is kept as ``*.log.1``, so the tail we report is this run's only.
    """
    if log_path.exists():
        log_path.replace(log_path.with_name(log_path.name + ".1"))
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=log_path.parent,
            env=env,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def _wait_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    log_path: Path,
    deadline: float,
) -> None:
    """Poll ``ready`` until it is true; raise if the process exits or the deadline passes."""
    while True:
        code = proc.poll()
        if code is not None:
            tail = _log_tail(log_path)
            error = _PortTakenError if "address already in use" in tail.lower() else RuntimeError
            raise error(
                f"{name} exited with status {code} while starting; last lines of {log_path}:"
                f"\n{tail}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{name} (pid {proc.pid}) was not ready after {READY_TIMEOUT_S:.0f} s; last "
                f"lines of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(_POLL_S)


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct loopback ports that were free a moment ago.

    All sockets stay bound until every port is picked, so the kernel cannot hand out the
    same port twice.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _find_binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_SBIN_DIRS))
    if found is None:
        raise RuntimeError(
            f"{name!r} not found on PATH nor in {', '.join(_SBIN_DIRS)}: run scripts/setup.sh "
            "(it installs Debian's mosquitto and influxdb packages)"
        )
    return found


# ---------------------------------------------------------------------------------------
# Probing
# ---------------------------------------------------------------------------------------


def _running(layout: _Layout) -> Services | None:
    record = _read_record(layout)
    if record is None:
        return None
    try:
        services = Services(
            mqtt_port=int(record["mqtt_port"]),
            influx_port=int(record["influx_port"]),
            mqtt_url=str(record["mqtt_url"]),
            influx_url=str(record["influx_url"]),
            mosquitto_pid=int(record["mosquitto_pid"]),
            influx_pid=int(record["influx_pid"]),
            state_dir=layout.root,
        )
    except (KeyError, TypeError, ValueError):
        return None
    if not (
        _is_ours(services.mosquitto_pid, layout.mosquitto_config)
        and _is_ours(services.influx_pid, layout.influx_config)
        and tcp_accepts(services.mqtt_port)
        and _influx_pings(services.influx_url)
    ):
        return None
    return services


def tcp_accepts(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _influx_pings(influx_url: str) -> bool:
    try:
        with _HTTP.open(_request(f"{influx_url}/ping"), timeout=2.0) as response:
            return int(response.status) == 204
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _status(state_dir: Path, services: Services | None) -> dict[str, Any]:
    record = _read_record(_Layout(state_dir.resolve())) or {}
    return {**record, "running": services is not None}


def _read_record(layout: _Layout) -> dict[str, Any] | None:
    try:
        data = json.loads(layout.services_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------
# Stopping
# ---------------------------------------------------------------------------------------


def _stop(layout: _Layout) -> None:
    record = _read_record(layout)
    if record is not None:
        # InfluxDB first: the broker may still be draining to a hub that writes to it.
        for key, config in (
            ("influx_pid", layout.influx_config),
            ("mosquitto_pid", layout.mosquitto_config),
        ):
            pid = record.get(key)
            if isinstance(pid, int) and pid > 0:
                _terminate(pid, config)
    layout.services_file.unlink(missing_ok=True)


def _terminate(pid: int, config: Path) -> None:
    """SIGTERM ``pid`` if it is still our service; SIGKILL if it outlives STOP_TIMEOUT_S."""
    if not _is_ours(pid, config):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(pid, STOP_TIMEOUT_S):
            return


def _terminate_child(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a child we just started; SIGKILL if it outlives STOP_TIMEOUT_S; reap it."""
    for stop in (proc.terminate, proc.kill):
        with contextlib.suppress(ProcessLookupError):
            stop()
        try:
            proc.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _is_ours(pid: int, config: Path) -> bool:
    """True if ``pid`` is alive and runs with this state dir's ``config`` file.

    Guards against PID reuse: after a reboot the PIDs in a stale services.json may
    belong to anything.
    """
    if not _alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        # No procfs (not Linux): the PID check above is all we can do.
        return not Path("/proc/self").exists()
    except OSError:
        return False
    return str(config).encode() in cmdline.split(b"\0")


def _alive(pid: int) -> bool:
    """True if ``pid`` runs; reaps it first if it is a finished child of this process."""
    proc = _CHILDREN.get(pid)
    if proc is not None:
        if proc.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: its own parent reaps it
    else:
        # Our child from an earlier Popen that was dropped: 0 means still running.
        return reaped == 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, belongs to another user
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    # The state letter follows the ")" that closes the (possibly spaced) command name.
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


# ---------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    """Serialize start/stop of one state dir across processes (parallel test workers)."""
    with layout.lock_file.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _log_tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    kept = [line for line in text.replace("\0", "").splitlines() if line.strip()]
    return "\n".join(kept[-lines:]) or "(log is empty)"


def _request(url: str, data: bytes | None = None) -> urllib.request.Request:
    """Build a request, refusing anything but http(s) (no file:// or ftp:// surprises)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError(f"InfluxDB URL must be http:// or https://, got {url!r}")
    return urllib.request.Request(url, data=data)  # noqa: S310 - scheme checked just above


def _influxql(influx_url: str, query: str) -> None:
    body = urllib.parse.urlencode({"q": query}).encode()
    request = _request(f"{influx_url.rstrip('/')}/query", data=body)
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with _HTTP.open(request, timeout=10.0) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", errors="replace").strip()
        exc.close()
        raise RuntimeError(f"InfluxDB {query!r} failed: HTTP {exc.code} {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"InfluxDB at {influx_url} unreachable: {exc}") from exc
    errors = [
        r["error"] for r in payload.get("results", []) if isinstance(r, dict) and "error" in r
    ]
    if errors:
        raise RuntimeError(f"InfluxDB {query!r} failed: {'; '.join(map(str, errors))}")


def _quote_ident(name: str) -> str:
    """Quote an InfluxQL identifier: double quotes, with backslash escapes inside."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _print_exports(services: Services) -> None:
    for key, value in services.env().items():
        print(f"export {key}={shlex.quote(value)}")


if __name__ == "__main__":
    raise SystemExit(main())
