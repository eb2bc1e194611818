"""The matching engine: validate an order, run the pre-trade checks, match, persist, rest.

No FastAPI or gRPC here (STYLE 1); the API layer calls `Exchange.place_order` and turns the
errors of `control_plane.exchange.errors` into HTTP answers.

**Single writer.** One `Exchange` owns the books of its store and serialises every placement
and cancel with one lock (DESIGN.md scale-out: "the matching engine as a single writer per
market"; here one writer for all markets of the process). The methods are synchronous and
block on the store's commit: call them from a worker thread (`asyncio.to_thread`), not on the
event loop.

**A placement**, under the lock:

1. validate the request (`OrderValidationError` with field, value and allowed range: nothing
   is stored); give it the next order id, which is also its time priority;
2. run the pre-trade checks in order (callables injected by the caller, e.g. SoC feasibility):
   the first that returns a reason makes the order REJECTED with that reason; a check that
   raises rejects it too (fail closed). A rejected order is stored and returned, not raised;
3. plan the fills against the book (price, then time; nothing changes yet), build the trades
   (price per `PricingRule`: the spec's mean of the two limits by default, or the resting
   order's price) and the counter orders' new fills;
4. commit order + trades + counter orders in one transaction;
5. only then apply them to the in-memory book, and rest any remainder.

After the commit the placement's trades are added to the in-memory position book (exposure
and realised PnL per portfolio, `exposure.PositionBook`) and the metrics, if any, are updated.
If the commit fails (`StoreError`) the book, the positions and the metrics were not touched.
The engine still reloads all books and positions from the store before the next call, because
a commit can fail *after* the database applied it (a connection lost while the COMMIT was in
flight): the store, not memory, is the truth.

**Time** comes from the injected clock (UTC-aware). An order whose delivery period starts
within the market's gate closure, or has started, is refused.

**Expiry at gate closure.** A resting order whose product reaches gate closure (delivery start
minus the market's `gate_closure` <= now) can no longer trade: it becomes EXPIRED, keeping
what it filled before. `expire_due` is the sweep (the app runs it periodically); besides, every
method that places, cancels or shows open orders or books first expires what is due, under the
lock, before it answers. Expiring first rather than filtering: the store's rows stay the truth
for every reader (the order pages read the store, credit reads it for open orders' exposure,
the SoC check reads a site's orders), paging cursors stay exact, and `?state=expired` shows an
order as soon as it is no longer open, whether or not the sweep has run. Expiry is one
transaction for everything due, with the same conditional updates as a cancel; the books and
metrics change only after it committed. After a restart the reload puts the due orders back
into the books and the first call expires them, so none is ever shown or matched as open.
Orders expired lazily are kept (bounded) for the next `expire_due` call to return, so the
sweep reports every expiry (the app turns them into `order.expired` events).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from control_plane.exchange.book import BookSnapshot, Fill, OrderBook
from control_plane.exchange.errors import (
    InvalidDeliveryError,
    InvalidFieldError,
    InvalidPriceError,
    InvalidQuantityError,
    OrderExpiredError,
    OrderNotFoundError,
    OrderNotOpenError,
    OrderValidationError,
    StoreError,
)
from control_plane.exchange.exposure import PortfolioExposure, PositionBook
from control_plane.exchange.metrics import ExchangeMetrics
from control_plane.exchange.models import (
    PRICE_STEP_EUR_PER_MWH,
    QUANTITY_STEP_MW,
    BookKey,
    DeliveryPeriod,
    Market,
    MarketRegistry,
    NewOrder,
    Order,
    OrderState,
    PlacedOrder,
    PricingRule,
    Side,
    Trade,
)
from control_plane.exchange.store import OrderStore

__all__ = ["Clock", "Exchange", "PreTradeCheck", "utc_now"]

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
"""Returns the current time, timezone-aware."""

PreTradeCheck = Callable[[Order], str | None]
"""Gets the validated order (state ACCEPTED, nothing filled); returns None to let it through
or the reason to reject it. Runs under the engine's lock: it may call the engine's read
methods (the lock is re-entrant) but must not place or cancel orders. Its `name` attribute (or
`__name__`) labels the rejection in the metrics."""

MAX_NAME_LENGTH = 64
MAX_UNREPORTED_EXPIRIES = 10_000
"""Lazily expired orders kept for the next `expire_due` (the oldest go first beyond this)."""


def utc_now() -> datetime:
    """The wall clock in UTC."""
    return datetime.now(UTC)


class Exchange:
    """Order books for every market and delivery period of one store, matched in memory."""

    def __init__(
        self,
        *,
        store: OrderStore,
        markets: MarketRegistry,
        clock: Clock = utc_now,
        pricing: PricingRule = PricingRule.MIDPOINT,
        pre_trade_checks: Sequence[PreTradeCheck] = (),
        metrics: ExchangeMetrics | None = None,
    ) -> None:
        """Rebuild the books and positions from `store` (`StoreError` if it cannot be read)."""
        self._store = store
        self._markets = markets
        self._clock = clock
        self._pricing = PricingRule(pricing)
        self._checks = tuple(pre_trade_checks)
        self._metrics = metrics
        self._positions = PositionBook()
        self._lock = threading.RLock()
        self._books: dict[BookKey, OrderBook] = {}
        self._book_of: dict[int, BookKey] = {}
        self._last_order_id = 0
        self._last_trade_id = 0
        self._next_closure: datetime | None = None
        """At or before the earliest gate closure of any book (None: no books)."""
        self._unreported: deque[Order] = deque(maxlen=MAX_UNREPORTED_EXPIRIES)
        self._stale = True
        with self._lock:
            self._reload()

    @property
    def pricing(self) -> PricingRule:
        return self._pricing

    @property
    def markets(self) -> MarketRegistry:
        return self._markets

    # -- writes ---------------------------------------------------------------------------

    def place_order(self, *, order: NewOrder) -> PlacedOrder:
        """Validate, check, match and store `order`; the order as it ended and its trades."""
        with self._lock:
            now = self._now()
            self._settle(now)
            candidate = self._validate(order, now=now, order_id=self._last_order_id + 1)
            refusal = self._pre_trade_reason(candidate)
            if refusal is not None:
                check, reason = refusal
                rejected = replace(candidate, state=OrderState.REJECTED, reject_reason=reason)
                placed = PlacedOrder(rejected)
                self._commit(lambda: self._store.commit_placement(placed))
                self._last_order_id = rejected.order_id
                if self._metrics is not None:
                    self._metrics.placed(placed, rejected_by=check)
                log.info("order %d rejected: %s", rejected.order_id, reason)
                return placed
            key = candidate.book_key
            book = self._books.get(key) or OrderBook(key)
            fills = book.plan(candidate, pricing=self._pricing)
            placed = self._execute(candidate, fills, now=now)
            self._commit(lambda: self._store.commit_placement(placed))
            touched = self._positions.add(placed.trades)
            if self._metrics is not None:
                self._metrics.placed(placed)
                for portfolio in sorted(touched):
                    self._metrics.exposure(self._positions.exposure(portfolio))
            try:
                book.apply(incoming=placed.order, counter_orders=placed.counter_orders)
            except Exception:
                self._stale = True  # stored, but memory may be half-applied: rebuild next call
                raise
            self._last_order_id = placed.order.order_id
            self._last_trade_id += len(placed.trades)
            for counter in placed.counter_orders:
                if not counter.is_open:
                    del self._book_of[counter.order_id]
            if placed.order.is_open:
                self._book_of[placed.order.order_id] = key
            self._keep(book)
            return placed

    def cancel_order(self, *, order_id: int) -> Order:
        """Take an open order out of its book; the order in its CANCELLED state.

        `OrderNotFoundError` if there is no such order, `OrderNotOpenError` if it is filled,
        cancelled or rejected already, `OrderExpiredError` if it expired at gate closure.
        """
        with self._lock:
            self._settle(self._now())
            key = self._book_of.get(order_id)
            if key is None:
                stored = self._store.get_order(order_id)
                if stored is None:
                    raise OrderNotFoundError(order_id)
                if stored.state is OrderState.EXPIRED:
                    raise OrderExpiredError(
                        order_id,
                        gate_closure_at=self._closes(stored.book_key),
                        delivery=stored.delivery.product_id,
                    )
                raise OrderNotOpenError(order_id, stored.state.value)
            book = self._books[key]
            current = book.get(order_id)
            if current is None:  # the two indexes disagree: never expected, reload to recover
                self._stale = True
                raise StoreError(f"order {order_id} was indexed but not in its book; reloading")
            cancelled = replace(current, state=OrderState.CANCELLED, updated_at=self._now())
            self._commit(lambda: self._store.commit_cancel(cancelled))
            if self._metrics is not None:
                self._metrics.cancelled(cancelled.market)
            book.remove(order_id)
            del self._book_of[order_id]
            self._keep(book)
            return cancelled

    def expire_due(self, *, now: datetime | None = None) -> list[Order]:
        """Expire every resting order whose product reached gate closure (the sweep).

        Returns the orders that expired since the last call, oldest id first: those this call
        expired and those other calls expired lazily in between (at most
        `MAX_UNREPORTED_EXPIRIES`). `now` defaults to the engine's clock. `StoreError` if the
        expiry could not be stored (nothing changed then; the next call tries again).
        """
        with self._lock:
            self._settle(self._now() if now is None else _aware(now))
            expired = sorted(self._unreported, key=lambda o: o.order_id)
            self._unreported.clear()
        return expired

    # -- reads ----------------------------------------------------------------------------

    def get_order(self, *, order_id: int) -> Order:
        """The order's current state (`OrderNotFoundError` if there is none)."""
        with self._lock:
            self._settle(self._now())
            key = self._book_of.get(order_id)
            if key is not None:
                current = self._books[key].get(order_id)
                if current is not None:
                    return current
        stored = self._store.get_order(order_id)
        if stored is None:
            raise OrderNotFoundError(order_id)
        return stored

    def book(self, *, market: str, delivery: DeliveryPeriod) -> BookSnapshot:
        """Both sides of one book in priority order (empty if nothing rests there)."""
        self._markets.get(market)
        key = BookKey(market, delivery)
        with self._lock:
            self._settle(self._now())
            book = self._books.get(key)
            return book.snapshot() if book is not None else BookSnapshot(key, (), ())

    def top_of_book(
        self, *, market: str, delivery: DeliveryPeriod
    ) -> tuple[Decimal | None, Decimal | None]:
        """(best bid, best ask) in EUR/MWh, None for an empty side; O(1)."""
        self._markets.get(market)
        with self._lock:
            self._settle(self._now())
            book = self._books.get(BookKey(market, delivery))
            if book is None:
                return None, None
            return book.best_bid_eur_per_mwh, book.best_ask_eur_per_mwh

    def book_keys(self) -> list[BookKey]:
        """Every book that has resting orders, sorted by market and delivery."""
        with self._lock:
            self._settle(self._now())
            return sorted(self._books)

    def open_orders(self, *, portfolio: str | None = None) -> list[Order]:
        """Resting orders, oldest first."""
        with self._lock:
            self._settle(self._now())
            found = [
                order
                for book in self._books.values()
                for order in book.orders()
                if portfolio is None or order.portfolio == portfolio
            ]
        return sorted(found, key=lambda o: o.order_id)

    def orders(
        self,
        *,
        states: Iterable[OrderState] | None = None,
        portfolio: str | None = None,
        market: str | None = None,
        side: Side | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        before_id: int | None = None,
        limit: int | None = None,
    ) -> list[Order]:
        """Stored orders in any state, newest first (a page below `before_id` when given)."""
        with self._lock:
            self._settle(self._now())
        return self._store.list_orders(
            states=states,
            portfolio=portfolio,
            market=market,
            side=side,
            delivery_from=delivery_from,
            delivery_to=delivery_to,
            before_id=before_id,
            limit=limit,
        )

    def trades(
        self,
        *,
        portfolio: str | None = None,
        market: str | None = None,
        delivery: DeliveryPeriod | None = None,
        limit: int | None = None,
        delivery_from: datetime | None = None,
        delivery_to: datetime | None = None,
        since: datetime | None = None,
        before_id: int | None = None,
    ) -> list[Trade]:
        """Stored trades, oldest first (`limit` keeps the newest, below `before_id` if given)."""
        return self._store.list_trades(
            portfolio=portfolio,
            market=market,
            delivery=delivery,
            limit=limit,
            delivery_from=delivery_from,
            delivery_to=delivery_to,
            since=since,
            before_id=before_id,
        )

    def site_orders(
        self, *, site: str, delivery_from: datetime, delivery_to: datetime
    ) -> list[Order]:
        """The site's open or (partly) filled orders delivering in [from, to), oldest first."""
        with self._lock:
            self._settle(self._now())
        return self._store.site_orders(
            site=site, delivery_from=delivery_from, delivery_to=delivery_to
        )

    def now(self) -> datetime:
        """The engine's clock (UTC): what 'in the past' and 'today' mean for its callers."""
        return self._now()

    def exposure(self, *, portfolio: str) -> PortfolioExposure:
        """Net energy, cash, realised PnL and open value of `portfolio`; O(its positions).

        A portfolio without trades has no positions (all figures 0).
        """
        with self._lock:
            self._ensure_fresh()
            return self._positions.exposure(portfolio)

    def portfolios(self) -> list[str]:
        """Every portfolio with at least one trade, sorted."""
        with self._lock:
            self._ensure_fresh()
            return self._positions.portfolios()

    # -- internals ------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise RuntimeError(f"the exchange clock returned a naive datetime {now!r}")
        return now.astimezone(UTC)

    def _ensure_fresh(self) -> None:
        if self._stale:
            self._reload()

    def _closes(self, key: BookKey) -> datetime:
        """When trading in the book's product stops (a market no longer configured: at its
        delivery start)."""
        if key.market in self._markets:
            return key.delivery.start - self._markets.get(key.market).gate_closure
        return key.delivery.start

    def _settle(self, now: datetime) -> None:
        """Reload if stale, then expire every book whose product reached gate closure."""
        self._ensure_fresh()
        if self._next_closure is None or now < self._next_closure:
            return
        due = sorted(key for key in self._books if self._closes(key) <= now)
        expired = [
            replace(order, state=OrderState.EXPIRED, updated_at=now)
            for key in due
            for order in sorted(self._books[key].orders(), key=lambda o: o.order_id)
        ]
        if expired:
            self._commit(lambda: self._store.commit_expiry(expired))
            if self._metrics is not None:
                for key in due:
                    self._metrics.expired(key.market, len(self._books[key]))
            for order in expired:
                del self._book_of[order.order_id]
            for key in due:
                del self._books[key]
            if len(self._unreported) + len(expired) > MAX_UNREPORTED_EXPIRIES:
                log.warning(
                    "exchange: more than %d expiries not yet collected by expire_due; the "
                    "oldest are no longer reported (is the expiry sweep running?)",
                    MAX_UNREPORTED_EXPIRIES,
                )
            self._unreported.extend(expired)
            log.info(
                "exchange: %d orders in %d books expired at gate closure (%s)",
                len(expired),
                len(due),
                ", ".join(str(key) for key in due),
            )
        self._next_closure = min((self._closes(key) for key in self._books), default=None)

    def _reload(self) -> None:
        """Rebuild the books from the store's open orders and the positions from its trades
        (at start and after a failure)."""
        open_orders = self._store.load_open_orders()
        last_order_id, last_trade_id = self._store.last_ids()
        positions = PositionBook(self._store.list_trades())
        books: dict[BookKey, OrderBook] = {}
        book_of: dict[int, BookKey] = {}
        for order in open_orders:  # oldest first: arrival order is time priority
            key = order.book_key
            book = books.get(key)
            if book is None:
                book = books[key] = OrderBook(key)
            book.add(order)
            book_of[order.order_id] = key
        self._books, self._book_of = books, book_of
        self._last_order_id, self._last_trade_id = last_order_id, last_trade_id
        self._positions = positions
        self._next_closure = min((self._closes(key) for key in books), default=None)
        self._stale = False
        if self._metrics is not None:
            for exposure in positions:
                self._metrics.exposure(exposure)
        log.info(
            "exchange: %d open orders in %d books loaded, last order %d, last trade %d",
            len(open_orders),
            len(books),
            last_order_id,
            last_trade_id,
        )

    def _commit(self, write: Callable[[], None]) -> None:
        try:
            write()
        except StoreError:
            self._stale = True
            raise
        except Exception as exc:
            self._stale = True
            raise StoreError(f"storing failed: {type(exc).__name__}: {exc}") from exc

    def _keep(self, book: OrderBook) -> None:
        if len(book):
            self._books[book.key] = book
            closes = self._closes(book.key)
            if self._next_closure is None or closes < self._next_closure:
                self._next_closure = closes
        else:
            self._books.pop(book.key, None)

    def _pre_trade_reason(self, order: Order) -> tuple[str, str] | None:
        """(name of the check, reason) of the first check that refuses `order`, else None."""
        for check in self._checks:
            name = str(
                getattr(check, "name", None)
                or getattr(check, "__name__", None)
                or type(check).__name__
            )
            try:
                reason = check(order)
            except Exception as exc:
                log.exception("pre-trade check %s failed on order %d", name, order.order_id)
                return name, f"pre-trade check {name} failed: {type(exc).__name__}: {exc}"
            if reason is not None:
                return name, reason or f"rejected by pre-trade check {name}"
        return None

    def _execute(self, incoming: Order, fills: Iterable[Fill], *, now: datetime) -> PlacedOrder:
        """The trades of `fills` and every order's state after them."""
        trades: list[Trade] = []
        counters: list[Order] = []
        filled = Decimal(0)
        trade_id = self._last_trade_id
        for fill in fills:
            trade_id += 1
            resting = fill.resting
            buy, sell = (incoming, resting) if incoming.side is Side.BUY else (resting, incoming)
            trades.append(
                Trade(
                    trade_id=trade_id,
                    market=incoming.market,
                    delivery=incoming.delivery,
                    buy_order_id=buy.order_id,
                    sell_order_id=sell.order_id,
                    buy_portfolio=buy.portfolio,
                    sell_portfolio=sell.portfolio,
                    buy_counterparty=buy.counterparty,
                    sell_counterparty=sell.counterparty,
                    quantity_mw=fill.quantity_mw,
                    price_eur_per_mwh=fill.price_eur_per_mwh,
                    aggressor=incoming.side,
                    executed_at=now,
                )
            )
            counters.append(_filled(resting, resting.filled_mw + fill.quantity_mw, now=now))
            filled += fill.quantity_mw
        order = _filled(incoming, filled, now=now) if filled else incoming
        return PlacedOrder(order, tuple(trades), tuple(counters))

    def _validate(self, new: NewOrder, *, now: datetime, order_id: int) -> Order:
        market = self._markets.get(new.market)
        side = _side(new.side)
        quantity = _quantity(new.quantity_mw, market)
        price = _price(new.limit_price_eur_per_mwh, market)
        delivery = _delivery(new.delivery, market, now=now)
        return Order(
            order_id=order_id,
            side=side,
            quantity_mw=quantity,
            limit_price_eur_per_mwh=price,
            market=market.market_id,
            delivery=delivery,
            portfolio=_name(new.portfolio, "portfolio"),
            counterparty=_name(new.counterparty, "counterparty"),
            site=None if new.site is None else _name(new.site, "site"),
            state=OrderState.ACCEPTED,
            filled_mw=Decimal(0).quantize(QUANTITY_STEP_MW),
            created_at=now,
            updated_at=now,
        )


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f"now must be a timezone-aware datetime, got {now!r}")
    return now.astimezone(UTC)


