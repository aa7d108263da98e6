"""Ingest stage: the MQTT client (the only module that imports paho)."""
