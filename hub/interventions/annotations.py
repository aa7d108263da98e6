"""Interventions as InfluxDB points (measurement ``intervention``), for Grafana annotations.

One point per stored change, stamped at the intervention's start (``actual_start``, else
``planned_start``), so that Grafana draws it as a region from there to the ``end_ms`` field
(its annotation's ``timeEndColumn``)::

    intervention,id=cap:2026-0412,kind=water_main_repair,owner=cap,status=active,
        zone=centro-storico title="Rottura condotta",text="Rottura condotta — via Roma 12 —
        ...",end_ms=1795968000000i,version=2i 1795939200000

``id`` is a tag so that the dashboards' annotation query can fold the points of one
intervention (a status change is a new series, a start that moved is a new time) into its
latest version: ``max("version")`` per ``id``, then cancelled ones left out. Writing a point
again is harmless (same series and time: InfluxDB keeps one), so the points can always be
rebuilt from the store.
"""

from __future__ import annotations

import re

from hub.interventions.model import Intervention
from hub.model import FieldValue, Point
from hub.storage import lineprotocol

MEASUREMENT = "intervention"
MAX_TEXT = 2_500
_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def annotation_text(intervention: Intervention) -> str:
    """Title, street and description on one line (what the annotation's tooltip shows)."""
    parts = [intervention.title]
    if intervention.street:
        parts.append(intervention.street)
    if intervention.description:
        parts.append(intervention.description)
    # one line: a line break inside a string field is legal for InfluxDB, but not for every
    # tool that splits line protocol on newlines (the hub's own spool among them)
    text = _BREAKS.sub(" ", " — ".join(parts)).strip()
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…"


def annotation_point(intervention: Intervention) -> Point:
    """The ``intervention`` point of one stored version of ``intervention``."""
    tags = {
        "id": intervention.id,
        "owner": intervention.owner,
        "kind": intervention.kind,
        "status": intervention.status,
    }
    if intervention.zone:
        tags["zone"] = intervention.zone
    fields: dict[str, FieldValue] = {
        "title": intervention.title,
        "text": annotation_text(intervention),
        "end_ms": intervention.end_ms,
        "version": intervention.version,
    }
    return Point(MEASUREMENT, tags, fields, intervention.start_ms)


def annotation_line(intervention: Intervention) -> str:
    """``annotation_point`` as a line of line protocol (millisecond precision)."""
    return lineprotocol.encode(annotation_point(intervention))
