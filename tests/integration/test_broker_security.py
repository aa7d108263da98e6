"""The production broker's security, against a real Mosquitto (no mocks).

The broker runs ``mosquitto/mosquitto.conf`` and ``mosquitto/acl`` as they are in the repo,
with only what a test host needs changed: the container paths (``/mosquitto/...``) moved under
a temp dir and the two listeners (1883 plain, 8883 TLS) moved to free loopback ports. The TLS
listener gets a throwaway CA and server certificate made with ``openssl``; the accounts are
made by ``hub.broker_admin`` with the real ``mosquitto_passwd``.

"Not delivered" is never a timeout. After a forbidden publish has been acknowledged, an
authorised client publishes a marker that the observer must receive, and the observer then
makes a QoS 1 round trip on its own connection. Mosquitto routes a message to its subscribers
before it acknowledges it, and writes each connection's packets in order, so anything routed
to the observer before the marker has reached it by the end of that round trip.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from hub import broker_admin, devservices
from hub.broker_admin import FAMILIES, ROLES, AccountKind, AccountResult
from hub.errors import ConfigError
from tests.conftest import ROOT, wait_until

MOSQUITTO_DIR = ROOT / "mosquitto"
DEADLINE_S = 10.0
NOT_AUTHORIZED = 0x87
# Mosquitto answers an accepted MQTT 5 QoS 1 publish nobody subscribed to with 0x10.
NO_MATCHING_SUBSCRIBERS = 0x10

# The accounts of the test broker. The first four have static blocks in mosquitto/acl; the
# others get theirs from broker_admin.
ACCOUNTS: dict[str, AccountKind] = {
    "prato-hub": ROLES["hub"],
    "situation-room": ROLES["consumer"],
    "chirpstack": FAMILIES["chirpstack"],
    "healthcheck": ROLES["healthcheck"],
    "prato-hub-2": ROLES["hub"],
    "situation-room-tv": ROLES["consumer"],
    "PO-TC-017": FAMILIES["traffic"],
    "PO-TC-018": FAMILIES["traffic"],
    "PO-QE-118": FAMILIES["citelum"],
    "PO-QE-119": FAMILIES["citelum"],
}
STATIC_ACCOUNTS = ("prato-hub", "situation-room", "chirpstack", "healthcheck")

UPLINK = "application/1/device/70b3d57ed0051a2f/event/up"

T = TypeVar("T")


# ---------------------------------------------------------------------------------------
# The broker
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    """One running production-config broker and the files it reads."""

    port: int
    tls_port: int
    certs: Path
    password_file: Path
    acl_file: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    passwords: dict[str, str]
    added: dict[str, AccountResult]

    @property
    def ca_file(self) -> Path:
        return self.certs / "ca.crt"

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads the password file, the ACL file and the certificates."""
        self.process.send_signal(signal.SIGHUP)


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl is not None, "openssl missing"
    subprocess.run([openssl, *args], check=True, capture_output=True)


def _make_ca(certs: Path) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(certs / "ca.key"), "-out", str(certs / "ca.crt"), "-days", "2",
        "-subj", "/CN=Prato test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip


def _make_server_cert(certs: Path) -> None:
    """A server certificate for 127.0.0.1 and localhost, signed by the test CA."""
    extensions = certs / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\n"
        "basicConstraints=critical,CA:FALSE\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(certs / "server.key"), "-out", str(certs / "server.csr"),
        "-subj", "/CN=localhost",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(certs / "server.csr"), "-CA", str(certs / "ca.crt"),
        "-CAkey", str(certs / "ca.key"), "-CAcreateserial", "-days", "2",
        "-extfile", str(extensions), "-out", str(certs / "server.crt"),
    )  # fmt: skip
    (certs / "server.key").chmod(0o600)


