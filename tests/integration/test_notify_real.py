"""Notifications delivered to real endpoints on loopback.

- webhooks: a real HTTP server checks each signature with the shared secret; an endpoint
  that answers 500 twice gets the event on the third try; a wrong secret is dropped;
- e-mail: a real SMTP server (aiosmtpd) that requires STARTTLS with a throwaway certificate
  and a login; each team gets its message once, even when another team's is retried;
  unknown mailboxes are dropped, not retried; an untrusted certificate is retried;
- MQTT: the real Mosquitto gets the alert on ``hub/alerts/{severity}/{device_id}``.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import hashlib
import hmac
import ipaddress
import socket
import ssl
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiosmtpd import smtp as aiosmtp
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.alerts.model import Alert, AlertEvent, EventKind
from hub.metrics import Metrics
from hub.notify.config import MqttChannelSpec, RetrySpec, SmtpSpec, TeamSpec, WebhookSpec
from hub.notify.dispatch import Dispatcher, NotifyError
from hub.notify.email import EmailChannel
from hub.notify.mqtt import MqttAlertChannel
from hub.notify.webhook import WebhookChannel
from tests.conftest import MqttProbe, wait_until

pytestmark = pytest.mark.integration

FAST = RetrySpec(first_s=0.05, max_s=0.2, max_attempts=10)
SECRET = "prato-" + uuid.uuid4().hex  # shared between the hub and the test server


def lamp_event(alert_id: str, kind: EventKind = "fired") -> AlertEvent:
    """The lamp failure on PO-LP-118-07 in macrolotto."""
    alert = Alert(
        id=alert_id,
        rule="lamp_failure",
        profile="citelum_lighting",
        device_id="PO-LP-118-07",
        series={"phase": "L2"},
        severity="critical",
        message="Lamp PO-LP-118-07 reports a failure",
        zone="macrolotto",
        started_ms=1_790_000_000_000,
        fired_ms=1_790_000_300_000,
    )
    return AlertEvent(kind, alert, 1_790_000_300_000)


@pytest.fixture
def dispatcher_for() -> Iterator[Callable[..., Dispatcher]]:
    """Factory of started dispatchers, stopped at the end of the test."""
    made: list[Dispatcher] = []

    def make(channels: list[Any], metrics: Metrics, retry: RetrySpec = FAST) -> Dispatcher:
        dispatcher = Dispatcher(channels, metrics, None, retry)
        dispatcher.start()
        made.append(dispatcher)
        return dispatcher

    try:
        yield make
    finally:
        for dispatcher in made:
            dispatcher.stop(timeout_s=1)


# -- webhooks ------------------------------------------------------------------------------


@dataclass
class Received:
    """One request the test HTTP server got."""

    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


class HookServer(ThreadingHTTPServer):
    """Answers each path from a script of statuses (the last one repeats) and records."""

    daemon_threads = True

    def __init__(self, secret: str, scripts: dict[str, list[int]]) -> None:
        super().__init__(("127.0.0.1", 0), HookHandler)
        self.secret = secret.encode("utf-8")
        self.scripts = scripts
        self.received: list[Received] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def requests(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path == path]


class HookHandler(BaseHTTPRequestHandler):
    """Verifies the signature over the raw body, as a real receiver must."""

    server: HookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        expected = "sha256=" + hmac.new(self.server.secret, body, hashlib.sha256).hexdigest()
        given = self.headers.get("X-Hub-Signature-256", "")
        ok = hmac.compare_digest(expected, given)
        with self.server.lock:
            self.server.received.append(Received(self.path, dict(self.headers), body, ok))
            script = self.server.scripts[self.path]
            status = script.pop(0) if len(script) > 1 else script[0]
        if not ok:
            status = 401
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on what was received instead."""


