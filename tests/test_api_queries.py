"""The InfluxQL the aggregate and view endpoints build, and what they make of the answers.

InfluxDB is replaced at its seam: the real ``InfluxClient`` talks to an ``httpx.MockTransport``
that records every query and answers canned series. The hostile-input suite checks that bad
names, times and intervals are refused with a 4xx naming the problem before any query is
sent, and that hostile *values* (which are data: a zone may contain a quote) reach InfluxDB
only as escaped string literals, leaving the query's structure exactly as with a plain value.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from httpx2 import Response as ApiResponse

from hub.api.app import create_app
from hub.api.context import ApiContext
from hub.api.security import ApiKey, ApiKeys, digest
from hub.inventory import Device, Inventory
from hub.metrics import Metrics
from hub.profiles.profile_set import ProfileSet
from hub.settings import Settings
from hub.storage.influx import InfluxClient

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ProfileSet.load(ROOT / "device_profiles")
READER = "reader-token-queries"
AUTH = {"Authorization": f"Bearer {READER}"}
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def ms(text: str) -> int:
    """Epoch milliseconds of an ISO time."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


Series = list[dict[str, Any]]


class FakeInflux:
    """Records the InfluxQL it receives; answers the first canned reply whose key it contains."""

    def __init__(self) -> None:
        self.queries: list[str] = []
        self.replies: list[tuple[str, Series]] = []
        self.client = InfluxClient(
            "http://influx.test", "prato", transport=httpx.MockTransport(self._handle)
        )

    def reply(self, fragment: str, series: Series) -> None:
        """Answer ``series`` to queries containing ``fragment``."""
        self.replies.append((fragment, series))

    def _handle(self, request: httpx.Request) -> httpx.Response:
        # long queries come as a POST form (hub.storage.influx.LONG_QUERY)
        query = request.url.params.get("q") or httpx.QueryParams(request.content.decode())["q"]
        self.queries.append(query)
        for fragment, series in self.replies:
            if fragment in query:
                return httpx.Response(
                    200, json={"results": [{"statement_id": 0, "series": series}]}
                )
        return httpx.Response(200, json={"results": [{"statement_id": 0}]})


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    fake = FakeInflux()
    try:
        yield fake
    finally:
        fake.client.close()


@pytest.fixture
def api(influx: FakeInflux, tmp_path: Path) -> Iterator[TestClient]:
    inventory = Inventory(
        [
            Device(device_id="PO-PB-1", profile="parking_bay", zone="centro"),
            Device(device_id="PO-PB-2", profile="parking_bay", zone="centro"),
            Device(device_id="PO-PB-3", profile="parking_bay", zone="stazione"),
            Device(device_id="PO-TC-1", profile="traffic_counter", zone="centro"),
        ]
    )
    ctx = ApiContext(
        settings=Settings(profiles_dir=ROOT / "device_profiles", data_dir=tmp_path),
        profiles=PROFILES,
        inventory=inventory,
        store=influx.client,
        metrics=Metrics(),
        keys=ApiKeys([ApiKey(id="wall", org="comune", role="reader", sha256=digest(READER))]),
        clock_ms=lambda: int(NOW.timestamp() * 1000),
    )
    with TestClient(create_app(ctx)) as client:
        yield client


Get = Callable[..., ApiResponse]


@pytest.fixture
def get(api: TestClient) -> Get:
    def call(path: str, params: Any = None) -> ApiResponse:
        return api.get(path, params=params, headers=AUTH)

    return call


# --- reading queries back --------------------------------------------------------------------

_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'")
_NAME = re.compile(r'"((?:[^"\\]|\\.)*)"')


def literals(query: str) -> list[str]:
    """The string literals of ``query``, unescaped as InfluxQL reads them."""
    return [re.sub(r"\\(.)", r"\1", body) for body in _STRING.findall(query)]


def skeleton(query: str) -> str:
    """``query`` with every string literal and quoted identifier blanked: its structure."""
    return _NAME.sub('"?"', _STRING.sub("'?'", query))


def names(query: str) -> set[str]:
    """The quoted identifiers of ``query`` (string literals removed first)."""
    return set(_NAME.findall(_STRING.sub("''", query)))


ALLOWED_NAMES = (
    set(PROFILES.schema())
    | {f for s in PROFILES.schema().values() for f in s.fields}
    | {t for s in PROFILES.schema().values() for t in s.tags}
    | {"value", "d", "wh", "falls", "speed_x_vehicles"}
)


# --- aggregate: typical requests -----------------------------------------------------------


