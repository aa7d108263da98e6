"""The ``hub`` command, and the composition root: settings are built here and passed down.

hub run                       run the hub (ingest -> InfluxDB) until SIGTERM / Ctrl-C
hub profiles check            load and validate every profile, print their subscriptions
hub profiles test [NAME...]   run the profiles' golden vectors
hub simulate ...              publish a simulated city fleet to the broker
hub services up|down|env      local Mosquitto + InfluxDB for development and tests
hub broker ...                broker accounts; `hub broker sharing-acl`: consumers from the policy
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from hub import __version__, broker_admin, sharing_acl
from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKeys, digest, new_token
from hub.api.server import ApiServer
from hub.errors import BrokerError, ConfigError
from hub.ingest.mqtt import wall_clock_ms
from hub.inventory import Inventory
from hub.metrics import Metrics
from hub.pipeline import Hub, make_store
from hub.profiles.golden import run_all
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.sharing import Policy

log = logging.getLogger("hub")


def load_settings() -> Settings:
    """Settings from the environment, or ``ConfigError`` naming the bad variable."""
    known = {f"HUB_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in os.environ if k.startswith("HUB_") and k not in known)
    if unknown:
        # a mistyped variable would otherwise be ignored silently and its default used
        raise ConfigError(
            f"unknown settings {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"HUB_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("hub.mqtt.paho").setLevel(logging.WARNING)


def load_policy(settings: Settings, profiles: ProfileSet, inventory: Inventory) -> Policy | None:
    """The sharing policy (``HUB_SHARING_FILE``), checked against the stored schema and the
    inventory's owners; ``None`` (everything visible to every key) without one."""
    if settings.sharing_file is None:
        log.warning(
            "no sharing policy (HUB_SHARING_FILE): every API key sees every organisation's data"
        )
        return None
    measurements = {name: list(m.fields) for name, m in profiles.schema().items()}
    policy = Policy.load(settings.sharing_file, measurements)
    policy.check_members(
        f"{settings.inventory} (owner)", {d.owner for d in inventory.devices.values()}
    )
    log.info(
        "sharing policy %s: %d organisations, %d shares",
        settings.sharing_file,
        len(policy.organisations),
        len(policy.shares),
    )
    return policy


def cmd_run(_: argparse.Namespace) -> int:
    """Run the hub until a signal asks it to stop; exit 0 after a clean drain."""
    settings = load_settings()
    _setup_logging(settings.log_level)
    profiles = ProfileSet.load(settings.profiles_dir)
    # a default inventory path may be absent; one the operator named must exist
    explicit = "inventory" in settings.model_fields_set
    inventory = Inventory.load(settings.inventory, required=explicit)
    policy = load_policy(settings, profiles, inventory)
    # keys are checked against the policy before ingest starts: a bad one stops nothing half-way
    keys = load_keys(settings, policy) if settings.api_enabled else None
    hub = Hub(settings, profiles, inventory, policy=policy)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    quiet_collector()
    hub.start()
    server = (
        _api_server(settings, profiles, inventory, hub, policy=policy, keys=keys)
        if keys is not None
        else None
    )
    stop.wait()
    hub.live.close()  # ends the live streams, so the API can finish its open requests
    if server is not None:
        server.stop()
    hub.stop()
    return 0


GC_FIRST_GENERATION = 10_000  # allocations between young collections (CPython's default: 700)


def quiet_collector() -> None:
    """Less work for the cyclic garbage collector while the hub decodes.

    Decoding allocates a few dozen containers per message, nearly all freed by reference
    counting; with CPython's defaults the collector ran every ~20 messages, and every
    hundredth run walked everything the process holds (modules, profiles, the inventory).
    What exists at start-up lives as long as the process, so it is frozen out of the
    collector's sight, and young collections run every 10,000 allocations instead of 700.
    """
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION, *gc.get_threshold()[1:])


def load_keys(settings: Settings, policy: Policy | None) -> ApiKeys:
    """The API keys, each of an organisation the sharing policy lists."""
    keys = ApiKeys.load(
        settings.api_keys_file,
        settings.api_keys.get_secret_value() if settings.api_keys else None,
    )
    if not len(keys):
        log.warning("the API has no keys (HUB_API_KEYS_FILE / HUB_API_KEYS): it answers 401")
    if policy is not None:
        policy.check_members("API keys (org)", keys.organisations())
    return keys


