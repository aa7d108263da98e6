"""Smoke test of the ingest benchmark (``bench.ingest``) on a tiny configuration: its own
services, a 60-device fleet, a 2,000-message burst drained at QoS 1 by the C client, the naive
baseline and the hub, a small RSS run, and three seconds of alert probes under light load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.ingest import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_benchmark_lands_everything_and_times_alerts(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"

    status = main(
        [
            "--messages", "2000",
            "--devices", "60",
            "--qos", "1",
            "--rss-devices", "120",
            "--rss-messages", "1000",
            "--alert-seconds", "3",
            "--alert-rate", "200",
            "--out", str(out),
        ]
    )  # fmt: skip

    assert status == 0
    results = json.loads(out.read_text(encoding="utf-8"))
    assert results["machine"]["influxdb_version"]
    drains = {d["consumer"]: d for d in results["drains"]}
    assert set(drains) == {"c_client", "naive", "hub"}
    for name, drain in drains.items():
        assert drain["qos"] == 1, name
        assert drain["ok"], name
        assert drain["landed"] == drain["expected"] > 0, name
        assert drain["msg_per_s"] > 0, name
    assert drains["c_client"]["expected"] == 2000
    assert drains["naive"]["expected"] == drains["hub"]["expected"]
    assert drains["naive"]["reported"]["points"] == drains["naive"]["expected"]
    for name in ("naive", "hub"):
        assert drains[name]["cpu_s"] > 0, name
        assert drains[name]["peak_rss_tree_mb"] >= drains[name]["peak_rss_main_mb"] > 0, name
    rss = results["rss"]
    assert rss["ok"]
    assert rss["landed"] == rss["expected"] > 0
    assert rss["devices"] == 120
    alerts = results["alerts"]
    assert alerts["ok"]
    assert alerts["probes"] == 30
    assert alerts["notified"] == alerts["probes"]
    assert len(alerts["latencies_ms"]) == alerts["probes"]
    assert 0 < alerts["p50_ms"] <= alerts["p99_ms"] <= alerts["max_ms"]
    assert alerts["landed"] == alerts["expected"] > 0
    assert alerts["achieved_rate"] > 0
    verdicts = {t["name"]: t["verdict"] for t in results["targets"]}
    assert verdicts["no message lost"] == "PASS"
