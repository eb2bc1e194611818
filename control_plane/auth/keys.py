"""API-key persistence: the `auth_api_keys` table in SQLite or PostgreSQL (SQLAlchemy Core).

Only a SHA-256 digest of a key's secret is stored. The secret is 32 random bytes
(`secrets.token_urlsafe(32)`, 256 bits), so a plain hash cannot be brute-forced and a slow
password hash (bcrypt, Argon2) would only cost CPU on every request; a server-side pepper
(HMAC with a key from the settings) would add a second secret whose loss locks every key
out, for no gain against 256-bit secrets. Times are `*_unix_ms` BIGINT like the fleet store.

Blocking calls; the service's async callers run them off the event loop.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from control_plane import db
from control_plane.db import Migration, migrate

from .models import ApiKey, Role

SERVICE = "auth"

metadata = sa.MetaData()

api_keys = sa.Table(
    "auth_api_keys",
    metadata,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("secret_sha256", sa.String(64), nullable=False),  # hex digest of the secret part
    sa.Column("created_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_unix_ms", sa.BigInteger),
    sa.Column("revoked_unix_ms", sa.BigInteger),
    sa.Column("last_used_unix_ms", sa.BigInteger),
    sa.Column("rotated_from", sa.String(32)),  # the key this one replaced
)


def _create_v1(conn: Connection) -> None:
    # v1 is the table above as first shipped; a later change is a new migration.
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "api keys", _create_v1),)


def to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _opt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC)


class KeyStore:
    """Blocking persistence of API keys; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = db.for_writes(engine)  # BEGIN IMMEDIATE on SQLite: see db.for_writes

    def migrate(self) -> list[int]:
        return migrate(self.engine, SERVICE, MIGRATIONS)

    def add(self, key: ApiKey, *, secret_sha256: str) -> None:
        with self._writer.begin() as conn:
            conn.execute(api_keys.insert().values(**_row(key), secret_sha256=secret_sha256))

    def get(self, key_id: str) -> tuple[ApiKey, str] | None:
        """The key and its stored secret digest, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).mappings()
            found = row.first()
        return None if found is None else (_key(found), str(found["secret_sha256"]))

    def list(self) -> list[ApiKey]:
        query = sa.select(api_keys).order_by(api_keys.c.created_unix_ms, api_keys.c.key_id)
        with self.engine.connect() as conn:
            return [_key(row) for row in conn.execute(query).mappings()]

    def rotate(
        self, old_id: str, new: ApiKey, *, secret_sha256: str, old_expires_at: datetime
    ) -> None:
        """Insert the successor and set the old key's end, in one transaction."""
        with self._writer.begin() as conn:
            conn.execute(api_keys.insert().values(**_row(new), secret_sha256=secret_sha256))
            conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == old_id)
                .values(expires_unix_ms=to_ms(old_expires_at))
            )

    def revoke(self, key_id: str, *, now: datetime) -> bool:
        """Mark the key revoked; False if it does not exist or was revoked already."""
        with self._writer.begin() as conn:
            result = conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_unix_ms.is_(None))
                .values(revoked_unix_ms=to_ms(now))
            )
            return bool(result.rowcount)

    def touch(self, key_id: str, *, now: datetime) -> None:
        with self._writer.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id)
                .values(last_used_unix_ms=to_ms(now))
            )


def _row(key: ApiKey) -> dict[str, object]:
    return {
        "key_id": key.key_id,
        "name": key.name,
        "role": key.role.value,
        "created_unix_ms": to_ms(key.created_at),
        "expires_unix_ms": None if key.expires_at is None else to_ms(key.expires_at),
        "revoked_unix_ms": None if key.revoked_at is None else to_ms(key.revoked_at),
        "last_used_unix_ms": None if key.last_used_at is None else to_ms(key.last_used_at),
        "rotated_from": key.rotated_from,
    }


def _key(row: RowMapping) -> ApiKey:
    return ApiKey(
        key_id=row["key_id"],
        name=row["name"],
        role=Role(row["role"]),
        created_at=datetime.fromtimestamp(row["created_unix_ms"] / 1000, UTC),
        expires_at=_opt(row["expires_unix_ms"]),
        revoked_at=_opt(row["revoked_unix_ms"]),
        last_used_at=_opt(row["last_used_unix_ms"]),
        rotated_from=row["rotated_from"],
    )
