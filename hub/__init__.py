"""Prato telemetry hub: MQTT field devices -> device profiles -> InfluxDB, alerts and API."""

__version__ = "0.7.0"
