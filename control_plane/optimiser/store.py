"""The per-portfolio auto-submission switch: the `optimiser_auto_submit` table (SQLAlchemy Core).

One row per portfolio that was ever switched: `enabled`, when (`updated_unix_ms`, BIGINT like
the other stores) and by whom (`updated_by`, the API key's name and how it authenticated). A
portfolio without a row does not auto-submit: automated trading is opt-in. Rows are kept when
a switch is turned off, so the list shows who turned it off and when.

Plans stay in memory (service.py); only this switch is persistent, because it is a standing
risk decision of the desk that must survive a restart of the plane.

Blocking calls; the service runs them off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine, RowMapping

from control_plane import db
from control_plane.db import Migration, migrate

SERVICE = "optimiser"
MAX_PORTFOLIO_LENGTH = 64  # as the exchange's names (exchange/service.py MAX_NAME_LENGTH)
MAX_BY_LENGTH = 200

metadata = sa.MetaData()

auto_submit = sa.Table(
    "optimiser_auto_submit",
    metadata,
    sa.Column("portfolio", sa.String(MAX_PORTFOLIO_LENGTH), primary_key=True),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("updated_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_by", sa.String(MAX_BY_LENGTH), nullable=False),
)


def _create_v1(conn: Connection) -> None:
    # v1 is the table above as first shipped; a later change is a new migration.
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "auto-submission switch", _create_v1),)


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoSubmitSwitch:
    """Whether the optimiser places a portfolio's proposed orders when a plan is dispatched."""

    portfolio: str
    enabled: bool
    updated_at: datetime
    updated_by: str


def to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


class AutoSubmitStore:
    """Blocking persistence of the switches; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = db.for_writes(engine)  # BEGIN IMMEDIATE on SQLite: see db.for_writes

    def migrate(self) -> list[int]:
        return migrate(self.engine, SERVICE, MIGRATIONS)

    def set(self, switch: AutoSubmitSwitch) -> None:
        """Create or replace the portfolio's switch (one upsert: concurrent calls cannot
        collide on the primary key)."""
        values: dict[str, Any] = {
            "enabled": switch.enabled,
            "updated_unix_ms": to_ms(switch.updated_at),
            "updated_by": switch.updated_by[:MAX_BY_LENGTH],
        }
        insert = (postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert)(
            auto_submit
        )
        stmt = insert.values(portfolio=switch.portfolio, **values).on_conflict_do_update(
            index_elements=["portfolio"], set_=values
        )
        with self._writer.begin() as conn:
            conn.execute(stmt)

    def get(self, portfolio: str) -> AutoSubmitSwitch | None:
        query = sa.select(auto_submit).where(auto_submit.c.portfolio == portfolio)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return None if row is None else _switch(row)

    def list(self) -> list[AutoSubmitSwitch]:
        """Every switch ever set, by portfolio."""
        query = sa.select(auto_submit).order_by(auto_submit.c.portfolio)
        with self.engine.connect() as conn:
            return [_switch(row) for row in conn.execute(query).mappings()]


def _switch(row: RowMapping) -> AutoSubmitSwitch:
    return AutoSubmitSwitch(
        portfolio=row["portfolio"],
        enabled=bool(row["enabled"]),
        updated_at=datetime.fromtimestamp(row["updated_unix_ms"] / 1000, UTC),
        updated_by=row["updated_by"],
    )
