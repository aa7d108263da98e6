"""Alert rules as data: the ``alerts:`` section of a device profile, and their compiled form.

Two kinds of rule::

    - name: low_battery                     # threshold rule on one measurement's points
      severity: warning                     # info | warning | major | critical
      measurement: parking_bay
      when: {field: battery_v, below: 3.3}
      for: 1h                               # the condition must hold this long (default 0)
      clear: {field: battery_v, above: 3.4} # optional; default: `when` is false again
      per: [lane]                           # optional: one alert per value of these tags
      message: "battery at {battery_v} V"   # {field}, {tag}, {device_id} are filled in

    - name: silent
      severity: warning
      silence: {measurement: parking_bay, after: 26h, devices: "^PO-PB-"}
      message: "no message for 26 h"

Conditions: ``{field: F, OP: value}`` with OP one of ``above``, ``below``, ``between``
``[lo, hi]`` (inclusive), ``outside`` ``[lo, hi]``, ``equals``, ``in`` ``[...]``, ``is``
(true/false), ``contains`` (an item of a comma-separated string field, e.g. ``faults``),
``contains_any`` ``[...]``; combined with ``{any: [...]}``, ``{all: [...]}``, ``{not: ...}``.
A condition on a field the point does not carry is *unknown*: it neither starts nor ends
anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hub.alerts.model import Severity

Scalar = bool | int | float | str
_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNITS_MS = (86_400_000, 3_600_000, 60_000, 1_000)


def parse_duration_ms(value: object) -> int:
    """``"26h"``, ``"1h30m"``, ``"90s"``, ``"2d"`` or a number of seconds -> milliseconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return round(value * 1000)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{value!r} is not a duration like 20m, 1h30m, 26h")
    match = _DURATION.match(value.strip())
    if not match or not any(match.groups()):
        raise ValueError(f"{value!r} is not a duration like 20m, 1h30m, 26h")
    return sum(int(g) * unit for g, unit in zip(match.groups(), _UNITS_MS, strict=True) if g)


class Condition(BaseModel):
    """One test on a field, or a combination of conditions."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    field: str | None = None
    above: float | None = None
    below: float | None = None
    between: tuple[float, float] | None = None
    outside: tuple[float, float] | None = None
    equals: Scalar | None = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    is_: bool | None = Field(default=None, alias="is")
    contains: str | None = None
    contains_any: list[str] | None = None
    any: list[Condition] | None = None
    all: list[Condition] | None = None
    not_: Condition | None = Field(default=None, alias="not")

    @model_validator(mode="after")
    def _shape(self) -> Condition:
        tests = [
            name
            for name in (
                "above",
                "below",
                "between",
                "outside",
                "equals",
                "in_",
                "is_",
                "contains",
                "contains_any",
            )
            if getattr(self, name) is not None
        ]
        combos = [name for name in ("any", "all", "not_") if getattr(self, name) is not None]
        if combos:
            if tests or self.field is not None or len(combos) != 1:
                raise ValueError("any/all/not stand alone: no field or test beside them")
            return self
        if self.field is None or len(tests) != 1:
            raise ValueError("give a field and exactly one test (above, below, between, ...)")
        for pair in (self.between, self.outside):
            if pair is not None and pair[0] > pair[1]:
                raise ValueError("a range is [low, high]")
        return self

    def fields(self) -> set[str]:
        """Every field this condition reads."""
        if self.field is not None:
            return {self.field}
        children = [*(self.any or []), *(self.all or []), *([self.not_] if self.not_ else [])]
        return set().union(*(child.fields() for child in children))


class SilenceSpec(BaseModel):
    """ "No message for `after`": which measurement counts as a message, and for which ids."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measurement: str
    after: int  # milliseconds
    devices: str | None = None  # regex on device_id; default every device of the profile

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, value: object) -> int:
        return parse_duration_ms(value)

    @field_validator("devices")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value