def test_aggregate_builds_one_bounded_grouped_query(influx: FakeInflux, get: Get) -> None:
    influx.reply(
        'FROM "lighting_lamp"',
        [
            {
                "name": "lighting_lamp",
                "tags": {"zone": "stazione"},
                "columns": ["time", "value"],
                "values": [[ms("2026-11-24T08:00:00+00:00"), 51.5]],
            },
            {
                "name": "lighting_lamp",
                "tags": {"zone": "centro"},
                "columns": ["time", "value"],
                "values": [
                    [ms("2026-11-24T08:00:00+00:00"), 54.25],
                    [ms("2026-11-24T10:00:00+00:00"), 12.0],
                ],
            },
        ],
    )
    response = get(
        "/api/v1/aggregate",
        {
            "measurement": "lighting_lamp",
            "field": "power_w",
            "fn": "mean",
            "start": "2026-11-24T09:00:00+01:00",
            "end": "2026-11-24T12:00:00Z",
            "interval": "60m",
            "group_by": "zone",
            "zone": ["centro", "stazione"],
            "tag.cabinet_id": "PO-QE-118",
        },
    )
    assert response.status_code == 200, response.text
    assert influx.queries == [
        'SELECT mean("power_w") AS "value" FROM "lighting_lamp" '
        "WHERE time >= '2026-11-24T08:00:00.000000Z' AND time < '2026-11-24T12:00:00.000000Z' "
        "AND (\"zone\" = 'centro' OR \"zone\" = 'stazione') AND (\"cabinet_id\" = 'PO-QE-118') "
        'GROUP BY time(3600s), "zone" fill(none)'
    ]
    assert response.json() == {
        "measurement": "lighting_lamp",
        "field": "power_w",
        "fn": "mean",
        "interval": "1h",
        "start": "2026-11-24T08:00:00.000+00:00",
        "end": "2026-11-24T12:00:00.000+00:00",
        "series": [
            {
                "group": {"zone": "centro"},
                "points": [
                    ["2026-11-24T08:00:00.000+00:00", 54.25],
                    ["2026-11-24T10:00:00.000+00:00", 12.0],
                ],
            },
            {"group": {"zone": "stazione"}, "points": [["2026-11-24T08:00:00.000+00:00", 51.5]]},
        ],
    }


def test_aggregate_defaults_to_the_last_24_hours_in_1_hour_buckets(
    influx: FakeInflux, get: Get
) -> None:
    response = get("/api/v1/aggregate", {"measurement": "parking_bay", "field": "battery_v"})
    assert response.status_code == 200, response.text
    assert influx.queries == [
        'SELECT mean("battery_v") AS "value" FROM "parking_bay" '
        "WHERE time >= '2026-11-24T12:00:00.000000Z' AND time < '2026-11-25T12:00:00.000000Z' "
        "GROUP BY time(3600s) fill(none)"
    ]
    assert response.json()["series"] == []


def test_group_by_device_and_tags_and_profile(influx: FakeInflux, get: Get) -> None:
    influx.reply(
        "traffic_lane",
        [
            {
                "name": "traffic_lane",
                "tags": {"device_id": "PO-TC-1", "lane": "2"},
                "columns": ["time", "value"],
                "values": [[ms("2026-11-25T11:00:00+00:00"), 118]],
            }
        ],
    )
    response = get(
        "/api/v1/aggregate",
        {
            "measurement": "traffic_lane",
            "field": "vehicles",
            "fn": "sum",
            "group_by": ["device,lane", "profile", "device"],
            "start": "2026-11-25T11:00:00Z",
            "interval": "1h",
        },
    )
    assert response.status_code == 200, response.text
    assert influx.queries[0].endswith('GROUP BY time(3600s), "device_id", "lane" fill(none)')
    assert response.json()["series"] == [
        {
            "group": {"device_id": "PO-TC-1", "lane": "2", "profile": "traffic_counter"},
            "points": [["2026-11-25T11:00:00.000+00:00", 118]],
        }
    ]


def test_profile_filter_keeps_all_or_nothing_of_a_measurement(influx: FakeInflux, get: Get) -> None:
    params = {"measurement": "traffic_lane", "field": "vehicles", "fn": "sum"}
    other = get("/api/v1/aggregate", {**params, "profile": "parking_bay"})
    assert other.status_code == 200
    assert other.json()["series"] == []
    assert influx.queries == []  # nothing of traffic_lane can come from parking_bay
    own = get("/api/v1/aggregate", {**params, "profile": ["parking_bay", "traffic_counter"]})
    assert own.status_code == 200
    assert len(influx.queries) == 1
    assert "profile" not in influx.queries[0]


def test_count_and_last_work_on_any_field_numeric_functions_do_not(
    influx: FakeInflux, get: Get
) -> None:
    for fn in ("count", "last"):
        response = get(
            "/api/v1/aggregate", {"measurement": "lighting_lamp", "field": "faults", "fn": fn}
        )
        assert response.status_code == 200, response.text
    refused = get(
        "/api/v1/aggregate", {"measurement": "parking_bay", "field": "occupied", "fn": "sum"}
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "sum needs a numeric field; parking_bay.occupied is bool (count and last work on any field)"
    )
    assert [q.split(" AS ")[0] for q in influx.queries] == [
        'SELECT count("faults")',
        'SELECT last("faults")',
    ]