def _free_ports(count: int) -> list[int]:
    """Distinct loopback ports; every socket stays bound until all are picked."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _production_config(root: Path, port: int, tls_port: int) -> str:
    """mosquitto.conf with the container paths under ``root`` and the listeners on loopback."""
    config = (MOSQUITTO_DIR / "mosquitto.conf").read_text()
    for listener, moved in (("1883", port), ("8883", tls_port)):
        line = f"\nlistener {listener}\n"
        assert config.count(line) == 1, f"mosquitto.conf no longer has {line.strip()!r}"
        config = config.replace(line, f"\nlistener {moved} 127.0.0.1\n")
    config = config.replace("/mosquitto/", f"{root}/")
    if os.geteuid() == 0:
        # As in devservices: started as root, Mosquitto would switch to the "mosquitto" user,
        # which cannot read the test's files.
        config = "user root\n" + config
    return config


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The production config on a real Mosquitto, with every account of ``ACCOUNTS``."""
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    assert mosquitto is not None, "mosquitto missing: run scripts/setup.sh"
    root = tmp_path_factory.mktemp("secure-broker")
    config_dir = root / "config"
    certs = config_dir / "certs"
    shutil.copytree(MOSQUITTO_DIR / "conf.d", config_dir / "conf.d")
    shutil.copy(MOSQUITTO_DIR / "acl", config_dir / "acl")
    certs.mkdir()
    (root / "data").mkdir()
    _make_ca(certs)
    _make_server_cert(certs)
    added = {
        name: broker_admin.add_account(
            name,
            kind,
            password_file=config_dir / "passwd",
            acl_file=config_dir / "acl",
        )
        for name, kind in ACCOUNTS.items()
    }
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
        yield Broker(
            port=port,
            tls_port=tls_port,
            certs=certs,
            password_file=config_dir / "passwd",
            acl_file=config_dir / "acl",
            log_path=log_path,
            process=process,
            passwords={name: result.password for name, result in added.items()},
            added=added,
        )
    finally:
        process.terminate()
        try:
            process.wait(timeout=DEADLINE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=DEADLINE_S)


# ---------------------------------------------------------------------------------------
# MQTT clients
# ---------------------------------------------------------------------------------------


class Session:
    """One paho client: what the broker answered (CONNACK, SUBACK, PUBACK) and what arrived."""

    def __init__(self, client: mqtt.Client, name: str) -> None:
        self.client = client
        self.name = name
        self._changed = threading.Condition()
        self.connacks: list[ReasonCode] = []
        self.disconnects: list[ReasonCode] = []
        self.messages: list[tuple[str, bytes]] = []
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish

    # paho callbacks, on paho's network thread

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._changed:
            self.connacks.append(reason_code)
            self._changed.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._changed:
            self.disconnects.append(reason_code)
            self._changed.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.messages.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._changed:
            self._subacks[mid] = reason_codes
            self._changed.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._changed:
            self._pubacks[mid] = reason_code
            self._changed.notify_all()

    # test API

    def _wait(self, predicate: Callable[[], T | None], what: str) -> T:
        with self._changed:
            value = self._changed.wait_for(predicate, DEADLINE_S)
        if value is None or value is False:
            pytest.fail(f"{self.name}: no {what} within {DEADLINE_S} s")
        return value

    def connack(self) -> ReasonCode:
        """The first CONNACK's reason code."""
        return self._wait(lambda: self.connacks[0] if self.connacks else None, "CONNACK")

    def subscribe(self, *filters: str) -> list[int]:
        """Subscribe at QoS 1; return the SUBACK's reason code values, one per filter."""
        _, mid = self.client.subscribe([(topic_filter, 1) for topic_filter in filters])
        assert mid is not None
        codes = self._wait(lambda: self._subacks.get(mid), "SUBACK")
        return [code.value for code in codes]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1; return the PUBACK's reason code value (always 0 in MQTT 3.1.1)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        return self._wait(lambda: self._pubacks.get(info.mid), f"PUBACK for {topic}").value

    def wait_for(self, payload: bytes) -> str:
        """Wait until ``payload`` arrives; return its topic."""
        return self._wait(
            lambda: next((t for t, p in self.messages if p == payload), None),
            f"message {payload!r}",
        )

    def wait_disconnected(self) -> None:
        """Wait until the broker has closed this connection."""
        self._wait(lambda: bool(self.disconnects), "disconnection")

    def payloads(self) -> set[bytes]:
        with self._changed:
            return {payload for _, payload in self.messages}

    def round_trip(self) -> None:
        """A QoS 1 publish and its PUBACK (denied or not): see the module docstring."""
        self.publish(f"barrier/{self.name}", b"")


