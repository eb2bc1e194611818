"""Control-plane fixtures: the store on both backends (SQLite file, a real PostgreSQL)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from control_plane import db

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _no_plane_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's DATABASE_URL, SQLITE_PATH or POLICY_PATH must not redirect the tests."""
    for name in ("DATABASE_URL", "SQLITE_PATH", "POLICY_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh database on the local PostgreSQL for this test session, dropped at the end."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(
            f"PostgreSQL store tests skipped: no server answers at {PG_ADMIN_DSN} ({exc}). "
            "Start one (user postgres, trust auth) to run them."
        )
    name = f"bess_test_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://postgres@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_schema_dsn(postgres_dsn: str) -> str:
    """A DSN whose tables land in a schema of their own: tests share the database, not data."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{postgres_dsn}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty store of each backend."""
    dsn = None
    if request.param == "postgresql":
        dsn = request.getfixturevalue("postgres_schema_dsn")
    eng = db.create_engine(database_url=dsn, sqlite_path=tmp_path / "plane.sqlite3")
    yield eng
    eng.dispose()
