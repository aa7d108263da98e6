"""The authoritative store of interventions: one SQLite file (``sqlite3`` of the standard
library), in WAL mode, with every change kept.

Why SQLite and not only InfluxDB: interventions are updated by id, read back by id, queried
by status, zone, owner and time overlap, and must survive restarts exactly. InfluxDB has no
update by key and no transaction to check "only the owner may change it" against the stored
row. InfluxDB still gets one point per change (``hub.interventions.annotations``) for
Grafana's annotations; SQLite is the truth those points are derived from, so they can be
written again at any time.

Tables::

    intervention         id PK, owner, status, zone, start_ms, span_start_ms, span_end_ms,
                         version, updated_ms, body (the model as JSON)
    intervention_change  (id, version) PK, updated_ms, source, body: every stored version

One connection, used under a lock, serves the API's threads and the hub's decode thread; a
write is one transaction (``BEGIN IMMEDIATE``), committed with ``synchronous=FULL`` before the
caller hears of it. Listeners (``listen``) are called after the commit, in commit order,
outside the connection lock: they may read the store, and must be quick (hand the change to a
queue); an exception in one is logged and never undoes or blocks the change.
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hub.errors import ConfigError
from hub.interventions.model import (
    STATUSES,
    Intervention,
    InterventionError,
    check_choice,
    from_ms,
    parse_message,
    payload_id,
    read_payload,
    to_ms,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
MAX_LIMIT = 1_000
# the end of the span of an active intervention: open, after every window anyone asks for
OPEN_END_MS = 2**62

Listener = Callable[[Intervention], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS intervention (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    zone TEXT,
    start_ms INTEGER NOT NULL,
    span_start_ms INTEGER NOT NULL,
    span_end_ms INTEGER NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS intervention_owner ON intervention (owner);
CREATE INDEX IF NOT EXISTS intervention_status ON intervention (status);
CREATE INDEX IF NOT EXISTS intervention_zone ON intervention (zone);
CREATE INDEX IF NOT EXISTS intervention_span ON intervention (span_start_ms, span_end_ms);
CREATE TABLE IF NOT EXISTS intervention_change (
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (id, version)
);
"""


