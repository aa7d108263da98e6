"""Interventions: planned or ongoing works and significant events published by utilities.

MQTT situation/{org}/events  or  POST /api/v1/interventions
      |  parse_message (model.py): validate, merge over the stored version, status rules
      v
InterventionStore (store.py): SQLite, one row per id + every change; listeners
      |--> annotation_point (annotations.py): measurement ``intervention`` for Grafana
      |--> the live feed, the alert correlation (explaining, model.py)
      v
GET /api/v1/interventions (hub/api/interventions.py), filtered by the sharing policy
"""

from hub.interventions.annotations import MEASUREMENT, annotation_line, annotation_point
from hub.interventions.model import (
    KINDS,
    STATUSES,
    Intervention,
    InterventionError,
    explaining,
    parse_message,
)
from hub.interventions.store import Change, InterventionStore

__all__ = [
    "KINDS",
    "MEASUREMENT",
    "STATUSES",
    "Change",
    "Intervention",
    "InterventionError",
    "InterventionStore",
    "annotation_line",
    "annotation_point",
    "explaining",
    "parse_message",
]
