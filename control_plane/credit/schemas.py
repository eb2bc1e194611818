"""Wire models of the credit API: amounts as decimal strings (never floats) in answers."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from .models import CENT, Counterparty, Exposure, Settlement

CpId = Annotated[str, Field(min_length=1, max_length=64, description="as orders carry it")]
Amount = Annotated[Decimal, Field(description="EUR, whole cents (number or decimal string)")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CounterpartyCreate(_In):
    counterparty: CpId
    name: str | None = Field(default=None, max_length=200, description="legal name; default id")
    limit_eur: Amount | None = Field(default=None, description="credit limit; null = none")
    alert_thresholds_pct: list[Decimal] | None = Field(
        default=None, description="utilisation alerts in %; null = the plane's default"
    )


class CounterpartyUpdate(_In):
    """Only the fields given change; null limit = no limit, null thresholds = the default."""

    name: str | None = Field(default=None, max_length=200)
    limit_eur: Amount | None = None
    alert_thresholds_pct: list[Decimal] | None = None


class LimitIn(_In):
    counterparty: CpId
    limit_eur: Amount = Field(description="> 0; creates the counterparty if it has no data")


class SettlementIn(_In):
    counterparty: CpId
    trade_ids: list[int] = Field(
        default_factory=list, max_length=100_000, description="trades to mark settled"
    )
    amount_eur: Amount | None = Field(
        default=None, description="instead of trade_ids: a payment on account (> 0 received)"
    )
    settled_on: date
    reference: str | None = Field(default=None, max_length=128)
    note: str | None = Field(default=None, max_length=2000)


def _eur(value: Decimal | None) -> str | None:
    return None if value is None else f"{value.quantize(CENT) + 0:f}"


class CounterpartyPublic(BaseModel):
    counterparty: str
    name: str
    limit_eur: str | None
    alert_thresholds_pct: list[str]
    thresholds_default: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, cp: Counterparty, defaults: tuple[Decimal, ...]) -> CounterpartyPublic:
        levels = cp.alert_thresholds_pct or defaults
        return cls(
            counterparty=cp.counterparty_id,
            name=cp.name,
            limit_eur=_eur(cp.limit_eur),
            alert_thresholds_pct=[f"{v:f}" for v in levels],
            thresholds_default=cp.alert_thresholds_pct is None,
            created_at=cp.created_at,
            updated_at=cp.updated_at,
        )


class ExposurePublic(BaseModel):
    counterparty: str
    name: str | None
    limit_eur: str | None
    exposure_eur: str
    utilisation_pct: str | None
    headroom_eur: str | None
    current_eur: str
    pfe_eur: str
    receivable_eur: str
    payable_eur: str
    paid_on_account_eur: str
    open_orders_eur: str
    addon_eur: str
    unsettled_trades: int
    open_orders: int
    as_of: datetime

    @classmethod
    def of(cls, e: Exposure) -> ExposurePublic:
        util = e.utilisation_pct
        return cls(
            counterparty=e.counterparty_id,
            name=e.name,
            limit_eur=_eur(e.limit_eur),
            exposure_eur=_eur(e.exposure_eur) or "0.00",
            utilisation_pct=None if util is None else _eur(util),
            headroom_eur=_eur(e.headroom_eur),
            current_eur=_eur(e.current_eur) or "0.00",
            pfe_eur=_eur(e.pfe_eur) or "0.00",
            receivable_eur=_eur(e.receivable_eur) or "0.00",
            payable_eur=_eur(e.payable_eur) or "0.00",
            paid_on_account_eur=_eur(e.paid_on_account_eur) or "0.00",
            open_orders_eur=_eur(e.open_orders_eur) or "0.00",
            addon_eur=_eur(e.addon_eur) or "0.00",
            unsettled_trades=e.unsettled_trades,
            open_orders=e.open_orders,
            as_of=e.as_of,
        )


class ExposureList(BaseModel):
    pfe_addon_pct: str
    counterparties: list[ExposurePublic]


class SettlementPublic(BaseModel):
    settlement_id: int
    counterparty: str
    kind: str
    trade_ids: list[int]
    amount_eur: str
    settled_on: date
    reference: str | None
    note: str | None
    recorded_at: datetime
    recorded_by: str

    @classmethod
    def of(cls, s: Settlement) -> SettlementPublic:
        return cls(
            settlement_id=s.settlement_id,
            counterparty=s.counterparty_id,
            kind=s.kind,
            trade_ids=list(s.trade_ids),
            amount_eur=_eur(s.amount_eur) or "0.00",
            settled_on=s.settled_on,
            reference=s.reference,
            note=s.note,
            recorded_at=s.recorded_at,
            recorded_by=s.recorded_by,
        )
