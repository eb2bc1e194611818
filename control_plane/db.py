"""The SQL layer shared by every service: an engine factory and an ordered-migrations runner.

One code path for both stores (DESIGN decision 4): the embedded default is SQLite in WAL mode,
the scale-out store is PostgreSQL through psycopg 3. Services use SQLAlchemy Core, never the
ORM, and run its (blocking) calls off the event loop.

SQLite durability is the caller's choice (`sqlite_synchronous`, the plane's setting of the same
name): `FULL` (default) fsyncs the WAL on every commit, so an acknowledged trade or telemetry
ack survives a power loss; `NORMAL` fsyncs only at checkpoints, survives a crash of the process
but may lose the last commits on a power loss, and commits about twice as fast on the build
machine (bench/exchange_orders.py: ~1,000 vs ~1,900 orders/s).

Migrations: each service registers an ordered list of `Migration`s under its own name; the
`schema_migrations` table records which (service, version) ran. Every migration runs in its own
transaction together with its bookkeeping row, so a failed one leaves nothing half-applied
(PostgreSQL and SQLite both have transactional DDL). A migration is never edited after it has
shipped: a schema change is a new migration.

Several plane replicas may start at once against one database, so migrating is serialised:
every migration transaction first takes a lock (PostgreSQL: the transaction-level advisory
lock `MIGRATION_LOCK_KEY`; SQLite: `BEGIN IMMEDIATE`, the database's write lock) and re-reads
what has run under it, so each migration runs exactly once and a replica that waited skips
what the other one applied.

Errors:

    StoreError (RuntimeError)         the store cannot be opened or migrated
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000

SqliteSynchronous = Literal["FULL", "NORMAL"]
"""`PRAGMA synchronous` of the plane's SQLite engine: FULL survives a power loss, NORMAL a crash."""

MIGRATION_LOCK_KEY = 0x70686F656E797261  # "phoenyra": the advisory lock key of all migrations
_BEGIN_MODE = "bess_sqlite_begin"  # execution option: the SQLite BEGIN variant of a transaction


class StoreError(RuntimeError):
    """The store cannot be opened, reached or migrated; the message says which and why."""


def create_engine(
    *,
    database_url: str | None,
    sqlite_path: Path,
    sqlite_synchronous: SqliteSynchronous = "FULL",
) -> Engine:
    """An engine for PostgreSQL when `database_url` is set, else for the SQLite file."""
    if database_url:
        url = sa.make_url(database_url)
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        if url.drivername != "postgresql+psycopg":
            raise StoreError(f"unsupported database {url.drivername!r}: use a postgresql:// DSN")
        return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    if sqlite_synchronous not in get_args(SqliteSynchronous):
        raise StoreError(f"sqlite_synchronous must be FULL or NORMAL, got {sqlite_synchronous!r}")
    try:
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create {sqlite_path.parent}: {exc.strerror or exc}") from None
    engine = sa.create_engine(f"sqlite+pysqlite:///{sqlite_path}")
    sa.event.listen(engine, "connect", partial(_sqlite_pragmas, synchronous=sqlite_synchronous))
    sa.event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_pragmas(
    dbapi_connection: Any, connection_record: Any, *, synchronous: SqliteSynchronous
) -> None:
    # pysqlite's own transaction handling skips BEGIN before DDL, so a failed migration would
    # leave its tables behind: turn it off and let SQLAlchemy emit BEGIN (its documented recipe).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute(f"PRAGMA synchronous = {synchronous}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get(_BEGIN_MODE, "")
    conn.exec_driver_sql(f"BEGIN {mode}" if mode else "BEGIN")


def for_writes(engine: Engine) -> Engine:
    """`engine` whose transactions take SQLite's write lock at BEGIN (`BEGIN IMMEDIATE`).

    Use it for every transaction that writes. A deferred transaction that reads first and then
    writes must upgrade its read snapshot to the write lock; if another connection committed
    in between, SQLite answers SQLITE_BUSY at once, without waiting out the busy timeout
    ("database is locked" under load). Taking the lock at BEGIN makes writers queue on the
    busy timeout instead. Reads stay deferred (WAL readers never block). On PostgreSQL the
    option is ignored.
    """
    return engine.execution_options(**{_BEGIN_MODE: "IMMEDIATE"})


@contextmanager
def transaction(
    engine: Engine, error: Callable[[str], Exception], store: str
) -> Iterator[Connection]:
    """One transaction on `engine`; a SQLAlchemy error (after the rollback) becomes
    `error("the <store> failed: ...")`, the calling service's own store error."""
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise error(f"the {store} failed: {type(exc).__name__}: {exc}") from exc


def ping(engine: Engine) -> None:
    """Raise StoreError unless the store answers a trivial query."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StoreError(f"the store does not answer: {type(exc).__name__}") from None


# -- migrations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step of a service; `version` starts at 1 and has no gaps."""

    version: int
    name: str
    apply: Callable[[Connection], None]


_metadata = sa.MetaData()
schema_migrations = sa.Table(
    "schema_migrations",
    _metadata,
    sa.Column("service", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("applied_unix_ms", sa.BigInteger, nullable=False),
)


def migrate(engine: Engine, service: str, migrations: Sequence[Migration]) -> list[int]:
    """Apply the service's migrations not applied yet, in order; the versions applied now."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise StoreError(f"{service}: migration versions must be 1..n in order, got {versions}")
    # Every transaction below holds the migration lock (see the module docstring).
    locked = for_writes(engine)
    try:
        with locked.begin() as conn:
            _lock_migrations(conn)
            _metadata.create_all(conn, checkfirst=True)
            done = _applied(conn, service)
        newer = sorted(v for v in done if v > len(migrations))
        if newer:
            raise StoreError(
                f"{service}: the store has schema version {newer[-1]}, this build knows only "
                f"{len(migrations)}: run a newer control plane (downgrades are not supported)"
            )
        applied: list[int] = []
        for migration in migrations:
            if migration.version in done:
                continue
            with locked.begin() as conn:
                _lock_migrations(conn)
                if migration.version in _applied(conn, service):
                    continue  # another replica applied it while this one waited for the lock
                migration.apply(conn)
                conn.execute(
                    schema_migrations.insert().values(
                        service=service,
                        version=migration.version,
                        name=migration.name,
                        applied_unix_ms=round(time.time() * 1000),
                    )
                )
            log.info(
                "store: %s migration %d (%s) applied", service, migration.version, migration.name
            )
            applied.append(migration.version)
        return applied
    except SQLAlchemyError as exc:
        raise StoreError(f"{service}: migrating the store failed: {exc}") from exc


def _lock_migrations(conn: Connection) -> None:
    """Hold the migration lock until the transaction ends (SQLite: BEGIN IMMEDIATE holds it)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_KEY)))


def _applied(conn: Connection, service: str) -> set[int]:
    return set(
        conn.scalars(
            sa.select(schema_migrations.c.version).where(schema_migrations.c.service == service)
        )
    )
