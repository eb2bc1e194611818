"""Delivery periods, markets and the registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from control_plane.exchange.errors import InvalidDeliveryError, UnknownMarketError
from control_plane.exchange.models import (
    DeliveryPeriod,
    Market,
    MarketRegistry,
    Side,
    hourly_as_quarters,
)

from .conftest import order

VIENNA_WINTER = timezone(timedelta(hours=1))


def test_delivery_period_is_utc_and_names_its_product() -> None:
    local = datetime(2025, 11, 3, 11, 15, tzinfo=VIENNA_WINTER)
    period = DeliveryPeriod.quarter(local)
    assert period.start == datetime(2025, 11, 3, 10, 15, tzinfo=UTC)
    assert period.start.tzinfo is UTC
    assert period.end == datetime(2025, 11, 3, 10, 30, tzinfo=UTC)
    assert period.duration_h == Decimal("0.25")
    assert period.product_id == "2025-11-03T10:15Z/PT15M"
    assert DeliveryPeriod.parse(period.product_id) == period
    block = DeliveryPeriod.hour_block(datetime(2025, 11, 3, 10, tzinfo=UTC))
    assert block.product_id == "2025-11-03T10:00Z/PT60M"
    assert block.duration_h == 1
    assert DeliveryPeriod.parse("2025-11-03T10:00Z/PT60M") == block


@pytest.mark.parametrize(
    ("start", "minutes", "field"),
    [
        (datetime(2025, 11, 3, 10, 0), 15, "delivery.start"),  # naive
        (datetime(2025, 11, 3, 10, 5, tzinfo=UTC), 15, "delivery.start"),  # not on a quarter
        (datetime(2025, 11, 3, 10, 15, 1, tzinfo=UTC), 15, "delivery.start"),
        (datetime(2025, 11, 3, 10, 15, tzinfo=UTC), 60, "delivery.start"),  # block off the hour
        (datetime(2025, 11, 3, 10, 0, tzinfo=UTC), 30, "delivery.minutes"),
    ],
)
def test_malformed_delivery_periods_are_refused(start: datetime, minutes: int, field: str) -> None:
    with pytest.raises(InvalidDeliveryError) as caught:
        DeliveryPeriod(start, minutes)
    assert caught.value.field == field


def test_unparsable_product_id() -> None:
    with pytest.raises(InvalidDeliveryError, match="not a product id"):
        DeliveryPeriod.parse("2025-11-03 10:00/PT15M")


def test_dst_end_day_has_100_quarters_in_vienna() -> None:
    # 26 Oct 2025 in Vienna runs from 00:00 CEST (+2) to 24:00 CET (+1): 25 hours.
    vienna = ZoneInfo("Europe/Vienna")
    start = datetime(2025, 10, 26, tzinfo=vienna).astimezone(UTC)
    end = datetime(2025, 10, 27, tzinfo=vienna).astimezone(UTC)
    quarters = []
    t = start
    while t < end:
        quarters.append(DeliveryPeriod.quarter(t))
        t += timedelta(minutes=15)
    assert len(quarters) == 100
    assert len({q.product_id for q in quarters}) == 100


def test_hour_block_splits_into_four_quarters() -> None:
    block = DeliveryPeriod.hour_block(datetime(2025, 11, 3, 10, tzinfo=UTC))
    new = order(Side.BUY, 2, 55, delivery=block)
    quarters = hourly_as_quarters(new)
    assert [q.delivery.product_id for q in quarters] == [
        "2025-11-03T10:00Z/PT15M",
        "2025-11-03T10:15Z/PT15M",
        "2025-11-03T10:30Z/PT15M",
        "2025-11-03T10:45Z/PT15M",
    ]
    assert {(q.quantity_mw, q.limit_price_eur_per_mwh, q.side) for q in quarters} == {
        (2, 55, Side.BUY)
    }
    with pytest.raises(InvalidDeliveryError):
        hourly_as_quarters(quarters[0])


def test_market_defaults_are_the_harmonised_bounds() -> None:
    market = Market("epex_at")
    assert market.price_min_eur_per_mwh == -500
    assert market.price_max_eur_per_mwh == 4000
    assert market.gate_closure == timedelta(0)
    assert market.product_minutes == {15, 60}


def test_registry_from_config() -> None:
    registry = MarketRegistry.from_mapping(
        {
            "epex_at": {"gate_closure_min": 5},
            "exaa_at": {
                "price_min_eur_per_mwh": "-150",
                "price_max_eur_per_mwh": 3000.5,
                "max_quantity_mw": 250,
                "product_minutes": [15],
            },
        }
    )
    assert registry.get("epex_at").gate_closure == timedelta(minutes=5)
    exaa = registry.get("exaa_at")
    assert exaa.price_min_eur_per_mwh == Decimal(-150)
    assert exaa.price_max_eur_per_mwh == Decimal("3000.5")
    assert exaa.max_quantity_mw == 250
    assert exaa.product_minutes == {15}
    assert "epex_at" in registry
    assert len(registry) == 2
    with pytest.raises(UnknownMarketError) as caught:
        registry.get("nord_pool")
    assert caught.value.allowed == "epex_at, exaa_at"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"price_min_eur_per_mwh": 100, "price_max_eur_per_mwh": 100}, "below the max"),
        ({"price_min_eur_per_mwh": "nan"}, "finite"),
        ({"price_max_eur_per_mwh": "4000.001"}, "whole cents"),
        ({"max_quantity_mw": 0}, "max_quantity_mw"),
        ({"gate_closure_min": -1}, "gate_closure"),
        ({"product_minutes": [30]}, "product_minutes"),
        ({"price_floor": -500}, "unknown keys"),
    ],
)
def test_contradictory_market_config_is_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarketRegistry.from_mapping({"epex_at": config})


def test_bad_market_ids_and_duplicates_are_refused() -> None:
    with pytest.raises(ValueError, match="market_id"):
        Market("EPEX AT")
    with pytest.raises(ValueError, match="twice"):
        MarketRegistry([Market("epex_at"), Market("epex_at")])
    with pytest.raises(ValueError, match="at least one"):
        MarketRegistry([])