def test_unknown_names_are_refused_naming_what_is_allowed(influx: FakeInflux, get: Get) -> None:
    cases = [
        (
            {"measurement": "lighting_lamp", "field": "powr_w"},
            "unknown field 'powr_w' of lighting_lamp; allowed: burn_hours, current_a, dim_pct, "
            "energy_wh, fault_count, faults, on, power_factor, power_w, voltage_v",
        ),
        (
            {"measurement": "lamps", "field": "power_w"},
            "unknown measurement 'lamps'; allowed: device_status, lighting_cabinet, "
            "lighting_lamp, lighting_phase, parking_bay, traffic_health, traffic_lane",
        ),
        (
            {"measurement": "parking_bay", "field": "battery_v", "group_by": "cabinet_id"},
            "unknown group 'cabinet_id' of parking_bay; allowed: bay, dev_eui, device, "
            "device_id, profile, zone",
        ),
        (
            {"measurement": "parking_bay", "field": "battery_v", "tag.phase": "L1"},
            "unknown tag 'phase' of parking_bay; allowed: bay, dev_eui, device_id, zone",
        ),
        (
            {"measurement": "parking_bay", "field": "battery_v", "devce_id": "x"},
            "unknown parameter 'devce_id'; allowed: device_id, end, field, fn, group_by, "
            "interval, measurement, profile, start, zone and tag.<tag>",
        ),
        (
            {"measurement": "parking_bay", "field": "battery_v", "profile": "parking"},
            "unknown profile 'parking'; allowed: citelum_lighting, parking_bay, traffic_counter",
        ),
    ]
    for params, detail in cases:
        response = get("/api/v1/aggregate", params)
        assert (response.status_code, response.json()["detail"]) == (422, detail)
    assert influx.queries == []


def test_too_many_buckets_says_how_to_fix_it(influx: FakeInflux, get: Get) -> None:
    response = get(
        "/api/v1/aggregate",
        {
            "measurement": "parking_bay",
            "field": "battery_v",
            "start": "2026-11-01T00:00:00Z",
            "end": "2026-11-25T00:00:00Z",
            "interval": "5m",
        },
    )
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "this range at interval 5m gives 6912 buckets per series; at most 2000: "
        "use interval=30m or longer, or a shorter range"
    )
    # exactly 2,000 aligned buckets is allowed
    fits = get(
        "/api/v1/aggregate",
        {
            "measurement": "parking_bay",
            "field": "battery_v",
            "start": "2026-11-01T00:00:00Z",
            "end": "2026-11-01T00:33:20Z",
            "interval": "1s",
        },
    )
    assert fits.status_code == 200, fits.text
    assert len(influx.queries) == 1


# --- hostile input -------------------------------------------------------------------------

HOSTILE_VALUES = [
    "'",
    "it's",
    "'; DROP DATABASE x",
    "x' OR 1=1 --",
    "\\",
    "back\\slash\\'",
    "\\'; DROP MEASUREMENT parking_bay; '",
    "/.*/",
    '"zone"',
    "zona \u00e8 \u4e2d\u6587 \U0001f697",
    "$1 %s {0}",
]

BASE = {
    "measurement": "parking_bay",
    "field": "battery_v",
    "start": "2026-11-24T00:00:00Z",
    "end": "2026-11-25T00:00:00Z",
}


@pytest.mark.parametrize("value", HOSTILE_VALUES)
@pytest.mark.parametrize(
    ("path", "param", "extra"),
    [
        ("/api/v1/aggregate", "zone", BASE),
        ("/api/v1/aggregate", "device_id", BASE),
        ("/api/v1/aggregate", "tag.bay", BASE),
        ("/api/v1/views/parking/occupancy", "zone", {}),
        ("/api/v1/views/parking/occupancy/history", "zone", {}),
        ("/api/v1/views/lighting/status", "cabinet_id", {}),
        ("/api/v1/views/lighting/energy", "zone", {}),
        ("/api/v1/views/traffic/flows", "site", {}),
    ],
)
def test_hostile_filter_values_only_ever_reach_influxdb_as_escaped_literals(
    influx: FakeInflux, get: Get, path: str, param: str, extra: dict[str, str], value: str
) -> None:
    plain = get(path, {**extra, param: "plain"})
    assert plain.status_code == 200, plain.text
    expected = [skeleton(q) for q in influx.queries]
    influx.queries.clear()
    response = get(path, {**extra, param: value})
    assert response.status_code == 200, response.text
    assert influx.queries
    assert [skeleton(q) for q in influx.queries] == expected  # same structure
    assert all(value in literals(q) for q in influx.queries)  # the value, as one literal
    for query in influx.queries:
        assert names(query) <= ALLOWED_NAMES
        assert "DROP" not in skeleton(query)
        assert ";" not in skeleton(query)


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"measurement": 'parking_bay"; DROP DATABASE x'}, "unknown measurement"),
        ({"measurement": "/.*/"}, "unknown measurement '/.*/'"),
        ({"field": 'battery_v") FROM x; DROP DATABASE prato --'}, "unknown field"),
        ({"field": "battery_v\\"}, "unknown field 'battery_v\\\\'"),
        ({"field": "*"}, "unknown field '*'"),
        ({"field": "occupied\nDROP DATABASE x"}, "unknown field 'occupied\\nDROP DATABASE x'"),
        ({"group_by": 'zone"; DROP DATABASE x'}, "unknown group"),
        ({"group_by": "/.*/"}, "unknown group '/.*/'"),
        ({"group_by": "*"}, "unknown group '*'"),
        ({"tag.zone\"='x' OR \"a": "b"}, "unknown tag"),
        ({"tag./.*/": "b"}, "unknown tag '/.*/'"),
        ({"zone": "centro\nDROP DATABASE x"}, "values cannot contain line breaks"),
        ({"zone": "centro\r"}, "values cannot contain line breaks"),
        ({"device_id": "x" * 201}, "device_id values are at most 200 characters"),
        ({"start": "2026-11-24T00:00:00"}, "start '2026-11-24T00:00:00' has no timezone"),
        ({"end": "2026-11-25"}, "end '2026-11-25' has no timezone"),
        ({"start": "yesterday"}, "start 'yesterday' is not an ISO 8601 time"),
        ({"start": "'; DROP DATABASE x"}, "is not an ISO 8601 time"),
        ({"start": "2026-13-01T00:00:00Z"}, "is not an ISO 8601 time"),
        ({"start": "now() - 1h"}, "is not an ISO 8601 time"),
        ({"start": "1795539600"}, "is not an ISO 8601 time"),
        ({"start": "2026-11-24T00:00:00Z" + " " * 100}, "start is too long to be a time"),
        ({"start": "0001-01-01T00:00:00+05:00"}, "is out of range"),
        ({"start": "1677-01-01T00:00:00Z"}, "is out of range (2000-01-01 to 2100-01-01)"),
        ({"end": "9999-12-31T23:59:59Z"}, "is out of range"),
        ({"start": "2016-11-24T00:00:00Z"}, "at most 366 days; ask for a shorter range"),
        ({"start": "2026-11-26T00:00:00Z"}, "end (2026-11-25T00:00:00.000+00:00) must be after"),
        ({"start": "2026-11-25T00:00:00Z"}, "must be after start"),
        ({"interval": "0s"}, "interval '0s' must be a whole number"),
        ({"interval": "-5m"}, "interval '-5m' must be a whole number"),
        ({"interval": "1ms"}, "interval '1ms' must be a whole number"),
        ({"interval": "1y"}, "interval '1y' must be a whole number"),
        ({"interval": "1.5h"}, "must be a whole number"),
        ({"interval": "5 m"}, "must be a whole number"),
        ({"interval": "\u0665m"}, "must be a whole number"),  # an Arabic-Indic digit five
        ({"interval": "5m); DROP DATABASE x"}, "must be a whole number"),
        ({"interval": "32d"}, "interval '32d' must be between 1s and 31d"),
        ({"interval": "9999999w"}, "must be between 1s and 31d"),
        ({"interval": "1s"}, "gives 86400 buckets per series; at most 2000: use interval=1m"),
    ],
)
def test_hostile_names_times_and_intervals_are_refused_before_any_query(
    influx: FakeInflux, get: Get, params: dict[str, str], detail: str
) -> None:
    response = get("/api/v1/aggregate", {**BASE, **params})
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    assert influx.queries == []


