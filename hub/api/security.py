"""API keys and roles.

Keys are random tokens given to a caller once; the hub stores only their SHA-256 (a fast hash
is right for high-entropy tokens: there is no password to guess). Each key has an id, the
organisation it belongs to and a role: ``reader`` (read everything it may see) or
``operator`` (also acknowledge alerts). Keys come from a YAML file (``HUB_API_KEYS_FILE``)::

    keys:
      - {id: situation-room, org: comune, role: reader, sha256: 5e88...}

or from ``HUB_API_KEYS`` (``id:org:role:sha256`` entries separated by commas). ``hub apikey
new`` makes a key and prints the line to add.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hub.errors import ConfigError

Role = Literal["reader", "operator"]
ROLE_RANK = {"reader": 0, "operator": 1}


class ApiKey(BaseModel):
    """One key: who it is, for which organisation, what it may do, and its hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.@-]+$")
    org: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    role: Role
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def allows(self, role: Role) -> bool:
        """True when this key's role is at least ``role``."""
        return ROLE_RANK[self.role] >= ROLE_RANK[role]


def digest(token: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh key: 32 random bytes, URL-safe."""
    return "phk_" + secrets.token_urlsafe(32)


class ApiKeys:
    """The configured keys, looked up by hash."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._by_hash: dict[str, ApiKey] = {}
        for key in keys:
            if key.sha256 in self._by_hash:
                raise ConfigError(f"API key {key.id!r} has the same hash as another key")
            self._by_hash[key.sha256] = key
        ids = [k.id for k in keys]
        if len(set(ids)) != len(ids):
            raise ConfigError("API key ids must be unique")

    def __len__(self) -> int:
        return len(self._by_hash)

    @classmethod
    def load(cls, file: Path | None, env_value: str | None) -> ApiKeys:
        """Keys from the YAML file and/or the environment variable's value."""
        keys: list[ApiKey] = []
        if file is not None:
            try:
                data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
            except (OSError, yaml.YAMLError) as exc:
                raise ConfigError(f"{file}: cannot read API keys: {exc}") from exc
            if not isinstance(data, dict) or not isinstance(data.get("keys", []), list):
                raise ConfigError(f"{file}: expected a mapping with a 'keys' list")
            for index, entry in enumerate(data.get("keys", [])):
                try:
                    keys.append(ApiKey.model_validate(entry))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    raise ConfigError(f"{file}: keys.{index}.{where}: {first['msg']}") from exc
        for index, entry in enumerate(filter(None, re.split(r"\s*,\s*", env_value or ""))):
            parts = entry.split(":")
            if len(parts) != 4:
                raise ConfigError(f"HUB_API_KEYS entry {index}: expected id:org:role:sha256")
            try:
                keys.append(
                    ApiKey.model_validate(
                        dict(zip(("id", "org", "role", "sha256"), parts, strict=True))
                    )
                )
            except ValidationError as exc:
                raise ConfigError(f"HUB_API_KEYS entry {index}: {exc.errors()[0]['msg']}") from exc
        return cls(keys)

    def organisations(self) -> set[str]:
        """The organisations the keys belong to."""
        return {key.org for key in self._by_hash.values()}

    def authenticate(self, token: str) -> ApiKey | None:
        """The key ``token`` belongs to, or ``None``."""
        hashed = digest(token)
        key = self._by_hash.get(hashed)
        # compare_digest: the dict lookup already decided, but keep the final check
        # constant-time so timing says nothing about how much of a hash matched
        if key is not None and hmac.compare_digest(key.sha256, hashed):
            return key
        return None
