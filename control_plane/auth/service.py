"""The access-control service: issue, list, revoke and rotate API keys; authenticate requests.

No FastAPI here (STYLE item 1): `deps.py` turns requests into calls of this service and its
errors into 401/403. Store calls block: async callers run `authenticate_key` and the admin
operations off the event loop (`asyncio.to_thread`). There is no key cache: every request reads
its key row (a primary-key lookup), so a revocation takes effect at once in every replica.

Key format: `bess_<key id: 16 hex>_<secret: 43 chars urlsafe base64 of 32 random bytes>`. The key
id is public (it names the key in lists and logs); only SHA-256 of the secret is stored and it
is compared in constant time. A rotation issues a successor with the same name and role and
lets the old key expire after a grace period, so both work while clients switch over.

The static bootstrap key (`API_KEY` setting) and the HMAC principal are configured, not stored:
they cannot be listed, rotated or revoked here (change the setting and restart).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from .keys import KeyStore
from .models import (
    KEY_PREFIX,
    ApiKey,
    AuthError,
    Forbidden,
    IssuedKey,
    KeyStateError,
    Principal,
    Role,
    Unauthenticated,
    UnknownKeyError,
)
from .signing import HmacVerifier

log = logging.getLogger(__name__)

DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=30)
MAX_LIFETIME = timedelta(days=3650)
TOUCH_EVERY = timedelta(minutes=1)
"""`last_used_at` is written at most this often per key: not a write per request."""

_TOKEN = re.compile(rf"{KEY_PREFIX}_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{43}})")
_NAME = re.compile(r"[\w .@:/+-]{1,100}")
# Compared against when the key id is unknown, so that case costs what a wrong secret costs.
_DUMMY_DIGEST = hashlib.sha256(b"no such key").hexdigest()


def utc_now() -> datetime:
    return datetime.now(UTC)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class AuthMetrics:
    """`bess_plane_auth_failures_total{reason}` in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.failures = Counter(
            "bess_plane_auth_failures_total",
            "Requests refused by access control, by reason",
            ["reason"],
            registry=registry,
        )


