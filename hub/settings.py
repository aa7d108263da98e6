"""The hub's settings: one pydantic-settings class, environment variables prefixed ``HUB_``.

Built once in the composition root (``hub.cli``) and passed down; nothing reads the
environment anywhere else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.errors import ConfigError


class MqttEndpoint:
    """``HUB_MQTT_URL`` split into its parts."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ConfigError(f"HUB_MQTT_URL {url!r}: scheme must be mqtt:// or mqtts://")
        if not parts.hostname:
            raise ConfigError(f"HUB_MQTT_URL {url!r}: no host")
        self.tls = parts.scheme == "mqtts"
        self.host = parts.hostname
        try:
            self.port = parts.port or (8883 if self.tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"HUB_MQTT_URL {url!r}: {exc}") from exc
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None

    def __repr__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


class Settings(BaseSettings):
    """Every setting of the hub. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="HUB_", extra="forbid", frozen=True)

    # a SecretStr because the URL may carry the password: it never shows in logs or repr
    mqtt_url: SecretStr = SecretStr("mqtt://localhost:1883")
    mqtt_client_id: str = "prato-hub"
    # an int range, not Literal[0, 1]: a Literal refuses the string an env variable gives
    mqtt_qos: int = Field(default=1, ge=0, le=1)
    mqtt_session_expiry_s: int = Field(default=7 * 24 * 3600, ge=0)
    mqtt_receive_maximum: int = Field(default=20_000, ge=1, le=65_535)
    mqtt_ca_file: Path | None = None
    mqtt_keepalive_s: int = Field(default=30, ge=5)

    influx_url: str = "http://localhost:8086"
    influx_db: str = "prato"
    influx_rp: str = ""
    influx_token: SecretStr | None = None
    influx_user: str | None = None
    influx_password: SecretStr | None = None
    influx_gzip: bool = True
    influx_timeout_s: float = Field(default=10.0, gt=0)

    profiles_dir: Path = Path("device_profiles")
    inventory: Path = Path("devices.csv")
    data_dir: Path = Path("data")

    batch_size: int = Field(default=5_000, ge=1)
    flush_interval_s: float = Field(default=1.0, gt=0)
    # a batch is also written once it is this old and nothing more waits to be decoded:
    # whenever the decoder keeps up, batches go out about this often
    flush_idle_s: float = Field(default=0.1, gt=0)
    # messages received and not yet decoded, at most (raised to Receive Maximum + 1,000)
    queue_size: int = Field(default=21_000, ge=100)
    retry_max_s: float = Field(default=30.0, gt=0)
    # on-disk spool for while InfluxDB is down (under HUB_DATA_DIR/spool); 0 turns it off
    spool_max_bytes: int = Field(default=1024**3, ge=0)

    api_enabled: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65_535)
    api_keys_file: Path | None = None
    # "id:org:role:sha256" entries, comma-separated; a SecretStr so hashes stay out of logs
    api_keys: SecretStr | None = None
    api_cors_origins: list[str] = Field(default_factory=list)
    # who sees what (hub.sharing); without it every API key sees everything
    sharing_file: Path | None = None

    stats_interval_s: float = Field(default=10.0, ge=0)  # hub_stats points; 0: off

    notify_config: Path | None = None
    alert_tick_s: float = Field(default=1.0, gt=0)
    alert_startup_grace_s: float = Field(default=120.0, ge=0)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("influx_url")
    @classmethod
    def _http(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("HUB_INFLUX_URL must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _auth(self) -> Settings:
        if self.influx_token is not None and self.influx_user is not None:
            raise ValueError("set HUB_INFLUX_TOKEN or HUB_INFLUX_USER/PASSWORD, not both")
        if (self.influx_user is None) != (self.influx_password is None):
            raise ValueError("HUB_INFLUX_USER and HUB_INFLUX_PASSWORD go together")
        MqttEndpoint(self.mqtt_url.get_secret_value())  # fail at start-up, not at connect
        return self

    @property
    def mqtt(self) -> MqttEndpoint:
        """The broker address and credentials."""
        return MqttEndpoint(self.mqtt_url.get_secret_value())
