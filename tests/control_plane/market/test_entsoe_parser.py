"""The A44 parser on hand-made documents: every case the issue names, plus the errors."""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from control_plane.market.entsoe import parse_a44
from control_plane.market.models import DocumentError, NoDataError, Resolution, SourceError

from .a44 import AT, NS_70, NS_73, acknowledgement, document, series

DATA = Path(__file__).parent / "data"
DAY = datetime(2025, 9, 30, 22, tzinfo=UTC)  # 1 October 2025, local midnight in Berlin
NEXT = DAY + timedelta(days=1)


def _prices(n: int, base: float = 50.0) -> list[float]:
    return [round(base + i * 0.25, 2) for i in range(n)]


def test_recorded_shape_sample_keeps_auctions_and_resolutions_apart() -> None:
    sample = DATA / "entsoe_a44_de_lu_2025-10-01.xml"
    points = parse_a44(sample.read_bytes(), document=sample.name)
    groups = Counter((p.sequence, p.resolution) for p in points)
    assert groups == {
        ("SDAC", Resolution.PT15M): 96,
        ("EXAA", Resolution.PT15M): 96,
        ("SDAC", Resolution.PT60M): 24,
    }
    assert {p.zone for p in points} == {"DE_LU"}
    assert {p.source for p in points} == {"entsoe"}
    sdac = [p for p in points if p.sequence == "SDAC" and p.resolution is Resolution.PT15M]
    assert sdac[0].start == DAY and sdac[-1].start == NEXT - timedelta(minutes=15)
    # positions 2 and 3 are omitted in the file (A03): same price as position 1
    assert sdac[0].price_eur_per_mwh == sdac[1].price_eur_per_mwh == sdac[2].price_eur_per_mwh
    assert sdac[3].price_eur_per_mwh != sdac[2].price_eur_per_mwh
    # the last position is omitted too: forward-filled to the period end
    assert sdac[-1].price_eur_per_mwh == sdac[-2].price_eur_per_mwh
    # oldest first
    assert [p.start for p in points] == sorted(p.start for p in points)


def test_resolutions_in_one_document_are_kept_apart() -> None:
    data = document(
        series(_prices(96), start=DAY, end=NEXT, resolution="PT15M"),
        series(_prices(48, 70), start=DAY, end=NEXT, resolution="PT30M"),
        series(_prices(24, 90), start=DAY, end=NEXT, resolution="PT60M"),
    )
    points = parse_a44(data, document="mixed")
    by_res = {r: [p for p in points if p.resolution is r] for r in Resolution}
    assert {r: len(v) for r, v in by_res.items()} == {
        Resolution.PT15M: 96,
        Resolution.PT30M: 48,
        Resolution.PT60M: 24,
    }
    for res, pts in by_res.items():
        assert len({p.start for p in pts}) == len(pts)  # no duplicate timestamps
        assert all(b.start - a.start == res.delta for a, b in itertools.pairwise(pts))
    assert by_res[Resolution.PT60M][1].price_eur_per_mwh == 90.25
    assert by_res[Resolution.PT30M][1].start == DAY + timedelta(minutes=30)


@pytest.mark.parametrize(
    ("where", "omit", "filled"),
    [
        ("start", [2, 3, 4], {2: 1, 3: 1, 4: 1}),
        ("middle", [40, 41], {40: 39, 41: 39}),
        ("end", [94, 95, 96], {94: 93, 95: 93, 96: 93}),
    ],
)
def test_a03_omitted_positions_repeat_the_previous_price(
    where: str, omit: list[int], filled: dict[int, int]
) -> None:
    prices = _prices(96)
    points = parse_a44(document(series(prices, start=DAY, end=NEXT, omit=omit)), document=where)
    assert len(points) == 96  # filled to the period end, never shortened
    got = [p.price_eur_per_mwh for p in points]
    for position, source in filled.items():
        assert got[position - 1] == prices[source - 1]
    for position in set(range(1, 97)) - set(filled):
        assert got[position - 1] == prices[position - 1]


def test_a03_without_position_1_is_refused() -> None:
    data = document(series(_prices(96), start=DAY, end=NEXT, omit=[1]))
    with pytest.raises(DocumentError, match="A03 without position 1"):
        parse_a44(data, document="d")


def test_a01_lists_every_position_and_a_missing_one_is_an_error() -> None:
    prices = _prices(24)
    ok = parse_a44(
        document(series(prices, start=DAY, end=NEXT, resolution="PT60M", curve="A01")),
        document="a01",
    )
    assert [p.price_eur_per_mwh for p in ok] == prices
    gap = document(
        series(prices, start=DAY, end=NEXT, resolution="PT60M", curve="A01", omit=[5, 6])
    )
    with pytest.raises(DocumentError, match=r"TimeSeries 1, Period 1: curve A01 .* 2 of 24 "):
        parse_a44(gap, document="a01 gap")


