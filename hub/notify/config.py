"""The notification config file: who is told about which alert, and how.

``load_notify_config(path)`` reads a YAML file (see ``notify.example.yaml`` at the repo root)
into frozen models. Everything is checked at load time, including that the environment
variables named by ``secret_env`` / ``password_env`` are set, so a wrong file stops start-up
with a ``NotifyConfigError`` naming the file, the key and the reason — never a failure on
the first alert at three in the morning.

Routing (webhooks and teams) selects events by four filters, all of which must match:
severity at least ``min_severity``, the alert's profile in ``profiles`` and its zone in
``zones`` (an empty list matches all), and the event kind in ``events``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from string import Formatter
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from hub.alerts.model import SEVERITY_RANK, AlertEvent, EventKind, Severity
from hub.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Basic shape only (one @, no spaces or address-list punctuation): the SMTP server is the
# judge of whether a mailbox exists; this catches typos such as a missing @ or a comma.
_EMAIL = re.compile(r"^[^@\s,;:<>()\[\]\"]+@[^@\s,;:<>()\[\]\".][^@\s,;:<>()\[\]\"]*$")
_TOPIC_FIELDS = frozenset({"severity", "device_id"})


class NotifyConfigError(ConfigError):
    """The notification config is invalid: carries the file, the key path and the reason.

    Part of the exception tree in ``hub.errors`` (a ``ConfigError``: it stops start-up).
    """

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")


def _environment(info: ValidationInfo) -> Mapping[str, str]:
    """The environment to resolve ``*_env`` keys in: the loader's, else the process's."""
    context = info.context if isinstance(info.context, dict) else {}
    env = context.get("env")
    return env if isinstance(env, Mapping) else os.environ


def _check_env_name(name: str | None, info: ValidationInfo) -> str | None:
    if name is not None and _environment(info).get(name) is None:
        raise ValueError(f"environment variable {name} is not set")
    return name


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(
            f"name {name!r} must start with a letter or digit and use only letters, digits, "
            "'_', '.' and '-'"
        )
    return name


def _default_events() -> list[EventKind]:
    return ["fired", "resolved"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Routed(_Frozen):
    """The event filters shared by webhooks and teams."""

    min_severity: Severity = "warning"
    profiles: list[str] = Field(default_factory=list)
    zones: list[str] = Field(default_factory=list)
    events: list[EventKind] = Field(default_factory=_default_events, min_length=1)

    def matches(self, event: AlertEvent) -> bool:
        """True when ``event`` passes every filter of this route."""
        alert = event.alert
        return (
            SEVERITY_RANK[alert.severity] >= SEVERITY_RANK[self.min_severity]
            and event.kind in self.events
            and (not self.profiles or alert.profile in self.profiles)
            and (not self.zones or alert.zone in self.zones)
        )


class MqttChannelSpec(_Frozen):
    """Alerts published to the hub's own broker (every event kind)."""

    enabled: bool = True
    topic: str = "hub/alerts/{severity}/{device_id}"
    min_severity: Severity = "info"

    @field_validator("topic")
    @classmethod
    def _topic(cls, topic: str) -> str:
        if not topic:
            raise ValueError("the topic is empty")
        if "+" in topic or "#" in topic:
            raise ValueError("a publish topic cannot contain the wildcards '+' or '#'")
        names = {name for _, name, _, _ in Formatter().parse(topic) if name is not None}
        unknown = sorted(names - _TOPIC_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {unknown}; only {{severity}} and {{device_id}} exist"
            )
        return topic

    def matches(self, event: AlertEvent) -> bool:
        """True when the channel is on and the alert is severe enough."""
        return (
            self.enabled and SEVERITY_RANK[event.alert.severity] >= SEVERITY_RANK[self.min_severity]
        )


class WebhookSpec(_Routed):
    """One HTTP endpoint that receives signed JSON POSTs.

    Exactly one of ``secret`` (inline) and ``secret_env`` (the name of an environment
    variable, read at load time) gives the HMAC key; ``signing_secret`` holds the result.
    """

    name: str
    url: str
    secret: SecretStr | None = None
    secret_env: str | None = None
    timeout_s: float = Field(default=5.0, gt=0)

    _signing_secret: str = PrivateAttr(default="")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return _check_name(name)

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
        return url

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, name: str | None, info: ValidationInfo) -> str | None:
        return _check_env_name(name, info)

    @model_validator(mode="after")
    def _resolve_secret(self, info: ValidationInfo) -> WebhookSpec:
        if (self.secret is None) == (self.secret_env is None):
            raise ValueError("give exactly one of 'secret' and 'secret_env'")
        if self.secret is not None:
            value = self.secret.get_secret_value()
        else:
            value = _environment(info)[self.secret_env or ""]
        if not value:
            raise ValueError("the webhook secret is empty")
        # A private attribute: kept out of repr and logs, and frozen models allow it.
        self._signing_secret = value
        return self

    @property
    def signing_secret(self) -> str:
        """The HMAC key, from ``secret`` or from the environment variable ``secret_env``."""
        return self._signing_secret


