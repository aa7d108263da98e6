"""Accounts of the production Mosquitto: passwords (``mosquitto_passwd``) and ACL blocks.

hub broker add-device DEVICE_ID --family traffic|citelum|chirpstack
hub broker add-account NAME --role hub|consumer|healthcheck
hub broker remove NAME

``add-*`` makes a strong random password (printed once, on stdout), adds or updates the
account in the password file with ``mosquitto_passwd -b``, and makes sure the ACL file has the
account's ``user`` block; running it again rotates the password and leaves the ACL alone.
``remove`` revokes an account (a decommissioned or compromised gateway). The broker rereads
both files on SIGHUP: ``docker-compose kill -s HUP mosquitto``. ``mosquitto/README.md``
describes the accounts; ``mosquitto/acl`` holds the static ones.

Why one ``user`` block per account and no ``pattern`` lines: Mosquitto applies every
``pattern`` to every account. ``pattern write traffic/%u/#`` would let the Citelum gateway
``PO-QE-118`` publish ``traffic/PO-QE-118/interval``, and ``pattern write
citelum/prato/%u/#`` would let the hub or the read-only Situation Room account publish
``citelum/prato/prato-hub/status``, a "gateway" the hub would then store and alert on. A
block per account grants each one exactly its own family's topic shapes, nothing else.

Only the standard library, so it also runs on the broker host from a plain checkout:
``python3 -m hub.broker_admin add-device PO-TC-017 --family traffic``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from hub.errors import ConfigError

DEFAULT_PASSWORD_FILE = Path("mosquitto/passwd")
DEFAULT_ACL_FILE = Path("mosquitto/acl")

# Debian installs mosquitto_passwd in /usr/bin, but some images keep the broker's tools in sbin.
_SBIN_DIRS: tuple[str, ...] = ("/usr/sbin", "/usr/local/sbin")

# An account name ends up as an MQTT topic level in its own rules (so no "/", "+" or "#"), as
# the rest of an ACL "user" line (no spaces), as a password file key (no ":") and, through
# use_username_as_clientid, as the client id. Device ids such as PO-TC-017 fit easily.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# 128 random bits, hex: enough against guessing, and hex needs no escaping in the hub's
# mqtt:// URL, in .env files or in a device's web form; 32 characters also fit the password
# fields of older field firmware.
_PASSWORD_BYTES = 16

# Every topic shape the hub decodes (device_profiles/*/profile.yaml). A new profile's shapes
# must be added here too, or the hub's account cannot read them.
DEVICE_TOPICS: tuple[str, ...] = (
    "application/+/device/+/event/up",
    "citelum/prato/+/lamp/+/state",
    "citelum/prato/+/cabinet/state",
    "citelum/prato/+/status",
    "traffic/+/interval",
    "traffic/+/csv",
    "traffic/+/health",
)


# The organisations' interventions and events (JSON), which the hub stores; each organisation
# publishes on its own ``situation/{org}/events`` (``hub broker sharing-acl``).
SITUATION_READ = "topic read situation/+/events"


@dataclass(frozen=True)
class AccountKind:
    """What one kind of account may do: its ACL rules, ``{name}`` standing for the account."""

    key: str
    description: str
    rules: tuple[str, ...]

    def rules_for(self, name: str) -> tuple[str, ...]:
        """The ACL rule lines of account ``name``."""
        return tuple(rule.replace("{name}", name) for rule in self.rules)


# Device families: write their own topic shapes only. No read rule at all: Mosquitto 2.0 still
# answers a device's SUBSCRIBE with success, but delivers nothing to it, as every message is
# checked against the reader's ACL when it is sent.
FAMILIES: dict[str, AccountKind] = {
    "traffic": AccountKind(
        "traffic",
        "traffic counter site, username = site id",
        (
            "topic write traffic/{name}/interval",
            "topic write traffic/{name}/csv",
            "topic write traffic/{name}/health",
        ),
    ),
    "citelum": AccountKind(
        "citelum",
        "Citelum gateway of one cabinet, username = cabinet id",
        (
            "topic write citelum/prato/{name}/lamp/+/state",
            "topic write citelum/prato/{name}/cabinet/state",
            "topic write citelum/prato/{name}/status",
        ),
    ),
    # ChirpStack publishes for every parking sensor, so it is one account for all of them, kept
    # to the uplink events the hub reads (its other events are dropped by the broker).
    "chirpstack": AccountKind(
        "chirpstack",
        "ChirpStack MQTT integration, all LoRaWAN uplinks",
        ("topic write application/+/device/+/event/up",),
    ),
}

ROLES: dict[str, AccountKind] = {
    "hub": AccountKind(
        "hub",
        "the hub: reads every device topic, publishes alerts and dead letters",
        (
            *(f"topic read {topic}" for topic in DEVICE_TOPICS),
            SITUATION_READ,
            "topic write hub/alerts/#",
            "topic write hub/deadletter/#",
        ),
    ),
    # Dead letters are left out: they are the hub operators' work queue, not Situation Room
    # information, and the raw device data in them is on the device topics anyway.
    "consumer": AccountKind(
        "consumer",
        "read-only consumer (Situation Room): device topics and alerts",
        (
            *(f"topic read {topic}" for topic in DEVICE_TOPICS),
            "topic read hub/alerts/#",
            SITUATION_READ,
        ),
    ),
    # The compose healthcheck subscribes to this one topic and exits on the SUBACK.
    "healthcheck": AccountKind(
        "healthcheck",
        "docker-compose healthcheck of the broker",
        ("topic read $SYS/broker/uptime",),
    ),
}


@dataclass(frozen=True)
class AccountResult:
    """What :func:`add_account` did: the new password, and whether the ACL file changed."""

    name: str
    kind: AccountKind
    password: str
    acl_added: bool
    password_file_created: bool


def check_name(name: str) -> str:
    """Return ``name`` if it can be an account name, else raise ``ConfigError`` saying why."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"account name {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-' "
            "(it becomes a topic level and the client id), starting with a letter or digit"
        )
    return name


