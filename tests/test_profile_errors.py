"""A broken profile stops start-up with the file, the key and the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.errors import ProfileError
from hub.profiles.profile_set import ProfileSet

GOOD = """
profile: meter
messages:
  - name: reading
    topic: "meters/{meter_id}/reading"
    device_id: topic:meter_id
    points:
      - measurement: meter
        fields:
          value: v
"""


def _load(tmp_path: Path, text: str, name: str = "meter.yaml") -> ProfileSet:
    (tmp_path / name).write_text(text)
    return ProfileSet.load(tmp_path)


def test_good_profile_loads(tmp_path: Path) -> None:
    profiles = _load(tmp_path, GOOD)
    assert profiles.subscriptions == ["meters/+/reading"]


@pytest.mark.parametrize(
    ("change", "key", "reason"),
    [
        (
            ("value: v", "value: {from: v, typ: int}"),
            "messages.0.points.0.fields.value.typ",
            "Extra inputs are not permitted",
        ),
        (
            ("value: v", "value: {from: v, type: integer}"),
            "messages.0.points.0.fields.value.type",
            "Input should be",
        ),
        (
            ("value: v", "value: {from: v, sum: [a, b]}"),
            "messages.0.points.0.fields.value",
            "exactly one of from/sum/count/join/const",
        ),
        (
            ("value: v", "value: {from: 'item2:v'}"),
            "messages.0.points.0.fields.value",
            "unknown prefix 'item2'",
        ),
        (
            ("device_id: topic:meter_id", "device_id: topic:meter"),
            "messages.0",
            "'topic:meter' names no level of topic",
        ),
        (("value: v", "value: frame:v"), "messages.0", "is in no frame layout"),
        (
            ("measurement: meter", "measurement: 'my meter'"),
            "messages.0.points.0",
            "is not an identifier",
        ),
        (
            ("meters/{meter_id}/reading", "meters/{meter_id:[}/reading"),
            "messages.0.topic",
            "bad regex",
        ),
        (("profile: meter", "profile: meter-1"), "profile", "must be an identifier"),
        (
            ("    points:", "    format: delimited\n    points:"),
            "messages.0",
            "needs a 'delimited' section",
        ),
    ],
)
def test_broken_profile_names_file_key_reason(
    tmp_path: Path, change: tuple[str, str], key: str, reason: str
) -> None:
    with pytest.raises(ProfileError) as caught:
        _load(tmp_path, GOOD.replace(*change))
    assert caught.value.file.endswith("meter.yaml")
    assert caught.value.key == key
    assert reason in caught.value.reason


def test_yaml_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"meter\.yaml: invalid YAML"):
        _load(tmp_path, GOOD + "\n  - : [\n")


def test_yaml_on_keyword_trap_is_caught(tmp_path: Path) -> None:
    # YAML 1.1 reads a bare `on` key as the boolean true: the field name is then rejected.
    with pytest.raises(ProfileError, match="fields"):
        _load(tmp_path, GOOD.replace("value: v", "on: v"))


def test_two_profiles_on_one_subscription(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("profile: meter", "profile: other"))
    with pytest.raises(ProfileError, match=r"already used by meter\.reading"):
        ProfileSet.load(tmp_path)


def test_duplicate_profile_name(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD.replace("meters/", "other/"))
    with pytest.raises(ProfileError, match="name 'meter' is also used"):
        ProfileSet.load(tmp_path)


def test_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="no profile files"):
        ProfileSet.load(tmp_path)
