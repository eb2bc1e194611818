"""Risk limits in SQLite or PostgreSQL: one row per portfolio (SQLAlchemy Core).

Amounts are stored as whole cents (BIGINT), so both dialects round-trip them exactly; times as
`*_unix_ms`. Writes go through `db.for_writes` (BEGIN IMMEDIATE on SQLite).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from control_plane import db
from control_plane.db import Migration

from .models import EUR_CENT, RiskLimit, UnknownLimitError

__all__ = ["MIGRATIONS", "SERVICE", "LimitStore"]

SERVICE = "risk"

metadata = sa.MetaData()
limits = sa.Table(
    "risk_limits",
    metadata,
    sa.Column("portfolio", sa.String(64), primary_key=True),
    sa.Column("var_limit_cents", sa.BigInteger),
    sa.Column("pnl_limit_cents", sa.BigInteger),
    sa.Column("hard", sa.Boolean, nullable=False),
    sa.Column("updated_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(200), nullable=False),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "risk limits", _create_v1),)


def _cents(value: Decimal | None) -> int | None:
    return None if value is None else int((value / EUR_CENT).to_integral_value())


def _eur(cents: int | None) -> Decimal | None:
    return None if cents is None else Decimal(cents) * EUR_CENT


def _limit(row: Any) -> RiskLimit:
    return RiskLimit(
        portfolio=row.portfolio,
        var_limit_eur=_eur(row.var_limit_cents),
        pnl_limit_eur=_eur(row.pnl_limit_cents),
        hard=bool(row.hard),
        updated_at=datetime.fromtimestamp(row.updated_unix_ms / 1000, UTC),
        updated_by=row.updated_by,
    )


class LimitStore:
    """Blocking; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def migrate(self) -> list[int]:
        return db.migrate(self.engine, SERVICE, MIGRATIONS)

    def list(self) -> list[RiskLimit]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(limits).order_by(limits.c.portfolio))
            return [_limit(row) for row in rows]

    def get(self, portfolio: str) -> RiskLimit | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(limits).where(limits.c.portfolio == portfolio)).first()
        return None if row is None else _limit(row)

    def put(self, limit: RiskLimit) -> RiskLimit:
        """Create or replace the portfolio's limit."""
        values = {
            "var_limit_cents": _cents(limit.var_limit_eur),
            "pnl_limit_cents": _cents(limit.pnl_limit_eur),
            "hard": limit.hard,
            "updated_unix_ms": round(limit.updated_at.timestamp() * 1000),
            "updated_by": limit.updated_by,
        }
        with db.for_writes(self.engine).begin() as conn:
            changed = conn.execute(
                limits.update().where(limits.c.portfolio == limit.portfolio).values(**values)
            ).rowcount
            if not changed:
                conn.execute(limits.insert().values(portfolio=limit.portfolio, **values))
        return limit

    def delete(self, portfolio: str) -> None:
        with db.for_writes(self.engine).begin() as conn:
            gone = conn.execute(limits.delete().where(limits.c.portfolio == portfolio)).rowcount
        if not gone:
            raise UnknownLimitError(f"portfolio {portfolio!r} has no risk limit to delete")
