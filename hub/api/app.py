"""The FastAPI application: operations, devices and alerts here; aggregates and domain views
in their own routers (``hub.api.aggregates``, ``hub.api.views``).

Errors map to HTTP by what the caller can do: bad input -> 422 naming what is allowed;
missing/unknown key -> 401; a role too weak -> 403; InfluxDB unreachable -> 503; InfluxDB
refusing a query the API built -> 502 (a bug of ours, logged).
"""

from __future__ import annotations

import base64
import logging
import time
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field

from hub import __version__
from hub.alerts.engine import AlertEngine
from hub.alerts.model import SEVERITY_RANK, Alert, alert_for, iso_ms
from hub.api import aggregates, interventions, live, views
from hub.api.context import ApiContext
from hub.api.influxql import QueryInputError, equals, ident, time_range
from hub.api.security import ApiKey
from hub.errors import StoreRejected, StoreUnavailable
from hub.inventory import UNKNOWN_ZONE
from hub.sharing import Access

log = logging.getLogger(__name__)

LATEST_LOOKBACK_MS = 30 * 24 * 3600 * 1000


def create_app(ctx: ApiContext) -> FastAPI:
    """The API for ``ctx``; mount it with uvicorn (``hub run`` / ``hub api`` do)."""
    app = FastAPI(
        title="Prato telemetry hub",
        version=__version__,
        description="Devices, aggregates, domain views and alerts of the Prato Situation Room.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    origins = ctx.settings.api_cors_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
        )

    @app.middleware("http")
    async def measure(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response: Response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        ctx.metrics.inc("api_requests_total", route=path, status=str(response.status_code))
        ctx.metrics.inc("api_request_seconds_total", time.perf_counter() - started, route=path)
        return response

    @app.exception_handler(QueryInputError)
    async def bad_query_input(request: Request, exc: QueryInputError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"InfluxDB unavailable: {exc}"}, status_code=503)

    @app.exception_handler(StoreRejected)
    async def store_refused(request: Request, exc: StoreRejected) -> JSONResponse:
        log.error("InfluxDB refused a query built by the API: %s", exc)
        return JSONResponse({"detail": "InfluxDB refused the query"}, status_code=502)

    app.include_router(_operations(ctx))
    app.include_router(_devices(ctx))
    app.include_router(_alerts(ctx))
    app.include_router(aggregates.router(ctx))
    app.include_router(views.router(ctx))
    app.include_router(live.router(ctx))
    app.include_router(interventions.router(ctx))
    return app


def _operations(ctx: ApiContext) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """Alive: the process answers."""
        return {"status": "ok"}

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        """Ready: InfluxDB answers, and (when ingest runs here) the broker is connected and
        the spool is not full; the spool's size is reported while it holds anything."""
        checks: dict[str, bool] = {"influxdb": ctx.store.ping()}
        body: dict[str, Any] = {}
        if ctx.hub is not None:
            checks["mqtt"] = ctx.hub.link.connected
            spool = ctx.hub.spool
            if spool is not None:
                # spooling keeps data safe while InfluxDB is away; a full spool means the
                # hub has stopped acknowledging and the broker is holding the messages
                checks["spool_not_full"] = not spool.full
                body["spool"] = {"bytes": spool.bytes, "batches": spool.records}
        ready = all(checks.values())
        return JSONResponse(
            {"ready": ready, "checks": checks, **body}, status_code=200 if ready else 503
        )

    @router.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        """Counters and gauges in Prometheus text format."""
        return ctx.metrics.render_prometheus()

    return router


class DeviceSummary(BaseModel):
    """A device as listed."""

    device_id: str
    profile: str | None
    zone: str
    owner: str | None
    lat: float | None
    lon: float | None
    registered: bool
    last_seen: str | None
    online: bool | None


def _device_rows(ctx: ApiContext) -> dict[str, DeviceSummary]:
    seen = ctx.hub.devices.all() if ctx.hub is not None else {}
    open_alerts = _engine_alerts(ctx)
    silent = {a.device_id for a in open_alerts if a.state == "firing" and _is_silence(ctx, a)}
    rows: dict[str, DeviceSummary] = {}
    for device_id in sorted(set(ctx.inventory.devices) | set(seen)):
        listed = ctx.inventory.devices.get(device_id)
        observed = seen.get(device_id)
        online: bool | None
        if observed is None:
            online = None if ctx.hub is None else False
        elif observed.online is not None:
            online = observed.online and device_id not in silent
        else:
            online = device_id not in silent
        rows[device_id] = DeviceSummary(
            device_id=device_id,
            profile=listed.profile if listed else (observed.profile if observed else None),
            zone=listed.zone if listed else UNKNOWN_ZONE,
            owner=listed.owner or None if listed else None,
            lat=listed.lat if listed else None,
            lon=listed.lon if listed else None,
            registered=listed is not None,
            last_seen=iso_ms(observed.last_seen_ms) if observed else None,
            online=online,
        )
    return rows


