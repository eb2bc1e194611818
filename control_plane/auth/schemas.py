"""API keys on the wire: what an admin sends and sees. A secret appears only in `KeyIssued`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .models import ApiKey, IssuedKey, Principal, Role

DEFAULT_GRACE_HOURS = 24.0


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="who or what uses the key")
    role: Role
    expires_in_days: float | None = Field(
        default=None, gt=0, le=3650, description="lifetime; unset = until revoked"
    )

    @property
    def expires_in(self) -> timedelta | None:
        return None if self.expires_in_days is None else timedelta(days=self.expires_in_days)


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_hours: float = Field(
        default=DEFAULT_GRACE_HOURS,
        ge=0,
        le=720,
        description="how long the old key keeps working beside the new one",
    )


class KeyPublic(BaseModel):
    id: str
    name: str
    role: Role
    masked: str = Field(description="the key's public part, e.g. bess_3f9a0c1d2e4b5a6f_…")
    state: Literal["active", "expiring", "expired", "revoked"]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    rotated_from: str | None

    @classmethod
    def of(cls, key: ApiKey, *, now: datetime) -> KeyPublic:
        return cls(
            id=key.key_id,
            name=key.name,
            role=key.role,
            masked=key.masked,
            state=key.state(now),
            created_at=key.created_at,
            expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            last_used_at=key.last_used_at,
            rotated_from=key.rotated_from,
        )


class KeyIssued(KeyPublic):
    secret: str = Field(description="the full API key; shown this once, store it now")

    @classmethod
    def issued(cls, issued: IssuedKey, *, now: datetime) -> KeyIssued:
        return cls(**KeyPublic.of(issued.key, now=now).model_dump(), secret=issued.token)


class WhoAmI(BaseModel):
    key_id: str
    name: str
    role: Role
    via: str

    @classmethod
    def of(cls, principal: Principal) -> WhoAmI:
        return cls(
            key_id=principal.key_id, name=principal.name, role=principal.role, via=principal.via
        )
