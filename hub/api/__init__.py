"""The operator API (FastAPI): devices, aggregates, domain views, alerts, operations."""
