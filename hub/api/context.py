"""What the API reads: built once in the composition root and handed to the routers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastapi import Header, HTTPException

from hub.api.security import ApiKey, ApiKeys, Role
from hub.inventory import Inventory
from hub.metrics import Metrics
from hub.profiles.profile_set import MeasurementSchema, ProfileSet
from hub.settings import Settings
from hub.sharing import Access, Policy, access_for
from hub.storage.influx import InfluxClient

if TYPE_CHECKING:  # the API may run without ingest (``hub api``): then there is no Hub
    from hub.interventions.store import InterventionStore
    from hub.pipeline import Hub


@dataclass
class ApiContext:
    """Everything the routers need. ``hub`` is ``None`` when the API runs alone."""

    settings: Settings
    profiles: ProfileSet
    inventory: Inventory
    store: InfluxClient
    metrics: Metrics
    keys: ApiKeys
    clock_ms: Callable[[], int]
    hub: Hub | None = None
    policy: Policy | None = None
    interventions: InterventionStore | None = None
    schema: dict[str, MeasurementSchema] = field(init=False)

    def __post_init__(self) -> None:
        self.schema = self.profiles.schema()
        if self.interventions is None and self.hub is not None:
            self.interventions = self.hub.interventions

    def requires(self, role: Role) -> Callable[..., ApiKey]:
        """A FastAPI dependency: the caller's key, which must have at least ``role``.

        Keys come in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
        """

        def check(
            authorization: str | None = Header(default=None),
            x_api_key: str | None = Header(default=None),
        ) -> ApiKey:
            token = x_api_key
            if authorization:
                scheme, _, value = authorization.partition(" ")
                if scheme.lower() != "bearer" or not value.strip():
                    raise HTTPException(
                        401,
                        "Authorization must be 'Bearer <key>'",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                token = value.strip()
            if not token:
                raise HTTPException(
                    401,
                    "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            key = self.keys.authenticate(token)
            if key is None:
                raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
            if not key.allows(role):
                raise HTTPException(
                    403, f"API key {key.id!r} has role {key.role!r}; this needs {role!r}"
                )
            return key

        return check

    def access(self, key: ApiKey) -> Access:
        """What the caller's organisation may see (everything without a sharing policy)."""
        return access_for(self.policy, key.org)
