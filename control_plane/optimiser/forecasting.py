"""The forecast service's price model as the optimiser's `Forecaster`.

`price_forecaster()` wraps a `control_plane.forecast.models.PriceModel` (default: the ridge
model the Forecast API uses, which beats seasonal-naive in the back-test, see the control
plane README "Forecasts") so that the optimiser plans on the same forecast the desk sees.
The models are hourly: the history is turned into an hourly series (finer prices averaged
per hour), and each planned interval gets the P50 of the hour it falls in. If the history ends
before the origin, the model forecasts from the end of the history and the hours up to the
origin are skipped.

Also usable from the back-test command: `bess-plane backtest --forecast
control_plane.optimiser.forecasting:ridge`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from math import ceil

from control_plane.forecast.models import (
    InsufficientHistoryError,
    PriceModel,
    default_price_model,
    hourly_from_points,
)
from control_plane.market.models import PricePoint, zone

from .backtest import Forecaster, NotEnoughHistoryError

__all__ = ["HISTORY_DAYS", "price_forecaster", "ridge"]

HOUR = timedelta(hours=1)
HISTORY_DAYS = 72
"""Days of history the ridge model uses (56 training days plus its calibration window)."""


def price_forecaster(model: PriceModel | None = None) -> Forecaster:
    """A `Forecaster` (history, origin, intervals) -> EUR/MWh from an hourly price model."""
    price_model = model or default_price_model()

    def forecast(history: Sequence[PricePoint], origin: datetime, horizon: int) -> list[float]:
        if not history:
            raise NotEnoughHistoryError(f"{price_model.name} needs a price history; got none")
        step = history[-1].resolution.delta
        # Whole hours before the origin only: a later price is never used, and an hour the
        # history knows in part would end after the origin.
        cutoff = origin.replace(minute=0, second=0, microsecond=0)
        known = [p for p in history if p.start < cutoff]
        if not known:
            raise NotEnoughHistoryError(
                f"{price_model.name} needs prices of whole hours before {origin:%Y-%m-%dT%H:%MZ}"
            )
        try:
            series = hourly_from_points(known, timezone=zone(known[-1].zone).timezone)
        except ValueError as exc:  # an EIC-only zone: its calendar is UTC
            raise NotEnoughHistoryError(str(exc)) from None
        end = series.start + len(series) * HOUR  # <= cutoff <= origin
        hours = ceil((origin - end + horizon * step) / HOUR)
        try:
            band = price_model.forecast(series, hours)
        except InsufficientHistoryError as exc:
            raise NotEnoughHistoryError(str(exc)) from None
        return [float(band.p50[(origin + i * step - end) // HOUR]) for i in range(horizon)]

    return forecast


ridge = price_forecaster()
"""The Forecast API's default model as a `Forecaster` (for `--forecast module:function`)."""
