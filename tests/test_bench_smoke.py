"""Smoke test of the API latency benchmark (``bench.api_latency``) on a tiny configuration:
its own services, a 30-device fleet over one day, two rounds of every endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.api_latency import ENDPOINTS, main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_benchmark_reports_every_endpoint(tmp_path: Path) -> None:
    out = tmp_path / "api_latency.json"

    status = main(["--devices", "30", "--days", "1", "--repeat", "2", "--out", str(out)])

    assert status == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["seeding"]["points_written"] > 0
    assert results["machine"]["influxdb_version"]
    found = {e["name"]: e for e in results["endpoints"]}
    assert set(found) == {e.name for e in ENDPOINTS}
    for name, endpoint in found.items():
        assert endpoint["calls"] == 2, name
        assert 0 < endpoint["p50_ms"] <= endpoint["p95_ms"], name
        assert 0 < endpoint["influx_share_pct"] <= 100, name
        assert endpoint["influx_queries"] >= 1, name
        assert endpoint["response_bytes"] > 0, name
