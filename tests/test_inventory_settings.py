"""Inventory loading and enrichment; settings from HUB_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.cli import load_settings
from hub.errors import ConfigError
from hub.inventory import Inventory
from hub.model import Decoded, Point

HEADER = "device_id,profile,zone,lat,lon,owner,installed_at\n"


def test_inventory_zone_fills_points_without_one(tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(
        HEADER + "PO-QE-118,citelum_lighting,macrolotto,43.86,11.07,citelum,2024-03-01\n"
    )
    inventory = Inventory.load(path)
    decoded = Decoded(
        "citelum_lighting",
        "PO-QE-118",
        [
            Point("a", {"device_id": "PO-QE-118"}, {"x": 1.0}, 1),
            Point("b", {"device_id": "PO-QE-118", "zone": "own"}, {"x": 1.0}, 1),
        ],
    )
    assert inventory.enrich(decoded) is True
    assert [p.tags["zone"] for p in decoded.points] == ["macrolotto", "own"]
    stranger = Decoded("x", "NOPE", [Point("a", {"device_id": "NOPE"}, {"x": 1.0}, 1)])
    assert inventory.enrich(stranger) is False
    assert stranger.points[0].tags["zone"] == "unknown"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("device_id,zone\nA,b\n", "header lacks columns profile, lat, lon, owner, installed_at"),
        (
            HEADER + "A,p,z,95,11,o,2024-01-01\n",
            ":2: lat: Input should be less than or equal to 90",
        ),
        (HEADER + "A,p,,43,11,o,2024-01-01\n", ":2: zone"),
        (HEADER + "A,p,z,43,11,o,yesterday\n", ":2: installed_at"),
        (HEADER + "A,p,z,43,11,o,\nA,p,z,43,11,o,\n", ":3: device 'A' listed twice"),
    ],
)
def test_bad_inventory_names_line_and_reason(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Inventory.load(path)


def test_missing_inventory(tmp_path: Path) -> None:
    assert Inventory.load(tmp_path / "absent.csv").devices == {}
    with pytest.raises(ConfigError, match="does not exist"):
        Inventory.load(tmp_path / "absent.csv", required=True)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_MQTT_URL", "mqtts://hub:s%40cret@broker.example:8884")
    monkeypatch.setenv("HUB_INFLUX_TOKEN", "Zx9-secret-token")
    monkeypatch.setenv("HUB_BATCH_SIZE", "100")
    settings = load_settings()
    mqtt = settings.mqtt
    assert (mqtt.tls, mqtt.host, mqtt.port, mqtt.username, mqtt.password) == (
        True,
        "broker.example",
        8884,
        "hub",
        "s@cret",
    )
    assert "s@cret" not in repr(mqtt)
    assert settings.batch_size == 100
    assert settings.influx_token is not None
    assert "Zx9-secret-token" not in repr(settings)
    assert "s%40cret" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("HUB_BATCH_SIZE", "0", "HUB_BATCH_SIZE"),
        ("HUB_MQTT_QOS", "2", "HUB_MQTT_QOS"),
        ("HUB_INFLUX_URL", "localhost:8086", "http://"),
        ("HUB_MQTT_URL", "http://broker", "scheme must be mqtt"),
        ("HUB_NOT_A_SETTING", "1", "HUB_NOT_A_SETTING"),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


@pytest.mark.parametrize("value", ["0", "1"])
def test_the_subscription_qos_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("HUB_MQTT_QOS", value)
    assert load_settings().mqtt_qos == int(value)


def test_token_and_user_exclude_each_other(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_INFLUX_TOKEN", "t")
    monkeypatch.setenv("HUB_INFLUX_USER", "u")
    monkeypatch.setenv("HUB_INFLUX_PASSWORD", "p")
    with pytest.raises(ConfigError, match="not both"):
        load_settings()