def test_unsupported_function_is_refused_by_validation(influx: FakeInflux, get: Get) -> None:
    for fn in ('mean("x")', "median", "DROP"):
        response = get("/api/v1/aggregate", {**BASE, "fn": fn})
        assert response.status_code == 422
        assert "'mean', 'min', 'max', 'sum', 'count' or 'last'" in str(response.json()["detail"])
    assert influx.queries == []


@pytest.mark.parametrize(
    ("path", "params", "detail"),
    [
        ("/api/v1/views/parking/occupancy", {"lookback": "1y"}, "lookback '1y' must be"),
        ("/api/v1/views/parking/occupancy", {"lookback": "30d"}, "between 1m and 1w"),
        ("/api/v1/views/parking/occupancy", {"zone": "a\nb"}, "line breaks"),
        ("/api/v1/views/parking/occupancy/history", {"interval": "30s"}, "between 1m and 31d"),
        (
            "/api/v1/views/parking/occupancy/history",
            {"start": "2025-11-25T00:00:00Z", "interval": "1h"},
            "use interval=6h or longer",
        ),
        ("/api/v1/views/parking/occupancy/history", {"end": "2026-11-25T12:00"}, "no timezone"),
        ("/api/v1/views/lighting/status", {"lookback": "1m"}, "between 10m and 1w"),
        ("/api/v1/views/lighting/status", {"cabinet_id": "a\rb"}, "line breaks"),
        (
            "/api/v1/views/lighting/energy",
            {"start": "2026-09-01T00:00:00+02:00", "end": "2026-11-01T00:00:00+01:00"},
            "at most 31 days; ask month by month",
        ),
        ("/api/v1/views/lighting/energy", {"start": "1 Nov 2026"}, "not an ISO 8601 time"),
        ("/api/v1/views/traffic/flows", {"start": "2026-09-01T00:00:00Z"}, "at most 31 days"),
        (
            "/api/v1/views/traffic/flows",
            {"start": "2026-11-25T12:00:00Z", "end": "2026-11-25T11:00:00Z"},
            "must be after start",
        ),
    ],
)
def test_views_refuse_bad_input_before_any_query(
    influx: FakeInflux, get: Get, path: str, params: dict[str, str], detail: str
) -> None:
    response = get(path, params)
    assert response.status_code == 422, response.text
    assert detail in response.json()["detail"]
    assert influx.queries == []


def test_views_refuse_bad_choices_through_validation(influx: FakeInflux, get: Get) -> None:
    energy = get("/api/v1/views/lighting/energy", {"group": "lamp'; DROP"})
    assert energy.status_code == 422
    congestion = get("/api/v1/views/traffic/congestion", {"threshold_pct": "101"})
    assert congestion.status_code == 422
    nan = get("/api/v1/views/traffic/congestion", {"threshold_pct": "nan"})
    assert nan.status_code == 422
    assert influx.queries == []


