"""The notification stage with fakes at its seams: config, routing, signing, retries, outbox.

Real HTTP, SMTP and MQTT endpoints are in ``tests/integration/test_notify_real.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from hub import durable
from hub.alerts.model import Alert, AlertEvent, EventKind, Severity
from hub.errors import BrokerError, ConfigError
from hub.metrics import Metrics
from hub.notify import dispatch
from hub.notify.channels import build_channels
from hub.notify.config import (
    MqttChannelSpec,
    NotifyConfig,
    NotifyConfigError,
    RetrySpec,
    SmtpSpec,
    TeamSpec,
    WebhookSpec,
    load_notify_config,
)
from hub.notify.dispatch import Channel, Dispatcher, NotifyError
from hub.notify.email import EmailChannel
from hub.notify.mqtt import MqttAlertChannel
from hub.notify.webhook import WebhookChannel
from tests.conftest import ROOT, wait_until

FAST = RetrySpec(first_s=0.01, max_s=0.05, max_attempts=20)
T0 = 1_790_000_000_000  # 2026-09-21, milliseconds since the epoch


def make_event(
    kind: EventKind = "fired",
    *,
    severity: Severity = "critical",
    profile: str = "citelum_lighting",
    zone: str = "macrolotto",
    device_id: str = "PO-LP-118-07",
    alert_id: str = "a-1",
    at_ms: int = T0 + 60_000,
) -> AlertEvent:
    """An event of the lamp-failure alert, with the parts a test varies."""
    alert = Alert(
        id=alert_id,
        rule="lamp_failure",
        profile=profile,
        device_id=device_id,
        series={"phase": "L1"},
        severity=severity,
        message="Lamp reports failure for 5 minutes",
        zone=zone,
        started_ms=T0,
        fired_ms=T0 + 60_000,
    )
    return AlertEvent(kind, alert, at_ms)


# -- fakes ---------------------------------------------------------------------------------


class FakeChannel:
    """A channel that records deliveries, fails on demand and can be held at a gate."""

    def __init__(
        self,
        name: str,
        *,
        failures: int = 0,
        permanent: bool = False,
        accept: Callable[[AlertEvent], bool] = lambda event: True,
        gate: threading.Event | None = None,
        crash: bool = False,
    ) -> None:
        self.name = name
        self.failures = failures
        self.permanent = permanent
        self.accept = accept
        self.gate = gate
        self.crash = crash
        self.attempts = 0
        self.sent: list[AlertEvent] = []
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def accepts(self, event: AlertEvent) -> bool:
        return self.accept(event)

    def send(self, event: AlertEvent) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)  # bounded: a forgotten gate cannot hang the suite
        with self._lock:
            self.attempts += 1
            if self.failures > 0:
                self.failures -= 1
                if self.crash:
                    raise KeyError("a bug in the channel")
                raise NotifyError("fake failure", permanent=self.permanent)
            self.sent.append(event)

    def delivered(self) -> list[AlertEvent]:
        with self._lock:
            return list(self.sent)


class FakePublisher:
    """Records publishes; confirms them unless told otherwise."""

    def __init__(self, *, confirm: bool = True, refuse: bool = False) -> None:
        self.confirm = confirm
        self.refuse = refuse
        self.published: list[tuple[str, bytes, int, bool]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        if self.refuse:
            raise BrokerError("not connected")
        self.published.append((topic, payload, qos, retain))
        return len(self.published)

    def wait_published(self, mids: Sequence[int], timeout_s: float) -> bool:
        return self.confirm


@pytest.fixture
def dispatchers() -> Iterator[Callable[..., Dispatcher]]:
    """Factory of dispatchers that are stopped at the end of the test."""
    made: list[Dispatcher] = []

    def make(
        channels: Sequence[Channel],
        metrics: Metrics,
        outbox: Path | None = None,
        retry: RetrySpec = FAST,
        *,
        start: bool = True,
    ) -> Dispatcher:
        dispatcher = Dispatcher(list(channels), metrics, outbox, retry)
        if start:
            dispatcher.start()
        made.append(dispatcher)
        return dispatcher

    try:
        yield make
    finally:
        for dispatcher in made:
            dispatcher.stop(timeout_s=0)


# -- config --------------------------------------------------------------------------------


def test_no_file_means_mqtt_only() -> None:
    config = load_notify_config(None)
    assert config == NotifyConfig()
    assert config.mqtt.enabled
    assert config.mqtt.topic == "hub/alerts/{severity}/{device_id}"
    assert (config.webhooks, config.smtp, config.teams) == ([], None, [])
    assert [c.name for c in build_channels(config, FakePublisher())] == ["mqtt"]


def test_an_empty_file_means_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text("# nothing configured yet\n")
    assert load_notify_config(path) == NotifyConfig()


def test_the_example_file_loads_and_builds_every_channel() -> None:
    env = {"HUB_WEBHOOK_SITUATION_ROOM_SECRET": "s3cret", "HUB_SMTP_PASSWORD": "pw"}
    config = load_notify_config(ROOT / "notify.example.yaml", env)
    assert config.webhooks[0].signing_secret == env["HUB_WEBHOOK_SITUATION_ROOM_SECRET"]
    assert config.smtp is not None
    assert config.smtp.password == env["HUB_SMTP_PASSWORD"]
    assert "s3cret" not in repr(config)
    assert "'pw'" not in repr(config)
    channels = build_channels(config, FakePublisher())
    try:
        assert [c.name for c in channels] == [
            "mqtt",
            "webhook:situation-room",
            "email:illuminazione",
            "email:mobilita-macrolotto",
        ]
    finally:
        for channel in channels:
            if isinstance(channel, WebhookChannel):
                channel.close()


def test_build_channels_needs_a_publisher_for_mqtt() -> None:
    with pytest.raises(ConfigError, match="MQTT"):
        build_channels(NotifyConfig(), None)
    off = NotifyConfig(mqtt=MqttChannelSpec(enabled=False))
    assert build_channels(off, None) == []


HOOK = """
webhooks:
  - name: ops
    url: https://ops.example.org/hook
    secret_env: HUB_HOOK_SECRET
