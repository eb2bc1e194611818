"""Access-control domain types: roles, principals, stored keys and the errors of this package.

Roles (the issue's four, plus one narrow machine role):

    viewer       read everything (fleet status, history, schedules, orders, trades ...)
    trader       viewer + orders and schedules
    technician   viewer + telemetry + site and telemetry configuration
    telemetry    only posts external telemetry (the spec's BESS_API_KEY, a data logger's key):
                 a device on a site network gets no read access and cannot steer batteries
    admin        everything, including keys, limits and policy

Errors:

    AuthError (Exception)              a request is not allowed; `reason` is a metric label
    ├── Unauthenticated                no, malformed, unknown, revoked or expired credentials
    └── Forbidden                      valid credentials, but the role does not allow it
    UnknownKeyError (LookupError)      an admin operation names a key that does not exist
    KeyStateError (ValueError)         the key cannot be rotated/revoked in its state
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

KEY_PREFIX = "bess"
"""Every API key starts with `bess_`: secret scanners and people recognise it."""


class Role(enum.StrEnum):
    VIEWER = "viewer"
    TRADER = "trader"
    TECHNICIAN = "technician"
    TELEMETRY = "telemetry"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        """True if a principal with this role may do what `needed` may do."""
        return needed in _GRANTS[self]


_GRANTS: dict[Role, frozenset[Role]] = {
    Role.VIEWER: frozenset({Role.VIEWER}),
    Role.TRADER: frozenset({Role.TRADER, Role.VIEWER}),
    Role.TECHNICIAN: frozenset({Role.TECHNICIAN, Role.VIEWER, Role.TELEMETRY}),
    Role.TELEMETRY: frozenset({Role.TELEMETRY}),
    Role.ADMIN: frozenset(Role),
}

Via = Literal["api_key", "static_key", "hmac"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: a stored key, the static bootstrap key or an HMAC-signing client."""

    key_id: str
    name: str
    role: Role
    via: Via


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret (only a hash of it is stored)."""

    key_id: str
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    rotated_from: str | None = None

    @property
    def masked(self) -> str:
        """How the key is shown: its public part only, e.g. `bess_3f9a0c1d2e4b_…`."""
        return f"{KEY_PREFIX}_{self.key_id}_…"

    def state(self, now: datetime) -> Literal["active", "expiring", "expired", "revoked"]:
        """`expiring`: still valid but with an end date (e.g. the old key of a rotation)."""
        if self.revoked_at is not None and self.revoked_at <= now:
            return "revoked"
        if self.expires_at is not None:
            return "expired" if self.expires_at <= now else "expiring"
        return "active"

    def usable(self, now: datetime) -> bool:
        return self.state(now) in ("active", "expiring")


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just created: the full secret is in `token`, shown once and never stored."""

    key: ApiKey
    token: str


class AuthError(Exception):
    """A request is not allowed; `reason` is the `bess_plane_auth_failures_total` label."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class Unauthenticated(AuthError):
    """No usable credentials (HTTP 401, WebSocket close 4401)."""


class Forbidden(AuthError):
    """Valid credentials whose role does not allow the request (HTTP 403, close 4403)."""

    def __init__(self, principal: Principal, needed: Role) -> None:
        super().__init__(
            f"this needs role {needed}; key {principal.name!r} has role {principal.role}",
            reason="forbidden",
        )
        self.principal = principal
        self.needed = needed


class UnknownKeyError(LookupError):
    """An admin operation names a key id that is not in the store."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id!r} (list them with `bess-plane keys list`)")
        self.key_id = key_id


class KeyStateError(ValueError):
    """The key cannot be rotated or revoked in its current state; the message says why."""
