"""Building InfluxQL safely: every value that reaches a query passes through here.

Identifiers (measurements, fields, tags) are never taken from a request as-is: the caller
first checks them against the stored schema, and they are still double-quoted and escaped
here. String values are single-quoted with backslashes and quotes escaped; times are
rendered from parsed datetimes; durations from whole numbers of seconds. Regular expressions
are never built from input.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class QueryInputError(ValueError):
    """A value that must not reach a query (the API answers 422 with this message)."""


def ident(name: str) -> str:
    """A double-quoted identifier; only schema names (identifiers) are accepted."""
    if not _IDENTIFIER.match(name):
        raise QueryInputError(f"{name!r} is not a valid name")
    return f'"{name}"'


def literal(value: str) -> str:
    """A single-quoted string literal with backslashes and quotes escaped."""
    if "\n" in value or "\r" in value or "\x00" in value:
        raise QueryInputError("values cannot contain line breaks or NUL")
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def time_literal(moment: datetime) -> str:
    """A time as an RFC 3339 literal in UTC (the datetime must carry a timezone)."""
    if moment.tzinfo is None:
        raise QueryInputError("times need a timezone (e.g. 2026-11-24T08:00:00Z)")
    return "'" + moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") + "'"


def duration(seconds: int) -> str:
    """A duration literal (whole seconds, at least one)."""
    if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 1:
        raise QueryInputError("durations are whole seconds, at least 1")
    return f"{seconds}s"


def time_range(start: datetime, end: datetime) -> str:
    """``time >= start AND time < end`` (every query is bounded in time)."""
    if end <= start:
        raise QueryInputError("end must be after start")
    return f"time >= {time_literal(start)} AND time < {time_literal(end)}"


def equals(tag: str, value: str) -> str:
    """``"tag" = 'value'``."""
    return f"{ident(tag)} = {literal(value)}"


def any_of(tag: str, values: list[str]) -> str:
    """``("tag" = 'a' OR "tag" = 'b')``; callers skip the query when the list is empty."""
    if not values:
        raise QueryInputError(f"no values for {tag}")
    return "(" + " OR ".join(equals(tag, v) for v in values) + ")"