def test_every_endpoint_needs_a_reader_key(api: TestClient, influx: FakeInflux) -> None:
    for path in (
        "/api/v1/aggregate?measurement=parking_bay&field=battery_v",
        "/api/v1/views/parking/occupancy",
        "/api/v1/views/parking/occupancy/history",
        "/api/v1/views/lighting/status",
        "/api/v1/views/lighting/energy",
        "/api/v1/views/traffic/flows",
        "/api/v1/views/traffic/congestion",
    ):
        assert api.get(path).status_code == 401
        assert api.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
    assert influx.queries == []


# --- views: queries and what they make of the answers --------------------------------------


def test_parking_occupancy_now(influx: FakeInflux, get: Get) -> None:
    def bay(device: str, zone: str, occupied: bool, at: str) -> dict[str, Any]:
        return {
            "name": "parking_bay",
            "tags": {"device_id": device, "zone": zone},
            "columns": ["time", "occupied"],
            "values": [[ms(at), occupied]],
        }

    influx.reply(
        "parking_bay",
        [
            bay("PO-PB-1", "centro", True, "2026-11-25T11:00:00+00:00"),
            bay("PO-PB-2", "centro", False, "2026-11-25T10:00:00+00:00"),
            # PO-PB-3 moved zone: its newest report (stazione) decides
            bay("PO-PB-3", "centro", False, "2026-11-24T20:00:00+00:00"),
            bay("PO-PB-3", "stazione", True, "2026-11-25T09:00:00+00:00"),
            bay("PO-PB-9", "unknown", True, "2026-11-25T09:00:00+00:00"),
        ],
    )
    response = get("/api/v1/views/parking/occupancy")
    assert response.status_code == 200, response.text
    assert influx.queries == [
        'SELECT last("occupied") AS "occupied" FROM "parking_bay" '
        "WHERE time >= '2026-11-24T10:00:00.000000Z' AND time < '2026-11-25T12:05:00.000000Z' "
        'GROUP BY "device_id", "zone"'
    ]
    assert response.json() == {
        "at": "2026-11-25T12:00:00.000+00:00",
        "lookback": "26h",
        "zones": [
            {"zone": "centro", "occupied": 1, "free": 1, "total": 2, "percent": 50.0,
             "inventory_bays": 2},
            {"zone": "stazione", "occupied": 1, "free": 0, "total": 1, "percent": 100.0,
             "inventory_bays": 1},
            {"zone": "unknown", "occupied": 1, "free": 0, "total": 1, "percent": 100.0,
             "inventory_bays": 0},
        ],
        "city": {"occupied": 3, "free": 1, "total": 4, "percent": 75.0, "inventory_bays": 3},
    }  # fmt: skip


def test_parking_occupancy_history_carries_states_forward_and_expires_silent_bays(
    influx: FakeInflux, get: Get
) -> None:
    influx.reply(
        "GROUP BY time(3600s)",
        [
            {
                "name": "parking_bay",
                "tags": {"device_id": "PO-PB-1", "zone": "centro"},
                "columns": ["time", "occupied"],
                "values": [[ms("2026-11-25T09:00:00+00:00"), False]],
            },
            {
                "name": "parking_bay",
                "tags": {"device_id": "PO-PB-2", "zone": "centro"},
                "columns": ["time", "occupied"],
                "values": [
                    [ms("2026-11-25T08:00:00+00:00"), True],
                    [ms("2026-11-25T10:00:00+00:00"), False],
                ],
            },
        ],
    )
    influx.reply(
        'GROUP BY "device_id"',
        [
            {
                "name": "parking_bay",
                "tags": {"device_id": "PO-PB-1", "zone": "centro"},
                "columns": ["time", "occupied"],
                "values": [[ms("2026-11-25T07:30:00+00:00"), True]],
            },
            {  # silent since: counts until 26 h after this report
                "name": "parking_bay",
                "tags": {"device_id": "PO-PB-3", "zone": "centro"},
                "columns": ["time", "occupied"],
                "values": [[ms("2026-11-24T07:45:00+00:00"), True]],
            },
        ],
    )
    response = get(
        "/api/v1/views/parking/occupancy/history",
        {"start": "2026-11-25T08:00:00Z", "end": "2026-11-25T11:30:00Z", "interval": "1h"},
    )
    assert response.status_code == 200, response.text
    assert influx.queries == [
        'SELECT last("occupied") AS "occupied" FROM "parking_bay" '
        "WHERE time >= '2026-11-24T06:00:00.000000Z' AND time < '2026-11-25T08:00:00.000000Z' "
        'GROUP BY "device_id", "zone"',
        'SELECT last("occupied") AS "occupied" FROM "parking_bay" '
        "WHERE time >= '2026-11-25T08:00:00.000000Z' AND time < '2026-11-25T11:30:00.000000Z' "
        'GROUP BY time(3600s), "device_id", "zone" fill(none)',
    ]
    points = response.json()["zones"]
    assert [z["zone"] for z in points] == ["centro"]
    assert [
        (p["time"][11:16], p["occupied"], p["total"], p["percent"]) for p in points[0]["points"]
    ] == [
        ("08:00", 3, 3, 100.0),  # 1 seeded, 2 occupied, 3 seeded (25.25 h old at 09:00)
        ("09:00", 1, 2, 50.0),  # 1 free now; 3 expired (26.25 h old at 10:00)
        ("10:00", 0, 2, 0.0),  # 2 free
        ("11:00", 0, 2, 0.0),  # last bucket ends at `end`
    ]


