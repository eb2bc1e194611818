"""Credit master data and settlements: SQLAlchemy Core on the plane's shared engine.

Tables (prefixed `credit_`, the plane's services share one database):

- `credit_counterparties`: id (what orders carry in `counterparty`), legal name, limit in
  integer cents (NULL = no limit), alert thresholds (NULL = the plane's default).
- `credit_settlements`: one row per recorded settlement; amount in integer cents.
- `credit_settled_trades`: the counterparty's legs of trades a settlement covers; the primary
  key (trade_id, counterparty_id) makes settling a leg twice impossible, also between two
  concurrent requests (the second fails its insert and is told which legs).

Migrations run through `control_plane.db.migrate` under the service name "credit". Writes go
through `db.for_writes` (SQLite takes its write lock at BEGIN). Errors of the database become
`control_plane.db.StoreError`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from control_plane import db
from control_plane.db import Migration, StoreError
from control_plane.exchange.store import UtcDateTime

from .models import (
    CENT,
    Counterparty,
    CounterpartyExistsError,
    CounterpartyNotFoundError,
    Settlement,
    SettlementConflictError,
)

__all__ = ["MIGRATIONS", "SERVICE", "CreditStore"]

SERVICE = "credit"

metadata = sa.MetaData()
_Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite: INTEGER PK = rowid

counterparties = sa.Table(
    "credit_counterparties",
    metadata,
    sa.Column("counterparty_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("limit_cents", sa.BigInteger, nullable=True),
    sa.Column("thresholds_pct", sa.String(200), nullable=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "limit_cents IS NULL OR limit_cents > 0", name="ck_credit_counterparties_limit"
    ),
)

settlements = sa.Table(
    "credit_settlements",
    metadata,
    sa.Column("settlement_id", _Id, primary_key=True, autoincrement=True),
    sa.Column("counterparty_id", sa.String(64), nullable=False, index=True),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("amount_cents", sa.BigInteger, nullable=False),
    sa.Column("settled_on", sa.Date, nullable=False),
    sa.Column("reference", sa.String(128), nullable=True),
    sa.Column("note", sa.Text, nullable=True),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Column("recorded_by", sa.String(200), nullable=False),
    sa.CheckConstraint("kind IN ('trades', 'amount')", name="ck_credit_settlements_kind"),
)

settled_trades = sa.Table(
    "credit_settled_trades",
    metadata,
    sa.Column("trade_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("counterparty_id", sa.String(64), primary_key=True),
    sa.Column(
        "settlement_id",
        sa.BigInteger,
        sa.ForeignKey("credit_settlements.settlement_id"),
        nullable=False,
        index=True,
    ),
)


def _v1_tables(conn: Connection) -> None:
    metadata.create_all(conn, tables=[counterparties, settlements, settled_trades])


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "counterparties, settlements, settled trade legs", _v1_tables),
)


def _cents(amount: Decimal) -> int:
    return int((amount / CENT).to_integral_value())


def _eur(cents: int) -> Decimal:
    return (Decimal(cents) * CENT).quantize(CENT)


def _thresholds_text(values: tuple[Decimal, ...] | None) -> str | None:
    return None if values is None else ",".join(str(v) for v in values)


def _counterparty(row: sa.Row[Any]) -> Counterparty:
    text = row.thresholds_pct
    return Counterparty(
        counterparty_id=row.counterparty_id,
        name=row.name,
        limit_eur=None if row.limit_cents is None else _eur(row.limit_cents),
        alert_thresholds_pct=None if text is None else tuple(Decimal(t) for t in text.split(",")),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


class CreditStore:
    """Counterparties and settlements; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def migrate(self) -> list[int]:
        return db.migrate(self._engine, SERVICE, MIGRATIONS)

    # -- counterparties -----------------------------------------------------------------

    def list_counterparties(self) -> list[Counterparty]:
        query = sa.select(counterparties).order_by(counterparties.c.counterparty_id)
        with self._read() as conn:
            return [_counterparty(row) for row in conn.execute(query)]

    def get_counterparty(self, counterparty_id: str) -> Counterparty | None:
        query = sa.select(counterparties).where(counterparties.c.counterparty_id == counterparty_id)
        with self._read() as conn:
            row = conn.execute(query).first()
        return None if row is None else _counterparty(row)

    def insert_counterparty(self, cp: Counterparty) -> None:
        try:
            with self._write() as conn:
                conn.execute(counterparties.insert().values(**self._row(cp)))
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise CounterpartyExistsError(
                    f"counterparty {cp.counterparty_id!r} exists already: update it with PUT "
                    f"/api/credit/counterparties/{cp.counterparty_id}"
                ) from None
            raise

    def update_counterparty(self, cp: Counterparty) -> None:
        row = self._row(cp)
        del row["created_at"]
        with self._write() as conn:
            result = conn.execute(
                counterparties.update()
                .where(counterparties.c.counterparty_id == cp.counterparty_id)
                .values(**row)
            )
        if result.rowcount != 1:
            raise CounterpartyNotFoundError(f"no counterparty {cp.counterparty_id!r}")

    def delete_counterparty(self, counterparty_id: str) -> bool:
        with self._write() as conn:
            result = conn.execute(
                counterparties.delete().where(counterparties.c.counterparty_id == counterparty_id)
            )
        return bool(result.rowcount)

    @staticmethod
    def _row(cp: Counterparty) -> dict[str, Any]:
        return {
            "counterparty_id": cp.counterparty_id,
            "name": cp.name,
            "limit_cents": None if cp.limit_eur is None else _cents(cp.limit_eur),
            "thresholds_pct": _thresholds_text(cp.alert_thresholds_pct),
            "created_at": cp.created_at,
            "updated_at": cp.updated_at,
        }

    # -- settlements ----------------------------------------------------------------------

    def add_settlement(
        self,
        *,
        counterparty_id: str,
        trade_ids: Iterable[int],
        amount_eur: Decimal,
        settled_on: date,
        reference: str | None,
        note: str | None,
        recorded_at: datetime,
        recorded_by: str,
    ) -> Settlement:
        """Store a settlement and its trade legs atomically; `SettlementConflictError` when a
        leg is settled already (nothing is stored then)."""
        ids = tuple(sorted(set(trade_ids)))
        row = {
            "counterparty_id": counterparty_id,
            "kind": "trades" if ids else "amount",
            "amount_cents": _cents(amount_eur),
            "settled_on": settled_on,
            "reference": reference,
            "note": note,
            "recorded_at": recorded_at,
            "recorded_by": recorded_by,
        }
        try:
            with self._write() as conn:
                settlement_id = conn.execute(
                    settlements.insert().values(**row).returning(settlements.c.settlement_id)
                ).scalar_one()
                if ids:
                    conn.execute(
                        settled_trades.insert(),
                        [
                            {
                                "trade_id": t,
                                "counterparty_id": counterparty_id,
                                "settlement_id": settlement_id,
                            }
                            for t in ids
                        ],
                    )
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                done = self.settled_by(counterparty_id, ids)
                raise SettlementConflictError(
                    f"trades {sorted(done)} of {counterparty_id!r} are settled already "
                    f"(settlements {sorted(set(done.values()))}); nothing was recorded"
                ) from None
            raise
        return Settlement(
            settlement_id=int(settlement_id),
            counterparty_id=counterparty_id,
            trade_ids=ids,
            amount_eur=amount_eur,
            settled_on=settled_on,
            reference=reference,
            note=note,
            recorded_at=recorded_at,
            recorded_by=recorded_by,
        )

    def settled_by(self, counterparty_id: str, trade_ids: Iterable[int]) -> dict[int, int]:
        """trade id -> settlement id, for those of `trade_ids` whose leg is settled."""
        ids = list(trade_ids)
        if not ids:
            return {}
        query = sa.select(settled_trades.c.trade_id, settled_trades.c.settlement_id).where(
            settled_trades.c.counterparty_id == counterparty_id,
            settled_trades.c.trade_id.in_(ids),
        )
        with self._read() as conn:
            return {int(r.trade_id): int(r.settlement_id) for r in conn.execute(query)}

    def get_settlement(self, settlement_id: int) -> Settlement | None:
        found = self._settlements(
            sa.select(settlements).where(settlements.c.settlement_id == settlement_id)
        )
        return found[0] if found else None

    def list_settlements(
        self, *, counterparty_id: str | None = None, limit: int | None = None
    ) -> list[Settlement]:
        """Newest first."""
        query = sa.select(settlements).order_by(settlements.c.settlement_id.desc())
        if counterparty_id is not None:
            query = query.where(settlements.c.counterparty_id == counterparty_id)
        if limit is not None:
            query = query.limit(limit)
        return self._settlements(query)

    def _settlements(self, query: sa.Select[Any]) -> list[Settlement]:
        with self._read() as conn:
            rows = list(conn.execute(query))
            ids = [r.settlement_id for r in rows]
            legs: dict[int, list[int]] = {}
            if ids:
                for leg in conn.execute(
                    sa.select(settled_trades.c.settlement_id, settled_trades.c.trade_id).where(
                        settled_trades.c.settlement_id.in_(ids)
                    )
                ):
                    legs.setdefault(int(leg.settlement_id), []).append(int(leg.trade_id))
        return [
            Settlement(
                settlement_id=int(r.settlement_id),
                counterparty_id=r.counterparty_id,
                trade_ids=tuple(sorted(legs.get(int(r.settlement_id), ()))),
                amount_eur=_eur(r.amount_cents),
                settled_on=r.settled_on,
                reference=r.reference,
                note=r.note,
                recorded_at=r.recorded_at,
                recorded_by=r.recorded_by,
            )
            for r in rows
        ]

    def version(self) -> int:
        """The newest settlement id (0 when none): changes whenever a settlement is added."""
        with self._read() as conn:
            return int(conn.scalar(sa.select(sa.func.max(settlements.c.settlement_id))) or 0)

    def settled_legs(self) -> set[tuple[int, str]]:
        """Every settled (trade id, counterparty id)."""
        query = sa.select(settled_trades.c.trade_id, settled_trades.c.counterparty_id)
        with self._read() as conn:
            return {(int(r.trade_id), r.counterparty_id) for r in conn.execute(query)}

    def paid_on_account(self) -> dict[str, Decimal]:
        """Per counterparty: the sum of its amount settlements (> 0 it paid the operator)."""
        query = (
            sa.select(settlements.c.counterparty_id, sa.func.sum(settlements.c.amount_cents))
            .where(settlements.c.kind == "amount")
            .group_by(settlements.c.counterparty_id)
        )
        with self._read() as conn:
            return {cp: _eur(int(total)) for cp, total in conn.execute(query)}

    # -- plumbing -------------------------------------------------------------------------

    def _read(self) -> Any:
        return _transaction(self._engine)

    def _write(self) -> Any:
        return _transaction(db.for_writes(self._engine))


def _transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """One transaction; SQLAlchemy's errors become `StoreError` (after the rollback)."""
    return db.transaction(engine, StoreError, "credit store")
