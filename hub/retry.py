"""What the hub's retry loops share: reading a server's ``Retry-After`` header."""

from __future__ import annotations


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header; ``None`` when absent or an HTTP date.

    An HTTP date is rare enough from InfluxDB and webhook receivers that the caller's own
    backoff is used instead.
    """
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