def test_lighting_status_judges_each_lamp_by_its_newest_message(
    influx: FakeInflux, get: Get
) -> None:
    def lamp(device: str, cabinet: str, zone: str, row: list[Any]) -> dict[str, Any]:
        return {
            "name": "lighting_lamp",
            "tags": {"device_id": device, "cabinet_id": cabinet, "zone": zone},
            "columns": ["time", "on", "fault_count", "faults"],
            "values": [row],
        }

    at = ms("2026-11-25T11:50:00+00:00")
    influx.reply(
        "lighting_lamp",
        [
            lamp("L1", "QE-1", "centro", [at, True, 0, ""]),
            lamp("L2", "QE-1", "centro", [at, False, 2, "LAMP_FAILURE,OVERHEAT"]),
            lamp("L3", "QE-1", "stazione", [at, True, None, None]),
            lamp("L4", "QE-2", "stazione", [at, True, 1, "NEW_CODE"]),
        ],
    )
    response = get("/api/v1/views/lighting/status", {"cabinet_id": ["QE-1", "QE-2"]})
    assert response.status_code == 200, response.text
    assert influx.queries == [
        'SELECT "on", "fault_count", "faults" FROM "lighting_lamp" '
        "WHERE time >= '2026-11-25T10:00:00.000000Z' AND time < '2026-11-25T12:05:00.000000Z' "
        "AND (\"cabinet_id\" = 'QE-1' OR \"cabinet_id\" = 'QE-2') "
        'GROUP BY "device_id", "cabinet_id", "zone" ORDER BY time DESC LIMIT 1'
    ]
    body = response.json()
    assert body["cabinets"] == [
        {"cabinet_id": "QE-1", "zones": ["centro", "stazione"], "on": 2, "off": 1, "faulty": 1,
         "total": 3},
        {"cabinet_id": "QE-2", "zones": ["stazione"], "on": 1, "off": 0, "faulty": 1, "total": 1},
    ]  # fmt: skip
    assert body["zones"] == [
        {"zone": "centro", "on": 1, "off": 1, "faulty": 1, "total": 2},
        {"zone": "stazione", "on": 2, "off": 0, "faulty": 1, "total": 2},
    ]
    assert body["city"] == {"on": 3, "off": 1, "faulty": 2, "total": 4}
    assert [(f["device_id"], f["faults"]) for f in body["faulty_lamps"]] == [
        ("L2", ["LAMP_FAILURE", "OVERHEAT"]),
        ("L4", ["NEW_CODE"]),
    ]


