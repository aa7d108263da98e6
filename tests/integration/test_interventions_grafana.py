"""The dashboards' intervention annotations, run against the real InfluxDB.

Interventions go through the real path: messages applied to an ``InterventionStore`` (a
temporary SQLite file), whose listener writes each stored change as an ``intervention`` point
to the test's own InfluxDB database. Then every dashboard's intervention annotation query is
interpolated as Grafana's InfluxDB datasource does it (``$timeFilter`` as the dashboard's
range in epoch milliseconds, template variables as escaped regular expressions or their
``allValue``) and run. Each intervention must come back once, at its latest version, as the
region Grafana draws from the row: ``time`` = its start, the ``timeEndColumn`` = its end, the
``textColumn`` with its title, the ``tagsColumn`` columns as strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hub.interventions import Intervention, InterventionStore, annotation_line
from hub.interventions.model import to_ms
from hub.storage.influx import InfluxClient
from tests.conftest import ROOT

pytestmark = pytest.mark.integration

DASHBOARDS_DIR = ROOT / "grafana" / "dashboards"
# every dashboard that draws interventions; those with a $zone variable filter by it
WITH_INTERVENTIONS = {
    "hub-overview.json",
    "parking.json",
    "lighting.json",
    "traffic.json",
    "alerts.json",
}

MINUTE = 60_000
HOUR = 60 * MINUTE
NOW = int(datetime(2026, 11, 25, 11, 0, tzinfo=UTC).timestamp() * 1000)
START = NOW - 36 * HOUR  # the dashboards' time range in this test
END = NOW + HOUR
CENTRO = "centro-storico"
MACROLOTTO = "macrolotto"
REGEX_SPECIALS = re.compile(r"[\\^$*+?.()|\[\]{}/]")
VARIABLE = re.compile(r"\$\{(\w+)\}|\[\[(\w+)\]\]|\$(\w+)")


def iso(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).isoformat()


class Clock:
    def __init__(self) -> None:
        self.now_ms = NOW - 30 * HOUR

    def __call__(self) -> int:
        return self.now_ms


@dataclass(frozen=True)
class Annotation:
    dashboard: str
    query: str
    target: Mapping[str, Any]
    variables: Mapping[str, str]  # name -> allValue


def dashboard_annotations() -> list[Annotation]:
    found = []
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        model = json.loads(path.read_text(encoding="utf-8"))
        variables = {
            v["name"]: v.get("allValue") or "" for v in model.get("templating", {}).get("list", [])
        }
        for entry in model["annotations"]["list"]:
            target = entry.get("target", {})
            query = target.get("query", "")
            if 'FROM "intervention"' in query:
                found.append(Annotation(path.name, query, target, variables))
    return found


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """``text`` as Grafana sends it for this test's range, ``values`` already formatted."""
    text = text.replace("$timeFilter", f"time >= {START}ms and time <= {END}ms")

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        assert name in values, f"unknown variable ${name} in {text!r}"
        return values[name]

    return VARIABLE.sub(replace, text)


def escaped(value: str) -> str:
    """A variable's value as Grafana puts it into a regular expression."""
    return REGEX_SPECIALS.sub(lambda match: "\\" + match.group(), value)


def rows(influx: InfluxClient, annotation: Annotation, values: Mapping[str, str]) -> list[Any]:
    series = influx.query(interpolate(annotation.query, values))
    return [
        dict(zip(s["columns"], row, strict=True)) | s.get("tags", {})
        for s in series
        for row in s["values"]
    ]