def test_series_without_curve_type_is_read_as_a01() -> None:
    data = document(series(_prices(24), start=DAY, end=NEXT, resolution="PT60M", curve=None))
    assert len(parse_a44(data, document="old")) == 24


@pytest.mark.parametrize(
    ("start", "end", "count"),
    [
        # Berlin short day 30 March 2025: 23 h = 92 quarter-hours
        (datetime(2025, 3, 29, 23, tzinfo=UTC), datetime(2025, 3, 30, 22, tzinfo=UTC), 92),
        # Berlin long day 26 October 2025: 25 h = 100 quarter-hours
        (datetime(2025, 10, 25, 22, tzinfo=UTC), datetime(2025, 10, 26, 23, tzinfo=UTC), 100),
    ],
)
def test_dst_days_have_92_or_100_quarter_hours(start: datetime, end: datetime, count: int) -> None:
    prices = _prices(count)
    points = parse_a44(document(series(prices, start=start, end=end)), document="dst")
    assert len(points) == count
    assert points[-1].start == end - timedelta(minutes=15)
    assert points[-1].price_eur_per_mwh == prices[-1]
    # A03 gap at the end of a long day is filled to the 100th quarter-hour
    filled = parse_a44(
        document(series(prices, start=start, end=end, omit=[count - 1, count])), document="dst"
    )
    assert len(filled) == count
    assert filled[-1].price_eur_per_mwh == prices[count - 3]


def test_position_beyond_the_period_is_refused_naming_the_period() -> None:
    short_start = datetime(2025, 3, 29, 23, tzinfo=UTC)
    short_end = datetime(2025, 3, 30, 22, tzinfo=UTC)
    data = document(series(_prices(96), start=short_start, end=short_end))
    with pytest.raises(DocumentError, match=r"Point 93: position 93 outside 1\.\.92"):
        parse_a44(data, document="short day with 96 points")


def test_period_not_a_whole_number_of_intervals_is_refused() -> None:
    data = document(series(_prices(4), start=DAY, end=DAY + timedelta(minutes=50)))
    with pytest.raises(DocumentError, match="not a whole number of PT15M"):
        parse_a44(data, document="odd")


def test_auction_sequence_is_kept() -> None:
    data = document(
        series(_prices(96, 60), start=DAY, end=NEXT, eic=AT, sequence="1"),
        series(_prices(96, 61), start=DAY, end=NEXT, eic=AT, sequence="2"),
    )
    points = parse_a44(data, document="at")
    assert Counter(p.sequence for p in points) == {"SDAC": 96, "EXAA": 96}
    assert {p.zone for p in points} == {"AT"}
    first = {p.sequence: p.price_eur_per_mwh for p in points if p.start == DAY}
    assert first == {"SDAC": 60.0, "EXAA": 61.0}
    ch = parse_a44(
        document(
            series(_prices(24), start=DAY, end=NEXT, resolution="PT60M", eic="10YCH-SWISSGRIDZ")
        ),
        document="ch",
    )
    assert {(p.zone, p.sequence) for p in ch} == {("CH", "SDAC")}
    unnumbered = parse_a44(
        document(series(_prices(24), start=DAY, end=NEXT, resolution="PT60M", sequence=None)),
        document="old",
    )
    assert {p.sequence for p in unnumbered} == {""}


@pytest.mark.parametrize("ns", [NS_73, NS_70, None], ids=["7:3", "7:0", "no-namespace"])
def test_any_namespace_version_gives_the_same_points(ns: str | None) -> None:
    data = document(series(_prices(96), start=DAY, end=NEXT, omit=[10]), ns=ns)
    reference = parse_a44(
        document(series(_prices(96), start=DAY, end=NEXT, omit=[10])), document="r"
    )
    assert parse_a44(data, document="ns") == reference


def test_acknowledgement_no_data_is_no_data_error_with_the_reason() -> None:
    text = "No matching data found for Data item Day-ahead Prices [12.1.D]"
    with pytest.raises(NoDataError, match=r"\[999\] No matching data found for Data item"):
        parse_a44(acknowledgement(text=text), document="ack")


