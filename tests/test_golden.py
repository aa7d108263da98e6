"""Every golden vector of every profile passes, through pytest and through `hub profiles test`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hub.cli import main
from hub.profiles.golden import case_files, load_case, run_all, run_case
from hub.profiles.profile_set import ProfileSet

ROOT = Path(__file__).resolve().parent.parent
BUILT_IN = ROOT / "device_profiles"
FOURTH_FAMILY = Path(__file__).resolve().parent / "data" / "profiles"


def _cases(folder: Path) -> list[tuple[ProfileSet, str, Path]]:
    profiles = ProfileSet.load(folder)
    return [(profiles, name, path) for name, path in case_files(profiles)]


CASES = _cases(BUILT_IN) + _cases(FOURTH_FAMILY)


@pytest.mark.parametrize(
    ("profiles", "name", "path"), CASES, ids=[f"{n}/{p.stem}" for _, n, p in CASES]
)
def test_golden_case(profiles: ProfileSet, name: str, path: Path) -> None:
    assert run_case(profiles, load_case(path)) is None


def test_every_built_in_profile_has_golden_vectors() -> None:
    profiles = ProfileSet.load(BUILT_IN)
    with_cases = {name for name, _ in case_files(profiles)}
    assert with_cases == {"parking_bay", "citelum_lighting", "traffic_counter"}
    assert len(case_files(profiles)) >= 40


def test_cli_runs_golden_vectors(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profiles", "test", "--profiles-dir", str(BUILT_IN)]) == 0
    out = capsys.readouterr().out
    assert "PASS parking_bay/status_change" in out
    assert " 0 failed" in out


def test_cli_reports_a_wrong_expectation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "profiles"
    shutil.copytree(FOURTH_FAMILY, folder)
    case = folder / "water_level" / "golden" / "reading.yaml"
    case.write_text(case.read_text().replace("level_m=1.234", "level_m=1.235"))
    assert main(["profiles", "test", "--profiles-dir", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "FAIL water_level/reading" in out
    assert "level_m: expected 1.235, got 1.234" in out


def test_wrong_error_reason_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    shutil.copytree(FOURTH_FAMILY, folder)
    case = folder / "water_level" / "golden" / "short_hex.yaml"
    case.write_text(case.read_text().replace("error: truncated_frame", "error: unknown_port"))
    results = {r.case: r for r in run_all(ProfileSet.load(folder))}
    assert not results["short_hex"].ok
    assert "expected error unknown_port, got truncated_frame" in results["short_hex"].detail
