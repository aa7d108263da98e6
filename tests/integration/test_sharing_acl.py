"""The consumer accounts of ``hub broker sharing-acl`` on a real Mosquitto (no mocks).

The broker runs the production configuration (``mosquitto/mosquitto.conf``, ``mosquitto/acl``)
moved to loopback ports, as in ``test_broker_security.py``, whose helpers start and reach it.
The organisations' accounts come from the real command, ``hub broker sharing-acl --write
--create-accounts``, run on a policy of three organisations and a small inventory, after
``hub broker add-account comune-consumer --role consumer`` had given comune an all-seeing
block: the command must have replaced it.

Each consumer subscribes to ``#``; a test publisher (``topic write #``, this test's own account),
the hub (alerts) and the consumers (their situation topics) publish one message per topic, and
each consumer must receive exactly the messages the policy lets it see. "Nothing else arrived"
is not a timeout: every publish is acknowledged before each consumer publishes a sentinel on
its own situation topic and waits for it. Mosquitto routes a message before acknowledging it
and writes each connection's messages in order, so whatever was routed to a consumer has
reached it once its sentinel has.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hub import broker_admin, cli, devservices
from hub.broker_admin import ROLES, AccountKind
from tests.conftest import ROOT, wait_until
from tests.integration.test_broker_security import (
    DEADLINE_S,
    MOSQUITTO_DIR,
    NOT_AUTHORIZED,
    Broker,
    Session,
    _connect,
    _free_ports,
    _make_ca,
    _make_server_cert,
    _payload,
    _production_config,
)

ORGS = ("citelum", "comune", "gida")
PUBLISHER = "test-publisher"
PUBLISHER_KIND = AccountKind("test", "this test's publisher: every topic", ("topic write #",))
NO_MATCHING_SUBSCRIBERS = 0x10

POLICY = """\
organisations: [comune, citelum, gida]
unowned: [comune]
shares:
  # comune sees citelum's devices in full and live, with every alert and the interventions
  - owner: citelum
    with: [comune]
    data: {lighting_lamp: "*", lighting_cabinet: "*", lighting_phase: "*", device_status: "*"}
    alerts: true
    interventions: true
  # everyone: lamp figures per cabinet and zone only, and one alert rule
  - owner: citelum
    with: ["*"]
    data: {lighting_lamp: [faults, fault_count, energy_wh]}
    aggregate: [cabinet_id, zone]
    alerts: [lamp_failure]
  # citelum sees gida's counters in full and live, and its interventions
  - owner: gida
    with: [citelum]
    data: {traffic_lane: "*", traffic_health: "*"}
    interventions: true
  # gida sees comune's lane counts (interval and csv), not the counters' health
  - owner: comune
    with: [gida]
    data: {traffic_lane: "*"}
  # citelum sees comune's parking bays 15 minutes late: nothing live
  - owner: comune
    with: [citelum]
    data: {parking_bay: "*"}
    delay: 15m
  # comune sees one field of gida's counters live, and all of them 15 minutes late: no topic
  - owner: gida
    with: [comune]
    data: {traffic_lane: [vehicles]}
  - owner: gida
    with: [comune]
    data: {traffic_lane: "*", traffic_health: "*"}
    delay: 15m
