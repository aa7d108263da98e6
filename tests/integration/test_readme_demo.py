"""The README's main command (scripts/demo.sh) runs the whole job and shows data arriving."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MEASUREMENTS = [
    "device_status",
    "lighting_cabinet",
    "lighting_lamp",
    "lighting_phase",
    "parking_bay",
    "traffic_health",
    "traffic_lane",
]


def test_demo_script_stores_every_measurement_and_serves_the_api(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    env.update(DEMO_SECONDS="6", DEMO_STATE=str(tmp_path / "demo"))
    done = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last_report = done.stdout.rsplit("---- ", 1)[-1]
    for measurement in MEASUREMENTS:
        found = re.search(rf"^{measurement}\s+(\d+) points", last_report, re.MULTILINE)
        assert found, f"{measurement} missing from:\n{last_report}"
        assert int(found.group(1)) > 0
    assert re.search(r"^open alerts: \d+$", last_report, re.MULTILINE), last_report
    assert "stopped the services" in done.stdout + done.stderr
