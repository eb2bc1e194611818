"""A44 parse rate: our parser against entsoe-py's on the same bytes.

Builds a year of 15-minute day-ahead prices for DE-LU (2025: 365 delivery days, the short day
of 30 March with 92 quarter-hours and the long day of 26 October with 100, 35 040 points) as
A44 documents shaped like the API's: namespace 7:3, curve type A03 with a price omitted where
it repeats the previous one (`--repeat-share`, default 3 % of positions, as real days show a
few flat stretches), one `TimeSeries` per day. Two layouts, same points:

- `day`: one document per delivery day (365 documents, what a daily feed fetches);
- `year`: one document holding all 365 `TimeSeries` (what a one-year backfill query returns).

Each layout is parsed `--rounds` times (best round reported) by
`control_plane.market.entsoe.parse_a44` (bytes in, validated `PricePoint`s out) and, on the
same documents, by `entsoe.parsers.parse_prices` (entsoe-py, the reference client: text in,
one pandas Series per resolution out; the bytes are decoded before timing). Both results are
compared price by price (the run fails if they differ). entsoe-py is a dev-only dependency;
without it only our figures are printed.

    python -m bench.price_parse
    python -m bench.price_parse --layout day --rounds 5
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from control_plane.market.entsoe import parse_a44
from control_plane.market.models import Resolution

NS = "urn:iec62325.351:tc57wg16:451-3:publicationdocument:7:3"
HEADER = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    f'<Publication_MarketDocument xmlns="{NS}">\n'
    "  <mRID>4f0e8a0c3b5d4a6e9c1f2b3a4d5e6f70</mRID>\n"
    "  <revisionNumber>1</revisionNumber>\n"
    "  <type>A44</type>\n"
    '  <sender_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450'
    "</sender_MarketParticipant.mRID>\n"
    "  <sender_MarketParticipant.marketRole.type>A32</sender_MarketParticipant.marketRole.type>\n"
    '  <receiver_MarketParticipant.mRID codingScheme="A01">10X1001A1001A450'
    "</receiver_MarketParticipant.mRID>\n"
    "  <receiver_MarketParticipant.marketRole.type>A33"
    "</receiver_MarketParticipant.marketRole.type>\n"
    "  <createdDateTime>2025-12-31T12:00:00Z</createdDateTime>\n"
    "  <period.timeInterval>\n    <start>{start}</start>\n    <end>{end}</end>\n"
    "  </period.timeInterval>\n"
)
FOOTER = "</Publication_MarketDocument>\n"
BERLIN_DAYS_UTC_START = datetime(2024, 12, 31, 23, tzinfo=UTC)


def _t(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%MZ")


def delivery_days() -> list[tuple[datetime, datetime]]:
    """The 2025 Berlin delivery days in UTC (23, 24 or 25 hours)."""
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    days = []
    day = datetime(2025, 1, 1, tzinfo=berlin)
    while day.year == 2025:
        nxt = (day + timedelta(days=1)).replace(tzinfo=berlin)
        days.append((day.astimezone(UTC), nxt.astimezone(UTC)))
        day = nxt
    return days


def series_xml(
    start: datetime, end: datetime, rng: random.Random, repeat_share: float
) -> tuple[str, list[float]]:
    n = (end - start) // timedelta(minutes=15)
    prices = []
    for i in range(n):
        hour = (start + timedelta(minutes=15 * i)).hour + (i % 4) / 4
        price = 85 + 45 * math.sin((hour - 7) / 24 * 2 * math.pi) + rng.gauss(0, 12)
        if 11 <= hour < 15 and rng.random() < 0.3:
            price = -abs(rng.gauss(5, 10))
        prices.append(round(price, 2))
    for i in range(1, n):
        if rng.random() < repeat_share:
            prices[i] = prices[i - 1]
    points = []
    for i, price in enumerate(prices):
        if i and price == prices[i - 1]:
            continue  # A03: a repeat is omitted
        points.append(
            f"      <Point>\n        <position>{i + 1}</position>\n"
            f"        <price.amount>{price:.2f}</price.amount>\n      </Point>\n"
        )
    xml = (
        "  <TimeSeries>\n    <mRID>1</mRID>\n    <auction.type>A01</auction.type>\n"
        "    <businessType>A62</businessType>\n"
        '    <in_Domain.mRID codingScheme="A01">10Y1001A1001A82H</in_Domain.mRID>\n'
        '    <out_Domain.mRID codingScheme="A01">10Y1001A1001A82H</out_Domain.mRID>\n'
        "    <contract_MarketAgreement.type>A01</contract_MarketAgreement.type>\n"
        "    <currency_Unit.name>EUR</currency_Unit.name>\n"
        "    <price_Measure_Unit.name>MWH</price_Measure_Unit.name>\n"
        "    <classificationSequence_AttributeInstanceComponent.position>1"
        "</classificationSequence_AttributeInstanceComponent.position>\n"
        "    <curveType>A03</curveType>\n    <Period>\n      <timeInterval>\n"
        f"        <start>{_t(start)}</start>\n        <end>{_t(end)}</end>\n"
        "      </timeInterval>\n      <resolution>PT15M</resolution>\n"
        + "".join(points)
        + "    </Period>\n  </TimeSeries>\n"
    )
    return xml, prices


def build(layout: str, repeat_share: float, seed: int) -> tuple[list[bytes], list[float]]:
    rng = random.Random(seed)
    days = delivery_days()
    parts = [series_xml(a, b, rng, repeat_share) for a, b in days]
    expected = [p for _, prices in parts for p in prices]
    if layout == "day":
        docs = [
            (HEADER.format(start=_t(a), end=_t(b)) + xml + FOOTER).encode()
            for (a, b), (xml, _) in zip(days, parts, strict=True)
        ]
    else:
        docs = [
            (
                HEADER.format(start=_t(days[0][0]), end=_t(days[-1][1]))
                + "".join(xml for xml, _ in parts)
                + FOOTER
            ).encode()
        ]
    return docs, expected


def best_of(rounds: int, run: Callable[[], list[float]]) -> tuple[float, list[float]]:
    best = math.inf
    result: list[float] = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - t0)
    return best, result


def ours(docs: list[bytes]) -> list[float]:
    prices: list[float] = []
    for i, doc in enumerate(docs):
        points = parse_a44(doc, document=f"doc {i}")
        prices.extend(p.price_eur_per_mwh for p in points if p.resolution is Resolution.PT15M)
    return prices


def theirs(texts: list[str]) -> list[float]:
    from entsoe.parsers import parse_prices

    prices: list[float] = []
    for text in texts:
        prices.extend(float(v) for v in parse_prices(text)["15min"].to_numpy())
    return prices


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=["day", "year", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat-share", type=float, default=0.03)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        import entsoe.parsers  # noqa: F401
    except ImportError:
        have_theirs = False
        print("entsoe-py not installed (pip install entsoe-py): our parser only")
    else:
        have_theirs = True
    layouts = ["day", "year"] if args.layout == "both" else [args.layout]
    print("A44 parse, DE-LU 2025, PT15M, A03; best of", args.rounds, "rounds")
    print(
        f"{'layout':6} {'parser':10} {'docs':>5} {'MB':>6} {'points':>7} {'seconds':>8} "
        f"{'points/s':>10} {'MB/s':>7} {'time/ours':>9}"
    )
    failed = False
    for layout in layouts:
        docs, expected = build(layout, args.repeat_share, args.seed)
        size_mb = sum(map(len, docs)) / 1e6
        ours_s, ours_prices = best_of(args.rounds, lambda docs=docs: ours(docs))
        if ours_prices != expected:
            print(f"{layout}: our parser's prices differ from the generated ones", file=sys.stderr)
            failed = True
        rows = [("ours", ours_s, len(ours_prices))]
        if have_theirs:
            texts = [d.decode() for d in docs]
            their_s, their_prices = best_of(args.rounds, lambda texts=texts: theirs(texts))
            if their_prices != ours_prices:
                print(f"{layout}: entsoe-py and our parser disagree", file=sys.stderr)
                failed = True
            rows.append(("entsoe-py", their_s, len(their_prices)))
        for name, seconds, count in rows:
            print(
                f"{layout:6} {name:10} {len(docs):5d} {size_mb:6.2f} {count:7d} {seconds:8.3f} "
                f"{count / seconds:10,.0f} {size_mb / seconds:7.2f} {seconds / ours_s:9.1f}"
            )
    if have_theirs and not failed:
        print("sanity: both parsers gave the same 35,040 prices")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
