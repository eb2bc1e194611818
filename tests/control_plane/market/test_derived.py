"""Mark price, EMA (alpha 0.2) and VWAP on hand-computed series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from control_plane.market.derived import ema, mark_price, volume_per_interval, vwap
from control_plane.market.models import PricePoint, Resolution

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def hourly(*prices: float) -> list[PricePoint]:
    return [
        PricePoint(
            zone="AT",
            start=T0 + timedelta(hours=i),
            resolution=Resolution.PT60M,
            price_eur_per_mwh=p,
            source="entsoe",
        )
        for i, p in enumerate(prices)
    ]


SERIES = hourly(10.0, 20.0, 30.0, 999.0)  # the 999 is tomorrow's: not delivered yet at NOW
NOW = T0 + timedelta(hours=2, minutes=30)


def test_mark_is_the_interval_delivering_now() -> None:
    mark = mark_price(SERIES, NOW)
    assert mark is not None and mark.price_eur_per_mwh == 30.0
    assert mark_price(SERIES, T0 + timedelta(hours=3)).price_eur_per_mwh == 999.0  # type: ignore[union-attr]
    assert mark_price(SERIES, T0 + timedelta(hours=4)) is None  # no stale price passed off
    assert mark_price([], NOW) is None
    quarter = PricePoint(
        zone="AT",
        start=T0 + timedelta(hours=2, minutes=30),
        resolution=Resolution.PT15M,
        price_eur_per_mwh=60.0,
        source="entsoe",
    )
    assert mark_price([*SERIES, quarter], NOW) == quarter  # the finer resolution wins


def test_ema_alpha_point_two_over_delivered_points() -> None:
    # 10 -> 0.2*20 + 0.8*10 = 12 -> 0.2*30 + 0.8*12 = 15.6; the 999 has not started
    assert ema(SERIES, NOW) == pytest.approx(15.6)
    assert ema(SERIES, T0) == 10.0
    assert ema(SERIES, T0 - timedelta(seconds=1)) is None
    assert ema(SERIES, NOW, alpha=1.0) == 30.0
    with pytest.raises(ValueError, match="alpha"):
        ema(SERIES, NOW, alpha=0)


def test_vwap_equal_weights_without_trades() -> None:
    result = vwap(SERIES, NOW)
    assert result is not None
    assert (result.price_eur_per_mwh, result.weighting) == (20.0, "equal")
    assert (result.points, result.weighted_points, result.volume_mwh) == (3, 3, 0.0)
    assert vwap(SERIES, T0 - timedelta(hours=1)) is None


def test_vwap_volume_weighted_where_there_are_trades() -> None:
    volumes = {T0: 1.0, T0 + timedelta(hours=1): 3.0}
    result = vwap(SERIES, NOW, volumes)
    assert result is not None
    # (10*1 + 20*3) / 4 = 17.5; the 30 had no trades and weighs nothing
    assert result.price_eur_per_mwh == pytest.approx(17.5)
    assert (result.weighting, result.weighted_points, result.volume_mwh) == ("volume", 2, 4.0)


def test_vwap_takes_the_last_96_points() -> None:
    series = hourly(*(float(i) for i in range(100)))
    result = vwap(series, T0 + timedelta(hours=99))
    assert result is not None
    assert result.points == 96
    assert result.price_eur_per_mwh == pytest.approx(sum(range(4, 100)) / 96)  # 51.5
    with pytest.raises(ValueError, match="window"):
        vwap(series, NOW, window=0)


def test_volume_per_interval_maps_trades_into_the_price_intervals() -> None:
    trades = [
        (T0 + timedelta(minutes=15), 0.5),
        (T0 + timedelta(minutes=45), 0.25),
        (T0 + timedelta(hours=1), 1.0),
        (T0 + timedelta(hours=9), 7.0),  # no price interval holds it
    ]
    assert volume_per_interval(SERIES, trades) == {T0: 0.75, T0 + timedelta(hours=1): 1.0}
