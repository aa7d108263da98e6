"""Who sees what: the sharing policy of the Situation Room (``HUB_SHARING_FILE``).

Every device has an owner (the inventory's ``owner``); every API key and every broker
consumer account belongs to one organisation. An organisation sees its own devices' data in
full, and what other owners share with it, as the policy file says::

    organisations: [comune, cispel, cap, gida, citelum]
    unowned: [comune]            # who sees devices without an owner (or not in the inventory)
    shares:
      - owner: citelum
        with: ["*"]                        # every organisation, or a list
        data:                              # measurement: fields, or "*" for all of them
          lighting_lamp: [faults, fault_count, energy_wh]
        aggregate: [cabinet_id, zone]      # only per these groupings, never per device
        alerts: [lamp_failure]             # alerts of these rules (or true: all of the owner's)
        interventions: true                # the owner's planned and ongoing works
      - owner: citelum
        with: [comune]
        data: {lighting_lamp: "*", lighting_cabinet: "*", device_status: "*"}
        delay: 15m                         # only data older than this

Without ``aggregate`` a share is per device: the caller may list the devices and read their
series. With it, the data only reaches the caller folded into groups by those tags (or the
whole city); device lists, latest values, per-device aggregates and raw messages stay with the
owner. ``delay`` hides the newest data: answers that include it end at ``now - delay``.

Without a policy file every key sees everything (one organisation running its own hub); the
hub says so at start. With one, nothing is shared that the file does not name, and a key of an
organisation the file does not list is refused at start.

The policy is read once, validated (unknown organisations, measurements and fields are errors
with the file and the entry), and queried by the API, the live feed, the alert correlation and
``hub broker sharing-acl`` through ``Policy.access(org)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hub.errors import ConfigError

EVERYONE = "*"
ALL_FIELDS = "*"
_ORG = r"^[A-Za-z0-9_.-]+$"
_DELAY = re.compile(r"^([0-9]{1,6})([smhd])$")
_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_delay(text: str) -> int:
    """``15m``, ``1h``, ``0s``... in milliseconds."""
    found = _DELAY.match(text.strip())
    if found is None:
        raise ValueError(f"delay {text!r} must be a whole number and s, m, h or d (e.g. 15m)")
    return int(found.group(1)) * _UNIT_MS[found.group(2)]


class Share(BaseModel):
    """One entry of ``shares``: what ``owner`` gives to the organisations ``with``."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    owner: str = Field(pattern=_ORG)
    with_: list[str] = Field(alias="with", min_length=1)
    data: dict[str, list[str] | Literal["*"]] = Field(default_factory=dict)
    aggregate: list[str] | None = Field(default=None, min_length=1)
    delay: str = "0s"
    alerts: bool | list[str] = False
    interventions: bool = False

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: str) -> str:
        parse_delay(value)
        return value

    @property
    def delay_ms(self) -> int:
        """``delay`` in milliseconds."""
        return parse_delay(self.delay)