class SmtpSpec(_Frozen):
    """The mail server that e-mails to teams go through."""

    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    starttls: bool = True
    username: str | None = None
    password_env: str | None = None
    sender: str
    timeout_s: float = Field(default=10.0, gt=0)
    ca_file: FilePath | None = None

    _password: str | None = PrivateAttr(default=None)

    @field_validator("sender")
    @classmethod
    def _sender(cls, sender: str) -> str:
        if not _EMAIL.match(sender):
            raise ValueError(f"{sender!r} is not an e-mail address")
        return sender

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, name: str | None, info: ValidationInfo) -> str | None:
        return _check_env_name(name, info)

    @model_validator(mode="after")
    def _resolve_password(self, info: ValidationInfo) -> SmtpSpec:
        if (self.username is None) != (self.password_env is None):
            raise ValueError("'username' and 'password_env' go together: give both or neither")
        if self.username is not None and not self.starttls:
            raise ValueError("login without 'starttls' would send the password in clear text")
        if self.password_env is not None:
            self._password = _environment(info)[self.password_env]
        return self

    @property
    def password(self) -> str | None:
        """The login password, read from the environment variable ``password_env``."""
        return self._password


class TeamSpec(_Routed):
    """A maintenance team: the addresses that get e-mail for the events it routes."""

    name: str
    emails: list[str] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        return _check_name(name)

    @field_validator("emails")
    @classmethod
    def _emails(cls, emails: list[str]) -> list[str]:
        for address in emails:
            if not _EMAIL.match(address):
                raise ValueError(f"{address!r} is not an e-mail address")
        return emails


class RetrySpec(_Frozen):
    """Backoff of failed deliveries: ``first_s`` doubling up to ``max_s``, then give up."""

    first_s: float = Field(default=1.0, gt=0)
    max_s: float = Field(default=300.0, gt=0)
    max_attempts: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _order(self) -> RetrySpec:
        if self.max_s < self.first_s:
            raise ValueError("'max_s' is smaller than 'first_s'")
        return self

    def delay_s(self, attempts: int) -> float:
        """The wait before the next try, after ``attempts`` failed ones."""
        # the exponent is capped so that a large max_attempts cannot overflow the float
        return min(self.first_s * 2.0 ** min(max(attempts - 1, 0), 64), self.max_s)


def _unique(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"two {kind} are named {name!r}")
        seen.add(name)


class NotifyConfig(_Frozen):
    """The whole notification config. The defaults publish alerts over MQTT only."""

    mqtt: MqttChannelSpec = Field(default_factory=MqttChannelSpec)
    webhooks: list[WebhookSpec] = Field(default_factory=list)
    smtp: SmtpSpec | None = None
    teams: list[TeamSpec] = Field(default_factory=list)
    retry: RetrySpec = Field(default_factory=RetrySpec)

    @field_validator("webhooks")
    @classmethod
    def _webhook_names(cls, webhooks: list[WebhookSpec]) -> list[WebhookSpec]:
        _unique("webhooks", [hook.name for hook in webhooks])
        return webhooks

    @field_validator("teams")
    @classmethod
    def _teams(cls, teams: list[TeamSpec], info: ValidationInfo) -> list[TeamSpec]:
        _unique("teams", [team.name for team in teams])
        # "smtp" is missing from info.data when it failed its own validation: that error
        # is reported instead, so do not add a misleading one here.
        if teams and "smtp" in info.data and info.data["smtp"] is None:
            raise ValueError("teams are e-mailed, so the 'smtp' section is required")
        return teams


def _key(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def load_notify_config(path: Path | None, env: Mapping[str, str] | None = None) -> NotifyConfig:
    """Read and validate the notification config; ``None`` gives the defaults (MQTT only).

    ``env`` is where ``secret_env`` / ``password_env`` are looked up (default: the process
    environment). Any problem raises ``NotifyConfigError`` with the file, key and reason.
    """
    if path is None:
        return NotifyConfig()
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise NotifyConfigError(str(path), "", f"cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise NotifyConfigError(str(path), "", f"invalid YAML: {exc}") from exc
    if data is None:
        data = {}  # an empty file means "the defaults"
    if not isinstance(data, dict):
        raise NotifyConfigError(str(path), "", "the notification config is a YAML mapping")
    try:
        return NotifyConfig.model_validate(
            data, context={"env": os.environ if env is None else env}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise NotifyConfigError(str(path), _key(first["loc"]), first["msg"]) from exc
