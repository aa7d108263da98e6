"""The ``hub`` command, and the composition root: settings are built here and passed down.

hub run                       run the hub (ingest -> InfluxDB) until SIGTERM / Ctrl-C
hub profiles check            load and validate every profile, print their subscriptions
hub profiles test [NAME...]   run the profiles' golden vectors
hub simulate ...              publish a simulated city fleet to the broker
hub services up|down|env      local Mosquitto + InfluxDB for development and tests
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from pydantic import ValidationError

from hub import __version__
from hub.errors import BrokerError, ConfigError
from hub.inventory import Inventory
from hub.pipeline import Hub
from hub.profiles.golden import run_all
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings

log = logging.getLogger("hub")


def load_settings() -> Settings:
    """Settings from the environment, or ``ConfigError`` naming the bad variable."""
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


def cmd_run(_: argparse.Namespace) -> int:
    """Run the hub until a signal asks it to stop; exit 0 after a clean drain."""
    settings = load_settings()
    _setup_logging(settings.log_level)
    profiles = ProfileSet.load(settings.profiles_dir)
    # a default inventory path may be absent; one the operator named must exist
    explicit = "inventory" in settings.model_fields_set
    inventory = Inventory.load(settings.inventory, required=explicit)
    hub = Hub(settings, profiles, inventory)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    hub.start()
    stop.wait()
    hub.stop()
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
    default_dir = str(Settings.model_fields["profiles_dir"].default)
    check = actions.add_parser("check", help="validate profiles")
    check.add_argument("--profiles-dir", default=default_dir)
    check.set_defaults(func=cmd_profiles_check)
    test = actions.add_parser("test", help="run golden vectors")
    test.add_argument("names", nargs="*", help="only these profiles")
    test.add_argument("--profiles-dir", default=default_dir)
    test.set_defaults(func=cmd_profiles_test)

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
