"""``GET /api/v1/live``: the live feed (``hub.live``) as server-sent events.

Each event is ``id: <epoch>-<seq>``, ``event: alert|device|intervention|zone`` and one JSON
``data`` line; only events the caller's organisation may see are sent (the event's audience
decides, by the sharing policy). After ``KEEPALIVE_S`` without a write the stream sends a
frame with only an ``id`` (the newest event's, seen or not: a reconnect then does not ask for
events it may not see) or a comment, which keeps proxies from closing a quiet stream.

A client reconnecting with the ``Last-Event-ID`` header (browsers' EventSource send it by
themselves) or ``?last_event_id=`` gets the events it missed from the feed's ring; if some are
gone, the stream opens with a ``reset`` event and the client should reload the state it shows
from the other endpoints. A connected client that falls further behind than the ring holds gets
a ``reset`` event too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from hub.api.context import ApiContext
from hub.api.influxql import QueryInputError
from hub.api.security import ApiKey
from hub.live import LiveEvent, LiveFeed
from hub.sharing import Access

KEEPALIVE_S = 15.0
KINDS = ("alert", "device", "intervention", "zone")
RESET_RESUME = "events after your Last-Event-ID are no longer held; reload the state"
RESET_BEHIND = "this stream fell behind and events were dropped; reload the state"


def _frame(event_id: str, kind: str, body: dict[str, object]) -> bytes:
    return b"id: %s\nevent: %s\ndata: %s\n\n" % (
        event_id.encode(),
        kind.encode(),
        orjson.dumps(body, default=str),
    )


def _shown(event: LiveEvent, access: Access, kinds: set[str]) -> bool:
    if event.kind not in kinds:
        return False
    try:
        return event.audience(access)
    except Exception:  # a broken audience hides the event, never the stream
        return False


async def _stream(
    feed: LiveFeed,
    request: Request,
    access: Access,
    last_event_id: str | None,
    kinds: set[str],
    keepalive_s: float,
) -> AsyncGenerator[bytes, None]:
    # registered before the replay is taken, so nothing published in between is missed
    waiter = feed.waiter()
    loop = asyncio.get_running_loop()
    try:
        replay = feed.replay(last_event_id)
        seq = replay.last_seq
        if replay.reset:
            yield _frame(f"{feed.epoch}-{seq}", "reset", {"reason": RESET_RESUME})
        for event in replay.events:
            if event.seq <= seq and _shown(event, access, kinds):
                yield _frame(event.id, event.kind, event.view(access))
        yield b": connected\n\n"
        told = seq  # the last id the client was given
        last_write = loop.time()
        while not feed.closed:
            waiter.event.clear()
            events = feed.after(seq)
            if events and events[0].seq > seq + 1:
                # this stream fell further behind than the ring holds: say so
                yield _frame(f"{feed.epoch}-{events[0].seq - 1}", "reset", {"reason": RESET_BEHIND})
                last_write = loop.time()
            for event in events:
                seq = event.seq
                if _shown(event, access, kinds):
                    yield _frame(event.id, event.kind, event.view(access))
                    told, last_write = seq, loop.time()
            quiet = loop.time() - last_write
            if quiet >= keepalive_s:
                # an id alone dispatches nothing, but moves the client's Last-Event-ID past
                # the events it may not see, so a reconnect does not ask for them again
                yield f"id: {feed.epoch}-{seq}\n\n".encode() if seq != told else b": keep-alive\n\n"
                told, last_write, quiet = seq, loop.time(), 0.0
            if events:
                continue
            try:
                await asyncio.wait_for(waiter.event.wait(), timeout=keepalive_s - quiet)
            except TimeoutError:
                if await request.is_disconnected():
                    return
    finally:
        feed.release(waiter)


def router(ctx: ApiContext, keepalive_s: float = KEEPALIVE_S) -> APIRouter:
    """The live feed endpoint, reading ``ctx.hub.live``."""
    api = APIRouter(prefix="/api/v1", tags=["live"])
    reader = Depends(ctx.requires("reader"))

    @api.get("/live", response_class=StreamingResponse)
    async def live(
        request: Request,
        key: ApiKey = reader,
        last_event_id: Annotated[str | None, Header(description="resume after this id")] = None,
        resume: Annotated[
            str | None, Query(alias="last_event_id", description="resume after this id")
        ] = None,
        kinds: Annotated[
            list[str] | None,
            Query(description="only these kinds: alert, device, intervention, zone"),
        ] = None,
    ) -> StreamingResponse:
        """Alerts, device online/offline changes, interventions and zone-level changes
        (bays occupied, lanes congested per zone) as server-sent events, filtered by what
        the caller's organisation may see."""
        feed = ctx.hub.live if ctx.hub is not None else None
        if feed is None:
            raise HTTPException(503, "the live feed is served by the hub process (hub run)")
        wanted = {k.strip() for item in kinds or [] for k in item.split(",") if k.strip()}
        unknown = sorted(wanted - set(KINDS))
        if unknown:
            raise QueryInputError(f"unknown kind {unknown[0]!r}; allowed: {', '.join(KINDS)}")
        stream = _stream(
            feed,
            request,
            ctx.access(key),
            last_event_id or resume,
            wanted or set(KINDS),
            keepalive_s,
        )
        return StreamingResponse(
            stream,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return api