@contextlib.contextmanager
def _connect(
    broker: Broker,
    account: str | None,
    *,
    password: str | None = None,
    protocol: MQTTProtocolVersion = mqtt.MQTTv5,
    client_id: str = "",
    tls: bool = False,
    will: tuple[str, bytes] | None = None,
    expect_login: bool = True,
) -> Iterator[Session]:
    """Connect as ``account`` (None: anonymous), wait for the CONNACK, always disconnect.

    Unless ``expect_login`` is false, the CONNACK must be a success.
    """
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
    )
    session = Session(client, account or "anonymous")
    if account is not None:
        client.username_pw_set(account, password or broker.passwords[account])
    if tls:
        client.tls_set(ca_certs=str(broker.ca_file))
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    client.connect("127.0.0.1", broker.tls_port if tls else broker.port)
    client.loop_start()
    try:
        connack = session.connack()
        if expect_login:
            assert not connack.is_failure, f"{session.name}: {connack}"
        yield session
    finally:
        client.disconnect()
        client.loop_stop()


def _payload(label: str) -> bytes:
    return f"{label}-{uuid.uuid4().hex}".encode()


def _assert_not_delivered(
    observer: Session, forbidden: set[bytes], marker_from: Session, marker_topic: str
) -> None:
    """``observer`` got none of ``forbidden``, although it got a marker published after them."""
    marker = _payload("marker")
    assert marker_from.publish(marker_topic, marker) == 0
    observer.wait_for(marker)
    observer.round_trip()
    leaked = forbidden & observer.payloads()
    assert not leaked, f"{observer.name} received forbidden messages {leaked}"


# ---------------------------------------------------------------------------------------
# Tests: the files
# ---------------------------------------------------------------------------------------


@pytest.mark.integration
def test_config_loads_the_shared_limits_and_the_static_acl_matches_the_cli(
    broker: Broker,
) -> None:
    assert "limits.conf" in broker.log_path.read_text()
    # broker_admin found the static blocks already there, identical to what it writes
    for name in STATIC_ACCOUNTS:
        assert broker.added[name].acl_added is False, name
    assert broker.added["PO-TC-017"].acl_added
    assert broker.added["prato-hub"].password_file_created
    # no pattern lines (they would apply to every account), nothing for anonymous clients
    rules = [
        line.split()[0]
        for line in (MOSQUITTO_DIR / "acl").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules[0] == "user"
    assert set(rules) == {"user", "topic"}


# ---------------------------------------------------------------------------------------
# Tests: who may connect
# ---------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["v5", "v311"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_anonymous_clients_are_refused(
    broker: Broker, protocol: MQTTProtocolVersion, tls: bool
) -> None:
    with _connect(broker, None, protocol=protocol, tls=tls, expect_login=False) as session:
        assert session.connack().is_failure
        assert session.connack().getName() == "Not authorized"


@pytest.mark.integration
def test_wrong_password_and_unknown_account_are_refused(broker: Broker) -> None:
    for account, password in (
        ("prato-hub", "not-the-password"),
        ("PO-TC-999", broker.passwords["PO-TC-017"]),
    ):
        with _connect(broker, account, password=password, expect_login=False) as session:
            assert session.connack().getName() == "Not authorized"


@pytest.mark.integration
def test_an_account_cannot_take_over_another_accounts_client_id(broker: Broker) -> None:
    # Without use_username_as_clientid the device would disconnect the hub and take (or wipe)
    # its persistent session.
    with _connect(broker, "prato-hub", client_id="prato-hub") as hub:
        hub.subscribe("traffic/+/interval")
        with _connect(broker, "PO-TC-017", client_id="prato-hub") as site:
            marker = _payload("still-connected")
            assert site.publish("traffic/PO-TC-017/interval", marker) == 0
            hub.wait_for(marker)
        assert hub.disconnects == []


# ---------------------------------------------------------------------------------------
# Tests: devices
# ---------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["v5", "v311"])
def test_traffic_site_publishes_only_its_own_topics(
    broker: Broker, protocol: MQTTProtocolVersion
) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "PO-TC-017", protocol=protocol) as site,
        _connect(broker, "PO-TC-018") as other_site,
    ):
        hub.subscribe(*broker_admin.DEVICE_TOPICS)
        for kind in ("interval", "csv", "health"):
            own = _payload(kind)
            assert site.publish(f"traffic/PO-TC-017/{kind}", own) == 0
            assert hub.wait_for(own) == f"traffic/PO-TC-017/{kind}"

        forbidden = {
            # another site, the citelum shapes under its own name, the other families, the hub's
            "traffic/PO-TC-018/interval": _payload("other-site"),
            "citelum/prato/PO-TC-017/status": _payload("fake-gateway"),
            "citelum/prato/PO-TC-017/cabinet/state": _payload("fake-cabinet"),
            UPLINK: _payload("fake-uplink"),
            "hub/alerts/critical/PO-TC-017": _payload("fake-alert"),
        }
        expected = NOT_AUTHORIZED if protocol == mqtt.MQTTv5 else 0  # v3.1.1: silently dropped
        for topic, payload in forbidden.items():
            assert site.publish(topic, payload) == expected, topic
        _assert_not_delivered(hub, set(forbidden.values()), other_site, "traffic/PO-TC-018/csv")


