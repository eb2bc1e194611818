"""Domain types of the risk service: positions, limits, VaR requests and results, errors.

Errors:

    RiskError (Exception)
      InvalidRiskRequestError (+ ValueError)   a request or limit cannot be served as given
      NoHistoryError                           too little price history for the figures asked
      UnknownLimitError (+ KeyError)           no limit is set for the portfolio
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Final

from control_plane.exchange.models import DeliveryPeriod

from .var import LEVELS

__all__ = [
    "EUR_CENT",
    "LEVELS",
    "InvalidRiskRequestError",
    "LimitKind",
    "LimitStatus",
    "Method",
    "NoHistoryError",
    "PortfolioPositions",
    "PositionLine",
    "RiskError",
    "RiskLimit",
    "UnknownLimitError",
    "VarFigure",
    "VarRequest",
    "VarResult",
]

EUR_CENT: Final = Decimal("0.01")
_ZERO: Final = Decimal(0)


class RiskError(Exception):
    """Base of the risk service's errors; the message says what was wrong and what to do."""


class InvalidRiskRequestError(RiskError, ValueError):
    pass


class NoHistoryError(RiskError):
    pass


class UnknownLimitError(RiskError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Method(StrEnum):
    HISTORICAL = "historical"
    MONTE_CARLO = "monte_carlo"


class LimitKind(StrEnum):
    VAR = "var"
    """Value at risk at the service's limit level and horizon must stay below the limit."""
    PNL = "pnl"
    """The mark-to-market loss of the open trades must stay below the limit."""


@dataclass(frozen=True, slots=True)
class PositionLine:
    """A portfolio's open position in one market and delivery quarter."""

    market: str
    zone: str | None
    """The market's bidding zone; None = no external prices (the line is not marked)."""
    delivery: DeliveryPeriod
    traded_mwh: Decimal
    """Net energy of the trades: > 0 bought (long), < 0 sold (short)."""
    scheduled_mwh: Decimal
    """Energy the portfolio's sites are scheduled to discharge (> 0, to be sold: long) or
    charge (< 0, to be bought: short) in the quarter."""
    net_cash_eur: Decimal
    """Proceeds - cost of the quarter's trades."""
    mark_eur_per_mwh: Decimal | None
    mark_source: str
    """`delivery` (the stored price of that quarter), `latest` (the newest price of the same
    quarter of the day), or `none`."""

    @property
    def net_mwh(self) -> Decimal:
        return self.traded_mwh + self.scheduled_mwh

    @property
    def mtm_pnl_eur(self) -> Decimal | None:
        """Mark-to-market PnL of the trades: cash + traded energy at the mark."""
        if self.mark_eur_per_mwh is None:
            return None
        return self.net_cash_eur + self.traded_mwh * self.mark_eur_per_mwh


@dataclass(frozen=True, slots=True)
class PortfolioPositions:
    portfolio: str
    as_of: datetime
    lines: tuple[PositionLine, ...]

    @property
    def net_mwh(self) -> Decimal:
        return sum((line.net_mwh for line in self.lines), _ZERO)

    @property
    def mtm_pnl_eur(self) -> Decimal:
        """Sum over the marked lines (an unmarked line counts 0; see `unmarked`)."""
        return sum((line.mtm_pnl_eur or _ZERO for line in self.lines), _ZERO)

    @property
    def unmarked(self) -> int:
        return sum(1 for line in self.lines if line.mark_eur_per_mwh is None)


@dataclass(frozen=True, slots=True, kw_only=True)
class RiskLimit:
    portfolio: str
    var_limit_eur: Decimal | None
    pnl_limit_eur: Decimal | None
    """Largest tolerated mark-to-market loss (a positive amount)."""
    hard: bool
    """True: the exchange rejects an order whose worst-case fill would breach it."""
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LimitStatus:
    """One limit's utilisation now."""

    portfolio: str
    kind: LimitKind
    limit_eur: Decimal
    value_eur: Decimal
    utilisation_pct: Decimal
    hard: bool

    @property
    def breached(self) -> bool:
        return self.value_eur > self.limit_eur


@dataclass(frozen=True, slots=True, kw_only=True)
class VarRequest:
    portfolio: str
    method: Method = Method.HISTORICAL
    horizon_days: int = 1
    window_days: int = 250
    """Days of price history the scenarios (or the covariance) come from."""
    paths: int = 10_000
    seed: int = 0
    levels: tuple[float, ...] = LEVELS


@dataclass(frozen=True, slots=True)
class VarFigure:
    level: float
    var_eur: Decimal
    es_eur: Decimal


@dataclass(frozen=True, slots=True, kw_only=True)
class VarResult:
    request: VarRequest
    as_of: datetime
    zones: tuple[str, ...]
    positions: int
    """Delivery quarters with an open position that entered the figures."""
    net_mwh: Decimal
    scenarios: int
    """Historical: scenario days; Monte Carlo: paths."""
    history_from: datetime | None
    history_to: datetime | None
    figures: tuple[VarFigure, ...]
    seconds: float
