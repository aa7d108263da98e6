"""What the benchmarks share: their own services for one run, and the error that ends it."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hub import devservices


class BenchmarkError(RuntimeError):
    """A run could not be set up or finished, or answered nothing: its numbers would mean
    nothing."""


def with_services(prefix: str, run: Callable[[devservices.Services, Path], int]) -> int:
    """``run(services, tmp)`` on its own Mosquitto and InfluxDB in a temporary folder, both
    stopped at the end whatever happens; 1 (the error printed) on a ``BenchmarkError``."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        state = Path(tmp) / "services"
        try:
            services = devservices.start(state)
            return run(services, Path(tmp))
        except BenchmarkError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            devservices.stop(state)
