"""Grid persistence: constraints with validity windows, in SQLite or PostgreSQL.

Blocking SQLAlchemy Core calls; the service runs them off the event loop (the pre-trade check
calls `active` from the exchange's worker thread). Times are `*_unix_ms` BIGINT like the
fleet's; a power limit is stored as whole watts (BIGINT), so a limit round-trips exactly and
compares exactly with the exchange's Decimal MW.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, RowMapping

from control_plane import db
from control_plane.db import Migration, migrate

from .models import Constraint, ConstraintKind, ConstraintSpec, UnknownConstraintError

SERVICE: Final = "grid"

metadata = sa.MetaData()

constraints = sa.Table(
    "grid_constraints",
    metadata,
    sa.Column("constraint_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("site_id", sa.String(64)),
    sa.Column("area", sa.String(64)),
    sa.Column("limit_w", sa.BigInteger),
    sa.Column("valid_from_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("valid_to_unix_ms", sa.BigInteger),  # NULL: until further notice
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_unix_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_unix_ms", sa.BigInteger, nullable=False),
    sa.Index("ix_grid_constraints_site", "site_id", "valid_from_unix_ms"),
    sa.Index("ix_grid_constraints_area", "area", "valid_from_unix_ms"),
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


MIGRATIONS: tuple[Migration, ...] = (Migration(1, "grid constraints", _create_v1),)

_W_PER_KW: Final = Decimal(1000)


def to_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class GridStore:
    """Blocking persistence of grid constraints; every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = db.for_writes(engine)

    def migrate(self) -> list[int]:
        return migrate(self.engine, SERVICE, MIGRATIONS)

    def add(self, spec: ConstraintSpec, *, now: datetime) -> Constraint:
        values = _row(spec) | {"created_unix_ms": to_ms(now), "updated_unix_ms": to_ms(now)}
        with self._writer.begin() as conn:
            result = conn.execute(constraints.insert().values(**values))
            key = result.inserted_primary_key
            assert key is not None  # noqa: S101 (an insert always has one)
            constraint_id = int(key[0])
            row = self._get(conn, constraint_id)
        return _constraint(row)

    def replace(self, constraint_id: int, spec: ConstraintSpec, *, now: datetime) -> Constraint:
        with self._writer.begin() as conn:
            self._get(conn, constraint_id)
            conn.execute(
                constraints.update()
                .where(constraints.c.constraint_id == constraint_id)
                .values(**_row(spec), updated_unix_ms=to_ms(now))
            )
            row = self._get(conn, constraint_id)
        return _constraint(row)

    def delete(self, constraint_id: int) -> Constraint:
        with self._writer.begin() as conn:
            row = self._get(conn, constraint_id)
            conn.execute(constraints.delete().where(constraints.c.constraint_id == constraint_id))
        return _constraint(row)

    def get(self, constraint_id: int) -> Constraint:
        with self.engine.connect() as conn:
            return _constraint(self._get(conn, constraint_id))

    def list(
        self,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        site_ids: Sequence[str] | None = None,
        areas: Sequence[str] | None = None,
        kind: ConstraintKind | None = None,
        limit: int = 1000,
    ) -> list[Constraint]:
        """Constraints whose window meets [start, end) (either bound optional), for any of
        `site_ids` or `areas` when given (a constraint matches either), oldest start first."""
        c = constraints.c
        query = sa.select(constraints)
        if end is not None:
            query = query.where(c.valid_from_unix_ms < to_ms(end))
        if start is not None:
            query = query.where(
                sa.or_(c.valid_to_unix_ms.is_(None), c.valid_to_unix_ms > to_ms(start))
            )
        targets: list[Any] = []
        if site_ids is not None:
            targets.append(c.site_id.in_(list(site_ids)))
        if areas is not None:
            targets.append(c.area.in_(list(areas)))
        if targets:
            query = query.where(sa.or_(*targets))
        if kind is not None:
            query = query.where(c.kind == kind.value)
        query = query.order_by(c.valid_from_unix_ms, c.constraint_id).limit(limit)
        with self.engine.connect() as conn:
            return [_constraint(row) for row in conn.execute(query).mappings()]

    @staticmethod
    def _get(conn: Connection, constraint_id: int) -> RowMapping:
        row = (
            conn.execute(sa.select(constraints).where(constraints.c.constraint_id == constraint_id))
            .mappings()
            .first()
        )
        if row is None:
            raise UnknownConstraintError(constraint_id)
        return row


def _row(spec: ConstraintSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind.value,
        "site_id": spec.site_id,
        "area": spec.area,
        "limit_w": None
        if spec.limit_kw is None
        else int((spec.limit_kw * _W_PER_KW).to_integral_value()),
        "valid_from_unix_ms": to_ms(spec.valid_from),
        "valid_to_unix_ms": None if spec.valid_to is None else to_ms(spec.valid_to),
        "reason": spec.reason,
    }


def _constraint(row: RowMapping) -> Constraint:
    limit_w = row["limit_w"]
    valid_to = row["valid_to_unix_ms"]
    return Constraint(
        constraint_id=int(row["constraint_id"]),
        spec=ConstraintSpec(
            kind=ConstraintKind(row["kind"]),
            site_id=row["site_id"],
            area=row["area"],
            limit_kw=None if limit_w is None else Decimal(int(limit_w)) / _W_PER_KW,
            valid_from=from_ms(int(row["valid_from_unix_ms"])),
            valid_to=None if valid_to is None else from_ms(int(valid_to)),
            reason=row["reason"],
        ),
        created_at=from_ms(int(row["created_unix_ms"])),
        updated_at=from_ms(int(row["updated_unix_ms"])),
    )