def test_other_acknowledgement_is_a_source_error_with_its_text() -> None:
    with pytest.raises(SourceError, match="exceeds the allowed limit") as caught:
        parse_a44(
            acknowledgement(
                code="999", text="The amount of requested data exceeds the allowed limit"
            ),
            document="ack",
        )
    assert caught.value.retryable is False
    with pytest.raises(SourceError, match=r"\[A02\]"):
        parse_a44(acknowledgement(code="A02", text="Invalid parameter"), document="ack")


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"<Publication_MarketDocument><TimeSeries>", "malformed XML: no element found"),
        (b"", "malformed XML"),
        (b"not xml at all", "malformed XML: syntax error: line 1, column 0"),
        (b"<html><body>Service unavailable</body></html>", "root element is <html>"),
    ],
)
def test_malformed_xml_names_the_document_and_the_problem(data: bytes, problem: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_a44(data, document="DE_LU 2025-10-01")
    assert caught.value.document == "DE_LU 2025-10-01"
    assert problem in caught.value.problem
    assert str(caught.value).startswith("DE_LU 2025-10-01: ")


def test_missing_elements_are_named_with_their_place() -> None:
    good = series(_prices(96), start=DAY, end=NEXT)
    no_currency = good.replace("<currency_Unit.name>EUR</currency_Unit.name>", "")
    with pytest.raises(DocumentError, match=r"TimeSeries 2: missing <currency_Unit.name>"):
        parse_a44(document(good, no_currency), document="d")
    no_resolution = good.replace("<resolution>PT15M</resolution>", "")
    with pytest.raises(DocumentError, match=r"TimeSeries 1, Period 1: missing <resolution>"):
        parse_a44(document(no_resolution), document="d")
    no_end = good.replace("<end>2025-10-01T22:00Z</end>", "")
    with pytest.raises(DocumentError, match=r"Period 1: missing <end>"):
        parse_a44(document(no_end), document="d")
    bad_price = series(_prices(4), start=DAY, end=DAY + timedelta(hours=1), extra_points="")
    bad_price = bad_price.replace(
        "<price.amount>50.5</price.amount>", "<price.amount>n/a</price.amount>"
    )
    with pytest.raises(DocumentError, match=r"Period 1, Point 3: .*'n/a' is not a number"):
        parse_a44(document(bad_price), document="d")
    no_price = series(
        _prices(4),
        start=DAY,
        end=DAY + timedelta(hours=1),
        omit=[4],
        extra_points="<Point><position>4</position></Point>",
    )
    with pytest.raises(DocumentError, match=r"Point 4: missing <price.amount>"):
        parse_a44(document(no_price), document="d")


def test_another_currency_is_refused() -> None:
    data = document(series(_prices(96), start=DAY, end=NEXT, currency="PLN"))
    with pytest.raises(DocumentError, match="prices in PLN; only EUR is supported"):
        parse_a44(data, document="pl")


def test_price_per_kwh_is_converted_to_per_mwh() -> None:
    data = document(
        series([0.1, 0.25], start=DAY, end=DAY + timedelta(hours=2), resolution="PT60M", unit="KWH")
    )
    assert [p.price_eur_per_mwh for p in parse_a44(data, document="kwh")] == [100.0, 250.0]


def test_other_document_type_is_refused() -> None:
    data = document(series(_prices(24), start=DAY, end=NEXT, resolution="PT60M"), doc_type="A65")
    with pytest.raises(DocumentError, match="document type is 'A65', not A44"):
        parse_a44(data, document="load")


def test_negative_and_out_of_bounds_prices_are_kept_and_flagged() -> None:
    prices = [-20.5, -600.0, 4500.0, 80.0]
    data = document(series(prices, start=DAY, end=DAY + timedelta(hours=1)))
    points = parse_a44(data, document="d")
    assert [p.price_eur_per_mwh for p in points] == prices
    assert [bool(p.flag) for p in points] == [False, True, True, False]
    assert "outside plausibility bounds -500 .. 4000" in points[1].flag
    narrow = parse_a44(data, document="d", bounds=(-10.0, 100.0))
    assert [bool(p.flag) for p in narrow] == [True, True, True, False]


def test_the_same_interval_twice_merges_if_equal_and_is_refused_if_not() -> None:
    one = series(_prices(96), start=DAY, end=NEXT)
    assert len(parse_a44(document(one, one), document="d")) == 96
    other = series(_prices(96, 51), start=DAY, end=NEXT)
    with pytest.raises(DocumentError, match=r"two prices for DE_LU SDAC PT15M 2025-09-30T22:00Z"):
        parse_a44(document(one, other), document="d")


def test_duplicate_position_is_refused() -> None:
    data = document(
        series(
            _prices(4),
            start=DAY,
            end=DAY + timedelta(hours=1),
            extra_points="<Point><position>2</position><price.amount>1</price.amount></Point>",
        )
    )
    with pytest.raises(DocumentError, match="position 2 twice"):
        parse_a44(data, document="d")


def test_empty_publication_gives_no_points() -> None:
    assert parse_a44(document(), document="empty") == []