@pytest.mark.integration
def test_devices_receive_nothing(broker: Broker) -> None:
    with (
        _connect(broker, "situation-room") as control,
        _connect(broker, "PO-TC-017") as site,
        _connect(broker, "PO-QE-118", protocol=mqtt.MQTTv311) as gateway,
        _connect(broker, "PO-TC-018") as other_site,
    ):
        control.subscribe("#")
        # Mosquitto 2.0 grants every SUBSCRIBE (the ACL file has no subscribe rules) ...
        assert site.subscribe("#", "traffic/PO-TC-017/interval", "$share/g/traffic/#") == [1] * 3
        assert gateway.subscribe("#", "citelum/prato/PO-QE-118/status") == [1, 1]
        # ... and checks every message against the reader's ACL: nothing passes for a device.
        own = _payload("own")
        assert site.publish("traffic/PO-TC-017/interval", own) == 0
        control.wait_for(own)
        marker = _payload("marker")
        assert other_site.publish("traffic/PO-TC-018/interval", marker) == 0
        control.wait_for(marker)
        for device in (site, gateway):
            device.round_trip()
            assert device.messages == [], device.name


@pytest.mark.integration
def test_cabinet_gateway_publishes_only_its_own_cabinet(broker: Broker) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "PO-QE-118") as gateway,
        _connect(broker, "PO-QE-119") as other_gateway,
    ):
        hub.subscribe(*broker_admin.DEVICE_TOPICS)
        for topic in (
            "citelum/prato/PO-QE-118/lamp/PO-LP-118-07/state",
            "citelum/prato/PO-QE-118/cabinet/state",
            "citelum/prato/PO-QE-118/status",
        ):
            own = _payload("own")
            assert gateway.publish(topic, own, retain=topic.endswith("/status")) == 0
            assert hub.wait_for(own) == topic

        forbidden = {
            "citelum/prato/PO-QE-119/lamp/PO-LP-119-01/state": _payload("other-lamp"),
            "citelum/prato/PO-QE-119/cabinet/state": _payload("other-cabinet"),
            "citelum/prato/PO-QE-119/status": _payload("other-status"),
            "traffic/PO-QE-118/interval": _payload("fake-site"),
            UPLINK: _payload("fake-uplink"),
        }
        for topic, payload in forbidden.items():
            assert gateway.publish(topic, payload, retain=True) == NOT_AUTHORIZED, topic
        # not one of the contract's shapes, although under its own cabinet: refused as well
        assert gateway.publish("citelum/prato/PO-QE-118/config", b"x") == NOT_AUTHORIZED
        _assert_not_delivered(
            hub, set(forbidden.values()), other_gateway, "citelum/prato/PO-QE-119/cabinet/state"
        )


@pytest.mark.integration
def test_gateway_will_is_delivered_only_on_its_own_status(broker: Broker) -> None:
    # MQTT 5 lets a client disconnect and still have its will sent: no socket has to be killed.
    will_with_message = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
    foreign_will, own_will = _payload("fake-offline"), _payload("offline")
    with _connect(broker, "prato-hub") as hub:
        hub.subscribe("citelum/prato/+/status")
        # Accepted at CONNECT, but checked against the ACL when it would be sent: dropped.
        with _connect(
            broker, "PO-QE-118", will=("citelum/prato/PO-QE-119/status", foreign_will)
        ) as gateway:
            gateway.client.disconnect(reasoncode=will_with_message)
        # Its DISCONNECT was in the broker's socket buffer before this connection existed, so
        # the broker has handled it (and that will) before it sends this will: the marker.
        with _connect(
            broker, "PO-QE-119", will=("citelum/prato/PO-QE-119/status", own_will)
        ) as other_gateway:
            other_gateway.client.disconnect(reasoncode=will_with_message)
        assert hub.wait_for(own_will) == "citelum/prato/PO-QE-119/status"
        hub.round_trip()
        assert foreign_will not in hub.payloads()