def test_lighting_energy_sums_reading_by_reading_the_lamps_whose_counter_fell(
    influx: FakeInflux, get: Get
) -> None:
    def hour(at: str, wh: int) -> list[Any]:
        return [ms(at), wh]

    influx.reply(
        'SELECT sum("d") AS "wh"',
        [
            {
                "name": "lighting_lamp",
                "tags": {"zone": "centro"},
                "columns": ["time", "wh"],
                "values": [
                    hour("2026-11-23T22:00:00+00:00", 999),  # before the first Rome day: seed
                    hour("2026-11-23T23:00:00+00:00", 100),  # 00:00 in Rome: the 24th
                    hour("2026-11-24T22:00:00+00:00", 50),  # 23:00 in Rome: still the 24th
                    hour("2026-11-24T23:00:00+00:00", 70),  # the 25th
                ],
            }
        ],
    )
    influx.reply(
        "count(",
        [
            {
                "name": "lighting_lamp",
                "tags": {"device_id": "L1", "cabinet_id": "QE-1", "zone": "centro"},
                "columns": ["time", "falls"],
                "values": [[ms("2026-11-22T00:00:00+00:00"), 1]],
            }
        ],
    )
    # L1's hourly rises, already in the zone's sums above: 30 - 4 at 10:00 (the falls add 0)
    influx.reply(
        "SELECT non_negative_difference",
        [
            {
                "name": "lighting_lamp",
                "tags": {"device_id": "L1", "cabinet_id": "QE-1", "zone": "centro"},
                "columns": ["time", "d"],
                "values": [[ms("2026-11-24T10:00:00+00:00"), 26]],
            },
            {  # L1's series in another zone has no fall: its hourly rises stand
                "name": "lighting_lamp",
                "tags": {"device_id": "L1", "cabinet_id": "QE-1", "zone": "stazione"},
                "columns": ["time", "d"],
                "values": [[ms("2026-11-24T13:00:00+00:00"), 500]],
            },
        ],
    )
    influx.reply(
        'SELECT "energy_wh"',
        [
            {
                "name": "lighting_lamp",
                "tags": {"device_id": "L1", "cabinet_id": "QE-1", "zone": "centro"},
                "columns": ["time", "energy_wh"],
                "values": [
                    [ms("2026-11-23T20:00:00+00:00"), 5000],
                    [ms("2026-11-23T21:00:00+00:00"), 4],  # a fall before the 24th: not counted
                    [ms("2026-11-24T10:00:00+00:00"), 30],  # +26 Wh, as the hour said
                    [ms("2026-11-24T11:00:00+00:00"), 12],  # fell again: +12 Wh on the 24th
                ],
            },
            {  # another series of L1 (it moved zone) with no fall: ignored here
                "name": "lighting_lamp",
                "tags": {"device_id": "L1", "cabinet_id": "QE-1", "zone": "stazione"},
                "columns": ["time", "energy_wh"],
                "values": [
                    [ms("2026-11-24T12:00:00+00:00"), 900],
                    [ms("2026-11-24T13:00:00+00:00"), 1],
                ],
            },
        ],
    )
    response = get(
        "/api/v1/views/lighting/energy",
        {"group": "zone", "start": "2026-11-24T08:00:00+01:00", "end": "2026-11-25T12:00:00Z"},
    )
    assert response.status_code == 200, response.text
    where = "WHERE time >= '2026-11-21T23:00:00.000000Z' AND time < '2026-11-25T23:00:00.000000Z'"
    lamp_tags = 'GROUP BY "device_id", "cabinet_id", "zone"'
    hourly = 'GROUP BY time(3600s), "device_id", "cabinet_id", "zone"'
    l1 = "AND (\"device_id\" = 'L1')"
    assert influx.queries == [
        'SELECT sum("d") AS "wh" FROM (SELECT non_negative_difference(last("energy_wh")) AS "d" '
        f'FROM "lighting_lamp" {where} {hourly}) {where} '
        'GROUP BY time(3600s), "zone" fill(none)',
        'SELECT count("d") AS "falls" FROM (SELECT difference(last("energy_wh")) AS "d" '
        f'FROM "lighting_lamp" {where} {hourly}) {where} AND "d" < 0 {lamp_tags}',
        'SELECT non_negative_difference(last("energy_wh")) AS "d" '
        f'FROM "lighting_lamp" {where} {l1} {hourly}',
        f'SELECT "energy_wh" FROM "lighting_lamp" {where} {l1} {lamp_tags}',
    ]
    assert response.json() == {
        "group": "zone",
        "timezone": "Europe/Rome",
        "start": "2026-11-23T23:00:00.000+00:00",
        "end": "2026-11-25T23:00:00.000+00:00",
        "days": ["2026-11-24", "2026-11-25"],
        "series": [
            {
                "zone": "centro",
                "days": [{"date": "2026-11-24", "kwh": 0.162}, {"date": "2026-11-25", "kwh": 0.07}],
                "total_kwh": 0.232,
            }
        ],
    }


def test_energy_days_default_to_the_last_week_in_rome_time(influx: FakeInflux, get: Get) -> None:
    response = get("/api/v1/views/lighting/energy")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["days"] == [f"2026-11-{d}" for d in range(19, 26)]
    assert (body["start"], body["end"]) == (
        "2026-11-18T23:00:00.000+00:00",
        "2026-11-25T23:00:00.000+00:00",
    )
    assert body["series"] == []
    assert len(influx.queries) == 2  # no counter fell: no raw reading


