"""The exchange's Prometheus metrics, in a registry the app passes in (no global registry).

Per portfolio (label `portfolio`), each under the spec's name and a Prometheus-style name
beside it (STYLE 12), from `control_plane.exchange.exposure`:

- `G_EXPO_E` = `bess_plane_exposure_energy_mwh`: open energy, the sum over market-quarters of
  |bought - sold| MWh (energy still to charge or discharge, either way);
- `G_EXPO_N` = `bess_plane_exposure_notional_eur`: notional of the open position, the sum over
  market-quarters of |open energy x average price of the open side| EUR, i.e. what the open
  energy is worth at the prices it was traded at, longs and shorts alike;
- `G_PNL_REAL` = `bess_plane_pnl_realised_eur`: realised PnL EUR, matched energy x (average
  sell - average buy price) per market-quarter.

Counters: `bess_plane_orders_total{market,outcome}` (outcome of the incoming order: accepted =
rests unfilled, partially_filled, filled, rejected; cancelled on a cancel; expired when a
resting order reaches its product's gate closure),
`bess_plane_trades_total{market}`, `bess_plane_traded_energy_mwh_total{market}` and
`bess_plane_order_rejections_total{check}` (the pre-trade check that refused the order).

The engine updates them only after a commit succeeded, so a failed commit changes no metric,
and sets the gauges of every portfolio when it (re)loads its positions from the store. Counters
start at zero with the process, as Prometheus counters do.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from control_plane.exchange.exposure import PortfolioExposure
from control_plane.exchange.models import OrderState, PlacedOrder

__all__ = ["ExchangeMetrics"]

_OUTCOME = {
    OrderState.ACCEPTED: "accepted",
    OrderState.PARTIALLY_FILLED: "partially_filled",
    OrderState.FILLED: "filled",
    OrderState.REJECTED: "rejected",
    OrderState.CANCELLED: "cancelled",
    OrderState.EXPIRED: "expired",
}


class ExchangeMetrics:
    """Exposure gauges per portfolio and order/trade counters per market."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def gauges(spec: str, name: str, text: str) -> tuple[Gauge, Gauge]:
            return (
                Gauge(spec, f"{text} (spec name)", ["portfolio"], registry=registry),
                Gauge(name, text, ["portfolio"], registry=registry),
            )

        self.exposure_energy = gauges(
            "G_EXPO_E",
            "bess_plane_exposure_energy_mwh",
            "Open energy of the portfolio: sum over market-quarters of |bought - sold|, MWh",
        )
        self.exposure_notional = gauges(
            "G_EXPO_N",
            "bess_plane_exposure_notional_eur",
            "Notional of the open position: sum over market-quarters of |open energy x "
            "average price of the open side|, EUR",
        )
        self.pnl_realised = gauges(
            "G_PNL_REAL",
            "bess_plane_pnl_realised_eur",
            "Realised PnL: matched energy x (avg sell - avg buy price) per market-quarter, EUR",
        )
        self.orders = Counter(
            "bess_plane_orders_total",
            "Orders placed (outcome of the incoming order), cancelled and expired",
            ["market", "outcome"],
            registry=registry,
        )
        self.trades = Counter(
            "bess_plane_trades_total", "Trades executed", ["market"], registry=registry
        )
        self.traded_energy = Counter(
            "bess_plane_traded_energy_mwh_total",
            "Energy traded (MW x delivery hours)",
            ["market"],
            registry=registry,
        )
        self.rejections = Counter(
            "bess_plane_order_rejections_total",
            "Orders rejected, by the pre-trade check that refused them",
            ["check"],
            registry=registry,
        )

    def placed(self, placed: PlacedOrder, *, rejected_by: str | None = None) -> None:
        """Count a committed placement: its outcome, its trades, the check that refused it."""
        market = placed.order.market
        self.orders.labels(market=market, outcome=_OUTCOME[placed.order.state]).inc()
        if rejected_by is not None:
            self.rejections.labels(check=rejected_by).inc()
        for trade in placed.trades:
            self.trades.labels(market=trade.market).inc()
            self.traded_energy.labels(market=trade.market).inc(float(trade.energy_mwh))

    def cancelled(self, market: str) -> None:
        self.orders.labels(market=market, outcome="cancelled").inc()

    def expired(self, market: str, count: int = 1) -> None:
        """Count resting orders of `market` that expired at gate closure."""
        self.orders.labels(market=market, outcome="expired").inc(count)

    def exposure(self, exposure: PortfolioExposure) -> None:
        """Set the three gauges of one portfolio."""
        portfolio = exposure.portfolio
        for gauge, value in (
            (self.exposure_energy, exposure.open_energy_mwh),
            (self.exposure_notional, exposure.open_notional_eur),
            (self.pnl_realised, exposure.realised_pnl_eur),
        ):
            for series in gauge:
                series.labels(portfolio=portfolio).set(float(value))