def _filled(order: Order, filled_mw: Decimal, *, now: datetime) -> Order:
    state = OrderState.FILLED if filled_mw == order.quantity_mw else OrderState.PARTIALLY_FILLED
    return replace(order, filled_mw=filled_mw, state=state, updated_at=now)


# -- validation -------------------------------------------------------------------------------


def _decimal(
    value: object, *, field: str, allowed: str, error: type[OrderValidationError]
) -> Decimal:
    """`value` as a finite Decimal (floats by their shortest repr: 0.1 -> Decimal('0.1'))."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise error(field=field, value=value, allowed=allowed, problem="not a number")
    try:
        if isinstance(value, float):
            number = Decimal(repr(value))
        else:
            number = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, ValueError):
        raise error(field=field, value=value, allowed=allowed, problem="not a number") from None
    if not number.is_finite():
        raise error(field=field, value=value, allowed=allowed, problem="not a finite number")
    return number


def _quantity(value: object, market: Market) -> Decimal:
    allowed = f"0 < quantity <= {market.max_quantity_mw} MW, in steps of {QUANTITY_STEP_MW} MW"
    error = InvalidQuantityError
    quantity = _decimal(value, field="quantity_mw", allowed=allowed, error=error)
    if quantity <= 0:
        raise error(field="quantity_mw", value=value, allowed=allowed, problem="must be positive")
    if quantity > market.max_quantity_mw:
        raise error(
            field="quantity_mw",
            value=value,
            allowed=allowed,
            problem=f"above the maximum order size of market {market.market_id}",
        )
    if quantity != quantity.quantize(QUANTITY_STEP_MW):
        raise error(field="quantity_mw", value=value, allowed=allowed, problem="finer than 1 kW")
    return quantity.quantize(QUANTITY_STEP_MW)


def _price(value: object, market: Market) -> Decimal:
    low, high = market.price_min_eur_per_mwh, market.price_max_eur_per_mwh
    allowed = f"{low} ... {high} EUR/MWh, in steps of {PRICE_STEP_EUR_PER_MWH}"
    field = "limit_price_eur_per_mwh"
    price = _decimal(value, field=field, allowed=allowed, error=InvalidPriceError)
    if not low <= price <= high:
        raise InvalidPriceError(
            field=field,
            value=value,
            allowed=allowed,
            problem=f"outside the price bounds of market {market.market_id}",
        )
    if price != price.quantize(PRICE_STEP_EUR_PER_MWH):
        raise InvalidPriceError(
            field=field, value=value, allowed=allowed, problem="finer than the 0.01 EUR/MWh tick"
        )
    return price.quantize(PRICE_STEP_EUR_PER_MWH)


def _delivery(value: object, market: Market, *, now: datetime) -> DeliveryPeriod:
    if not isinstance(value, DeliveryPeriod):
        raise InvalidDeliveryError(
            field="delivery",
            value=value,
            allowed="a DeliveryPeriod (quarter-hour or hour block)",
            problem="not a delivery period",
        )
    if value.minutes not in market.product_minutes:
        offered = ", ".join(f"PT{m}M" for m in sorted(market.product_minutes))
        raise InvalidDeliveryError(
            field="delivery.minutes",
            value=value.minutes,
            allowed=offered,
            problem=f"market {market.market_id} does not offer this product",
        )
    closes = value.start - market.gate_closure
    if now >= closes:
        allowed = f"delivery starting after {(now + market.gate_closure).isoformat()}"
        problem = (
            "delivery has started or is in the past"
            if now >= value.start
            else f"within the gate closure of {market.gate_closure} before delivery"
        )
        raise InvalidDeliveryError(
            field="delivery.start", value=value.start.isoformat(), allowed=allowed, problem=problem
        )
    return value


def _side(value: object) -> Side:
    if isinstance(value, Side):
        return value
    if isinstance(value, str) and value.strip().upper() in Side.__members__:
        return Side[value.strip().upper()]
    raise InvalidFieldError(
        field="side", value=value, allowed="BUY or SELL", problem="unknown side"
    )


def _name(value: object, field: str) -> str:
    allowed = f"1 to {MAX_NAME_LENGTH} printable characters"
    if not isinstance(value, str):
        raise InvalidFieldError(field=field, value=value, allowed=allowed, problem="not a string")
    name = value.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidFieldError(field=field, value=value, allowed=allowed, problem="invalid")
    return name