@pytest.mark.integration
def test_chirpstack_publishes_uplinks_only(broker: Broker) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "chirpstack", protocol=mqtt.MQTTv311) as chirpstack,
    ):
        hub.subscribe(*broker_admin.DEVICE_TOPICS)
        uplink = _payload("uplink")
        assert chirpstack.publish(UPLINK, uplink) == 0
        assert hub.wait_for(uplink) == UPLINK
        forbidden = {
            "traffic/chirpstack/interval": _payload("fake-site"),
            "citelum/prato/chirpstack/status": _payload("fake-gateway"),
            "hub/deadletter/parking_bay": _payload("fake-deadletter"),
        }
        for topic, payload in forbidden.items():
            chirpstack.publish(topic, payload)
        _assert_not_delivered(hub, set(forbidden.values()), chirpstack, UPLINK)
    # its other event types and downlink commands are refused too (MQTT 5 says so)
    with _connect(broker, "chirpstack") as chirpstack:
        for topic in (
            "application/1/device/70b3d57ed0051a2f/event/join",
            "application/1/device/70b3d57ed0051a2f/command/down",
        ):
            assert chirpstack.publish(topic, b"{}") == NOT_AUTHORIZED, topic


# ---------------------------------------------------------------------------------------
# Tests: the hub and the consumers
# ---------------------------------------------------------------------------------------


def _one_of_each_shape(site: Session, gateway: Session, chirpstack: Session) -> dict[bytes, str]:
    """Publish one message on every device topic shape; return payload -> topic."""
    sent: dict[bytes, str] = {}
    for publisher, topic in (
        (site, "traffic/PO-TC-017/interval"),
        (site, "traffic/PO-TC-017/csv"),
        (site, "traffic/PO-TC-017/health"),
        (gateway, "citelum/prato/PO-QE-118/lamp/PO-LP-118-07/state"),
        (gateway, "citelum/prato/PO-QE-118/cabinet/state"),
        (gateway, "citelum/prato/PO-QE-118/status"),
        (chirpstack, UPLINK),
    ):
        payload = _payload("shape")
        assert publisher.publish(topic, payload) == 0, topic
        sent[payload] = topic
    return sent


@pytest.mark.integration
def test_hub_and_consumer_read_every_device_topic(broker: Broker) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "situation-room") as consumer,
        _connect(broker, "PO-TC-017") as site,
        _connect(broker, "PO-QE-118") as gateway,
        _connect(broker, "chirpstack") as chirpstack,
    ):
        assert hub.subscribe(*broker_admin.DEVICE_TOPICS) == [1] * 7
        consumer.subscribe("#")
        sent = _one_of_each_shape(site, gateway, chirpstack)
        for payload, topic in sent.items():
            assert hub.wait_for(payload) == topic
            assert consumer.wait_for(payload) == topic


@pytest.mark.integration
def test_hub_reads_through_a_shared_subscription(broker: Broker) -> None:
    # Two hub instances need two accounts: the client id is the username.
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "prato-hub-2") as hub_2,
        _connect(broker, "PO-TC-017") as site,
        _connect(broker, "PO-QE-118") as gateway,
        _connect(broker, "chirpstack") as chirpstack,
    ):
        shared = [f"$share/hub/{topic}" for topic in broker_admin.DEVICE_TOPICS]
        assert hub.subscribe(*shared) == [1] * 7
        assert hub_2.subscribe(*shared) == [1] * 7
        sent = _one_of_each_shape(site, gateway, chirpstack)
        sent.update(_one_of_each_shape(site, gateway, chirpstack))
        wait_until(
            lambda: set(sent) <= hub.payloads() | hub_2.payloads(),
            DEADLINE_S,
            "every message through the shared subscription",
        )
        # each message went to one member of the group, not both
        assert not hub.payloads() & hub_2.payloads() & set(sent)