@pytest.fixture
def hook_server() -> Iterator[HookServer]:
    """A real HTTP server on loopback: /ok answers 200, /flaky 500 twice then 200."""
    server = HookServer(SECRET, {"/ok": [200], "/flaky": [500, 500, 200], "/strict": [200]})
    thread = threading.Thread(target=server.serve_forever, name="hook-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhooks_deliver_signed_events_and_retry_server_errors(
    hook_server: HookServer, dispatcher_for: Callable[..., Dispatcher]
) -> None:
    metrics = Metrics()
    ok = WebhookChannel(WebhookSpec(name="ok", url=hook_server.url + "/ok", secret=SECRET))
    flaky = WebhookChannel(WebhookSpec(name="flaky", url=hook_server.url + "/flaky", secret=SECRET))
    dispatcher = dispatcher_for([ok, flaky], metrics)
    event = lamp_event(f"alert-{uuid.uuid4().hex[:8]}")
    dispatcher.submit(event)
    assert dispatcher.wait_idle(10)

    [delivered] = hook_server.requests("/ok")
    assert delivered.signature_ok
    assert delivered.headers["X-Hub-Event"] == "fired"
    assert delivered.headers["X-Hub-Alert-Id"] == event.alert.id
    assert delivered.headers["Content-Type"] == "application/json"
    assert AlertEvent.from_json(orjson.loads(delivered.body)) == event

    tries = hook_server.requests("/flaky")
    assert len(tries) == 3
    assert all(t.signature_ok and t.body == delivered.body for t in tries)
    assert metrics.value("notification_failures_total", channel="webhook:flaky") == 2
    assert metrics.value("notifications_sent_total", channel="webhook:flaky") == 1
    assert metrics.value("notifications_sent_total", channel="webhook:ok") == 1


def test_a_webhook_with_the_wrong_secret_is_dropped(
    hook_server: HookServer, dispatcher_for: Callable[..., Dispatcher]
) -> None:
    metrics = Metrics()
    wrong = WebhookChannel(
        WebhookSpec(name="wrong", url=hook_server.url + "/strict", secret="not-the-secret")
    )
    dispatcher = dispatcher_for([wrong], metrics)
    dispatcher.submit(lamp_event("a-wrong"))
    assert dispatcher.wait_idle(10)
    [refused] = hook_server.requests("/strict")
    assert not refused.signature_ok
    assert metrics.value("notifications_dropped_total", channel="webhook:wrong") == 1
    assert metrics.value("notification_failures_total", channel="webhook:wrong") == 1


# -- e-mail --------------------------------------------------------------------------------