class AlertRule(BaseModel):
    """A rule of a profile's ``alerts:`` list (threshold or silence)."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    name: str
    severity: Severity
    message: str = ""
    measurement: str | None = None
    when: Condition | None = None
    clear: Condition | None = None
    for_: int = Field(default=0, alias="for")
    per: list[str] = Field(default_factory=list)
    silence: SilenceSpec | None = None
    flap_window: int = 600_000  # a re-fire within this time after a resolve is folded in

    @field_validator("for_", "flap_window", mode="before")
    @classmethod
    def _durations(cls, value: object) -> int:
        return parse_duration_ms(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
            raise ValueError(f"rule name {value!r} must be an identifier")
        return value

    @model_validator(mode="after")
    def _kind(self) -> AlertRule:
        if self.silence is not None:
            if self.when or self.clear or self.measurement or self.per or self.for_:
                raise ValueError("a silence rule has only name, severity, message, silence")
            return self
        if self.when is None or self.measurement is None:
            raise ValueError("a threshold rule needs measurement and when (or use silence)")
        return self


Verdict = bool | None  # None: the point does not carry the fields to decide
Test = Callable[[dict[str, Any]], Verdict]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _leaf(cond: Condition) -> Test:  # one branch per test kind
    name = cond.field
    assert name is not None  # noqa: S101  # checked by Condition._shape

    def numeric(check: Callable[[float], bool]) -> Test:
        def test(fields: dict[str, Any]) -> Verdict:
            number = _number(fields.get(name))
            return None if number is None else check(number)

        return test

    if cond.above is not None:
        limit = cond.above
        return numeric(lambda v: v > limit)
    if cond.below is not None:
        limit_b = cond.below
        return numeric(lambda v: v < limit_b)
    if cond.between is not None:
        low, high = cond.between
        return numeric(lambda v: low <= v <= high)
    if cond.outside is not None:
        o_low, o_high = cond.outside
        return numeric(lambda v: v < o_low or v > o_high)
    if cond.contains is not None or cond.contains_any is not None:
        wanted = {cond.contains} if cond.contains is not None else set(cond.contains_any or [])

        def contains(fields: dict[str, Any]) -> Verdict:
            value = fields.get(name)
            if not isinstance(value, str):
                return None
            return bool(wanted & {item.strip() for item in value.split(",")})

        return contains
    if cond.is_ is not None:
        flag = cond.is_
        return lambda f: None if not isinstance(f.get(name), bool) else f[name] is flag
    options = [cond.equals] if cond.in_ is None else cond.in_
    return lambda f: None if name not in f else f[name] in options


def compile_condition(cond: Condition) -> Test:
    """A function of a point's fields (and tags) giving True, False or None (unknown)."""
    if cond.any is not None:
        children = [compile_condition(c) for c in cond.any]

        def any_of(fields: dict[str, Any]) -> Verdict:
            results = [child(fields) for child in children]
            if True in results:
                return True
            return None if None in results else False

        return any_of
    if cond.all is not None:
        members = [compile_condition(c) for c in cond.all]

        def all_of(fields: dict[str, Any]) -> Verdict:
            results = [member(fields) for member in members]
            if False in results:
                return False
            return None if None in results else True

        return all_of
    if cond.not_ is not None:
        inner = compile_condition(cond.not_)

        def negated(fields: dict[str, Any]) -> Verdict:
            result = inner(fields)
            return None if result is None else not result

        return negated
    return _leaf(cond)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to evaluate, with the profile it belongs to."""

    profile: str
    rule: AlertRule
    kind: Literal["threshold", "silence"]
    when: Test | None
    clear: Test | None
    devices: re.Pattern[str] | None
    #: ``profile.rule``: unique across profiles (built once: every evaluation uses it)
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.profile}.{self.rule.name}")


def compile_rule(profile: str, rule: AlertRule) -> CompiledRule:
    """Compile one rule of ``profile``."""
    if rule.silence is not None:
        pattern = re.compile(rule.silence.devices) if rule.silence.devices else None
        return CompiledRule(profile, rule, "silence", None, None, pattern)
    assert rule.when is not None  # noqa: S101  # checked by AlertRule._kind
    when = compile_condition(rule.when)
    if rule.clear is not None:
        clear = compile_condition(rule.clear)
    else:

        def clear(fields: dict[str, Any]) -> Verdict:
            verdict = when(fields)
            return None if verdict is None else not verdict

    return CompiledRule(profile, rule, "threshold", when, clear, None)