def new_password() -> str:
    """A new random password."""
    return secrets.token_hex(_PASSWORD_BYTES)


def find_mosquitto_passwd() -> str:
    """Path of ``mosquitto_passwd``; ``ConfigError`` with what to install when it is missing."""
    found = shutil.which("mosquitto_passwd") or shutil.which(
        "mosquitto_passwd", path=os.pathsep.join(_SBIN_DIRS)
    )
    if found is None:
        raise ConfigError(
            "mosquitto_passwd not found on PATH nor in "
            f"{', '.join(_SBIN_DIRS)}: install Debian's mosquitto package "
            "(apt-get install mosquitto, or scripts/setup.sh), or pass --mosquitto-passwd PATH"
        )
    return found


def add_account(
    name: str,
    kind: AccountKind,
    *,
    password_file: Path,
    acl_file: Path,
    password: str | None = None,
    mosquitto_passwd: str | None = None,
) -> AccountResult:
    """Add or update account ``name`` of ``kind`` in both files; return its new password.

    The ACL file is checked first: if it already gives ``name`` other rules, nothing changes
    and ``ConfigError`` says so (turning the hub into a traffic site by a typo must not be one
    command away). The password is set next, then the ACL block appended when missing, all
    under a lock on the ACL file so two runs cannot interleave. Both files are rewritten in
    place, never replaced, because docker bind-mounts single files by inode.
    """
    check_name(name)
    if password is None:
        password = new_password()
    elif not password or any(c in password for c in "\n\r"):
        raise ConfigError("the password must be one non-empty line")
    tool = mosquitto_passwd or find_mosquitto_passwd()
    with _locked_text(acl_file) as handle:
        lines = handle.read().splitlines()
        expected = kind.rules_for(name)
        block = _find_blocks(lines, acl_file).get(name)
        if block is not None and block.rules != expected:
            raise ConfigError(
                f"{acl_file} already gives {name} other rules ({'; '.join(block.rules)}); "
                f"to change its kind, remove it first: hub broker remove {name}"
            )
        created = _set_password(tool, password_file, name, password)
        if block is None:
            lines = _strip_trailing_blank(lines)
            if lines:
                lines.append("")
            lines.extend([f"# {kind.description}", f"user {name}", *expected])
            _rewrite(handle, lines)
    return AccountResult(name, kind, password, block is None, created)


def remove_account(
    name: str, *, password_file: Path, acl_file: Path, mosquitto_passwd: str | None = None
) -> tuple[bool, bool]:
    """Remove ``name`` from the password file and its block from the ACL file.

    Returns (was in the password file, was in the ACL file). Removing what is not there is no
    error, so a half-done earlier run can simply be repeated.
    """
    check_name(name)
    tool = mosquitto_passwd or find_mosquitto_passwd()
    with contextlib.ExitStack() as stack:
        # the same lock as add_account, when there is an ACL file to lock
        handle = stack.enter_context(_locked_text(acl_file)) if acl_file.exists() else None
        in_passwords = password_file.exists() and name in _password_users(password_file)
        if in_passwords:
            _run(tool, ["-D", str(password_file), name])
        if handle is None:
            return in_passwords, False
        lines = handle.read().splitlines()
        block = _find_blocks(lines, acl_file).get(name)
        if block is None:
            return in_passwords, False
        start, end = block.start, block.end
        # drop one of the blank lines that separated the block from its neighbours
        if start > 0 and not lines[start - 1].strip():
            start -= 1
        _rewrite(handle, lines[:start] + lines[end:])
    return in_passwords, True