"""

INVENTORY = """\
device_id,profile,zone,lat,lon,owner,installed_at
PO-QE-118,citelum_lighting,centro,43.88,11.1,citelum,2025-01-01
PO-QE-119,citelum_lighting,centro,43.88,11.1,citelum,2025-01-01
PO-LP-118-01,citelum_lighting,centro,43.88,11.1,citelum,2025-01-01
PO-LP-119-01,citelum_lighting,centro,43.88,11.1,citelum,2025-01-01
PO-TC-017,traffic_counter,nord,43.88,11.1,comune,2025-01-01
PO-TC-018,traffic_counter,nord,43.88,11.1,gida,2025-01-01
PO-TC-019,traffic_counter,nord,43.88,11.1,,2025-01-01
PK-001,parking_bay,centro,43.88,11.1,comune,2025-01-01
PK-002,parking_bay,centro,43.88,11.1,comune,2025-01-01
"""

CITELUM_TOPICS = {
    "citelum/prato/PO-QE-118/cabinet/state",
    "citelum/prato/PO-QE-118/status",
    "citelum/prato/PO-QE-118/lamp/PO-LP-118-01/state",
    "citelum/prato/PO-QE-119/cabinet/state",
    "citelum/prato/PO-QE-119/status",
    "citelum/prato/PO-QE-119/lamp/PO-LP-119-01/state",
}
PARKING_TOPICS = {  # ChirpStack uplinks of PK-001, PK-002 and a bay missing from the inventory
    "application/1/device/70b3d57ed0051a01/event/up",
    "application/1/device/70b3d57ed0051a02/event/up",
    "application/1/device/70b3d57ed00519ff/event/up",
}


def _traffic(site: str, *kinds: str) -> set[str]:
    return {f"traffic/{site}/{kind}" for kind in kinds or ("interval", "csv", "health")}


UNREGISTERED = {
    *_traffic("PO-TC-999"),
    "citelum/prato/PO-QE-999/status",
    "citelum/prato/PO-QE-999/lamp/PO-LP-999-01/state",
}
OTHER_TOPICS = {"hub/deadletter/traffic_counter", "misc/notes"}
DEVICE_TOPICS = (
    CITELUM_TOPICS
    | PARKING_TOPICS
    | _traffic("PO-TC-017")
    | _traffic("PO-TC-018")
    | _traffic("PO-TC-019")
    | UNREGISTERED
    | OTHER_TOPICS
)
CITELUM_DEVICES = ("PO-QE-118", "PO-QE-119", "PO-LP-118-01", "PO-LP-119-01")
ALERT_DEVICES = (*CITELUM_DEVICES, "PO-TC-017", "PO-TC-018", "PO-TC-019", "PK-001", "PK-002")
ALERT_TOPICS = {
    *(f"hub/alerts/critical/{device}" for device in ALERT_DEVICES),
    "hub/alerts/major/PO-QE-118",
    "hub/alerts/info/PO-TC-999",  # a device missing from the inventory
}


def _alerts(*devices: str) -> set[str]:
    return {t for t in ALERT_TOPICS if t.rsplit("/", 1)[1] in devices}


# What each consumer must receive of all the above, and of situation/<org>/events.
EXPECTED: dict[str, set[str]] = {
    "comune": CITELUM_TOPICS
    | PARKING_TOPICS  # every bay is comune's, and bays missing from the inventory too
    | _traffic("PO-TC-017")
    | _traffic("PO-TC-019")  # no owner: `unowned`
    | _alerts(*CITELUM_DEVICES, "PO-TC-017", "PO-TC-019", "PK-001", "PK-002")
    | {"situation/comune/events", "situation/citelum/events"},
    "citelum": CITELUM_TOPICS
    | _traffic("PO-TC-018")
    | _alerts(*CITELUM_DEVICES)
    | {"situation/citelum/events", "situation/gida/events"},
    "gida": _traffic("PO-TC-018")
    | _traffic("PO-TC-017", "interval", "csv")
    | _alerts("PO-TC-018")
    | {"situation/gida/events"},
}


@dataclass(frozen=True)
class SharingBroker:
    """The running broker, and the command line that writes its consumer accounts."""

    broker: Broker
    policy_file: Path
    command: tuple[str, ...]


def _sharing_acl(*args: str) -> tuple[int, str, str]:
    """Run ``hub broker sharing-acl ARGS`` in-process; return (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["broker", "sharing-acl", *args])
    return code, out.getvalue(), err.getvalue()


def _printed_passwords(stdout: str) -> dict[str, str]:
    marker = " (shown only now, not stored in clear): "
    return {
        line.removeprefix("password for ").split(marker)[0]: line.split(marker)[1]
        for line in stdout.splitlines()
        if line.startswith("password for ")
    }