def wall_clock_ms() -> int:
    """Now, in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Change:
    """One stored version of an intervention, who sent it (``source``: ``api:<key id>``,
    ``mqtt:<topic>`` or what the caller passed) and the intervention as it was then."""

    version: int
    updated_ms: int
    source: str
    intervention: Intervention

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "version": self.version,
            "updated_at": self.intervention.to_json()["updated_at"],
            "source": self.source,
            "intervention": self.intervention.to_json(),
        }


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, not {limit}")


def _same_content(a: Intervention, b: Intervention) -> bool:
    ignore = {"version", "updated_at"}
    return a.model_dump(exclude=ignore) == b.model_dump(exclude=ignore)


class InterventionStore:
    """Interventions in the SQLite file at ``path`` (created with its folder if missing).

    ``clock_ms`` stamps ``updated_at`` and is the "now" of ``apply``. ``ConfigError`` when
    the file cannot be opened or was written by a newer hub.
    """

    def __init__(self, path: Path, clock_ms: Callable[[], int] = wall_clock_ms) -> None:
        self.path = path
        self._clock_ms = clock_ms
        self._lock = threading.Lock()  # the connection
        # writers and their notifications, so listeners hear changes in commit order;
        # reentrant: a listener may itself write
        self._write_lock = threading.RLock()
        self._listeners: list[Listener] = []
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: every use is under self._lock
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            found = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if found > SCHEMA_VERSION:
                self._db.close()
                raise ConfigError(
                    f"{path}: interventions store of schema {found}, written by a newer hub "
                    f"(this one reads {SCHEMA_VERSION})"
                )
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"{path}: cannot open the interventions store: {exc}") from exc

    def close(self) -> None:
        """Close the file (idempotent); the store is unusable afterwards."""
        with self._lock:
            self._db.close()

    # -- listeners -------------------------------------------------------------------------

    def listen(self, callback: Listener) -> Callable[[], None]:
        """Call ``callback`` with every intervention stored from now on (after the commit).

        Returns a function that removes it. The callback runs on the writing thread (an API
        worker or the decode thread): it must only hand the change on (a queue), not block.
        """
        with self._write_lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._write_lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def _notify(self, saved: Intervention) -> None:
        for callback in list(self._listeners):
            try:
                callback(saved)
            except Exception:  # a listener's bug must not undo or block a stored change
                log.exception("intervention listener %r failed on %s", callback, saved.id)

    # -- writing ---------------------------------------------------------------------------

    def apply(
        self, org: str, payload: bytes | Mapping[str, Any], *, source: str = ""
    ) -> Intervention:
        """Parse a message of ``org`` (MQTT payload bytes or an API body), merge it over the
        stored intervention with its id and store the result, atomically: no other write to
        that id comes between reading it and storing it.

        Returns the intervention as stored (``version`` 1: it is new). A message that changes
        nothing (a redelivered MQTT message) stores nothing and notifies no one.
        ``InterventionError`` (see ``hub.interventions.model``) when it cannot be applied.
        """
        body = read_payload(payload)
        ident = payload_id(body)
        with self._write_lock:
            try:
                existing = self.get(ident)
                try:
                    merged = parse_message(org, body, existing, self._clock_ms())
                except InterventionError as exc:
                    # a change sent again (MQTT redelivery) names the version it was made on,
                    # now one behind: it is no conflict when it changes nothing
                    sent = body.get("version")
                    if (
                        exc.reason != "version_conflict"
                        or existing is None
                        or not isinstance(sent, int)
                        or sent >= existing.version
                    ):
                        raise
                    again = {k: v for k, v in body.items() if k != "version"}
                    if not _same_content(
                        parse_message(org, again, existing, self._clock_ms()), existing
                    ):
                        raise
                    return existing
                return self.upsert(merged, source=source)
            except sqlite3.Error as exc:
                raise InterventionError(
                    "store_failed", f"the interventions store failed: {exc}"
                ) from exc

    def upsert(self, intervention: Intervention, *, source: str = "") -> Intervention:
        """Store ``intervention`` as the next version of its id and return it as stored
        (``version`` + 1, ``updated_at`` = now), then notify the listeners.

        ``intervention.version`` must be the stored version (0 for a new id): a change built on
        an older read is refused (``version_conflict``), as is one from another owner than the
        stored one (``not_owner``). Unchanged content stores nothing and returns the stored one.
        """
        with self._write_lock:
            with self._lock:
                saved, changed = self._store(intervention, source)
            if changed:
                self._notify(saved)
            return saved

    def _store(self, intervention: Intervention, source: str) -> tuple[Intervention, bool]:
        """Write ``intervention`` (one transaction): the stored result and whether it changed."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT body FROM intervention WHERE id = ?", (intervention.id,)
            ).fetchone()
            current = Intervention.model_validate_json(row[0]) if row else None
            stored_version = current.version if current is not None else 0
            if current is not None and current.owner != intervention.owner:
                raise InterventionError(
                    "not_owner",
                    f"intervention id {intervention.id!r} is taken by another organisation: "
                    "use another id",
                )
            if intervention.version != stored_version:
                raise InterventionError(
                    "version_conflict",
                    f"intervention {intervention.id!r} is at version {stored_version}, the "
                    f"change was made on version {intervention.version}: read it again",
                )
            if current is not None and _same_content(current, intervention):
                db.execute("ROLLBACK")
                return current, False
            now = self._clock_ms()
            if current is not None and current.updated_at is not None:
                # updated_at never goes back, even if the clock does
                now = max(now, to_ms(current.updated_at))
            saved = intervention.model_copy(
                update={"version": stored_version + 1, "updated_at": from_ms(now)}
            )
            # model_copy skips validation: check what is about to be stored once more
            saved = Intervention.model_validate(saved.model_dump())
            body = saved.model_dump_json()
            span_start, span_end = saved.span_ms
            db.execute(
                "INSERT INTO intervention (id, owner, status, zone, start_ms, span_start_ms, "
                "span_end_ms, version, updated_ms, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, status = "
                "excluded.status, zone = excluded.zone, start_ms = excluded.start_ms, "
                "span_start_ms = excluded.span_start_ms, span_end_ms = excluded.span_end_ms, "
                "version = excluded.version, updated_ms = excluded.updated_ms, "
                "body = excluded.body",
                (
                    saved.id,
                    saved.owner,
                    saved.status,
                    saved.zone,
                    saved.start_ms,
                    span_start,
                    OPEN_END_MS if span_end is None else span_end,
                    saved.version,
                    now,
                    body,
                ),
            )
            db.execute(
                "INSERT INTO intervention_change (id, version, updated_ms, source, body) "
                "VALUES (?, ?, ?, ?, ?)",
                (saved.id, saved.version, now, source, body),
            )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return saved, True

    # -- reading ---------------------------------------------------------------------------

    def get(self, intervention_id: str) -> Intervention | None:
        """The intervention with this id, or ``None``; ``InterventionError`` (``store_failed``)
        when SQLite fails."""
        try:
            with self._lock:
                row = self._db.execute(
                    "SELECT body FROM intervention WHERE id = ?", (intervention_id,)
                ).fetchone()
        except sqlite3.Error as exc:
            raise InterventionError(
                "store_failed", f"the interventions store failed: {exc}"
            ) from exc
        return Intervention.model_validate_json(row[0]) if row else None

    def owners(self) -> builtins.list[str]:
        """Every organisation that owns a stored intervention, sorted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT owner FROM intervention ORDER BY owner"
            ).fetchall()
        return [str(r[0]) for r in rows]

    @staticmethod
    def _where(
        owners: Collection[str] | None,
        status: str | Collection[str] | None,
        zone: str | None,
        start_ms: int | None,
        end_ms: int | None,
    ) -> tuple[str, builtins.list[Any]]:
        conditions: builtins.list[str] = []
        params: builtins.list[Any] = []

        def among(column: str, values: Collection[str]) -> None:
            conditions.append(f"{column} IN ({', '.join('?' * len(values))})" if values else "0")
            params.extend(sorted(values))

        if owners is not None:
            among("owner", owners)
        if status is not None:
            wanted = {status} if isinstance(status, str) else set(status)
            for each in sorted(wanted):
                check_choice("status", each, STATUSES)
            among("status", wanted)
        if zone is not None:
            conditions.append("zone = ?")
            params.append(zone)
        if end_ms is not None:
            conditions.append("span_start_ms < ?")
            params.append(end_ms)
        if start_ms is not None:
            conditions.append("span_end_ms > ?")
            params.append(start_ms)
        return (" WHERE " + " AND ".join(conditions)) if conditions else "", params

    def list(
        self,
        owners: Collection[str] | None = None,
        *,
        status: str | Collection[str] | None = None,
        zone: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[Intervention]:
        """Interventions matching every filter given, latest start first (then by id).

        ``owners``: only these owners (``None``: any; empty: none). ``status``: one or several.
        ``start_ms``/``end_ms``: the span (the hull of the planned and actual windows, open
        while active) overlaps ``[start_ms, end_ms)``; either may be ``None`` (unbounded).
        At most ``limit`` (1 to ``MAX_LIMIT``) after skipping ``offset``.
        """
        _check_limit(limit)
        if offset < 0:
            raise ValueError(f"offset must not be negative, not {offset}")
        where, params = self._where(owners, status, zone, start_ms, end_ms)
        with self._lock:
            rows = self._db.execute(
                f"SELECT body FROM intervention{where} "  # noqa: S608 -- only placeholders are interpolated; values are bound
                "ORDER BY start_ms DESC, id LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
        return [Intervention.model_validate_json(r[0]) for r in rows]

    def count(
        self,
        owners: Collection[str] | None = None,
        *,
        status: str | Collection[str] | None = None,
        zone: str | None = None,
        start_ms: int | None = None,
        end_ms: int | None = None,
    ) -> int:
        """How many interventions ``list`` would find without a limit."""
        where, params = self._where(owners, status, zone, start_ms, end_ms)
        with self._lock:
            row = self._db.execute(
                f"SELECT count(*) FROM intervention{where}",  # noqa: S608 -- as in list
                params,
            ).fetchone()
        return int(row[0])

    def active_at(
        self, at_ms: int, owners: Collection[str] | None = None, limit: int = MAX_LIMIT
    ) -> builtins.list[Intervention]:
        """Interventions under way at ``at_ms`` (``Intervention.under_way_at``: active since
        its actual start; planned inside its planned window; done or cancelled inside its
        actual window), latest start first; optionally only of ``owners``."""
        candidates = self.list(owners, start_ms=at_ms, end_ms=at_ms + 1, limit=limit)
        return [c for c in candidates if c.under_way_at(at_ms)]

    def history(self, intervention_id: str, limit: int = MAX_LIMIT) -> builtins.list[Change]:
        """The stored versions of an intervention, oldest first (the latest ``limit`` of
        them); empty for an unknown id."""
        _check_limit(limit)
        with self._lock:
            rows = self._db.execute(
                "SELECT version, updated_ms, source, body FROM intervention_change "
                "WHERE id = ? ORDER BY version DESC LIMIT ?",
                (intervention_id, limit),
            ).fetchall()
        return [
            Change(int(v), int(u), str(s), Intervention.model_validate_json(b))
            for v, u, s, b in reversed(rows)
        ]