"""
SMTP = """
smtp:
  host: mail.example.org
  sender: hub@example.org
"""
TEAM = """
teams:
  - name: lights
    emails: [lights@example.org]
"""


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        (HOOK, "webhooks.0.secret_env", "environment variable HUB_HOOK_SECRET is not set"),
        (
            HOOK.replace("secret_env: HUB_HOOK_SECRET", "secret_env: X\n    secret: y"),
            "webhooks.0",
            "exactly one of 'secret' and 'secret_env'",
        ),
        (
            HOOK.replace("    secret_env: HUB_HOOK_SECRET\n", ""),
            "webhooks.0",
            "exactly one of 'secret' and 'secret_env'",
        ),
        (TEAM, "teams", "the 'smtp' section is required"),
        (
            SMTP + TEAM + "    min_severity: urgent\n",
            "teams.0.min_severity",
            "Input should be 'info', 'warning', 'major' or 'critical'",
        ),
        (SMTP + TEAM + "    events: [fired, closed]\n", "teams.0.events.1", "Input should be"),
        (SMTP + TEAM + "    events: []\n", "teams.0.events", "at least 1 item"),
        (
            SMTP + TEAM.replace("lights@example.org", "lights.example.org"),
            "teams.0.emails",
            "'lights.example.org' is not an e-mail address",
        ),
        (SMTP + TEAM.replace("[lights@example.org]", "[]"), "teams.0.emails", "at least 1"),
        (SMTP + TEAM + TEAM.replace("teams:\n", ""), "teams", "two teams are named 'lights'"),
        (
            HOOK.replace("https://ops.example.org/hook", "ftp://ops.example.org"),
            "webhooks.0.url",
            "not an http:// or https:// URL",
        ),
        ("mqtt:\n  topik: x\n", "mqtt.topik", "Extra inputs are not permitted"),
        ("mqtt:\n  topic: 'alerts/{zone}'\n", "mqtt.topic", "unknown placeholder(s) ['zone']"),
        ("mqtt:\n  topic: 'alerts/#'\n", "mqtt.topic", "wildcards"),
        (SMTP + "  username: hub\n", "smtp", "'username' and 'password_env' go together"),
        (
            SMTP + "  username: hub\n  password_env: HUB_HOOK_SECRET\n",
            "smtp.password_env",
            "environment variable HUB_HOOK_SECRET is not set",
        ),
        (SMTP + "  ca_file: /nonexistent/ca.pem\n", "smtp.ca_file", "Path does not point"),
        ("retry:\n  first_s: 10\n  max_s: 1\n", "retry", "'max_s' is smaller than 'first_s'"),
        ("retry:\n  max_attempts: 0\n", "retry.max_attempts", "greater than or equal to 1"),
        ("webhooks: {}\n", "webhooks", "Input should be a valid list"),
        ("- a list\n", "", "the notification config is a YAML mapping"),
        ("mqtt: [\n", "", "invalid YAML"),
    ],
)
def test_config_errors_name_file_key_and_reason(
    tmp_path: Path, text: str, key: str, reason: str
) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(text)
    with pytest.raises(NotifyConfigError) as caught:
        load_notify_config(path, env={"X": "set"})
    error = caught.value
    assert isinstance(error, ConfigError)
    assert (error.file, error.key) == (str(path), key)
    assert reason in error.reason
    assert str(path) in str(error)
    assert reason in str(error)


def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(NotifyConfigError, match="cannot read"):
        load_notify_config(tmp_path / "absent.yaml")


def test_secrets_come_from_the_given_environment(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(HOOK)
    env = {"HUB_HOOK_SECRET": "from-env"}
    config = load_notify_config(path, env=env)
    assert config.webhooks[0].signing_secret == env["HUB_HOOK_SECRET"]


def test_backoff_doubles_up_to_the_maximum() -> None:
    retry = RetrySpec(first_s=1, max_s=10, max_attempts=1000)
    assert [retry.delay_s(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    assert retry.delay_s(999) == 10


# -- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "event", "expected"),
    [
        ({}, make_event(severity="warning"), True),
        ({}, make_event(severity="info"), False),
        ({"min_severity": "critical"}, make_event(severity="major"), False),
        ({"min_severity": "critical"}, make_event(severity="critical"), True),
        ({"profiles": ["parking_bay"]}, make_event(), False),
        ({"profiles": ["parking_bay", "citelum_lighting"]}, make_event(), True),
        ({"zones": ["iolo"]}, make_event(zone="macrolotto"), False),
        ({"zones": ["iolo"]}, make_event(zone="iolo"), True),
        ({}, make_event("acknowledged"), False),
        ({"events": ["acknowledged"]}, make_event("acknowledged"), True),
        ({"events": ["acknowledged"]}, make_event("resolved"), False),
    ],
)
def test_webhooks_and_teams_route_by_severity_profile_zone_and_kind(
    route: dict[str, Any], event: AlertEvent, expected: bool
) -> None:
    hook = WebhookChannel(
        WebhookSpec(name="ops", url="http://ops.example.org/", secret="k", **route),
        transport=httpx.MockTransport(lambda request: httpx.Response(200)),
    )
    try:
        assert hook.accepts(event) is expected
    finally:
        hook.close()
    smtp = SmtpSpec(host="mail.example.org", sender="hub@example.org")
    team = EmailChannel(smtp, TeamSpec(name="t", emails=["t@example.org"], **route))
    assert team.accepts(event) is expected


def test_mqtt_publishes_every_kind_from_its_minimum_severity() -> None:
    channel = MqttAlertChannel(FakePublisher(), MqttChannelSpec(min_severity="major"))
    assert channel.accepts(make_event("acknowledged", severity="major"))
    assert not channel.accepts(make_event(severity="warning"))
    off = MqttAlertChannel(FakePublisher(), MqttChannelSpec(enabled=False))
    assert not off.accepts(make_event())


# -- channels ------------------------------------------------------------------------------


def test_webhook_posts_the_event_signed_with_hmac_sha256() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    spec = WebhookSpec(name="ops", url="https://ops.example.org/hook", secret="shared-key")
    channel = WebhookChannel(spec, transport=httpx.MockTransport(answer))
    event = make_event("resolved")
    try:
        channel.send(event)
    finally:
        channel.close()
    [request] = seen
    body = request.content
    expected = hmac.new(b"shared-key", body, hashlib.sha256).hexdigest()
    assert request.method == "POST"
    assert str(request.url) == "https://ops.example.org/hook"
    assert request.headers["X-Hub-Signature-256"] == f"sha256={expected}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Hub-Event"] == "resolved"
    assert request.headers["X-Hub-Alert-Id"] == "a-1"
    assert orjson.loads(body) == event.to_json()
    assert AlertEvent.from_json(orjson.loads(body)) == event


@pytest.mark.parametrize(
    ("status", "headers", "permanent", "retry_after"),
    [
        (500, {}, False, None),
        (503, {"Retry-After": "7"}, False, 7.0),
        (429, {"Retry-After": "soon"}, False, None),
        (408, {}, False, None),
        (404, {}, True, None),
        (401, {}, True, None),
        (400, {}, True, None),
        (301, {"Location": "https://elsewhere.example.org/"}, True, None),
    ],
)
def test_webhook_failures_are_classified_by_status(
    status: int, headers: dict[str, str], permanent: bool, retry_after: float | None
) -> None:
    spec = WebhookSpec(name="ops", url="https://ops.example.org/hook", secret="k")
    transport = httpx.MockTransport(lambda request: httpx.Response(status, headers=headers))
    channel = WebhookChannel(spec, transport=transport)
    try:
        with pytest.raises(NotifyError, match=f"HTTP {status}") as caught:
            channel.send(make_event())
    finally:
        channel.close()
    assert caught.value.permanent is permanent
    assert caught.value.retry_after_s == retry_after


@pytest.mark.parametrize(
    "error",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("x")],
)
def test_webhook_transport_errors_are_retryable(error: httpx.HTTPError) -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        raise error

    spec = WebhookSpec(name="ops", url="https://ops.example.org/hook", secret="k")
    channel = WebhookChannel(spec, transport=httpx.MockTransport(fail))
    try:
        with pytest.raises(NotifyError) as caught:
            channel.send(make_event())
    finally:
        channel.close()
    assert not caught.value.permanent


def test_mqtt_publishes_json_on_a_safe_topic() -> None:
    publisher = FakePublisher()
    channel = MqttAlertChannel(publisher, MqttChannelSpec())
    event = make_event(device_id="PO/LP+118#07", severity="major")
    channel.send(event)
    [(topic, payload, qos, retain)] = publisher.published
    assert topic == "hub/alerts/major/PO_LP_118_07"
    assert (qos, retain) == (1, False)
    assert AlertEvent.from_json(orjson.loads(payload)) == event


def test_mqtt_unconfirmed_or_refused_publishes_are_retryable() -> None:
    for publisher in (FakePublisher(confirm=False), FakePublisher(refuse=True)):
        channel = MqttAlertChannel(publisher, MqttChannelSpec(), confirm_timeout_s=0.01)
        with pytest.raises(NotifyError) as caught:
            channel.send(make_event())
        assert not caught.value.permanent


def test_email_message_names_severity_kind_rule_device_and_zone() -> None:
    smtp = SmtpSpec(host="mail.example.org", sender="hub@example.org")
    team = TeamSpec(name="lights", emails=["a@example.org", "b@example.org"])
    channel = EmailChannel(smtp, team)
    event = make_event()
    message = channel.compose(event)
    assert message["Subject"] == "[CRITICAL] fired: lamp_failure on PO-LP-118-07 (macrolotto)"
    assert message["To"] == "a@example.org, b@example.org"
    assert message["From"] == "hub@example.org"
    text = message.get_content()
    assert text.startswith("Lamp reports failure for 5 minutes\n")
    for fact in ("critical", "PO-LP-118-07", "macrolotto", "phase=L1", "2026-09-21T"):
        assert fact in text
    json_part = text.split("JSON:\n", 1)[1]
    assert orjson.loads(json_part) == event.to_json()
    # the same event to the same team keeps its Message-ID, so clients fold a duplicate
    assert channel.compose(event)["Message-ID"] == message["Message-ID"]
    assert channel.compose(make_event("resolved"))["Message-ID"] != message["Message-ID"]


def test_email_subject_survives_line_breaks_in_names() -> None:
    smtp = SmtpSpec(host="mail.example.org", sender="hub@example.org")
    channel = EmailChannel(smtp, TeamSpec(name="t", emails=["t@example.org"]))
    message = channel.compose(make_event(zone="macro\r\nBcc: x@example.org"))
    assert (
        message["Subject"]
        == "[CRITICAL] fired: lamp_failure on PO-LP-118-07 (macro Bcc: x@example.org)"
    )
    assert message["Bcc"] is None


# -- dispatcher ----------------------------------------------------------------------------


def test_a_failing_channel_is_retried_until_it_delivers(
    dispatchers: Callable[..., Dispatcher],
) -> None:
    metrics = Metrics()
    flaky = FakeChannel("flaky", failures=3)
    dispatcher = dispatchers([flaky], metrics)
    dispatcher.submit(make_event())
    assert dispatcher.wait_idle(5)
    assert len(flaky.delivered()) == 1
    assert flaky.attempts == 4
    assert metrics.value("notification_failures_total", channel="flaky") == 3
    assert metrics.value("notifications_sent_total", channel="flaky") == 1
    assert metrics.value("notifications_dropped_total", channel="flaky") == 0


def test_a_permanent_failure_is_dropped_and_counted(
    dispatchers: Callable[..., Dispatcher],
) -> None:
    metrics = Metrics()
    broken = FakeChannel("broken", failures=1, permanent=True)
    dispatcher = dispatchers([broken], metrics)
    dispatcher.submit(make_event(alert_id="lost"))
    dispatcher.submit(make_event(alert_id="next"))
    assert dispatcher.wait_idle(5)
    assert [e.alert.id for e in broken.delivered()] == ["next"]
    assert broken.attempts == 2
    assert metrics.value("notifications_dropped_total", channel="broken") == 1
    assert metrics.value("notification_failures_total", channel="broken") == 1


def test_retries_stop_after_max_attempts(dispatchers: Callable[..., Dispatcher]) -> None:
    metrics = Metrics()
    dead = FakeChannel("dead", failures=1000)
    retry = RetrySpec(first_s=0.001, max_s=0.001, max_attempts=4)
    dispatcher = dispatchers([dead], metrics, retry=retry)
    dispatcher.submit(make_event())
    assert dispatcher.wait_idle(5)
    assert dead.attempts == 4
    assert metrics.value("notification_failures_total", channel="dead") == 4
    assert metrics.value("notifications_dropped_total", channel="dead") == 1


def test_an_unexpected_exception_is_retried_like_a_failure(
    dispatchers: Callable[..., Dispatcher],
) -> None:
    metrics = Metrics()
    buggy = FakeChannel("buggy", failures=1, crash=True)
    dispatcher = dispatchers([buggy], metrics)
    dispatcher.submit(make_event())
    assert dispatcher.wait_idle(5)
    assert len(buggy.delivered()) == 1
    assert metrics.value("notification_failures_total", channel="buggy") == 1


def test_events_go_only_to_the_channels_that_accept_them(
    dispatchers: Callable[..., Dispatcher],
) -> None:
    critical_only = FakeChannel("critical", accept=lambda e: e.alert.severity == "critical")
    everything = FakeChannel("all")
    dispatcher = dispatchers([critical_only, everything], Metrics())
    dispatcher.submit(make_event(severity="warning", alert_id="w"))
    dispatcher.submit(make_event(severity="critical", alert_id="c"))
    assert dispatcher.wait_idle(5)
    assert [e.alert.id for e in critical_only.delivered()] == ["c"]
    assert [e.alert.id for e in everything.delivered()] == ["w", "c"]


def test_a_lane_keeps_order_while_retrying(dispatchers: Callable[..., Dispatcher]) -> None:
    flaky = FakeChannel("flaky", failures=2)
    dispatcher = dispatchers([flaky], Metrics())
    dispatcher.submit(make_event("fired"))
    dispatcher.submit(make_event("resolved"))
    assert dispatcher.wait_idle(5)
    assert [e.kind for e in flaky.delivered()] == ["fired", "resolved"]


def test_a_blocked_channel_does_not_delay_the_others(
    dispatchers: Callable[..., Dispatcher],
) -> None:
    gate = threading.Event()
    stuck = FakeChannel("stuck", gate=gate)
    fast = FakeChannel("fast")
    dispatcher = dispatchers([stuck, fast], Metrics())
    try:
        dispatcher.submit(make_event(alert_id="1"))
        assert stuck.entered.wait(5)  # the stuck channel's worker is now inside send()
        dispatcher.submit(make_event(alert_id="2"))
        wait_until(lambda: len(fast.delivered()) == 2, 5, "the fast channel's deliveries")
        assert stuck.delivered() == []
        assert dispatcher.pending() == 2  # both events still queued for the stuck channel
    finally:
        gate.set()
    assert dispatcher.wait_idle(5)
    assert len(stuck.delivered()) == 2


def test_the_outbox_delivers_after_a_restart_exactly_once(
    tmp_path: Path, dispatchers: Callable[..., Dispatcher]
) -> None:
    outbox = tmp_path / "state" / "notify-outbox.json"
    down = FakeChannel("webhook:ops", failures=1000)
    slow_retry = RetrySpec(first_s=60, max_s=60, max_attempts=5)
    first = dispatchers([down], Metrics(), outbox, slow_retry)
    event = make_event()
    first.submit(event)
    wait_until(lambda: down.attempts == 1, 5, "the first failed attempt")
    first.stop(timeout_s=0.1)  # the retry is a minute away: stop leaves the event queued
    saved = orjson.loads(outbox.read_bytes())
    assert saved == [{"channel": "webhook:ops", "event": event.to_json(), "attempts": 1}]

    metrics = Metrics()
    up = FakeChannel("webhook:ops")
    second = dispatchers([up], metrics, outbox, slow_retry)
    assert second.wait_idle(5)
    assert up.delivered() == [event]
    assert metrics.value("notifications_sent_total", channel="webhook:ops") == 1
    second.stop(timeout_s=1)
    assert orjson.loads(outbox.read_bytes()) == []

    again = FakeChannel("webhook:ops")
    third = dispatchers([again], Metrics(), outbox)
    assert third.wait_idle(1)
    assert again.delivered() == []


def test_stop_delivers_what_is_queued_within_its_timeout(
    tmp_path: Path, dispatchers: Callable[..., Dispatcher]
) -> None:
    outbox = tmp_path / "outbox.json"
    channel = FakeChannel("mqtt")
    dispatcher = dispatchers([channel], Metrics(), outbox, start=False)
    for n in range(3):
        dispatcher.submit(make_event(alert_id=str(n)))
    assert len(orjson.loads(outbox.read_bytes())) == 3
    dispatcher.start()
    dispatcher.stop(timeout_s=5)
    assert [e.alert.id for e in channel.delivered()] == ["0", "1", "2"]
    assert dispatcher.pending() == 0
    assert orjson.loads(outbox.read_bytes()) == []


def test_outbox_entries_of_removed_channels_are_dropped_and_counted(
    tmp_path: Path, dispatchers: Callable[..., Dispatcher]
) -> None:
    outbox = tmp_path / "outbox.json"
    entries = [
        {"channel": "email:gone", "event": make_event(alert_id="x").to_json(), "attempts": 2},
        {"channel": "mqtt", "event": make_event(alert_id="y").to_json(), "attempts": 0},
        {"channel": "mqtt", "event": {"not": "an event"}, "attempts": 0},
    ]
    outbox.write_bytes(orjson.dumps(entries))
    metrics = Metrics()
    mqtt = FakeChannel("mqtt")
    dispatcher = dispatchers([mqtt], metrics, outbox)
    assert dispatcher.wait_idle(5)
    assert [e.alert.id for e in mqtt.delivered()] == ["y"]
    assert metrics.value("notifications_dropped_total", channel="email:gone") == 1
    assert metrics.value("notifications_dropped_total", channel="mqtt") == 1


def test_an_unreadable_outbox_is_set_aside(
    tmp_path: Path, dispatchers: Callable[..., Dispatcher]
) -> None:
    outbox = tmp_path / "outbox.json"
    outbox.write_text("{not json")
    metrics = Metrics()
    dispatcher = dispatchers([FakeChannel("mqtt")], metrics, outbox)
    assert dispatcher.pending() == 0
    [aside] = tmp_path.glob("outbox.json.unreadable-*")
    assert aside.read_text() == "{not json"
    assert metrics.value("notification_outbox_errors_total") == 1


def test_channel_names_must_be_unique() -> None:
    with pytest.raises(ConfigError, match="'twice'"):
        Dispatcher([FakeChannel("twice"), FakeChannel("twice")], Metrics(), None, FAST)


def test_pending_is_a_gauge(dispatchers: Callable[..., Dispatcher]) -> None:
    metrics = Metrics()
    dispatcher = dispatchers([FakeChannel("mqtt")], metrics, start=False)
    dispatcher.submit(make_event())
    assert metrics.snapshot()["notifications_pending"] == {(): 1.0}


def test_submit_never_waits_for_the_outbox_disk_and_a_storm_costs_few_writes(
    tmp_path: Path, dispatchers: Callable[..., Dispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    writes: list[int] = []
    real_write = durable.write_atomically

    def slow_disk(path: Path, data: bytes) -> None:
        gate.wait(10)  # a disk that hangs until the test lets it go
        writes.append(len(orjson.loads(data)))
        real_write(path, data)

    monkeypatch.setattr(dispatch, "write_atomically", slow_disk)
    outbox = tmp_path / "outbox.json"
    down = FakeChannel("webhook:ops", failures=10_000)
    dispatcher = dispatchers([down], Metrics(), outbox, RetrySpec(first_s=60, max_s=60))

    def submit_all() -> None:
        for n in range(50):
            dispatcher.submit(make_event(alert_id=str(n)))

    storm = threading.Thread(target=submit_all)
    storm.start()
    storm.join(5)
    assert not storm.is_alive(), "submit waited for the outbox write"
    assert dispatcher.pending() == 50

    gate.set()
    wait_until(
        lambda: outbox.exists() and len(orjson.loads(outbox.read_bytes())) == 50,
        5,
        "the outbox to hold all 50 events",
    )
    assert len(writes) < 50, "each write should take every event queued meanwhile"
    dispatcher.stop(timeout_s=0.1)
    assert len(orjson.loads(outbox.read_bytes())) == 50