class PolicyFile(BaseModel):
    """The file as written."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    organisations: list[str] = Field(min_length=1)
    unowned: list[str] = Field(default_factory=list)
    shares: list[Share] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Grant:
    """How an organisation may see one field of one owner's devices.

    ``groups`` is ``None`` for per-device access, else the tags the data may be grouped by
    (grouping by nothing, the whole city, is always allowed); ``delay_ms`` hides newer data.
    """

    groups: frozenset[str] | None
    delay_ms: int

    def allows(self, grain: Iterable[str] | None) -> bool:
        """Whether an answer broken down by the tags ``grain`` (``None``: per device) may
        include this data."""
        if self.groups is None:
            return True
        return grain is not None and set(grain) <= self.groups

    def better_than(self, other: Grant) -> bool:
        """Per device beats aggregated; then wider groupings; then a shorter delay."""
        if (self.groups is None) != (other.groups is None):
            return self.groups is None
        if self.groups is not None and other.groups is not None and self.groups != other.groups:
            return self.groups > other.groups
        return self.delay_ms < other.delay_ms


FULL = Grant(None, 0)


class Access:
    """What one organisation may see (``Policy.access``)."""

    def __init__(self, org: str, policy: Policy | None) -> None:
        self.org = org
        self._policy = policy
        self._cache: dict[tuple[str, str, str], tuple[Grant, ...]] = {}

    @property
    def unrestricted(self) -> bool:
        """True without a policy file: everything is visible."""
        return self._policy is None

    def owns(self, owner: str | None) -> bool:
        """Whether data of ``owner`` (``None`` or empty: no owner) is this organisation's own."""
        if self._policy is None:
            return True
        if not owner:
            return self.org in self._policy.unowned
        return owner == self.org

    def grants(self, owner: str | None, measurement: str, field: str) -> tuple[Grant, ...]:
        """Every way this organisation may see ``measurement.field`` of ``owner``'s devices
        (one per share that names it; several shares may give it differently)."""
        if self.owns(owner):
            return (FULL,)
        if self._policy is None or not owner:
            return ()
        key = (owner, measurement, field)
        if key not in self._cache:
            self._cache[key] = tuple(
                Grant(
                    frozenset(share.aggregate) if share.aggregate is not None else None,
                    share.delay_ms,
                )
                for share in self._policy.shares_to(self.org, owner)
                if (fields := share.data.get(measurement)) is not None
                and (fields == ALL_FIELDS or field in fields)
            )
        return self._cache[key]

    def grant(self, owner: str | None, measurement: str, field: str) -> Grant | None:
        """The widest of ``grants``: per device before aggregated, then the shortest delay."""
        best: Grant | None = None
        for found in self.grants(owner, measurement, field):
            if best is None or found.better_than(best):
                best = found
        return best

    def delay(
        self,
        owner: str | None,
        measurement: str,
        fields: Iterable[str],
        grain: Iterable[str] | None,
    ) -> int | None:
        """How late an answer broken down by ``grain`` (``None``: per device) may show
        ``fields`` of ``owner``'s ``measurement``: per field, the shortest delay among the
        grants that allow that grain; the longest of those over the fields. ``None`` when
        some field may not be shown at that grain at all."""
        grain_set = None if grain is None else frozenset(grain)
        longest = 0
        for name in fields:
            allowed = [
                g.delay_ms for g in self.grants(owner, measurement, name) if g.allows(grain_set)
            ]
            if not allowed:
                return None
            longest = max(longest, min(allowed))
        return longest

    def grant_all(self, owner: str | None, measurement: str, fields: Iterable[str]) -> Grant | None:
        """The weakest grant over ``fields`` (all of them must be visible), or ``None``."""
        groups: frozenset[str] | None = None
        per_device = True
        delay = 0
        for name in fields:
            found = self.grant(owner, measurement, name)
            if found is None:
                return None
            if found.groups is not None:
                groups = found.groups if per_device else (groups or frozenset()) & found.groups
                per_device = False
            delay = max(delay, found.delay_ms)
        return Grant(None if per_device else groups, delay)

    def sees_alert(self, owner: str | None, rule: str) -> bool:
        """Whether alerts of ``rule`` on ``owner``'s devices reach this organisation."""
        if self.owns(owner):
            return True
        if self._policy is None or not owner:
            return False
        return any(
            share.alerts is True or (isinstance(share.alerts, list) and rule in share.alerts)
            for share in self._policy.shares_to(self.org, owner)
        )

    def sees_interventions(self, owner: str) -> bool:
        """Whether ``owner``'s interventions reach this organisation."""
        if self.owns(owner):
            return True
        if self._policy is None:
            return False
        return any(s.interventions for s in self._policy.shares_to(self.org, owner))

    def device_delay(self, owner: str | None, measurements: Iterable[str]) -> int | None:
        """Whether a device of ``owner`` storing ``measurements`` is listed to this
        organisation (its own, or some field of it shared per device): ``None`` when not,
        else how late its live state (last seen, online) may be shown."""
        if self.owns(owner):
            return 0
        if self._policy is None or not owner:
            return None
        wanted = set(measurements)
        delays = [
            share.delay_ms
            for share in self._policy.shares_to(self.org, owner)
            if share.aggregate is None and wanted & set(share.data)
        ]
        return min(delays) if delays else None

    def lists_device(self, owner: str | None, measurements: Iterable[str]) -> bool:
        """Whether a device of ``owner`` storing ``measurements`` is listed to this
        organisation (``device_delay`` is not ``None``)."""
        return self.device_delay(owner, measurements) is not None


