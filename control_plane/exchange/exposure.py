"""Exposure and realised PnL of a portfolio, from its trades. Pure.

Definitions, per market and quarter-hour of delivery (an hour-block trade counts as the same
MW in each of its four quarters: energy delivered at the same time nets, whatever product
carried it; different markets are different bidding zones and never net):

- bought / sold energy (MWh) = sum of MW x 0.25 h of the portfolio's buy / sell trades;
  cost / proceeds (EUR) = sum of energy x trade price.
- net energy = bought - sold: > 0 the portfolio takes energy (the battery must charge),
  < 0 it must deliver (discharge). Net cash = proceeds - cost.
- matched energy = min(bought, sold): energy bought and sold for the same quarter, which
  cancels physically. **Realised PnL** = matched x (average sell price - average buy price),
  each average volume-weighted over all of that quarter's trades of the side. It depends only
  on the set of trades, not on their order, so it is the same after a restart; a quarter with
  trades on one side only has realised PnL 0.
- open value (EUR) = the open energy valued at the average price of the side that is open
  (cost of an open long, minus the proceeds of an open short), so that per quarter and in total
  ``net_cash_eur == realised_pnl_eur - open_value_eur`` holds exactly.

The one division (the matched share of the larger side) is rounded to 1e-8 EUR; every other
figure is exact.

`portfolio_exposure` computes it from a list of trades; `PositionBook` keeps the same sums
incrementally (the engine rebuilds it from the store at start and adds each placement's trades
after the commit), so a portfolio's exposure costs O(its positions), not O(its trades).
Because every sum is exact, both give equal results whatever the order of the trades.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from control_plane.exchange.models import DeliveryPeriod, Trade

__all__ = [
    "EUR_STEP",
    "DeliveryPosition",
    "PortfolioExposure",
    "PositionBook",
    "portfolio_exposure",
]

EUR_STEP: Final = Decimal("0.00000001")
_ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class DeliveryPosition:
    """A portfolio's trades in one market and quarter-hour, summed."""

    market: str
    delivery: DeliveryPeriod
    bought_mwh: Decimal
    sold_mwh: Decimal
    cost_eur: Decimal
    proceeds_eur: Decimal

    @property
    def net_energy_mwh(self) -> Decimal:
        return self.bought_mwh - self.sold_mwh

    @property
    def matched_energy_mwh(self) -> Decimal:
        return min(self.bought_mwh, self.sold_mwh)

    @property
    def net_cash_eur(self) -> Decimal:
        return self.proceeds_eur - self.cost_eur

    @property
    def realised_pnl_eur(self) -> Decimal:
        return self._split()[0]

    @property
    def open_value_eur(self) -> Decimal:
        return self._split()[1]

    def _split(self) -> tuple[Decimal, Decimal]:
        """(realised PnL, open value), with the matched share of the larger side rounded once."""
        if self.bought_mwh >= self.sold_mwh:
            if self.bought_mwh == 0:
                return _ZERO, _ZERO
            matched_cost = (self.cost_eur * self.sold_mwh / self.bought_mwh).quantize(EUR_STEP)
            return self.proceeds_eur - matched_cost, self.cost_eur - matched_cost
        matched_proceeds = (self.proceeds_eur * self.bought_mwh / self.sold_mwh).quantize(EUR_STEP)
        return matched_proceeds - self.cost_eur, matched_proceeds - self.proceeds_eur


