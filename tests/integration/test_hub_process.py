"""`hub run` as a real process: configured by HUB_* variables, stores data, exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from hub import devservices
from hub.api.security import digest
from hub.storage.influx import InfluxClient
from tests.conftest import MqttProbe, hub_process_env, wait_until, write_inventory

pytestmark = pytest.mark.integration


def test_hub_run_stores_and_stops_cleanly(
    services: devservices.Services,
    influx_db: str,
    influx: InfluxClient,
    mqtt_probe: Callable[..., MqttProbe],
    tmp_path: Path,
) -> None:
    inventory = write_inventory(
        tmp_path / "devices.csv", [("PO-TC-301", "traffic_counter", "iolo")]
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        api_port = sock.getsockname()[1]
    env = hub_process_env(
        services,
        influx_db,
        tmp_path,
        HUB_INVENTORY=str(inventory),
        HUB_API_PORT=str(api_port),
        HUB_API_KEYS=f"wall:comune:reader:{digest('k-1')}",
    )
    log = (tmp_path / "hub.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "run"], env=env, stderr=log)
    try:
        wait_until(lambda: "hub running" in (tmp_path / "hub.log").read_text(), what="hub start")
        probe = mqtt_probe()
        probe.publish(
            "traffic/PO-TC-301/health", b'{"supply_v": 12.3, "temp_c": 9, "door": "closed"}'
        )
        rows = wait_until(
            lambda: influx.query(
                "SELECT supply_v, zone FROM traffic_health WHERE time > now() - 1h"
            ),
            what="the point written by `hub run`",
        )
        assert rows[0]["values"][0][1:] == [12.3, "iolo"]
        api = f"http://127.0.0.1:{api_port}"
        assert httpx.get(f"{api}/healthz").json() == {"status": "ok"}
        devices = httpx.get(f"{api}/api/v1/devices", headers={"Authorization": "Bearer k-1"})
        assert [d["device_id"] for d in devices.json()["devices"]] == ["PO-TC-301"]
        assert devices.json()["devices"][0]["online"] is True
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert "hub stopped" in (tmp_path / "hub.log").read_text()


def test_hub_run_refuses_a_broken_profile(tmp_path: Path, services: devservices.Services) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "bad.yaml").write_text("profile: bad\nmessages: []\n")
    done = _run_hub(hub_process_env(services, "unused", tmp_path, HUB_PROFILES_DIR=str(profiles)))
    assert done.returncode == 2
    assert "bad.yaml: messages: List should have at least 1 item" in done.stderr


def test_hub_run_refuses_a_sharing_policy_that_does_not_fit(
    tmp_path: Path, services: devservices.Services
) -> None:
    inventory = tmp_path / "devices.csv"
    inventory.write_text(
        "device_id,profile,zone,lat,lon,owner,installed_at\n"
        "PO-TC-1,traffic_counter,iolo,43.8,11.1,comune,2025-01-01\n"
    )
    policy = tmp_path / "sharing.yaml"

    def run(policy_text: str, keys: str) -> subprocess.CompletedProcess[str]:
        policy.write_text(policy_text)
        env = hub_process_env(
            services,
            "unused",
            tmp_path,
            HUB_INVENTORY=str(inventory),
            HUB_SHARING_FILE=str(policy),
            HUB_API_KEYS=keys,
        )
        return _run_hub(env)

    # an API key of an organisation the policy does not list: refused before ingest starts
    done = run("organisations: [comune]\n", f"wall:gida:reader:{digest('k')}")
    assert done.returncode == 2
    assert "API keys (org): organisation 'gida' is not listed in" in done.stderr
    assert "hub running" not in done.stderr
    # an inventory owner it does not list
    done = run("organisations: [gida]\n", f"wall:gida:reader:{digest('k')}")
    assert done.returncode == 2
    assert "(owner): organisation 'comune' is not listed" in done.stderr
    # a share of a field no profile stores
    bad_field = (
        "organisations: [comune]\nshares:\n"
        "  - {owner: comune, with: ['*'], data: {traffic_lane: [colour]}}\n"
    )
    done = run(bad_field, f"wall:comune:reader:{digest('k')}")
    assert done.returncode == 2
    assert "shares.0.data.traffic_lane: unknown field 'colour'" in done.stderr


def _run_hub(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`hub run` in ``env`` until it exits by itself (it refuses to start), its output kept."""
    return subprocess.run(
        [sys.executable, "-m", "hub.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