def test_energy_days_across_the_change_to_summer_time(influx: FakeInflux, get: Get) -> None:
    response = get(
        "/api/v1/views/lighting/energy",
        {"start": "2026-03-28T12:00:00Z", "end": "2026-03-30T00:00:00+02:00"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["days"] == ["2026-03-28", "2026-03-29"]
    # the 29th is 23 hours long in Rome
    assert (body["start"], body["end"]) == (
        "2026-03-27T23:00:00.000+00:00",
        "2026-03-29T22:00:00.000+00:00",
    )


def test_traffic_flows_weights_speed_by_vehicles(influx: FakeInflux, get: Get) -> None:
    lane = {"device_id": "PO-TC-1", "lane": "1", "direction": "N"}
    influx.reply(
        'SELECT sum("speed_x_vehicles")',
        [
            {
                "name": "traffic_lane",
                "tags": lane,
                "columns": ["time", "speed_x_vehicles"],
                "values": [[ms("2026-11-25T10:00:00+00:00"), 1200.0]],  # none at 11:00
            },
            {  # another lane's hour: not mixed into lane 1's
                "name": "traffic_lane",
                "tags": {**lane, "lane": "2"},
                "columns": ["time", "speed_x_vehicles"],
                "values": [[ms("2026-11-25T11:00:00+00:00"), 999.0]],
            },
        ],
    )
    influx.reply(
        "traffic_lane",
        [
            {
                "name": "traffic_lane",
                "tags": lane,
                "columns": ["time", "vehicles", "car", "van", "truck", "bus", "moto", "bike"],
                "values": [
                    [ms("2026-11-25T10:00:00+00:00"), 30, 20, 4, 2, 1, 2, 1],
                    [ms("2026-11-25T11:00:00+00:00"), 5, 5, 0, 0, 0, 0, None],
                ],
            }
        ],
    )  # fmt: skip
    response = get(
        "/api/v1/views/traffic/flows",
        {"site": "PO-TC-1", "start": "2026-11-25T10:00:00Z", "end": "2026-11-25T12:00:00Z"},
    )
    assert response.status_code == 200, response.text
    where = "WHERE time >= '2026-11-25T10:00:00.000000Z' AND time < '2026-11-25T12:00:00.000000Z'"
    site = "AND (\"device_id\" = 'PO-TC-1')"
    group = 'GROUP BY time(3600s), "device_id", "lane", "direction" fill(none)'
    assert influx.queries == [
        'SELECT sum("vehicles") AS "vehicles", sum("car") AS "car", sum("van") AS "van", '
        'sum("truck") AS "truck", sum("bus") AS "bus", sum("moto") AS "moto", '
        f'sum("bike") AS "bike" FROM "traffic_lane" {where} {site} {group}',
        'SELECT sum("speed_x_vehicles") AS "speed_x_vehicles" FROM ('
        'SELECT "speed_avg_kmh" * "vehicles" AS "speed_x_vehicles" FROM "traffic_lane" '
        f'{where} {site} GROUP BY "device_id", "lane", "direction") {where} {group}',
    ]
    assert response.json()["series"] == [
        {
            "site": "PO-TC-1",
            "lane": "1",
            "direction": "N",
            "hours": [
                {"time": "2026-11-25T10:00:00.000+00:00", "vehicles": 30, "car": 20, "van": 4,
                 "truck": 2, "bus": 1, "moto": 2, "bike": 1, "speed_avg_kmh": 40.0},
                {"time": "2026-11-25T11:00:00.000+00:00", "vehicles": 5, "car": 5, "van": 0,
                 "truck": 0, "bus": 0, "moto": 0, "bike": 0, "speed_avg_kmh": None},
            ],
        }
    ]  # fmt: skip


def test_traffic_congestion_lists_lanes_above_35_percent(influx: FakeInflux, get: Get) -> None:
    def lane(site: str, number: str, direction: str, pct: float, at: str) -> dict[str, Any]:
        return {
            "name": "traffic_lane",
            "tags": {"device_id": site, "lane": number, "direction": direction, "zone": "z"},
            "columns": ["time", "occupancy_pct"],
            "values": [[ms(at), pct]],
        }

    influx.reply(
        "traffic_lane",
        [
            lane("PO-TC-1", "1", "N", 35.0, "2026-11-25T11:55:00+00:00"),
            lane("PO-TC-1", "2", "S", 41.5, "2026-11-25T11:55:00+00:00"),
            lane("PO-TC-2", "1", "E", 88.0, "2026-11-25T11:50:00+00:00"),
        ],
    )
    response = get("/api/v1/views/traffic/congestion")
    assert response.status_code == 200, response.text
    assert influx.queries == [
        'SELECT "occupancy_pct" FROM "traffic_lane" '
        "WHERE time >= '2026-11-25T11:40:00.000000Z' AND time < '2026-11-25T12:05:00.000000Z' "
        'GROUP BY "device_id", "lane", "direction", "zone" ORDER BY time DESC LIMIT 1'
    ]
    assert response.json() == {
        "at": "2026-11-25T12:00:00.000+00:00",
        "lookback": "20m",
        "threshold_pct": 35.0,
        "lanes": [
            {"site": "PO-TC-2", "lane": "1", "direction": "E", "zone": "z", "occupancy_pct": 88.0,
             "time": "2026-11-25T11:50:00.000+00:00"},
            {"site": "PO-TC-1", "lane": "2", "direction": "S", "zone": "z", "occupancy_pct": 41.5,
             "time": "2026-11-25T11:55:00.000+00:00"},
        ],
    }  # fmt: skip


def test_a_view_without_its_profile_says_so(influx: FakeInflux, tmp_path: Path) -> None:
    only_traffic = ProfileSet(
        [p for p in PROFILES.profiles if p.profile.profile == "traffic_counter"]
    )
    ctx = ApiContext(
        settings=Settings(data_dir=tmp_path),
        profiles=only_traffic,
        inventory=Inventory([]),
        store=influx.client,
        metrics=Metrics(),
        keys=ApiKeys([ApiKey(id="wall", org="comune", role="reader", sha256=digest(READER))]),
        clock_ms=lambda: int(NOW.timestamp() * 1000),
    )
    with TestClient(create_app(ctx)) as client:
        response = client.get("/api/v1/views/parking/occupancy", headers=AUTH)
    assert response.status_code == 404
    assert response.json()["detail"] == (
        "this view reads parking_bay (occupied), which no loaded device profile stores"
    )
    assert influx.queries == []


def test_store_unavailable_is_503(tmp_path: Path) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    store = InfluxClient("http://influx.test", "prato", transport=httpx.MockTransport(down))
    ctx = ApiContext(
        settings=Settings(data_dir=tmp_path),
        profiles=PROFILES,
        inventory=Inventory([]),
        store=store,
        metrics=Metrics(),
        keys=ApiKeys([ApiKey(id="wall", org="comune", role="reader", sha256=digest(READER))]),
        clock_ms=lambda: int(NOW.timestamp() * 1000),
    )
    with TestClient(create_app(ctx)) as client:
        for path in ("/api/v1/views/traffic/congestion", "/api/v1/views/lighting/energy"):
            assert client.get(path, headers=AUTH).status_code == 503
    store.close()
