"""Times given by people and organisations (API parameters, intervention messages): ISO 8601
with a timezone, read as UTC, within the dates InfluxDB and the hub can hold."""

from __future__ import annotations

from datetime import UTC, datetime

# InfluxDB stores nanoseconds since 1970 in an int64 (up to 2262); keep to sane dates
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
MAX_TIME_LENGTH = 64


def shown(value: str, limit: int = 60) -> str:
    """``value`` as quoted in an error message (repr, so control characters are visible)."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def aware_time(value: str) -> datetime:
    """``2026-11-24T08:00:00Z``, ``...+01:00`` as an aware UTC datetime; ``ValueError`` whose
    message says what is wrong, starting with the value as written."""
    if len(value) > MAX_TIME_LENGTH:
        raise ValueError("is too long to be a time")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{shown(value)} is not an ISO 8601 time (e.g. 2026-11-24T08:00:00Z)"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(
            f"{shown(value)} has no timezone: add Z or an offset "
            "(e.g. 2026-11-24T08:00:00Z or 2026-11-24T09:00:00+01:00)"
        )
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{shown(value)} is out of range") from None
    if not EARLIEST <= utc < LATEST:
        raise ValueError(
            f"{shown(value)} is out of range ({EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d})"
        )
    return utc
