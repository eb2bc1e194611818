"""AuthService + KeyStore on SQLite and PostgreSQL: hashes, masks, expiry, rotation, revoking."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from control_plane.auth.keys import KeyStore, api_keys
from control_plane.auth.models import (
    Forbidden,
    KeyStateError,
    Role,
    Unauthenticated,
    UnknownKeyError,
)
from control_plane.auth.service import AuthService

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def leap(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(engine: Engine, clock: Clock) -> AuthService:
    service = AuthService(store=KeyStore(engine), clock=clock)
    service.open()
    return service


def _reason(auth: AuthService, token: str) -> str:
    with pytest.raises(Unauthenticated) as caught:
        auth.authenticate_key(token)
    return caught.value.reason


def test_only_a_hash_of_the_secret_is_stored(auth: AuthService, engine: Engine) -> None:
    issued = auth.create(name="desk", role=Role.TRADER)
    token = issued.token
    prefix, key_id, secret = token.split("_", 2)
    assert (prefix, key_id) == ("bess", issued.key.key_id)
    assert len(secret) >= 43  # 32 random bytes
    with engine.connect() as conn:
        row = conn.execute(sa.select(api_keys)).mappings().one()
    assert secret not in str(dict(row))
    assert row["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert issued.key.masked == f"bess_{key_id}_…"
    principal = auth.authenticate_key(token)
    assert (principal.key_id, principal.name, principal.role, principal.via) == (
        key_id,
        "desk",
        Role.TRADER,
        "api_key",
    )


def test_wrong_unknown_and_malformed_keys_are_refused_alike(auth: AuthService) -> None:
    token = auth.create(name="desk", role=Role.VIEWER).token
    wrong_secret = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    assert _reason(auth, wrong_secret) == "invalid_key"
    unknown = "bess_0123456789abcdef_" + token.split("_", 2)[2]
    assert _reason(auth, unknown) == "invalid_key"
    assert _reason(auth, "demo") == "malformed_key"
    assert _reason(auth, token + "x") == "malformed_key"


def test_expiry(auth: AuthService, clock: Clock) -> None:
    issued = auth.create(name="temp", role=Role.VIEWER, expires_in=timedelta(days=1))
    assert issued.key.expires_at == T0 + timedelta(days=1)
    assert issued.key.state(T0) == "expiring"
    clock.leap(hours=23, minutes=59)
    auth.authenticate_key(issued.token)
    clock.leap(minutes=1)
    assert _reason(auth, issued.token) == "expired"
    with pytest.raises(ValueError, match="at most 3650 days"):
        auth.create(name="x", role=Role.VIEWER, expires_in=timedelta(days=4000))


def test_revocation_is_immediate(auth: AuthService, clock: Clock) -> None:
    issued = auth.create(name="laptop", role=Role.ADMIN)
    auth.authenticate_key(issued.token)  # a previous success caches nothing
    revoked = auth.revoke(issued.key.key_id)
    assert revoked.revoked_at == T0
    assert _reason(auth, issued.token) == "revoked"
    with pytest.raises(KeyStateError, match="revoked already"):
        auth.revoke(issued.key.key_id)
    with pytest.raises(UnknownKeyError, match="no API key with id 'nope'"):
        auth.revoke("nope")
    with pytest.raises(KeyStateError, match="is revoked: create a new key"):
        auth.rotate(issued.key.key_id)
    (listed,) = auth.list()
    assert listed.state(clock()) == "revoked"


def test_rotation_keeps_both_keys_working_for_the_grace_period(
    auth: AuthService, clock: Clock
) -> None:
    old = auth.create(name="bot", role=Role.TRADER)
    clock.leap(hours=1)
    new = auth.rotate(old.key.key_id, grace=timedelta(hours=2))
    assert (new.key.name, new.key.role, new.key.rotated_from) == (
        "bot",
        Role.TRADER,
        old.key.key_id,
    )
    assert new.token != old.token
    clock.leap(hours=1, minutes=59)
    assert auth.authenticate_key(old.token).key_id == old.key.key_id
    assert auth.authenticate_key(new.token).key_id == new.key.key_id
    clock.leap(minutes=1)
    assert _reason(auth, old.token) == "expired"
    assert auth.authenticate_key(new.token).role == Role.TRADER
    states = {k.key_id: k.state(clock()) for k in auth.list()}
    assert states == {old.key.key_id: "expired", new.key.key_id: "active"}


def test_rotation_never_lengthens_a_key(auth: AuthService, clock: Clock) -> None:
    old = auth.create(name="short", role=Role.VIEWER, expires_in=timedelta(hours=1))
    new = auth.rotate(old.key.key_id, grace=timedelta(hours=24))
    assert auth.get(old.key.key_id).expires_at == T0 + timedelta(hours=1)
    assert new.key.expires_at == T0 + timedelta(hours=1)  # same lifetime as its predecessor
    with pytest.raises(ValueError, match="between 0 and 720 hours"):
        auth.rotate(new.key.key_id, grace=timedelta(days=31))


def test_last_used_is_written_at_most_once_a_minute(auth: AuthService, clock: Clock) -> None:
    issued = auth.create(name="poller", role=Role.VIEWER)
    auth.authenticate_key(issued.token)
    assert auth.get(issued.key.key_id).last_used_at == T0
    clock.leap(seconds=30)
    auth.authenticate_key(issued.token)
    assert auth.get(issued.key.key_id).last_used_at == T0
    clock.leap(seconds=30)
    auth.authenticate_key(issued.token)
    assert auth.get(issued.key.key_id).last_used_at == clock()


def test_static_key_and_roles(engine: Engine, clock: Clock) -> None:
    static = "s" * 40
    auth = AuthService(store=KeyStore(engine), clock=clock, static_key=static)
    auth.open()
    principal = auth.authenticate_key(static)
    assert (principal.via, principal.role) == ("static_key", Role.VIEWER)
    assert auth.authorize(principal, Role.VIEWER) is principal
    with pytest.raises(Forbidden, match="this needs role trader; key 'API_KEY' has role viewer"):
        auth.authorize(principal, Role.TRADER)


def test_names_are_checked(auth: AuthService) -> None:
    with pytest.raises(ValueError, match="must be 1-100 letters"):
        auth.create(name="bad\nname", role=Role.VIEWER)
    assert auth.create(name="  ops@site-7  ", role=Role.VIEWER).key.name == "ops@site-7"


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        (Role.VIEWER, {Role.VIEWER}),
        (Role.TRADER, {Role.VIEWER, Role.TRADER}),
        (Role.TECHNICIAN, {Role.VIEWER, Role.TECHNICIAN, Role.TELEMETRY}),
        (Role.TELEMETRY, {Role.TELEMETRY}),
        (Role.ADMIN, set(Role)),
    ],
)
def test_role_hierarchy(role: Role, allowed: set[Role]) -> None:
    assert {needed for needed in Role if role.allows(needed)} == allowed


def test_migration_is_idempotent(engine: Engine) -> None:
    store = KeyStore(engine)
    assert store.migrate() == [1]
    assert store.migrate() == []