class AuthService:
    def __init__(
        self,
        *,
        store: KeyStore,
        clock: Callable[[], datetime] = utc_now,
        static_key: str | None = None,
        static_role: Role = Role.VIEWER,
        hmac_verifier: HmacVerifier | None = None,
        metrics: AuthMetrics | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self._static_key = static_key
        self._static_role = static_role
        self.hmac = hmac_verifier
        self._metrics = metrics
        self._touched: dict[str, datetime] = {}

    def open(self) -> None:
        """Migrate the store (blocking)."""
        self.store.migrate()

    # -- admin operations (blocking) -----------------------------------------------------

    def create(self, *, name: str, role: Role, expires_in: timedelta | None = None) -> IssuedKey:
        """A new key; its token is in the result and nowhere else."""
        name = _checked_name(name)
        now = self.clock()
        expires_at = None
        if expires_in is not None:
            if not timedelta(0) < expires_in <= MAX_LIFETIME:
                raise ValueError(
                    f"expiry must be more than 0 and at most {MAX_LIFETIME.days} days, "
                    f"got {expires_in}"
                )
            expires_at = now + expires_in
        key = ApiKey(
            key_id=secrets.token_hex(8),
            name=name,
            role=Role(role),
            created_at=now,
            expires_at=expires_at,
        )
        secret = secrets.token_urlsafe(32)
        self.store.add(key, secret_sha256=digest(secret))
        log.info("auth: key %s (%r, role %s) created", key.key_id, key.name, key.role)
        return IssuedKey(key, _token(key.key_id, secret))

    def list(self) -> list[ApiKey]:
        return self.store.list()

    def get(self, key_id: str) -> ApiKey:
        found = self.store.get(key_id)
        if found is None:
            raise UnknownKeyError(key_id)
        return found[0]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke at once; the next request with the key is refused."""
        key = self.get(key_id)
        now = self.clock()
        if key.revoked_at is not None:
            raise KeyStateError(
                f"key {key_id} was revoked already at {key.revoked_at:%Y-%m-%d %H:%M}Z"
            )
        self.store.revoke(key_id, now=now)
        self._touched.pop(key_id, None)
        log.info("auth: key %s (%r) revoked", key_id, key.name)
        return replace(key, revoked_at=now)

    def rotate(self, key_id: str, *, grace: timedelta = DEFAULT_GRACE) -> IssuedKey:
        """A successor with the same name and role; the old key ends after `grace`."""
        if not timedelta(0) <= grace <= MAX_GRACE:
            raise ValueError(
                f"grace must be between 0 and {MAX_GRACE.days * 24} hours, got {grace}"
            )
        old = self.get(key_id)
        now = self.clock()
        if not old.usable(now):
            raise KeyStateError(
                f"key {key_id} is {old.state(now)}: create a new key instead of rotating it"
            )
        ends = now + grace
        if old.expires_at is not None and old.expires_at < ends:
            ends = old.expires_at  # rotating never lengthens a key's life
        new = ApiKey(
            key_id=secrets.token_hex(8),
            name=old.name,
            role=old.role,
            created_at=now,
            expires_at=None if old.expires_at is None else now + (old.expires_at - old.created_at),
            rotated_from=old.key_id,
        )
        secret = secrets.token_urlsafe(32)
        self.store.rotate(key_id, new, secret_sha256=digest(secret), old_expires_at=ends)
        log.info(
            "auth: key %s (%r) rotated to %s; the old key ends %s",
            key_id,
            old.name,
            new.key_id,
            ends.isoformat(timespec="seconds"),
        )
        return IssuedKey(new, _token(new.key_id, secret))

    # -- authentication --------------------------------------------------------------------

    def authenticate_key(self, token: str) -> Principal:
        """The key's principal (blocking: one store read); Unauthenticated if unusable."""
        try:
            return self._authenticate_key(token)
        except AuthError as exc:
            self.failed(exc.reason)
            raise

    def _authenticate_key(self, token: str) -> Principal:
        static = self._static_key
        if static is not None and hmac.compare_digest(token.encode(), static.encode()):
            return Principal(
                key_id="static", name="API_KEY", role=self._static_role, via="static_key"
            )
        match = _TOKEN.fullmatch(token)
        if match is None:
            raise Unauthenticated(
                f"not an API key of this plane (they look like {KEY_PREFIX}_<id>_<secret>)",
                reason="malformed_key",
            )
        key_id, secret = match.groups()
        found = self.store.get(key_id)
        stored = found[1] if found is not None else _DUMMY_DIGEST
        if not hmac.compare_digest(digest(secret), stored) or found is None:
            raise Unauthenticated("invalid API key", reason="invalid_key")
        key = found[0]
        now = self.clock()
        state = key.state(now)
        if state in ("revoked", "expired"):
            # Said only to a holder of the secret: it helps them, and tells nobody else anything.
            raise Unauthenticated(f"API key {key_id} is {state}", reason=state)
        last = self._touched.get(key_id) or key.last_used_at
        if last is None or now - last >= TOUCH_EVERY:
            self._touched[key_id] = now
            self.store.touch(key_id, now=now)
        return Principal(key_id=key.key_id, name=key.name, role=key.role, via="api_key")

    def verify_signature(
        self,
        *,
        method: str,
        path: str,
        timestamp: str | None,
        nonce: str | None,
        sig: str | None,
        body: bytes,
    ) -> Principal:
        """The HMAC principal of a signed request (in memory: call it on the event loop)."""
        try:
            if self.hmac is None:
                raise Unauthenticated(
                    "signed requests are not enabled on this plane (it has no HMAC_SECRET): "
                    "use an API key",
                    reason="hmac_disabled",
                )
            return self.hmac.verify(
                method=method, path=path, timestamp=timestamp, nonce=nonce, sig=sig, body=body
            )
        except AuthError as exc:
            self.failed(exc.reason)
            raise

    def authorize(self, principal: Principal, needed: Role) -> Principal:
        """The principal if its role allows `needed`, else Forbidden naming both roles."""
        if principal.role.allows(needed):
            return principal
        self.failed("forbidden")
        raise Forbidden(principal, needed)

    def failed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.failures.labels(reason).inc()


def _token(key_id: str, secret: str) -> str:
    return f"{KEY_PREFIX}_{key_id}_{secret}"


def _checked_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"key name {name!r} must be 1-100 letters, digits, spaces or . @ : / + - _"
        )
    return name