def _is_silence(ctx: ApiContext, alert: Alert) -> bool:
    for item in ctx.profiles.profiles:
        if item.profile.profile == alert.profile:
            return any(r.name == alert.rule and r.silence for r in item.profile.alerts)
    return False


def _engine_alerts(ctx: ApiContext) -> list[Alert]:
    engine = _engine(ctx)
    return engine.open_alerts() if engine is not None else []


def _engine(ctx: ApiContext) -> AlertEngine | None:
    return ctx.hub.alerts if ctx.hub is not None else None


def _devices(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
    reader = Depends(ctx.requires("reader"))

    @router.get("")
    def list_devices(
        key: ApiKey = reader,
        profile: str | None = None,
        zone: str | None = None,
        owner: str | None = None,
        online: bool | None = None,
        unregistered: bool | None = None,
        limit: int = Query(default=500, ge=1, le=10_000),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """Inventory devices and devices seen since start, filtered; only the caller's
        organisation's own devices and those shared with it per device."""
        access = ctx.access(key)
        shown = (_shown(ctx, access, row) for row in _device_rows(ctx).values())
        rows = [
            row
            for row in shown
            if row is not None
            and (profile is None or row.profile == profile)
            and (zone is None or row.zone == zone)
            and (owner is None or row.owner == owner)
            and (online is None or row.online is online)
            and (unregistered is None or row.registered is not unregistered)
        ]
        return {"total": len(rows), "devices": rows[offset : offset + limit]}

    @router.get("/{device_id}")
    def device_detail(device_id: str, key: ApiKey = reader) -> dict[str, Any]:
        """One device: inventory, last seen, latest values, online state, open alerts,
        recent dead letters and its last raw messages."""
        access = ctx.access(key)
        found = _device_rows(ctx).get(device_id)
        delay = _device_delay(ctx, access, found) if found is not None else None
        # a device the caller may not see is answered like one that does not exist
        if found is None or delay is None:
            raise HTTPException(404, f"no device {device_id!r} in the inventory or seen")
        row = _shown(ctx, access, found)
        assert row is not None  # noqa: S101  # visible: delay is not None
        # its live counters only to those who see it without a delay
        observed = ctx.hub.devices.get(device_id) if ctx.hub is not None and not delay else None
        # raw payloads and dead letters carry every field: the owner's alone
        own = access.owns(row.owner)
        return {
            **row.model_dump(),
            "messages": observed.messages if observed else None,
            "time_problems": observed.time_problems if observed else {},
            "latest": _latest(ctx, access, device_id, row.profile, row.owner),
            "open_alerts": [
                alert_for(access, {**a.to_json(), "owner": row.owner})
                for a in _engine_alerts(ctx)
                if a.device_id == device_id and access.sees_alert(row.owner, a.rule)
            ],
            "dead_letters": _dead_letters(ctx, device_id) if own else [],
            "raw_messages": _raw_messages(ctx, device_id) if own else [],
        }

    return router


def _device_delay(ctx: ApiContext, access: Access, row: DeviceSummary) -> int | None:
    """``Access.device_delay`` of this device for the caller (``None``: not visible)."""
    measurements = [m.name for m in ctx.schema.values() if m.profile == row.profile]
    return access.device_delay(row.owner, measurements)


def _shown(ctx: ApiContext, access: Access, row: DeviceSummary) -> DeviceSummary | None:
    """The device as the caller's organisation sees it in lists and details: ``None`` when
    not at all; without its live state (last seen, online) when shared with a delay."""
    delay = _device_delay(ctx, access, row)
    if delay is None:
        return None
    return row if delay == 0 else row.model_copy(update={"last_seen": None, "online": None})


def _latest(
    ctx: ApiContext, access: Access, device_id: str, profile: str | None, owner: str | None
) -> list[dict[str, Any]]:
    """The newest point of each series of the device, per measurement of its profile: the
    fields the caller may see per device, as of the share's delay."""
    found: list[dict[str, Any]] = []
    for measurement in ctx.schema.values():
        if profile is not None and measurement.profile != profile:
            continue
        delays = {}
        for name in measurement.fields:
            delay = access.delay(owner, measurement.name, (name,), None)
            if delay is not None:
                delays[name] = delay
        if not delays:
            continue
        delay = max(delays.values())
        now = ctx.clock_ms() - delay
        start = datetime.fromtimestamp((now - LATEST_LOOKBACK_MS) / 1000, UTC)
        # devices stamp a little ahead of the hub's clock; delayed data ends at the delay
        end = datetime.fromtimestamp((now + (0 if delay else 3_600_000)) / 1000, UTC)
        # every piece goes through hub.api.influxql (identifiers, literals, times)
        query = (
            f"SELECT * FROM {ident(measurement.name)} "
            f"WHERE {equals('device_id', device_id)} AND {time_range(start, end)} "
            "GROUP BY * ORDER BY time DESC LIMIT 1"
        )
        for series in ctx.store.query(query):
            values = dict(zip(series["columns"], series["values"][0], strict=True))
            stamp = values.pop("time")
            found.append(
                {
                    "measurement": measurement.name,
                    "tags": series.get("tags", {}),
                    "time": iso_ms(int(stamp)),
                    "fields": {k: v for k, v in values.items() if v is not None and k in delays},
                }
            )
    return found


def _dead_letters(ctx: ApiContext, device_id: str) -> list[dict[str, Any]]:
    """Recent dead letters whose topic names the device (its id or a level equal to it)."""
    if ctx.hub is None:
        return []
    letters = [d for d in list(ctx.hub.dead_letters) if device_id in d.message.topic.split("/")]
    return [
        {
            "profile": d.profile,
            "reason": d.reason,
            "detail": d.detail,
            "topic": d.message.topic,
            "received_at": iso_ms(d.message.received_ms),
        }
        for d in letters[-20:]
    ]


def _raw_messages(ctx: ApiContext, device_id: str) -> list[dict[str, Any]]:
    if ctx.hub is None:
        return []
    ring = ctx.hub.raw_messages.get(device_id)
    out = []
    for message in list(ring or []):
        try:
            text: str | None = message.payload.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        out.append(
            {
                "topic": message.topic,
                "received_at": iso_ms(message.received_ms),
                "payload": text,
                "payload_b64": None
                if text is not None
                else base64.b64encode(message.payload).decode("ascii"),
            }
        )
    return out


class AckRequest(BaseModel):
    """An acknowledgement; who is the API key's id, the note is free text."""

    note: str = Field(default="", max_length=500)


def _alerts(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/api/v1/alerts", tags=["alerts"])
    reader = Depends(ctx.requires("reader"))
    operator = Depends(ctx.requires("operator"))

    @router.get("")
    def list_alerts(
        key: ApiKey = reader,
        state: Literal["open", "resolved", "all"] = "open",
        severity: Literal["info", "warning", "major", "critical"] | None = Query(
            default=None, description="this severity or higher"
        ),
        profile: str | None = None,
        zone: str | None = None,
        device_id: str | None = None,
        rule: str | None = None,
        limit: int = Query(default=500, ge=1, le=5_000),
    ) -> dict[str, Any]:
        """Open alerts, and past ones the hub remembers (newest first)."""
        engine = _engine(ctx)
        if engine is None:
            raise HTTPException(503, "alerts are served by the hub process (hub run)")
        alerts: list[Alert] = []
        if state in ("open", "all"):
            alerts += engine.open_alerts()
        if state in ("resolved", "all"):
            alerts += list(engine.history)
        minimum = SEVERITY_RANK[severity] if severity else 0
        access = ctx.access(key)
        chosen = [
            a
            for a in alerts
            if access.sees_alert(ctx.inventory.owner(a.device_id), a.rule)
            and SEVERITY_RANK[a.severity] >= minimum
            and (profile is None or a.profile == profile)
            and (zone is None or a.zone == zone)
            and (device_id is None or a.device_id == device_id)
            and (rule is None or a.rule == rule)
        ]
        chosen.sort(key=lambda a: a.fired_ms, reverse=True)
        return {
            "total": len(chosen),
            "alerts": [
                alert_for(access, {**a.to_json(), "owner": ctx.inventory.owner(a.device_id)})
                for a in chosen[:limit]
            ],
        }

    @router.post("/{alert_id}/ack")
    def acknowledge(
        alert_id: str, body: AckRequest | None = None, key: ApiKey = operator
    ) -> dict[str, Any]:
        """Acknowledge an open alert (operators only); records who and when."""
        engine = _engine(ctx)
        if engine is None:
            raise HTTPException(503, "alerts are served by the hub process (hub run)")
        who = key.id if not body or not body.note else f"{key.id} ({body.note})"
        access = ctx.access(key)
        found = next((a for a in engine.open_alerts() if a.id == alert_id), None)
        owner = ctx.inventory.owner(found.device_id) if found is not None else None
        if found is None or not access.sees_alert(owner, found.rule):
            raise HTTPException(404, f"no open alert {alert_id!r}")
        if not access.owns(owner):
            raise HTTPException(
                403, f"alert {alert_id!r} is on a device of {owner!r}: only its teams acknowledge"
            )
        try:
            alert = engine.acknowledge(alert_id, who)
        except KeyError:
            raise HTTPException(404, f"no open alert {alert_id!r}") from None
        return alert_for(access, {**alert.to_json(), "owner": owner})

    return router