def write_certificate(folder: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate for 127.0.0.1 and localhost: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prato-hub test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = folder / "smtp-cert.pem"
    key_path = folder / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Mail:
    """One message the test SMTP server accepted, with how its session was secured."""

    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage
    tls: bool
    login: str | None


@dataclass
class Mailbox:
    """The test server's handler: accepts, refuses or defers by recipient."""

    unknown: set[str] = field(default_factory=set)  # 550 at RCPT
    defer_once: set[str] = field(default_factory=set)  # 451 at DATA, once per recipient
    mails: list[Mail] = field(default_factory=list)
    attempts: list[list[str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(  # noqa: N802 - aiosmtpd calls its hooks by these names
        self,
        server: aiosmtp.SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if address in self.unknown:
            return "550 5.1.1 No such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd calls its hooks by these names
        self, server: aiosmtp.SMTP, session: Session, envelope: Envelope
    ) -> str:
        with self.lock:
            self.attempts.append(list(envelope.rcpt_tos))
            deferred = self.defer_once & set(envelope.rcpt_tos)
            if deferred:
                self.defer_once -= deferred
                return "451 4.3.0 Try again later"
            raw = envelope.original_content or b""
            message = email.message_from_bytes(raw, policy=email.policy.default)
            assert isinstance(message, EmailMessage)
            login = session.auth_data.login.decode() if session.auth_data is not None else None
            self.mails.append(
                Mail(
                    str(envelope.mail_from),
                    list(envelope.rcpt_tos),
                    message,
                    session.ssl is not None,
                    login,
                )
            )
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[Mail]:
        with self.lock:
            return [m for m in self.mails if address in m.rcpt_tos]


def _authenticate(
    server: aiosmtp.SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == b"prato-hub"
        and auth_data.password == SECRET.encode()
    )
    # handled=False: aiosmtpd then answers the failure with 535 itself
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class SmtpServerUnderTest:
    """A running aiosmtpd server that requires STARTTLS and a login."""

    mailbox: Mailbox
    port: int
    cert: Path


@pytest.fixture
def smtp_server(tmp_path: Path) -> Iterator[SmtpServerUnderTest]:
    """A real SMTP server on loopback, with STARTTLS required (throwaway certificate)."""
    cert, key = write_certificate(tmp_path)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="localhost",
        tls_context=tls,
        require_starttls=True,
        authenticator=_authenticate,
        auth_require_tls=True,
    )
    controller.start()
    try:
        yield SmtpServerUnderTest(mailbox, port, cert)
    finally:
        controller.stop()


def _smtp_spec(server: SmtpServerUnderTest, **overrides: Any) -> SmtpSpec:
    env = {"HUB_TEST_SMTP_PASSWORD": SECRET}
    data = {
        "host": "127.0.0.1",
        "port": server.port,
        "sender": "hub-allarmi@comune.prato.example",
        "username": "prato-hub",
        "password_env": "HUB_TEST_SMTP_PASSWORD",
        "ca_file": str(server.cert),
        "timeout_s": 5,
    } | overrides
    return SmtpSpec.model_validate(data, context={"env": env})


def test_teams_get_their_mail_over_starttls_once_each(
    smtp_server: SmtpServerUnderTest, dispatcher_for: Callable[..., Dispatcher]
) -> None:
    spec = _smtp_spec(smtp_server)
    lights = TeamSpec(
        name="lights",
        emails=["luci@comune.prato.example", "reperibile@comune.prato.example"],
        profiles=["citelum_lighting"],
    )
    macrolotto = TeamSpec(
        name="macrolotto", emails=["macrolotto@comune.prato.example"], zones=["macrolotto"]
    )
    parking = TeamSpec(
        name="parking", emails=["sosta@comune.prato.example"], profiles=["parking_bay"]
    )
    # the macrolotto team's server defers the first try: lights must not get a second copy
    smtp_server.mailbox.defer_once.add("macrolotto@comune.prato.example")
    metrics = Metrics()
    channels = [EmailChannel(spec, team) for team in (lights, macrolotto, parking)]
    dispatcher = dispatcher_for(channels, metrics)
    event = lamp_event("a-mail")
    dispatcher.submit(event)
    assert dispatcher.wait_idle(20)

    mailbox = smtp_server.mailbox
    [mail] = mailbox.to("luci@comune.prato.example")
    assert mail.tls, "the session was not upgraded with STARTTLS"
    assert mail.login == "prato-hub"
    assert mail.mail_from == "hub-allarmi@comune.prato.example"
    assert sorted(mail.rcpt_tos) == ["luci@comune.prato.example", "reperibile@comune.prato.example"]
    message = mail.message
    assert message["To"] == "luci@comune.prato.example, reperibile@comune.prato.example"
    assert message["Subject"] == "[CRITICAL] fired: lamp_failure on PO-LP-118-07 (macrolotto)"
    body = message.get_content().replace("\r\n", "\n")  # as sent: SMTP lines end in CRLF
    assert body.startswith("Lamp PO-LP-118-07 reports a failure\n")
    for fact in ("critical", "citelum_lighting", "phase=L2", "a-mail"):
        assert fact in body
    assert AlertEvent.from_json(orjson.loads(body.split("JSON:\n", 1)[1])) == event

    [retried] = mailbox.to("macrolotto@comune.prato.example")
    assert retried.message["To"] == "macrolotto@comune.prato.example"
    assert metrics.value("notification_failures_total", channel="email:macrolotto") == 1
    assert metrics.value("notifications_sent_total", channel="email:macrolotto") == 1
    assert metrics.value("notifications_sent_total", channel="email:lights") == 1
    assert mailbox.to("sosta@comune.prato.example") == []  # not routed to parking
    assert len(mailbox.attempts) == 3  # lights once, macrolotto twice


def test_an_unknown_mailbox_is_dropped_not_retried(
    smtp_server: SmtpServerUnderTest, dispatcher_for: Callable[..., Dispatcher]
) -> None:
    smtp_server.mailbox.unknown.add("nobody@comune.prato.example")
    metrics = Metrics()
    team = TeamSpec(name="ghost", emails=["nobody@comune.prato.example"])
    dispatcher = dispatcher_for([EmailChannel(_smtp_spec(smtp_server), team)], metrics)
    dispatcher.submit(lamp_event("a-ghost"))
    assert dispatcher.wait_idle(10)
    assert metrics.value("notifications_dropped_total", channel="email:ghost") == 1
    assert metrics.value("notification_failures_total", channel="email:ghost") == 1
    assert smtp_server.mailbox.mails == []


def test_an_untrusted_certificate_is_a_retryable_failure(
    smtp_server: SmtpServerUnderTest,
) -> None:
    # Without the test CA the system trust store applies, which does not know the cert.
    channel = EmailChannel(
        _smtp_spec(smtp_server, ca_file=None),
        TeamSpec(name="lights", emails=["luci@comune.prato.example"]),
    )
    with pytest.raises(NotifyError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        channel.send(lamp_event("a-tls"))
    assert not caught.value.permanent
    assert smtp_server.mailbox.mails == []


def test_a_wrong_password_is_permanent(smtp_server: SmtpServerUnderTest) -> None:
    spec = SmtpSpec.model_validate(
        {
            "host": "127.0.0.1",
            "port": smtp_server.port,
            "sender": "hub@comune.prato.example",
            "username": "prato-hub",
            "password_env": "PW",
            "ca_file": str(smtp_server.cert),
        },
        context={"env": {"PW": "wrong"}},
    )
    channel = EmailChannel(spec, TeamSpec(name="lights", emails=["luci@comune.prato.example"]))
    with pytest.raises(NotifyError, match="535") as caught:
        channel.send(lamp_event("a-login"))
    assert caught.value.permanent


def test_a_closed_port_is_a_retryable_failure() -> None:
    spec = SmtpSpec(host="127.0.0.1", port=_free_port(), sender="hub@comune.prato.example")
    channel = EmailChannel(spec, TeamSpec(name="lights", emails=["luci@comune.prato.example"]))
    with pytest.raises(NotifyError) as caught:
        channel.send(lamp_event("a-closed"))
    assert not caught.value.permanent


# -- MQTT ----------------------------------------------------------------------------------


def test_alerts_reach_the_real_broker(
    mqtt_probe: Callable[..., MqttProbe], dispatcher_for: Callable[..., Dispatcher]
) -> None:
    listener = mqtt_probe("hub/alerts/#")
    hub_side = mqtt_probe()
    metrics = Metrics()
    channel = MqttAlertChannel(hub_side.link, MqttChannelSpec())
    dispatcher = dispatcher_for([channel], metrics)
    alert_id = f"alert-{uuid.uuid4().hex[:8]}"
    event = lamp_event(alert_id)
    dispatcher.submit(event)
    assert dispatcher.wait_idle(15)

    def ours() -> list[Any]:
        return [
            m
            for m in listener.messages("hub/alerts/")
            if orjson.loads(m.payload).get("id") == alert_id
        ]

    [message] = wait_until(ours, 10, "the alert on hub/alerts/#")
    assert message.topic == "hub/alerts/critical/PO-LP-118-07"
    assert message.qos == 1
    assert not message.retain
    assert orjson.loads(message.payload) == event.to_json()
    assert metrics.value("notifications_sent_total", channel="mqtt") == 1