def regions(annotation: Annotation, found: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What Grafana makes of the rows, by intervention id: time, timeEnd, text and tags."""
    target = annotation.target
    tag_columns = target["tagsColumn"].split(",")
    out = {}
    for row in found:
        for column in [target["textColumn"], target["timeEndColumn"], *tag_columns]:
            assert column in row, f"{annotation.dashboard}: no column {column!r} in {row}"
        tags = [row[c] for c in tag_columns if row[c]]
        assert all(isinstance(t, str) for t in tags), tags  # Grafana splits them on commas
        out[row["id"]] = {
            "time": row["time"],
            "timeEnd": row[target["timeEndColumn"]],
            "text": row[target["textColumn"]],
            "tags": tags,
        }
    return out


@pytest.fixture
def stored(influx: InfluxClient, tmp_path: Path) -> Iterator[dict[str, Intervention]]:
    """Interventions applied to a store whose listener writes their points to InfluxDB."""
    clock = Clock()
    store = InterventionStore(tmp_path / "interventions.sqlite", clock_ms=clock)
    store.listen(lambda item: influx.write(annotation_line(item)))
    base = {"planned_start": iso(NOW - 26 * HOUR), "planned_end": iso(NOW - 20 * HOUR)}
    try:
        # planned, started 30 minutes late, finished early: one region, actual start to end
        store.apply(
            "cap",
            base
            | {
                "id": "cap:condotta",
                "kind": "water_main_repair",
                "title": "Rottura condotta",
                "street": "via Roma 12",
                "zone": CENTRO,
            },
        )
        clock.now_ms = NOW - 25 * HOUR - 30 * MINUTE
        store.apply("cap", {"id": "cap:condotta", "status": "active"})
        clock.now_ms = NOW - 22 * HOUR
        store.apply("cap", {"id": "cap:condotta", "status": "done"})
        clock.now_ms = NOW
        # under way, in another zone
        store.apply(
            "citelum",
            {
                "id": "citelum:lampade",
                "kind": "lamp_replacement",
                "title": "Sostituzione lampade LED",
                "zone": MACROLOTTO,
                "status": "active",
                "actual_start": iso(NOW - 21 * HOUR),
                "planned_start": iso(NOW - 21 * HOUR),
                "planned_end": iso(NOW + 48 * HOUR),
            },
        )
        # no zone: only on dashboards without one chosen
        store.apply(
            "comune",
            {
                "id": "comune:corteo",
                "kind": "public_event",
                "title": "Corteo",
                "street": "piazza del Comune",
                "planned_start": iso(NOW - 4 * HOUR),
                "planned_end": iso(NOW - 2 * HOUR),
            },
        )
        # cancelled: never drawn
        store.apply(
            "comune",
            base | {"id": "comune:annullato", "kind": "road_closure", "title": "X", "zone": CENTRO},
        )
        store.apply("comune", {"id": "comune:annullato", "status": "cancelled"})
        # started before the range: not drawn (the documented limit of start-stamped points)
        store.apply(
            "cap",
            {
                "id": "cap:prima",
                "kind": "roadworks",
                "title": "Lavori",
                "zone": CENTRO,
                "planned_start": iso(START - HOUR),
                "planned_end": iso(NOW),
            },
        )
        yield {item.id: item for item in store.list()}
    finally:
        store.close()


def test_every_domain_dashboard_draws_interventions() -> None:
    assert {a.dashboard for a in dashboard_annotations()} == WITH_INTERVENTIONS


def test_annotations_show_each_intervention_once_at_its_latest_version(
    influx: InfluxClient, stored: dict[str, Intervention]
) -> None:
    done = stored["cap:condotta"]
    assert (done.status, done.version) == ("done", 3)
    lamps = stored["citelum:lampade"]
    parade = stored["comune:corteo"]
    expected = {
        item.id: {
            "time": item.start_ms,
            "timeEnd": item.end_ms,
            "tags": [item.id, item.owner, item.kind, item.status],
        }
        for item in (done, lamps, parade)
    }
    # the region of the finished works: from their actual start to their actual end
    assert done.actual_start is not None
    assert done.actual_end is not None
    assert expected[done.id]["time"] == to_ms(done.actual_start) == NOW - 25 * HOUR - 30 * MINUTE
    assert expected[done.id]["timeEnd"] == to_ms(done.actual_end) == NOW - 22 * HOUR

    annotations = dashboard_annotations()
    assert annotations
    for annotation in annotations:
        everything = dict(annotation.variables)
        drawn = regions(annotation, rows(influx, annotation, everything))
        assert {k: {f: v[f] for f in ("time", "timeEnd", "tags")} for k, v in drawn.items()} == (
            expected
        ), annotation.dashboard
        assert drawn[done.id]["text"] == "Rottura condotta — via Roma 12"
        assert drawn[parade.id]["text"] == "Corteo — piazza del Comune"
        if "zone" not in annotation.variables:
            continue
        # one zone chosen: only its interventions
        centre = dict(everything) | {"zone": escaped(CENTRO)}
        assert set(regions(annotation, rows(influx, annotation, centre))) == {done.id}
        other = dict(everything) | {"zone": escaped(MACROLOTTO)}
        assert set(regions(annotation, rows(influx, annotation, other))) == {lamps.id}


def test_every_change_is_a_point_and_rewriting_them_changes_nothing(
    influx: InfluxClient, stored: dict[str, Intervention]
) -> None:
    counted = influx.query(
        'SELECT count("version") FROM "intervention" WHERE "id" = \'cap:condotta\''
    )
    assert counted[0]["values"][0][1] == 3  # planned, active, done
    annotation = next(a for a in dashboard_annotations() if a.dashboard == "hub-overview.json")
    before = rows(influx, annotation, {})
    # the points derive from the store: writing the latest versions again is harmless
    influx.write("\n".join(annotation_line(item) for item in stored.values()))
    assert rows(influx, annotation, {}) == before
