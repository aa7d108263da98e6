"""Counters and gauges of the hub, readable as a snapshot or in Prometheus text format.

Counters are keyed by name and labels. Stages increment them from their own threads; the
lock keeps snapshots consistent (an increment costs well under a microsecond).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

LabelKey = tuple[tuple[str, str], ...]


class Metrics:
    """A registry of labelled counters and callable gauges."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        """Add ``amount`` to the counter ``name`` with ``labels``."""
        self._add(name, tuple(sorted(labels.items())), amount)

    def counter(self, name: str, **labels: str) -> Callable[[], None]:
        """Adding one to the counter ``name`` with ``labels``, for a hot path: the labels'
        key is built once, not at every increment."""
        return functools.partial(self._add, name, tuple(sorted(labels.items())), 1)

    def _add(self, name: str, key: LabelKey, amount: float) -> None:
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0) + amount

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        """Register a gauge read on demand (queue depths, connection state)."""
        self._gauges[name] = read

    def value(self, name: str, **labels: str) -> float:
        """One counter's value (0 when never incremented)."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            return self._counters.get(name, {}).get(key, 0)

    def total(self, name: str, **labels: str) -> float:
        """The sum of ``name`` over every series whose labels include ``labels``."""
        wanted = set(labels.items())
        with self._lock:
            return sum(
                value for key, value in self._counters.get(name, {}).items() if wanted <= set(key)
            )

    def snapshot(self) -> dict[str, dict[LabelKey, float]]:
        """A copy of every counter and the current gauge values (label key ``()``)."""
        with self._lock:
            copy = {name: dict(series) for name, series in self._counters.items()}
        for name, read in self._gauges.items():
            copy[name] = {(): float(read())}
        return copy

    def render_prometheus(self, prefix: str = "hub_") -> str:
        """The snapshot in Prometheus text exposition format."""
        lines: list[str] = []
        for name, series in sorted(self.snapshot().items()):
            kind = "gauge" if name in self._gauges else "counter"
            lines.append(f"# TYPE {prefix}{name} {kind}")
            for key, value in sorted(series.items()):
                labels = ",".join(f'{k}="{_label_value(v)}"' for k, v in key)
                lines.append(
                    f"{prefix}{name}{{{labels}}} {value:g}"
                    if labels
                    else f"{prefix}{name} {value:g}"
                )
        return "\n".join(lines) + "\n"


def _label_value(value: str) -> str:
    """A label value escaped for the text format: backslash, double quote and line feed."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