@dataclass(frozen=True, slots=True)
class PortfolioExposure:
    """A portfolio's positions per market and quarter-hour, and their totals."""

    portfolio: str
    positions: tuple[DeliveryPosition, ...]
    """Sorted by market, then delivery."""

    @property
    def bought_mwh(self) -> Decimal:
        return sum((p.bought_mwh for p in self.positions), _ZERO)

    @property
    def sold_mwh(self) -> Decimal:
        return sum((p.sold_mwh for p in self.positions), _ZERO)

    @property
    def net_energy_mwh(self) -> Decimal:
        """Signed sum over quarters: what the portfolio takes (> 0) or delivers (< 0) in all."""
        return sum((p.net_energy_mwh for p in self.positions), _ZERO)

    @property
    def open_energy_mwh(self) -> Decimal:
        """Sum of |net| over quarters: energy still to charge or discharge, either way."""
        return sum((abs(p.net_energy_mwh) for p in self.positions), _ZERO)

    @property
    def net_cash_eur(self) -> Decimal:
        return sum((p.net_cash_eur for p in self.positions), _ZERO)

    @property
    def realised_pnl_eur(self) -> Decimal:
        return sum((p.realised_pnl_eur for p in self.positions), _ZERO)

    @property
    def open_value_eur(self) -> Decimal:
        return sum((p.open_value_eur for p in self.positions), _ZERO)

    @property
    def open_notional_eur(self) -> Decimal:
        """Sum of |open value| over quarters: what the open energy is worth at the prices it
        was traded at, longs and shorts alike (a short does not offset a long of another
        quarter); the spec's G_EXPO_N."""
        return sum((abs(p.open_value_eur) for p in self.positions), _ZERO)


_Sums = dict[tuple[str, DeliveryPeriod], list[Decimal]]
"""Per (market, quarter): [bought MWh, sold MWh, cost EUR, proceeds EUR]."""


def _add(sums: _Sums, trade: Trade, legs: Iterable[int]) -> None:
    """Add `trade` to `sums` for each leg (0 = the buy side, 1 = the sell side)."""
    legs = tuple(legs)
    for quarter in trade.delivery.quarters():
        energy = trade.quantity_mw * quarter.duration_h
        value = energy * trade.price_eur_per_mwh
        acc = sums.setdefault((trade.market, quarter), [_ZERO, _ZERO, _ZERO, _ZERO])
        for leg in legs:  # a trade between two orders of one portfolio counts both ways
            acc[leg] += energy
            acc[2 + leg] += value


def _exposure(portfolio: str, sums: _Sums) -> PortfolioExposure:
    positions = tuple(
        DeliveryPosition(market, delivery, bought, sold, cost, proceeds)
        for (market, delivery), (bought, sold, cost, proceeds) in sorted(sums.items())
    )
    return PortfolioExposure(portfolio, positions)


class PositionBook:
    """Every portfolio's sums per market and quarter, updated trade by trade. Not thread-safe:
    the engine's lock guards it."""

    def __init__(self, trades: Iterable[Trade] = ()) -> None:
        self._sums: dict[str, _Sums] = {}
        self.add(trades)

    def add(self, trades: Iterable[Trade]) -> set[str]:
        """Add `trades`; the portfolios whose exposure changed."""
        touched: set[str] = set()
        for trade in trades:
            if trade.buy_portfolio == trade.sell_portfolio:
                _add(self._sums.setdefault(trade.buy_portfolio, {}), trade, (0, 1))
            else:
                _add(self._sums.setdefault(trade.buy_portfolio, {}), trade, (0,))
                _add(self._sums.setdefault(trade.sell_portfolio, {}), trade, (1,))
            touched.update((trade.buy_portfolio, trade.sell_portfolio))
        return touched

    def exposure(self, portfolio: str) -> PortfolioExposure:
        """The same result as `portfolio_exposure` over all trades added so far."""
        return _exposure(portfolio, self._sums.get(portfolio, {}))

    def portfolios(self) -> list[str]:
        """Every portfolio with at least one trade, sorted."""
        return sorted(self._sums)

    def __iter__(self) -> Iterator[PortfolioExposure]:
        return (self.exposure(p) for p in self.portfolios())


def portfolio_exposure(portfolio: str, trades: Iterable[Trade]) -> PortfolioExposure:
    """The exposure of `portfolio` from `trades` (others' trades are ignored)."""
    sums: _Sums = {}
    for trade in trades:
        legs = [
            leg
            for leg, mine in ((0, trade.buy_portfolio), (1, trade.sell_portfolio))
            if mine == portfolio
        ]
        if legs:
            _add(sums, trade, legs)
    return _exposure(portfolio, sums)