@pytest.mark.integration
def test_hub_publishes_alerts_and_dead_letters_but_no_device_topics(broker: Broker) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "situation-room") as consumer,
    ):
        consumer.subscribe("#")
        alert = _payload("alert")
        assert hub.publish("hub/alerts/critical/PO-QE-118", alert) == 0
        assert consumer.wait_for(alert) == "hub/alerts/critical/PO-QE-118"

        # Authorised (0x10: accepted, no reader) but not for consumers: dead letters are the
        # hub operators' business, and their raw payloads are on the device topics anyway.
        dead_letter = _payload("dead-letter")
        assert hub.publish("hub/deadletter/traffic_counter", dead_letter) in {
            0,
            NO_MATCHING_SUBSCRIBERS,
        }
        forbidden = {dead_letter}
        for topic in ("traffic/PO-TC-017/interval", "citelum/prato/PO-QE-118/status", UPLINK):
            payload = _payload("hub-as-device")
            assert hub.publish(topic, payload) == NOT_AUTHORIZED, topic
            forbidden.add(payload)
        _assert_not_delivered(consumer, forbidden, hub, "hub/alerts/info/PO-TC-017")


@pytest.mark.integration
def test_consumer_cannot_publish_anywhere(broker: Broker) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "situation-room") as consumer,
        _connect(broker, "situation-room-tv") as other_consumer,
    ):
        hub.subscribe(*broker_admin.DEVICE_TOPICS)
        other_consumer.subscribe("#")
        forbidden: set[bytes] = set()
        for topic in (
            "traffic/PO-TC-017/interval",
            "citelum/prato/situation-room/status",
            UPLINK,
            "hub/alerts/critical/PO-QE-118",
            "hub/deadletter/traffic_counter",
            "situation-room/notes",
        ):
            payload = _payload("consumer")
            assert consumer.publish(topic, payload) == NOT_AUTHORIZED, topic
            forbidden.add(payload)
        _assert_not_delivered(other_consumer, forbidden, hub, "hub/alerts/info/PO-TC-017")
        hub.round_trip()
        assert not forbidden & hub.payloads()