@pytest.fixture(scope="module")
def sharing_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharingBroker]:
    """The production config on a real Mosquitto, with the policy's consumer accounts."""
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto is not None, "mosquitto missing: run scripts/setup.sh"
    root = tmp_path_factory.mktemp("sharing-broker")
    config_dir = root / "config"
    certs = config_dir / "certs"
    shutil.copytree(MOSQUITTO_DIR / "conf.d", config_dir / "conf.d")
    shutil.copy(MOSQUITTO_DIR / "acl", config_dir / "acl")
    certs.mkdir()
    (root / "data").mkdir()
    _make_ca(certs)
    _make_server_cert(certs)
    password_file, acl_file = config_dir / "passwd", config_dir / "acl"
    policy_file, inventory_file = root / "sharing.yaml", root / "devices.csv"
    policy_file.write_text(POLICY)
    inventory_file.write_text(INVENTORY)

    passwords: dict[str, str] = {}
    # comune's account first made the old way: a consumer block that reads every device topic
    for name, kind in (
        ("prato-hub", ROLES["hub"]),
        (PUBLISHER, PUBLISHER_KIND),
        ("comune-consumer", ROLES["consumer"]),
    ):
        added = broker_admin.add_account(name, kind, password_file=password_file, acl_file=acl_file)
        passwords[name] = added.password
    command = (
        "--policy", str(policy_file),
        "--inventory", str(inventory_file),
        "--profiles-dir", str(ROOT / "device_profiles"),
        "--acl-file", str(acl_file),
        "--password-file", str(password_file),
        "--write",
    )  # fmt: skip
    code, out, err = _sharing_acl(*command, "--create-accounts")
    assert code == 0, err
    assert "comune-consumer: block replaced" in err
    created = _printed_passwords(out)
    assert sorted(created) == ["citelum-consumer", "gida-consumer"]  # comune's is kept
    passwords.update(created)

    port, tls_port = _free_ports(2)
    (config_dir / "mosquitto.conf").write_text(_production_config(root, port, tls_port))
    log_path = root / "mosquitto.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [mosquitto, "-c", str(config_dir / "mosquitto.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: (
                process.poll() is not None
                or (devservices.tcp_accepts(port) and devservices.tcp_accepts(tls_port))
            ),
            DEADLINE_S,
            "the production-config broker",
        )
        assert process.poll() is None, log_path.read_text()
        broker = Broker(
            port=port,
            tls_port=tls_port,
            certs=certs,
            password_file=password_file,
            acl_file=acl_file,
            log_path=log_path,
            process=process,
            passwords=passwords,
            added={},
        )
        yield SharingBroker(broker, policy_file, command)
    finally:
        process.terminate()
        try:
            process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE_S)


@contextlib.contextmanager
def _consumers(broker: Broker) -> Iterator[dict[str, Session]]:
    """Every organisation's consumer, connected and subscribed to ``#``."""
    with contextlib.ExitStack() as stack:
        sessions = {org: stack.enter_context(_connect(broker, f"{org}-consumer")) for org in ORGS}
        for session in sessions.values():
            assert session.subscribe("#") == [1]
        yield sessions


def _publish(session: Session, topic: str, sent: dict[bytes, str]) -> None:
    payload = _payload(topic.replace("/", "."))
    assert session.publish(topic, payload) in {0, NO_MATCHING_SUBSCRIBERS}, topic
    sent[payload] = topic


def _drain(consumers: dict[str, Session]) -> set[bytes]:
    """Each consumer's sentinel, on its own situation topic, received; return the sentinels.

    Called once every other publish has been acknowledged: see the module docstring.
    """
    sentinels = {org: _payload(f"sentinel-{org}") for org in consumers}
    for org, session in consumers.items():
        assert session.publish(f"situation/{org}/events", sentinels[org]) == 0
    for org, session in consumers.items():
        assert session.wait_for(sentinels[org]) == f"situation/{org}/events"
        session.round_trip()
    return set(sentinels.values())