# ---------------------------------------------------------------------------------------
# The ACL file
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    """One ``user`` block: its lines ``start:end`` and its normalised rule lines."""

    name: str
    start: int
    end: int
    rules: tuple[str, ...]


def _user_of(line: str) -> str | None:
    words = line.split(maxsplit=1)
    if len(words) == 2 and words[0] == "user":
        return words[1].strip()
    return None


def _is_rule(line: str) -> bool:
    # Only `topic` lines belong to the user above them: Mosquitto applies a `pattern` line to
    # every account wherever it stands.
    return line.split(maxsplit=1)[:1] == ["topic"]


def _find_blocks(lines: list[str], acl_file: Path) -> dict[str, _Block]:
    """Each ``user`` block, with the comment lines right above it and its ``topic`` rules.

    A block runs to its last ``topic`` line before the next ``user`` line; whatever follows
    that (comments, blank lines, ``pattern`` lines) is not part of it.
    """
    starts = [i for i, line in enumerate(lines) if _user_of(line) is not None]
    blocks: dict[str, _Block] = {}
    for n, index in enumerate(starts):
        name = _user_of(lines[index]) or ""
        if name in blocks:
            raise ConfigError(
                f"{acl_file}: user {name} has two blocks (lines {blocks[name].start + 1} "
                f"and {index + 1}); merge them by hand"
            )
        following = starts[n + 1] if n + 1 < len(starts) else len(lines)
        rule_lines = [k for k in range(index + 1, following) if _is_rule(lines[k])]
        end = rule_lines[-1] + 1 if rule_lines else index + 1
        start = index
        while start > 0 and lines[start - 1].lstrip().startswith("#"):
            start -= 1
        rules = tuple(" ".join(lines[k].split()) for k in rule_lines)
        blocks[name] = _Block(name, start, end, rules)
    return blocks


