"""``/api/v1/interventions``: planned and ongoing works and events of the utilities.

- ``GET ""``: interventions the caller's organisation may see (its own and those shared with
  ``interventions: true`` in the sharing policy), filtered by ``status`` (repeat it or
  separate with commas), ``zone``, ``owner``, ``start``/``end`` (the planned or actual
  window overlaps them) and ``active_at`` (``now`` or a time: under way then, see
  ``Intervention.under_way_at``); latest start first, ``limit``/``offset``.
- ``GET /{id}``: one intervention; 404 when it does not exist *or* the caller may not see it,
  so that the answer never tells another organisation's ids apart from unknown ones.
- ``GET /{id}/history``: its stored versions, oldest first (who sent each one is shown to
  the owner only).
- ``POST ""`` (operators): create or update, the body being the same JSON object as on MQTT
  ``situation/{org}/events`` (``hub.interventions.model``); the owner is the API key's
  organisation. 201 for a new id, 200 for an update; 422 with the reason for an invalid body,
  403 for another organisation's intervention (ids are city-wide: this tells the caller the
  id is taken, nothing more), 409 for a stale ``version``, 413 over 64 KiB.

Everything answers 503 when the API runs without the hub process (no store).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from hub.api.aggregates import parse_time
from hub.api.context import ApiContext
from hub.api.influxql import QueryInputError
from hub.api.security import ApiKey
from hub.interventions.model import (
    MAX_PAYLOAD_BYTES,
    STATUSES,
    Intervention,
    InterventionError,
    payload_id,
    read_payload,
    to_ms,
)
from hub.interventions.store import MAX_LIMIT, OPEN_END_MS, InterventionStore
from hub.sharing import Access

# what an InterventionError means for HTTP; every other reason is the caller's input: 422
HTTP_STATUS = {"not_owner": 403, "version_conflict": 409, "too_large": 413, "store_failed": 503}
UNAVAILABLE = "interventions are served by the hub process (hub run)"


def _statuses(values: list[str] | None) -> set[str] | None:
    if not values:
        return None
    wanted = {v.strip() for value in values for v in value.split(",") if v.strip()}
    unknown = sorted(wanted - set(STATUSES))
    if unknown:
        raise HTTPException(422, f"status {unknown[0]!r} is not one of: {', '.join(STATUSES)}")
    return wanted


def _time_ms(name: str, value: str | None, now_ms: int) -> int | None:
    if value is None:
        return None
    if name == "active_at" and value.strip().lower() == "now":
        return now_ms
    try:
        return to_ms(parse_time(name, value))
    except QueryInputError as exc:
        raise HTTPException(422, str(exc)) from None


def _error(exc: InterventionError) -> HTTPException:
    return HTTPException(HTTP_STATUS.get(exc.reason, 422), exc.detail)


async def _body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it passes the payload limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_PAYLOAD_BYTES:
        raise HTTPException(413, f"body of {declared} bytes is over {MAX_PAYLOAD_BYTES} (64 KiB)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_PAYLOAD_BYTES:
            raise HTTPException(413, f"body is over {MAX_PAYLOAD_BYTES} bytes (64 KiB)")
        chunks.append(chunk)
    return b"".join(chunks)


def router(ctx: ApiContext) -> APIRouter:
    """The interventions endpoints, reading ``ctx.interventions``."""
    api = APIRouter(prefix="/api/v1/interventions", tags=["interventions"])
    reader = Depends(ctx.requires("reader"))
    operator = Depends(ctx.requires("operator"))

    def store() -> InterventionStore:
        if ctx.interventions is None:
            raise HTTPException(503, UNAVAILABLE)
        return ctx.interventions

    def visible(access: Access, item: Intervention | None) -> Intervention | None:
        return item if item is not None and access.sees_interventions(item.owner) else None

    def owners_for(access: Access, found: InterventionStore, owner: str | None) -> set[str] | None:
        """The owners whose interventions the answer may hold (``None``: any)."""
        if access.unrestricted:
            return {owner} if owner is not None else None
        seen = {o for o in found.owners() if access.sees_interventions(o)}
        return seen & {owner} if owner is not None else seen

    @api.get("")
    def list_interventions(
        key: ApiKey = reader,
        status: Annotated[
            list[str] | None,
            Query(description="planned, active, done, cancelled (several: repeat or commas)"),
        ] = None,
        zone: str | None = Query(default=None, max_length=64),
        owner: str | None = Query(default=None, max_length=64),
        start: str | None = Query(default=None, description="window start, ISO 8601"),
        end: str | None = Query(default=None, description="window end, ISO 8601"),
        active_at: str | None = Query(
            default=None, description="'now' or an ISO 8601 time: under way then"
        ),
        limit: int = Query(default=200, ge=1, le=MAX_LIMIT),
        offset: int = Query(default=0, ge=0),
    ) -> dict[str, Any]:
        """Interventions the caller may see, latest start first."""
        found = store()
        now_ms = ctx.clock_ms()
        window = (_time_ms("start", start, now_ms), _time_ms("end", end, now_ms))
        if window[0] is not None and window[1] is not None and window[1] <= window[0]:
            raise HTTPException(422, f"end ({end}) must be after start ({start})")
        total, items = _select(
            found,
            owners_for(ctx.access(key), found, owner),
            _statuses(status),
            zone,
            window,
            _time_ms("active_at", active_at, now_ms),
            (limit, offset),
        )
        return {"total": total, "interventions": [item.to_json() for item in items]}

    @api.get("/{intervention_id}")
    def get_intervention(intervention_id: str, key: ApiKey = reader) -> dict[str, Any]:
        """One intervention (404 when unknown or not visible to the caller)."""
        item = visible(ctx.access(key), store().get(intervention_id))
        if item is None:
            raise HTTPException(404, f"no intervention {intervention_id!r}")
        return item.to_json()

    @api.get("/{intervention_id}/history")
    def intervention_history(
        intervention_id: str,
        key: ApiKey = reader,
        limit: int = Query(default=100, ge=1, le=MAX_LIMIT),
    ) -> dict[str, Any]:
        """The stored versions of one intervention, oldest first (the latest ``limit``)."""
        found = store()
        access = ctx.access(key)
        item = visible(access, found.get(intervention_id))
        if item is None:
            raise HTTPException(404, f"no intervention {intervention_id!r}")
        changes = []
        for change in found.history(intervention_id, limit):
            body = change.to_json()
            if not access.owns(item.owner):
                body["source"] = None  # which key or topic sent it is the owner's business
            changes.append(body)
        return {"id": intervention_id, "changes": changes}

    @api.post(
        "",
        status_code=200,
        responses={201: {"description": "created"}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": "an intervention, or the keys of one to change "
                            "(see hub/interventions/model.py)",
                        }
                    }
                },
            }
        },
    )
    async def post_intervention(
        request: Request, response: Response, key: ApiKey = operator
    ) -> dict[str, Any]:
        """Create or update an intervention of the caller's organisation."""
        found = store()
        raw = await _body(request)
        try:
            ident = payload_id(read_payload(raw))
            existed = await run_in_threadpool(found.get, ident) is not None
            saved = await run_in_threadpool(found.apply, key.org, raw, source=f"api:{key.id}")
        except InterventionError as exc:
            raise _error(exc) from None
        response.status_code = 200 if existed else 201
        return saved.to_json()

    return api


def _select(
    found: InterventionStore,
    owners: set[str] | None,
    statuses: set[str] | None,
    zone: str | None,
    window: tuple[int | None, int | None],
    at_ms: int | None,
    page: tuple[int, int],
) -> tuple[int, list[Intervention]]:
    """How many interventions match, and the page of them asked for."""
    start_ms, end_ms = window
    limit, offset = page
    if at_ms is None:
        filters: dict[str, Any] = {
            "status": statuses,
            "zone": zone,
            "start_ms": start_ms,
            "end_ms": end_ms,
        }
        return found.count(owners, **filters), found.list(
            owners, **filters, limit=limit, offset=offset
        )
    # under way at one time: few by nature (active_at is bounded), filtered here
    chosen = [
        item
        for item in found.active_at(at_ms, owners)
        if (statuses is None or item.status in statuses)
        and (zone is None or item.zone == zone)
        and (start_ms is None or _span_end(item) > start_ms)
        and (end_ms is None or item.span_ms[0] < end_ms)
    ]
    return len(chosen), chosen[offset : offset + limit]


def _span_end(item: Intervention) -> int:
    end = item.span_ms[1]
    return end if end is not None else OPEN_END_MS