def _received(session: Session, ignored: set[bytes]) -> dict[bytes, str]:
    return {payload: topic for topic, payload in list(session.messages) if payload not in ignored}


@pytest.mark.integration
def test_each_consumer_receives_exactly_what_the_policy_shares_live(
    sharing_broker: SharingBroker,
) -> None:
    broker = sharing_broker.broker
    sent: dict[bytes, str] = {}
    refused: dict[bytes, str] = {}
    with (
        _consumers(broker) as consumers,
        _connect(broker, PUBLISHER) as publisher,
        _connect(broker, "prato-hub") as hub,
    ):
        for topic in sorted(DEVICE_TOPICS):
            _publish(publisher, topic, sent)
        for topic in sorted(ALERT_TOPICS):
            _publish(hub, topic, sent)
        for org, session in consumers.items():
            _publish(session, f"situation/{org}/events", sent)
        # what a consumer may not publish: another organisation's situation, devices, alerts
        for org, topic in (
            ("gida", "situation/citelum/events"),
            ("comune", "situation/gida/events"),
            ("citelum", "situation/comune/events"),
            ("citelum", "traffic/PO-TC-018/interval"),
            ("comune", "citelum/prato/PO-QE-118/status"),
            ("gida", "hub/alerts/critical/PO-TC-018"),
        ):
            payload = _payload(f"refused-{org}")
            assert consumers[org].publish(topic, payload) == NOT_AUTHORIZED, (org, topic)
            refused[payload] = topic
        sentinels = _drain(consumers)

        for org, session in consumers.items():
            received = _received(session, sentinels)
            leaked = {refused[p] for p in received if p in refused}
            assert not leaked, f"{org} received refused publishes on {leaked}"
            wanted = {p for p, topic in sent.items() if topic in EXPECTED[org]}
            missing = sorted(sent[p] for p in wanted - set(received))
            extra = sorted(received[p] for p in set(received) - wanted)
            assert (missing, extra) == ([], []), f"{org}: missing {missing}, extra {extra}"
            assert len(received) == len(EXPECTED[org])  # each topic once, nothing twice


def _wait_for_acl(broker: Broker, topic: str, readers: dict[str, bool]) -> None:
    """Wait until a message on ``topic`` reaches exactly the consumers ``readers`` says.

    The broker rereads the ACL file some time after the SIGHUP: each try publishes anew.
    """
    with _consumers(broker) as consumers, _connect(broker, PUBLISHER) as publisher:

        def as_expected() -> bool:
            sent: dict[bytes, str] = {}
            _publish(publisher, topic, sent)
            sentinels = _drain(consumers)
            (payload,) = sent
            seen = {
                org: payload in _received(session, sentinels) for org, session in consumers.items()
            }
            return seen == readers

        wait_until(as_expected, DEADLINE_S, f"the reloaded ACL ({topic} read by {readers})")


@pytest.mark.integration
def test_a_policy_change_applies_at_the_reload(sharing_broker: SharingBroker) -> None:
    broker = sharing_broker.broker
    topic = "citelum/prato/PO-QE-118/cabinet/state"
    before = {"comune": True, "citelum": True, "gida": False}
    _wait_for_acl(broker, topic, before)
    original = sharing_broker.policy_file.read_text()
    # citelum shares its devices in full with gida instead of comune
    share = "    with: [comune]\n    data: {lighting_lamp"
    assert original.count(share) == 1
    sharing_broker.policy_file.write_text(original.replace(share, share.replace("comune", "gida")))
    try:
        code, _, err = _sharing_acl(*sharing_broker.command)
        assert code == 0, err
        assert "comune-consumer: block replaced" in err
        assert "gida-consumer: block replaced" in err
        broker.reload()
        _wait_for_acl(broker, topic, {"comune": False, "citelum": True, "gida": True})
    finally:
        # back to the policy the other tests expect
        sharing_broker.policy_file.write_text(original)
        code, _, err = _sharing_acl(*sharing_broker.command)
        assert code == 0, err
        broker.reload()
    _wait_for_acl(broker, topic, before)