@pytest.mark.integration
def test_healthcheck_command_of_compose_succeeds(broker: Broker) -> None:
    mosquitto_sub = shutil.which("mosquitto_sub")
    assert mosquitto_sub is not None, "mosquitto_sub missing: run scripts/setup.sh"
    # docker-compose.yml's healthcheck, with the test broker's port
    result = subprocess.run(
        [
            mosquitto_sub, "-h", "127.0.0.1", "-p", str(broker.port),
            "-u", "healthcheck", "-P", broker.passwords["healthcheck"],
            "-t", "$SYS/broker/uptime", "-E",
        ],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------
# Tests: TLS
# ---------------------------------------------------------------------------------------


def _served_certificate(broker: Broker, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", broker.tls_port), timeout=DEADLINE_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


def _file_certificate(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(path.read_text())


@pytest.mark.integration
def test_tls_listener_works_with_the_ca_file(broker: Broker) -> None:
    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "PO-TC-017", tls=True) as site,
    ):
        hub.subscribe("traffic/+/interval")
        payload = _payload("over-tls")
        assert site.publish("traffic/PO-TC-017/interval", payload) == 0
        hub.wait_for(payload)
    # without the CA the broker's certificate cannot be verified
    with pytest.raises(ssl.SSLCertVerificationError):
        _served_certificate(broker, ssl.create_default_context())


@pytest.mark.integration
def test_renewed_tls_certificate_is_served_after_sighup(broker: Broker) -> None:
    context = ssl.create_default_context(cafile=str(broker.ca_file))
    before = _served_certificate(broker, context)
    assert before == _file_certificate(broker.certs / "server.crt")
    _make_server_cert(broker.certs)
    renewed = _file_certificate(broker.certs / "server.crt")
    assert renewed != before
    broker.reload()
    wait_until(lambda: _served_certificate(broker, context) == renewed, DEADLINE_S, "the new cert")


# ---------------------------------------------------------------------------------------
# Tests: hub broker add-device / remove
# ---------------------------------------------------------------------------------------


def _cli(broker: Broker, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    files = ["--password-file", str(broker.password_file), "--acl-file", str(broker.acl_file)]
    code = broker_admin.main([*args, *files])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _can_log_in(broker: Broker, account: str, password: str) -> bool:
    with _connect(broker, account, password=password, expect_login=False) as session:
        return not session.connack().is_failure


def _add_traffic_site(broker: Broker, capsys: pytest.CaptureFixture[str], name: str) -> str:
    """``add-device NAME --family traffic``; return the printed password."""
    code, output = _cli(broker, capsys, "add-device", name, "--family", "traffic")
    assert code == 0, output
    return output.split("not stored in clear): ", 1)[1].split()[0]


@pytest.mark.integration
def test_add_device_is_idempotent_and_works_after_sighup(
    broker: Broker, capsys: pytest.CaptureFixture[str]
) -> None:
    first = _add_traffic_site(broker, capsys, "PO-TC-031")
    broker.reload()
    wait_until(lambda: _can_log_in(broker, "PO-TC-031", first), DEADLINE_S, "reloaded passwd")

    with _connect(broker, "PO-TC-031", password=first) as connected:
        second = _add_traffic_site(broker, capsys, "PO-TC-031")
        assert second != first  # a second run rotates the password ...
        entries = broker.password_file.read_text().splitlines()
        assert sum(line.startswith("PO-TC-031:") for line in entries) == 1  # ... in place
        assert broker.acl_file.read_text().count("\nuser PO-TC-031\n") == 1
        broker.reload()
        # Mosquitto rechecks connected clients on reload: the old password is cut off at once.
        connected.wait_disconnected()
    assert _can_log_in(broker, "PO-TC-031", second)
    assert not _can_log_in(broker, "PO-TC-031", first)

    with (
        _connect(broker, "prato-hub") as hub,
        _connect(broker, "PO-TC-031", password=second) as site,
    ):
        hub.subscribe("traffic/+/interval", "citelum/prato/+/status")
        forbidden = _payload("fake-gateway")
        assert site.publish("citelum/prato/PO-TC-031/status", forbidden) == NOT_AUTHORIZED
        own = _payload("new-site")
        assert site.publish("traffic/PO-TC-031/interval", own) == 0
        hub.wait_for(own)
        hub.round_trip()
        assert forbidden not in hub.payloads()

        # the same name as another family: refused, nothing changed
        acl_before = broker.acl_file.read_text()
        passwd_before = broker.password_file.read_text()
        code, output = _cli(broker, capsys, "add-device", "PO-TC-031", "--family", "citelum")
        assert code == 2
        assert "hub broker remove PO-TC-031" in output
        assert broker.acl_file.read_text() == acl_before
        assert broker.password_file.read_text() == passwd_before

        # revoked: gone from both files, and disconnected at the reload
        code, output = _cli(broker, capsys, "remove", "PO-TC-031")
        assert code == 0, output
        assert "PO-TC-031" not in broker.acl_file.read_text()
        assert "PO-TC-031:" not in broker.password_file.read_text()
        assert broker.acl_file.read_text().startswith((MOSQUITTO_DIR / "acl").read_text())
        broker.reload()
        site.wait_disconnected()
    assert not _can_log_in(broker, "PO-TC-031", second)


# ---------------------------------------------------------------------------------------
# Tests: broker_admin without a broker
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["PO/TC-017", "+", "#", "traffic/#", "PO TC", "a:b", "", "-x", "a" * 65, "é"]
)
def test_names_that_would_break_topics_or_files_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="not allowed"):
        broker_admin.check_name(name)


def test_cli_refuses_a_bad_name_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = ["--password-file", str(tmp_path / "passwd"), "--acl-file", str(tmp_path / "acl")]
    assert broker_admin.main(["add-device", "traffic/#", "--family", "traffic", *files]) == 2
    assert "not allowed" in capsys.readouterr().err
    assert not (tmp_path / "passwd").exists()
    assert not (tmp_path / "acl").exists()


def test_missing_mosquitto_passwd_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(broker_admin, "_SBIN_DIRS", ())
    with pytest.raises(ConfigError, match=r"mosquitto_passwd not found.*apt-get install"):
        broker_admin.add_account(
            "PO-TC-017",
            FAMILIES["traffic"],
            password_file=tmp_path / "passwd",
            acl_file=tmp_path / "acl",
        )
    assert not (tmp_path / "acl").exists()


def test_password_from_stdin_and_new_files_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("chosen-password\n"))
    files = ["--password-file", str(tmp_path / "passwd"), "--acl-file", str(tmp_path / "acl")]
    code = broker_admin.main(
        ["add-account", "ops", "--role", "consumer", "--password-stdin", *files]
    )
    assert code == 0
    assert "chosen-password" in capsys.readouterr().out
    for created in ("passwd", "acl"):
        assert (tmp_path / created).stat().st_mode & 0o077 == 0, created
    assert (tmp_path / "acl").read_text().splitlines()[1] == "user ops"
