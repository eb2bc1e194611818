"""Submitting a plan's proposed orders and auto-submission on dispatch, with fakes (exchange,
switch store, schedule sink): placed once, in order, every outcome kept, errors stop."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from control_plane.exchange.checks import MemorySiteStates
from control_plane.exchange.errors import InvalidDeliveryError, StoreError
from control_plane.exchange.models import NewOrder, Order, OrderState, PlacedOrder
from control_plane.optimiser.backtest import InMemoryPriceHistory
from control_plane.optimiser.service import (
    AUTO_SUBMITTER,
    AlreadySubmittedError,
    InvalidPortfolioError,
    NoOrdersError,
    OptimiseRequest,
    OptimiserService,
    SubmissionFailedError,
    SubmissionUnavailableError,
)
from control_plane.optimiser.store import AutoSubmitSwitch

from .test_service import NOW, SITE, Sink, quarter_prices, service, state


class Exchange:
    """Places every order ACCEPTED unless told to reject, refuse or fail at an index."""

    def __init__(
        self,
        *,
        reject: frozenset[int] = frozenset(),
        invalid: frozenset[int] = frozenset(),
        fail_at: int | None = None,
        error: Exception | None = None,
    ) -> None:
        self.placed: list[NewOrder] = []
        self.calls = 0
        self.reject = reject
        self.invalid = invalid
        self.fail_at = fail_at
        self.error = error or StoreError("the database is unreachable")

    def place_order(self, *, order: NewOrder) -> PlacedOrder:
        index = self.calls
        self.calls += 1
        if index == self.fail_at:
            raise self.error
        if index in self.invalid:
            raise InvalidDeliveryError(
                field="delivery.start",
                value=order.delivery.start.isoformat(),
                allowed="after the gate closure",
                problem="past the gate closure",
            )
        self.placed.append(order)
        rejected = index in self.reject
        return PlacedOrder(
            Order(
                order_id=100 + len(self.placed),
                side=order.side,
                quantity_mw=Decimal(str(order.quantity_mw)),
                limit_price_eur_per_mwh=Decimal(str(order.limit_price_eur_per_mwh)),
                market=order.market,
                delivery=order.delivery,
                portfolio=order.portfolio,
                counterparty=order.counterparty,
                site=order.site,
                state=OrderState.REJECTED if rejected else OrderState.ACCEPTED,
                filled_mw=Decimal(0),
                created_at=NOW,
                updated_at=NOW,
                reject_reason="SoC: not enough energy" if rejected else None,
            )
        )


class Switches:
    def __init__(self) -> None:
        self.rows: dict[str, AutoSubmitSwitch] = {}

    def set(self, switch: AutoSubmitSwitch) -> None:
        self.rows[switch.portfolio] = switch

    def get(self, portfolio: str) -> AutoSubmitSwitch | None:
        return self.rows.get(portfolio)

    def list(self) -> list[AutoSubmitSwitch]:
        return [self.rows[k] for k in sorted(self.rows)]


def with_orders(
    exchange: Exchange | None = None, *, switches: Switches | None = None, sink: Sink | None = None
) -> tuple[OptimiserService, list[PlacedOrder]]:
    history = InMemoryPriceHistory(quarter_prices(datetime(2025, 6, 2, 8, tzinfo=UTC), 24))
    published: list[PlacedOrder] = []
    svc = OptimiserService(
        sites=MemorySiteStates({SITE: state()}),
        prices=lambda: history,
        schedules=sink or Sink(),
        clock=lambda: NOW,
        orders=exchange or Exchange(),
        on_placed=published.append,
        switches=switches if switches is not None else Switches(),
    )
    return svc, published


def request(**kw: object) -> OptimiseRequest:
    values: dict[str, object] = {
        "site_id": SITE,
        "zone": "AT",
        "horizon_hours": 24,
        "market": "epex_at",
        "portfolio": "desk",
    }
    values.update(kw)
    return OptimiseRequest(**values)  # type: ignore[arg-type]


async def test_orders_are_placed_once_in_order_and_kept_on_the_plan() -> None:
    exchange = Exchange(reject=frozenset({1}), invalid=frozenset({0}))
    svc, published = with_orders(exchange)
    stored = await svc.optimise(request())
    proposed = stored.orders
    assert len(proposed) >= 3

    await svc.submit_orders(stored.plan_id, submitted_by="alice (api_key)")
    assert exchange.calls == len(proposed)
    assert exchange.placed == proposed[1:]  # the first was refused as malformed: not stored
    submission = stored.submission
    assert submission is not None and submission.complete and submission.error is None
    assert (submission.submitted_by, submission.submitted_at) == ("alice (api_key)", NOW)
    results = submission.results
    assert [r.proposed for r in results] == proposed
    assert (results[0].state, results[0].order_id) == ("NOT_PLACED", None)
    assert results[0].reject_reason is not None and "gate closure" in results[0].reject_reason
    assert (results[1].state, results[1].order_id) == ("REJECTED", 101)
    assert results[1].reject_reason == "SoC: not enough energy"
    assert all(r.state == "ACCEPTED" and r.reject_reason is None for r in results[2:])
    assert [r.order_id for r in results[1:]] == list(range(101, 101 + len(proposed) - 1))
    assert [p.order.order_id for p in published] == [r.order_id for r in results[1:]]

    with pytest.raises(AlreadySubmittedError, match=r"submitted at 2025-06-02T07:55:00\+00:00 by"):
        await svc.submit_orders(stored.plan_id, submitted_by="bob")
    assert exchange.calls == len(proposed)  # nothing placed twice


async def test_a_store_error_midway_stops_and_reports_what_was_placed() -> None:
    exchange = Exchange(fail_at=2)
    svc, published = with_orders(exchange)
    stored = await svc.optimise(request())
    with pytest.raises(SubmissionFailedError) as caught:
        await svc.submit_orders(stored.plan_id, submitted_by="alice")
    message = str(caught.value)
    assert f"stopped at order 3 of {len(stored.orders)}" in message
    assert "order ids 101, 102" in message and "database is unreachable" in message
    assert exchange.calls == 3 and len(published) == 2
    submission = stored.submission
    assert submission is not None and caught.value.submission is submission
    assert not submission.complete and submission.finished
    assert [r.order_id for r in submission.results] == [101, 102]
    # never resumed: the failed order may have been committed
    with pytest.raises(AlreadySubmittedError, match=r"2 placed, stopped early: the exchange"):
        await svc.submit_orders(stored.plan_id, submitted_by="alice")
    assert exchange.calls == 3


async def test_an_unexpected_error_stops_too() -> None:
    exchange = Exchange(fail_at=0, error=RuntimeError("boom"))
    svc, _ = with_orders(exchange)
    stored = await svc.optimise(request())
    with pytest.raises(SubmissionFailedError, match=r"error: boom\. Placed before it: no order"):
        await svc.submit_orders(stored.plan_id, submitted_by="alice")
    assert exchange.calls == 1


async def test_a_failing_event_callback_does_not_stop_the_placements() -> None:
    exchange = Exchange()
    svc, _ = with_orders(exchange)

    def broken(placed: PlacedOrder) -> None:
        raise RuntimeError("hub gone")

    svc._on_placed = broken
    stored = await svc.optimise(request())
    await svc.submit_orders(stored.plan_id, submitted_by="alice")
    assert stored.submission is not None and stored.submission.complete
    assert exchange.calls == len(stored.orders)


async def test_plans_without_market_and_portfolio_have_no_orders_to_submit() -> None:
    svc, _ = with_orders()
    stored = await svc.optimise(request(market=None, portfolio=None, horizon_hours=4))
    with pytest.raises(NoOrdersError, match="needs `market` and `portfolio`"):
        await svc.submit_orders(stored.plan_id, submitted_by="alice")
    assert stored.submission is None


async def test_without_an_exchange_or_store_submission_is_unavailable() -> None:
    svc = service()
    stored = await svc.optimise(request(horizon_hours=4))
    with pytest.raises(SubmissionUnavailableError, match="no exchange"):
        await svc.submit_orders(stored.plan_id, submitted_by="alice")
    with pytest.raises(SubmissionUnavailableError, match="no store"):
        await svc.set_auto_submit("desk", enabled=True, by="admin")
    assert await svc.auto_submit() == []
    assert not await svc.auto_submits("desk")


async def test_dispatch_auto_submits_only_when_the_portfolio_is_enabled() -> None:
    exchange = Exchange()
    switches = Switches()
    sink = Sink()
    svc, published = with_orders(exchange, switches=switches, sink=sink)

    # never switched: dispatch pushes the schedule only
    plain = await svc.optimise(request())
    await svc.dispatch(plain.plan_id)
    assert len(sink.got) == 1 and plain.submission is None and exchange.calls == 0

    switch = await svc.set_auto_submit(" desk ", enabled=True, by="risk (api_key)")
    assert switch == AutoSubmitSwitch(
        portfolio="desk", enabled=True, updated_at=NOW, updated_by="risk (api_key)"
    )
    assert await svc.auto_submits("desk") and not await svc.auto_submits("other")

    auto = await svc.optimise(request())
    await svc.dispatch(auto.plan_id)
    assert auto.dispatched is not None and auto.submission is not None
    assert auto.submission.submitted_by == AUTO_SUBMITTER and auto.submission.complete
    assert exchange.placed == auto.orders and len(published) == len(auto.orders)

    # another portfolio, and the same one switched off again: not submitted
    other = await svc.optimise(request(portfolio="other"))
    await svc.dispatch(other.plan_id)
    assert other.submission is None
    await svc.set_auto_submit("desk", enabled=False, by="risk (api_key)")
    off = await svc.optimise(request())
    await svc.dispatch(off.plan_id)
    assert off.submission is None
    assert exchange.calls == len(auto.orders)
    assert [(s.portfolio, s.enabled) for s in await svc.auto_submit()] == [("desk", False)]


async def test_dispatch_after_a_manual_submission_places_nothing_more() -> None:
    exchange = Exchange()
    switches = Switches()
    svc, _ = with_orders(exchange, switches=switches)
    await svc.set_auto_submit("desk", enabled=True, by="risk")
    stored = await svc.optimise(request())
    await svc.submit_orders(stored.plan_id, submitted_by="alice")
    await svc.dispatch(stored.plan_id)
    assert stored.dispatched is not None
    assert stored.submission is not None and stored.submission.submitted_by == "alice"
    assert exchange.calls == len(stored.orders)


async def test_a_failed_auto_submission_is_kept_and_the_dispatch_stands() -> None:
    exchange = Exchange(fail_at=1)
    switches = Switches()
    svc, _ = with_orders(exchange, switches=switches)
    await svc.set_auto_submit("desk", enabled=True, by="risk")
    stored = await svc.optimise(request())
    await svc.dispatch(stored.plan_id)  # does not raise
    assert stored.dispatched is not None
    assert stored.submission is not None and stored.submission.error is not None
    assert [r.order_id for r in stored.submission.results] == [101]


async def test_bad_portfolio_names_are_refused() -> None:
    svc, _ = with_orders()
    with pytest.raises(InvalidPortfolioError, match="1 to 64 printable"):
        await svc.set_auto_submit("  ", enabled=True, by="admin")
    with pytest.raises(InvalidPortfolioError):
        await svc.set_auto_submit("x" * 65, enabled=True, by="admin")
    with pytest.raises(InvalidPortfolioError):
        await svc.set_auto_submit("a\nb", enabled=True, by="admin")
    assert await svc.auto_submit() == []


async def test_concurrent_submissions_place_once() -> None:
    exchange = Exchange()
    svc, _ = with_orders(exchange)
    stored = await svc.optimise(request())
    outcomes = await asyncio.gather(
        svc.submit_orders(stored.plan_id, submitted_by="alice"),
        svc.submit_orders(stored.plan_id, submitted_by="bob"),
        return_exceptions=True,
    )
    assert outcomes[0] is stored
    assert isinstance(outcomes[1], AlreadySubmittedError)
    assert "are being submitted" in str(outcomes[1]) and "by alice" in str(outcomes[1])
    assert exchange.placed == stored.orders
