"""Pure billing arithmetic: cent allocation, VAT rounding, periods, configuration checks."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from control_plane.billing.errors import InvalidRequestError
from control_plane.billing.models import (
    BillingConfig,
    Party,
    Period,
    allocate_cents,
    vat_of,
)

amounts = st.decimals(
    min_value=Decimal(-100_000), max_value=Decimal(100_000), places=8, allow_nan=False
)


@given(st.lists(amounts, min_size=1, max_size=40))
def test_allocated_cents_add_up_to_the_rounded_sum(exact: list[Decimal]) -> None:
    cents = allocate_cents(exact)
    assert sum(cents) == sum(exact).quantize(Decimal("0.01"), ROUND_HALF_UP)
    for value, amount in zip(exact, cents, strict=True):
        assert amount == amount.quantize(Decimal("0.01"))
        assert abs(amount - value) < Decimal("0.01")


def test_allocation_gives_the_leftover_cents_to_the_largest_remainders() -> None:
    thirds = [Decimal(1) / 3] * 3  # 0.333.. each, sum 1.00: one line gets the extra cent
    assert allocate_cents([Decimal("10.004"), Decimal("0.006")]) == [
        Decimal("10.00"),
        Decimal("0.01"),
    ]
    assert allocate_cents(thirds) == [Decimal("0.34"), Decimal("0.33"), Decimal("0.33")]
    assert allocate_cents([Decimal("-0.005")]) == [Decimal("-0.01")]  # half away from zero


def test_vat_is_rounded_half_up_to_the_cent() -> None:
    assert vat_of(Decimal("0.25"), Decimal(20)) == Decimal("0.05")
    assert vat_of(Decimal("0.03"), Decimal(19)) == Decimal("0.01")  # 0.0057
    assert vat_of(Decimal("-52.20"), Decimal(20)) == Decimal("-10.44")
    assert vat_of(Decimal("100.00"), Decimal("0")) == Decimal("0.00")


def test_periods() -> None:
    assert str(Period.parse("2026-03")) == "2026-03"
    assert Period(2026, 12).next == Period(2027, 1)
    start, end = Period.parse("2026-03").bounds_utc(ZoneInfo("Europe/Vienna"))
    assert start == datetime(2026, 2, 28, 23, tzinfo=UTC)
    assert end == datetime(2026, 3, 31, 22, tzinfo=UTC)  # summer time began on 29 March
    for bad in ("2026-3", "2026-00", "2026-13", "26-01", "", None, 202601):
        with pytest.raises(InvalidRequestError, match="YYYY-MM"):
            Period.parse(bad)


def test_the_configuration_refuses_contradictions() -> None:
    with pytest.raises(ValueError, match=r"vat_rate_pct 101 must be in \[0, 100\]"):
        BillingConfig(issuer=Party("X"), vat_rate_pct=Decimal(101))
    with pytest.raises(ValueError, match="more than 3 decimals"):
        BillingConfig(issuer=Party("X"), vat_rate_pct=Decimal("19.0001"))
    with pytest.raises(ValueError, match="timezone 'Mars/Base'"):
        BillingConfig(issuer=Party("X"), timezone="Mars/Base")
    with pytest.raises(ValueError, match="number_prefix 'inv'"):
        BillingConfig(issuer=Party("X"), number_prefix="inv")
    with pytest.raises(ValueError, match="the issuer needs a name"):
        BillingConfig(issuer=Party(" "))