def _api_server(
    settings: Settings,
    profiles: ProfileSet,
    inventory: Inventory,
    hub: Hub | None,
    *,
    policy: Policy | None,
    keys: ApiKeys,
) -> ApiServer:
    """Build and start the API (with the hub's live state when ``hub`` is given)."""
    ctx = ApiContext(
        settings=settings,
        profiles=profiles,
        inventory=inventory,
        store=hub.store if hub is not None else make_store(settings),
        metrics=hub.metrics if hub is not None else Metrics(),
        keys=keys,
        clock_ms=wall_clock_ms,
        hub=hub,
        policy=policy,
    )
    server = ApiServer(create_app(ctx), settings.api_host, settings.api_port)
    server.start()
    return server


def cmd_api(_: argparse.Namespace) -> int:
    """Serve the API alone, against the same InfluxDB (no ingest, no alert engine)."""
    settings = load_settings()
    _setup_logging(settings.log_level)
    profiles = ProfileSet.load(settings.profiles_dir)
    inventory = Inventory.load(
        settings.inventory, required="inventory" in settings.model_fields_set
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    policy = load_policy(settings, profiles, inventory)
    keys = load_keys(settings, policy)
    server = _api_server(settings, profiles, inventory, None, policy=policy, keys=keys)
    stop.wait()
    server.stop()
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    """Make a new API key: print the key once, and the lines that configure it."""
    token = new_token()
    hashed = digest(token)
    print(f"key (give it to the caller; it is not stored): {token}")
    print("add to HUB_API_KEYS_FILE under keys:")
    print(f"  - {{id: {args.id}, org: {args.org}, role: {args.role}, sha256: {hashed}}}")
    print(f"or append to HUB_API_KEYS: {args.id}:{args.org}:{args.role}:{hashed}")
    return 0


def cmd_profiles_check(args: argparse.Namespace) -> int:
    """Validate every profile and list what the hub would subscribe to."""
    profiles = ProfileSet.load(Path(args.profiles_dir))
    for item in profiles.profiles:
        print(f"{item.profile.profile}: {item.path}")
        for message in item.profile.messages:
            print(f"  {message.name}: {message.topic}")
    return 0


def cmd_profiles_test(args: argparse.Namespace) -> int:
    """Run golden vectors; exit 1 if any fails."""
    profiles = ProfileSet.load(Path(args.profiles_dir))
    results = run_all(profiles, set(args.names) or None)
    for result in results:
        mark = "PASS" if result.ok else "FAIL"
        print(f"{mark} {result.profile}/{result.case}")
        if not result.ok:
            print("     " + result.detail.replace("\n", "\n     "))
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    if not results:
        print("no golden vectors found", file=sys.stderr)
        return 1
    return 1 if failed else 0


def cmd_show(args: argparse.Namespace) -> int:
    """Print how many points each measurement of the loaded profiles holds, and the newest."""
    settings = load_settings()
    profiles = ProfileSet.load(settings.profiles_dir)
    measurements = sorted(
        {
            p.measurement
            for item in profiles.profiles
            for m in item.profile.messages
            for p in m.points
        }
    )
    store = make_store(settings)
    try:
        for measurement in measurements:
            # bounded in time: InfluxDB 3 Core refuses unbounded scans
            where = f"WHERE time > now() - {args.hours}h AND time < now() + 1h"
            # measurement names are identifiers, checked when the profiles load
            series = store.query(f'SELECT count(*) FROM "{measurement}" {where}')  # noqa: S608
            counts = [v for v in series[0]["values"][0][1:] if v] if series else []
            newest = store.query(
                f'SELECT * FROM "{measurement}" {where} ORDER BY time DESC LIMIT 1',  # noqa: S608
                epoch="",
            )
            last = newest[0]["values"][0][0] if newest else "-"
            print(f"{measurement:20} {max(counts, default=0):>10} points   newest {last}")
    finally:
        store.close()
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Publish a simulated fleet: the last ``--hours`` replayed fast, then live if asked."""
    from hub.ingest.mqtt import MqttLink  # noqa: PLC0415  # simulator only
    from hub.simulate.fleet import Fleet, FleetSpec  # noqa: PLC0415
    from hub.simulate.publish import replay  # noqa: PLC0415

    settings = load_settings()
    _setup_logging(settings.log_level)
    fleet = Fleet(
        FleetSpec(
            parking_bays=args.bays,
            cabinets=args.cabinets,
            lamps_per_cabinet=args.lamps,
            traffic_sites=args.sites,
            seed=args.seed,
        )
    )
    if args.write_inventory:
        fleet.write_inventory(Path(args.write_inventory))
        print(f"inventory of {sum(1 for _ in fleet.devices())} devices: {args.write_inventory}")
        if args.inventory_only:
            return 0
    link = MqttLink(settings.mqtt, f"prato-sim-{os.getpid()}", persistent=False, manual_ack=False)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    link.start([], 1, None)
    link.wait_connected(30)
    try:
        now = wall_clock_ms()
        start = now - int(args.hours * 3600_000)
        sent = replay(link, fleet, start, now, speed=args.speed, stop=stop)
        print(f"replayed {args.hours} h of the fleet: {sent} messages")
        while args.follow and not stop.is_set():
            # live: one minute of the fleet's life per wall-clock minute
            begin, now = now, wall_clock_ms() + 60_000
            sent += replay(link, fleet, begin, now, speed=1.0, stop=stop)
    finally:
        link.stop()
    print(f"published {sent} messages")
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    """Delegate to the local services manager."""
    from hub import devservices  # noqa: PLC0415  # development tooling, not needed by `run`

    return devservices.main([args.action, "--state-dir", args.state_dir])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``hub`` command."""
    parser = argparse.ArgumentParser(prog="hub", description="Prato telemetry hub")
    parser.add_argument("--version", action="version", version=f"hub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the hub (configured by HUB_* variables)")
    run.set_defaults(func=cmd_run)

    profiles = commands.add_parser("profiles", help="check and test device profiles")
    actions = profiles.add_subparsers(dest="action", required=True)
    # the same folder `hub run` would load
    default_dir = os.environ.get(
        "HUB_PROFILES_DIR", str(Settings.model_fields["profiles_dir"].default)
    )
    check = actions.add_parser("check", help="validate profiles")
    check.add_argument("--profiles-dir", default=default_dir)
    check.set_defaults(func=cmd_profiles_check)
    test = actions.add_parser("test", help="run golden vectors")
    test.add_argument("names", nargs="*", help="only these profiles")
    test.add_argument("--profiles-dir", default=default_dir)
    test.set_defaults(func=cmd_profiles_test)

    api = commands.add_parser("api", help="serve the API alone (no ingest)")
    api.set_defaults(func=cmd_api)

    apikey = commands.add_parser("apikey", help="API keys")
    apikey_actions = apikey.add_subparsers(dest="action", required=True)
    new = apikey_actions.add_parser("new", help="make a new key")
    new.add_argument("--id", required=True, help="who the key is for, e.g. situation-room")
    new.add_argument("--org", required=True, help="organisation, e.g. comune, citelum")
    new.add_argument("--role", choices=["reader", "operator"], default="reader")
    new.set_defaults(func=cmd_apikey)

    broker_admin.add_parser(commands)
    sharing_acl.add_parser(commands)  # hub broker sharing-acl

    show = commands.add_parser("show", help="points stored per measurement (recent hours)")
    show.add_argument("--hours", type=int, default=7 * 24)
    show.set_defaults(func=cmd_show)

    sim = commands.add_parser("simulate", help="publish a simulated city fleet to the broker")
    sim.add_argument("--bays", type=int, default=200, help="parking bays")
    sim.add_argument("--cabinets", type=int, default=10, help="lighting cabinets")
    sim.add_argument("--lamps", type=int, default=12, help="lamps per cabinet")
    sim.add_argument("--sites", type=int, default=10, help="traffic counter sites")
    sim.add_argument("--seed", type=int, default=1)
    sim.add_argument("--hours", type=float, default=6.0, help="replay this much recent history")
    sim.add_argument("--speed", type=float, default=0.0, help="replay speed-up (0: max)")
    sim.add_argument("--follow", action="store_true", help="then keep publishing live")
    sim.add_argument("--write-inventory", metavar="CSV", help="write the fleet's devices.csv")
    sim.add_argument("--inventory-only", action="store_true", help="only write the inventory")
    sim.set_defaults(func=cmd_simulate)

    services = commands.add_parser("services", help="local Mosquitto + InfluxDB")
    services.add_argument("action", choices=["up", "down", "env", "status"])
    services.add_argument("--state-dir", default=".state/services")
    services.set_defaults(func=cmd_services)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hub`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"hub: configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"hub: broker error: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    raise SystemExit(main())