class Policy:
    """The validated policy file."""

    def __init__(self, body: PolicyFile, source: str = "sharing policy") -> None:
        self.source = source
        self.organisations = frozenset(body.organisations)
        self.unowned = frozenset(body.unowned)
        self.shares = list(body.shares)
        self._by_pair: dict[tuple[str, str], list[Share]] = {}
        for org in self.organisations:
            for share in self.shares:
                if share.owner != org and (EVERYONE in share.with_ or org in share.with_):
                    self._by_pair.setdefault((org, share.owner), []).append(share)

    def shares_to(self, org: str, owner: str) -> list[Share]:
        """The shares ``owner`` gives to ``org``."""
        return self._by_pair.get((org, owner), [])

    def access(self, org: str) -> Access:
        """What ``org`` may see; ``ConfigError`` for an organisation the policy does not list."""
        if org not in self.organisations:
            raise ConfigError(f"{self.source}: organisation {org!r} is not listed")
        return Access(org, self)

    @classmethod
    def parse(
        cls,
        data: Any,
        source: str,
        measurements: Mapping[str, Iterable[str]] | None = None,
    ) -> Policy:
        """Validate ``data`` (the file's YAML) against itself and the stored schema
        (``measurements``: measurement -> fields), with errors naming ``source`` and the entry."""
        try:
            body = PolicyFile.model_validate(data if data is not None else {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"{source}: {where}: {first['msg']}") from exc
        orgs = set(body.organisations)
        for org in body.organisations:
            if not re.match(_ORG, org):
                raise ConfigError(f"{source}: organisations: {org!r} is not a valid name")

        def known(where: str, names: Iterable[str], allow_everyone: bool = False) -> None:
            for name in names:
                if name not in orgs and not (allow_everyone and name == EVERYONE):
                    raise ConfigError(
                        f"{source}: {where}: unknown organisation {name!r}; "
                        f"listed: {', '.join(sorted(orgs))}"
                    )

        known("unowned", body.unowned)
        for index, share in enumerate(body.shares):
            where = f"shares.{index}"
            known(f"{where}.owner", [share.owner])
            known(f"{where}.with", share.with_, allow_everyone=True)
            if measurements is None:
                continue
            for measurement, fields in share.data.items():
                stored = measurements.get(measurement)
                if stored is None:
                    raise ConfigError(
                        f"{source}: {where}.data: unknown measurement {measurement!r}; "
                        f"stored: {', '.join(sorted(measurements))}"
                    )
                if fields != ALL_FIELDS:
                    missing = [f for f in fields if f not in set(stored)]
                    if missing:
                        raise ConfigError(
                            f"{source}: {where}.data.{measurement}: unknown field "
                            f"{missing[0]!r}; stored: {', '.join(sorted(stored))}"
                        )
        return cls(body, source)

    @classmethod
    def load(cls, path: Path, measurements: Mapping[str, Iterable[str]] | None = None) -> Policy:
        """Read and validate the policy file at ``path``."""
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the sharing policy: {exc}") from exc
        return cls.parse(data, str(path), measurements)

    def check_members(self, where: str, orgs: Iterable[str]) -> None:
        """``ConfigError`` when ``orgs`` (API key or inventory owners) names an organisation
        the policy does not list."""
        for org in orgs:
            if org and org not in self.organisations:
                raise ConfigError(
                    f"{where}: organisation {org!r} is not listed in {self.source} "
                    f"({', '.join(sorted(self.organisations))})"
                )


def access_for(policy: Policy | None, org: str) -> Access:
    """``org``'s access: the policy's, or everything without a policy."""
    return policy.access(org) if policy is not None else Access(org, None)
