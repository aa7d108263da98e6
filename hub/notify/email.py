"""Alerts e-mailed to maintenance teams: the only module that imports smtplib.

There is one ``EmailChannel`` per team (named ``email:<team>``), so each team's message is
its own queue item: when one team's mail fails, a retry never sends a second copy to a team
that already got it. Each message goes through its own SMTP session (alerts are rare; a
held-open connection would only time out between them), upgraded with STARTTLS against the
configured CA file and logged in when a username is configured.

SMTP outcomes: 4xx replies, connection errors, timeouts and TLS failures are retryable;
5xx replies (unknown mailbox, refused sender, failed login, no STARTTLS) are permanent.
Each message carries a Message-ID derived from the event and team, so a mail client can
fold the rare duplicate that at-least-once delivery allows.
"""

from __future__ import annotations

import hashlib
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

import orjson

from hub.alerts.model import AlertEvent, iso_ms
from hub.errors import ConfigError
from hub.notify.config import SmtpSpec, TeamSpec
from hub.notify.dispatch import NotifyError

log = logging.getLogger(__name__)


def _one_line(text: str) -> str:
    """Header-safe text: a line break in a device id or zone must not end the header."""
    return " ".join(text.split())


def subject(event: AlertEvent) -> str:
    """``[CRITICAL] fired: lamp_failure on PO-LP-118-07 (macrolotto)``."""
    alert = event.alert
    return _one_line(
        f"[{alert.severity.upper()}] {event.kind}: {alert.rule} on {alert.device_id} ({alert.zone})"
    )


def body(event: AlertEvent) -> str:
    """The plain-text body: what happened, the alert's facts, and its JSON for tools."""
    alert = event.alert
    series = ", ".join(f"{key}={value}" for key, value in sorted(alert.series.items()))
    rows = [
        ("Event", f"{event.kind} at {iso_ms(event.at_ms)}"),
        ("Severity", alert.severity),
        ("Device", f"{alert.device_id} (profile {alert.profile})"),
        ("Zone", alert.zone),
        ("Series", series or "-"),
        ("Rule", alert.rule),
        ("Started", iso_ms(alert.started_ms) or "-"),
        ("Fired", iso_ms(alert.fired_ms) or "-"),
        ("Resolved", iso_ms(alert.resolved_ms) or "-"),
    ]
    if alert.acknowledged_by is not None:
        rows.append(
            ("Acknowledged", f"by {alert.acknowledged_by} at {iso_ms(alert.acknowledged_ms)}")
        )
    if alert.flaps:
        rows.append(("Flaps", str(alert.flaps)))
    if alert.explained_by:
        why = alert.explained_by
        rows.append(
            (
                "Probably",
                f"explained by {why.get('owner')}'s {why.get('kind')} "
                f"{why.get('title')!r} ({why.get('id')}, {why.get('status')})",
            )
        )
    rows.append(("Alert id", alert.id))
    facts = "\n".join(f"{label + ':':<14}{value}" for label, value in rows)
    data = orjson.dumps(event.to_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)
    return f"{alert.message}\n\n{facts}\n\n-- \nJSON:\n{data.decode('utf-8')}\n"


class EmailChannel:
    """E-mails the events one team routes to that team's addresses."""

    def __init__(self, smtp: SmtpSpec, team: TeamSpec) -> None:
        self._smtp = smtp
        self._team = team
        self.name = f"email:{team.name}"
        self._tls: ssl.SSLContext | None = None
        if smtp.starttls:
            cafile = str(smtp.ca_file) if smtp.ca_file is not None else None
            try:
                self._tls = ssl.create_default_context(cafile=cafile)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"smtp.ca_file {cafile}: cannot load: {exc}") from exc

    def accepts(self, event: AlertEvent) -> bool:
        """True when ``event`` passes the team's severity, profile, zone and kind filters."""
        return self._team.matches(event)

    def compose(self, event: AlertEvent) -> EmailMessage:
        """The message for ``event`` to this team."""
        message = EmailMessage()
        message["From"] = self._smtp.sender
        message["To"] = ", ".join(self._team.emails)
        message["Subject"] = subject(event)
        message["Date"] = formatdate(usegmt=True)
        key = f"{event.alert.id}|{event.kind}|{event.at_ms}|{self._team.name}"
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
        domain = self._smtp.sender.rpartition("@")[2]
        message["Message-ID"] = f"<{digest}@{domain}>"
        message.set_content(body(event))
        return message

    def send(self, event: AlertEvent) -> None:
        """Send the team's message; raises ``NotifyError`` classified as in the docstring."""
        try:
            message = self.compose(event)
        except ValueError as exc:
            raise NotifyError(f"cannot build the e-mail: {exc}", permanent=True) from exc
        where = f"SMTP {self._smtp.host}:{self._smtp.port} for team {self._team.name}"
        try:
            self._deliver(message)
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            reply = error.decode("utf-8", "replace") if isinstance(error, bytes) else error
            raise NotifyError(
                f"{where} answered {exc.smtp_code} {reply}", permanent=exc.smtp_code >= 500
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise NotifyError(
                f"{where} refused every recipient: {exc.recipients}",
                permanent=all(code >= 500 for code in codes),
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise NotifyError(f"{where}: {exc}", permanent=True) from exc
        except OSError as exc:
            # connection refused or reset, timeouts, TLS handshake and certificate errors;
            # smtplib's other exceptions (server disconnected) are OSErrors too
            raise NotifyError(f"{where} failed: {exc!r}") from exc

    def _deliver(self, message: EmailMessage) -> None:
        spec = self._smtp
        client = smtplib.SMTP(spec.host, spec.port, timeout=spec.timeout_s)
        try:
            if self._tls is not None:
                client.starttls(context=self._tls)
            if spec.username is not None:
                client.login(spec.username, spec.password or "")
            refused = client.send_message(message)
        except BaseException:
            client.close()
            raise
        if refused:
            # Not retried: the team's other addresses have the mail already.
            log.warning("%s: the mail server refused %s", self.name, refused)
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            # The message was accepted already; a failed goodbye must not cause a resend.
            client.close()