def _strip_trailing_blank(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


@contextlib.contextmanager
def _locked_text(path: Path) -> Iterator[IO[str]]:
    """Open ``path`` for reading and rewriting (created if missing), exclusively locked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield handle
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _rewrite(handle: IO[str], lines: list[str]) -> None:
    """Replace the file's content in place (same inode, see :func:`add_account`)."""
    handle.seek(0)
    handle.truncate()
    handle.write("\n".join(lines) + "\n" if lines else "")
    handle.flush()
    os.fsync(handle.fileno())


# ---------------------------------------------------------------------------------------
# The password file
# ---------------------------------------------------------------------------------------


def _set_password(tool: str, password_file: Path, name: str, password: str) -> bool:
    """Add or update ``name``; return True if the password file had to be created."""
    if password_file.exists():
        _run(tool, ["-b", str(password_file), name, password])
        return False
    password_file.parent.mkdir(parents=True, exist_ok=True)
    # Created unreadable to others: the hashes can be attacked offline, and recent Mosquitto
    # 2.0 releases warn that later versions will refuse world-readable password files.
    old_umask = os.umask(0o077)
    try:
        _run(tool, ["-c", "-b", str(password_file), name, password])
    finally:
        os.umask(old_umask)
    return True


def _password_users(password_file: Path) -> set[str]:
    text = password_file.read_text(encoding="utf-8")
    return {line.split(":", 1)[0] for line in text.splitlines() if ":" in line}


def _run(tool: str, args: list[str]) -> None:
    # The password is briefly visible in this child's command line to other local users
    # (`-b`); mosquitto_passwd has no other non-interactive input. Run this on the admin host.
    result = subprocess.run([tool, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        action = "remove" if args[0] == "-D" else "set password"
        raise ConfigError(f"mosquitto_passwd ({action}) failed: {detail}")


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _read_password(args: argparse.Namespace) -> str | None:
    if not args.password_stdin:
        return None
    return sys.stdin.readline().rstrip("\r\n")


def _report_added(result: AccountResult, args: argparse.Namespace) -> int:
    print(f"password for {result.name} (shown only now, not stored in clear): {result.password}")
    created = " (created)" if result.password_file_created else ""
    acl = "block added" if result.acl_added else "block already there, unchanged"
    print(
        f"{result.name}: {result.kind.description}\n"
        f"  {args.password_file}{created}: password set\n"
        f"  {args.acl_file}: {acl}\n"
        "reload the broker to apply: docker-compose kill -s HUP mosquitto (a client still "
        "logged in with an old password is disconnected then)",
        file=sys.stderr,
    )
    return 0


def cmd_add_device(args: argparse.Namespace) -> int:
    """``hub broker add-device``: a field device's (or ChirpStack's) account."""
    result = add_account(
        args.device_id,
        FAMILIES[args.family],
        password_file=args.password_file,
        acl_file=args.acl_file,
        password=_read_password(args),
        mosquitto_passwd=args.mosquitto_passwd,
    )
    return _report_added(result, args)


def cmd_add_account(args: argparse.Namespace) -> int:
    """``hub broker add-account``: the hub's, a consumer's or the healthcheck's account."""
    result = add_account(
        args.name,
        ROLES[args.role],
        password_file=args.password_file,
        acl_file=args.acl_file,
        password=_read_password(args),
        mosquitto_passwd=args.mosquitto_passwd,
    )
    return _report_added(result, args)


def cmd_remove(args: argparse.Namespace) -> int:
    """``hub broker remove``: revoke an account."""
    in_passwords, in_acl = remove_account(
        args.name,
        password_file=args.password_file,
        acl_file=args.acl_file,
        mosquitto_passwd=args.mosquitto_passwd,
    )
    if not (in_passwords or in_acl):
        print(f"{args.name}: no such account in {args.password_file} or {args.acl_file}")
        return 0
    print(
        f"{args.name}: removed from"
        f"{' ' + str(args.password_file) if in_passwords else ''}"
        f"{' ' + str(args.acl_file) if in_acl else ''}; reload the broker to apply (it also "
        "disconnects the account if connected): docker-compose kill -s HUP mosquitto"
    )
    return 0


def _add_actions(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--password-file",
        type=Path,
        default=DEFAULT_PASSWORD_FILE,
        help=f"Mosquitto password file (default: {DEFAULT_PASSWORD_FILE})",
    )
    common.add_argument(
        "--acl-file",
        type=Path,
        default=DEFAULT_ACL_FILE,
        help=f"Mosquitto ACL file (default: {DEFAULT_ACL_FILE})",
    )
    common.add_argument(
        "--mosquitto-passwd", metavar="PATH", help="the mosquitto_passwd binary (default: PATH)"
    )
    adding = argparse.ArgumentParser(add_help=False, parents=[common])
    adding.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin instead of generating one",
    )

    actions = parser.add_subparsers(dest="action", required=True)
    device = actions.add_parser(
        "add-device",
        parents=[adding],
        help="add a device account, or rotate its password",
        description="Username = the device id: the site id for traffic counters, the cabinet "
        "id for Citelum gateways; one account (e.g. chirpstack) for ChirpStack.",
    )
    device.add_argument("device_id", help="e.g. PO-TC-017, PO-QE-118, chirpstack")
    device.add_argument("--family", required=True, choices=sorted(FAMILIES))
    device.set_defaults(func=cmd_add_device)

    account = actions.add_parser(
        "add-account",
        parents=[adding],
        help="add the hub's, a consumer's or the healthcheck's account, or rotate its password",
    )
    account.add_argument("name", help="e.g. prato-hub, situation-room, healthcheck")
    account.add_argument("--role", required=True, choices=sorted(ROLES))
    account.set_defaults(func=cmd_add_account)

    remove = actions.add_parser("remove", parents=[common], help="revoke an account")
    remove.add_argument("name")
    remove.set_defaults(func=cmd_remove)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``hub broker ...`` on the ``hub`` command's subparsers.

    Each action sets ``func``: it takes the ``argparse.Namespace``, returns the exit status,
    and raises ``ConfigError`` (bad name, conflicting ACL block, mosquitto_passwd missing or
    failing), which ``hub.cli.main`` reports with exit status 2.
    """
    broker = subparsers.add_parser(
        "broker", help="broker accounts: passwords and ACL (production Mosquitto)"
    )
    _add_actions(broker)


def main(argv: list[str] | None = None) -> int:
    """Run ``python -m hub.broker_admin ACTION ...`` (the same actions as ``hub broker``)."""
    parser = argparse.ArgumentParser(
        prog="python -m hub.broker_admin",
        description="Accounts of the production Mosquitto: passwords and ACL blocks.",
    )
    _add_actions(parser)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
