"""Which devices' data one answer may include, for the caller's organisation (``hub.sharing``).

Every query of the API that reads stored measurements asks for a ``Scope`` first: the
measurement, the fields it reads and the *grain* of its answer (the tags the answer is broken
down by; ``None`` when it shows single devices). The scope holds the devices whose owners let
the caller see those fields at that grain, and the largest delay among them. A query then
either filters on ``device_id`` (``condition``) or, when it groups by device anyway, drops
other devices' rows (``allows``); windows end ``delay_ms`` before now.

Without a sharing policy, or when every owner's data is visible, ``devices`` is ``None`` and
queries are left as they were. Devices not in the inventory have no owner: they are visible to
the organisations the policy names under ``unowned`` (those seen by this hub process; the API
alone cannot name them, so with filtering they are left out).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from hub.api.context import ApiContext
from hub.api.influxql import any_of
from hub.sharing import Access


@dataclass(frozen=True, slots=True)
class Scope:
    """The devices an answer may include (``None``: all) and how late its data must end."""

    devices: frozenset[str] | None
    delay_ms: int = 0

    @property
    def empty(self) -> bool:
        """Nothing is visible: the query need not run."""
        return self.devices is not None and not self.devices

    def allows(self, device_id: str) -> bool:
        """Whether rows of ``device_id`` may be shown."""
        return self.devices is None or device_id in self.devices

    def condition(self) -> str | None:
        """The query condition on ``device_id``, or ``None`` when every device is visible."""
        if self.devices is None:
            return None
        return any_of("device_id", sorted(self.devices))

    def filter(self, values: list[str]) -> list[str]:
        """``values`` (a caller's ``device_id`` filter) narrowed to the visible devices."""
        return [v for v in values if self.allows(v)]


def scope_for(
    ctx: ApiContext,
    access: Access,
    measurement: str,
    fields: Iterable[str],
    grain: Iterable[str] | None,
    *,
    only: Collection[str] = (),
) -> Scope:
    """The scope of an answer reading ``fields`` of ``measurement`` broken down by ``grain``;
    ``only``: the devices the request is narrowed to (its ``device_id`` filter), so that
    another owner's delay does not hold back an answer about the caller's own devices."""
    if access.unrestricted:
        return Scope(None)
    wanted = tuple(fields)
    grain_set = None if grain is None else frozenset(grain)
    schema = ctx.schema.get(measurement)
    profile = schema.profile if schema is not None else None
    verdict: dict[str, int | None] = {}  # owner -> delay, or None when not visible

    def visible(owner: str) -> int | None:
        if owner not in verdict:
            verdict[owner] = access.delay(owner or None, measurement, wanted, grain_set)
        return verdict[owner]

    narrowed = set(only)
    devices: set[str] = set()
    delay = 0
    everything = not narrowed
    for device in ctx.inventory.devices.values():
        if narrowed and device.device_id not in narrowed:
            continue
        shown = visible(device.owner)
        if shown is None:
            everything = False
            continue
        delay = max(delay, shown)
        if profile is None or device.profile == profile:
            devices.add(device.device_id)
    unowned = visible("")
    unregistered = ctx.hub.devices.unregistered() if ctx.hub is not None else []
    if narrowed:
        unregistered = [d for d in unregistered if d in narrowed]
    if unowned is None:
        everything = False
    elif not narrowed or unregistered:
        delay = max(delay, unowned)
        devices.update(unregistered)
    return Scope(None if everything else frozenset(devices), delay)
