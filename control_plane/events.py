"""The plane's live event stream: one hub, many subscribers (the `/ws` WebSocket, later others).

Event shape (JSON): ``{"seq": 42, "type": "trade", "ts": "2025-11-03T08:00:00.123+00:00",
"data": {...}}``. Types: `order.accepted`, `order.rejected`, `order.partially_filled`,
`order.filled`, `order.cancelled`, `trade`, `telemetry`, `alarm`, `site.connected`,
`site.disconnected`, `risk.alert`, `credit.alert`, `grid.alert`
(`EVENT_TYPES`). `seq` grows by one per published event,
in the order subscribers receive them, so a client sees a gap when it was dropped (and after a
restart of the plane `seq` starts again at 1).

**Threads.** `publish` may be called from any thread (the matching engine and the stores run in
worker threads): it hands the event to the hub's event loop with `call_soon_threadsafe`, and
the loop numbers it and puts it in every matching subscriber's queue. It never waits.

**Slow subscribers.** Every subscriber has a bounded queue. When an event would overflow it,
the subscriber is cut off: it gets one final ``{"type": "lagged", ...}`` message after what is
already queued (so a UI knows to reload instead of showing a silently stale picture), is
removed from the hub, and the event counts in `bess_plane_ws_events_dropped_total`. A
publisher is never blocked by a slow reader, and memory per subscriber stays bounded.

**Telemetry at fleet scale.** `TelemetryCoalescer` sits between the fleet and the hub: at most
one `telemetry` event per site per second; readings in between are folded into one trailing
event carrying the newest reading, so the last state always arrives.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

__all__ = [
    "DEFAULT_QUEUE_SIZE",
    "EVENT_TYPES",
    "EventHub",
    "EventMetrics",
    "Subscription",
    "TelemetryCoalescer",
    "parse_type_filter",
]

log = logging.getLogger(__name__)

EVENT_TYPES: Final = frozenset(
    {
        "order.accepted",
        "order.rejected",
        "order.partially_filled",
        "order.filled",
        "order.cancelled",
        "order.expired",  # control_plane/exchange: a resting order reached gate closure
        "trade",
        "telemetry",
        "alarm",
        "site.connected",
        "site.disconnected",
        "risk.alert",  # control_plane/risk: a limit's utilisation crossed a threshold
        "credit.alert",  # control_plane/credit: a counterparty's utilisation crossed a threshold
        "grid.alert",  # control_plane/grid: frequency left its band (or returned)
    }
)
"""Every type the hub publishes; a subscriber filters by these or by their prefix (`order`)."""

DEFAULT_QUEUE_SIZE: Final = 1000
"""Events a subscriber may have unread before it is cut off as lagging."""

_PREFIXES: Final = frozenset(t.split(".", 1)[0] for t in EVENT_TYPES)


def parse_type_filter(text: str | None) -> frozenset[str] | None:
    """`order,trade` -> the event types they name (None = all); ValueError names the unknown."""
    if text is None or not text.strip():
        return None
    wanted: set[str] = set()
    unknown: list[str] = []
    for raw in text.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        if name in EVENT_TYPES:
            wanted.add(name)
        elif name in _PREFIXES:
            wanted.update(t for t in EVENT_TYPES if t.split(".", 1)[0] == name)
        else:
            unknown.append(name[:40])
    if unknown:
        raise ValueError(
            f"unknown event types {unknown}; known: {sorted(EVENT_TYPES)} or their prefixes "
            f"{sorted(_PREFIXES)}"
        )
    return frozenset(wanted) if wanted else None


class EventMetrics:
    """The hub's Prometheus metrics."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events_dropped = Counter(
            "bess_plane_ws_events_dropped",
            "Events not delivered because a subscriber lagged (it is disconnected)",
            registry=registry,
        )


@dataclass(eq=False)
class Subscription:
    """One subscriber: read `get()` until it returns a message of type `lagged` or forever."""

    types: frozenset[str] | None
    max_queued: int
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    lagged: bool = False

    def wants(self, event_type: str) -> bool:
        return self.types is None or event_type in self.types

    async def get(self) -> dict[str, Any]:
        return await self.queue.get()


class EventHub:
    """Fan-out of plane events to subscribers; `publish` from any thread, never blocking."""

    def __init__(
        self,
        *,
        metrics: EventMetrics | None = None,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self._metrics = metrics
        self._queue_size = queue_size
        self._clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._subscribers: set[Subscription] = set()
        self._seq = itertools.count(1)
        self._last_seq = 0
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver on `loop` (the app's, set by the lifespan before anything publishes)."""
        self._loop = loop

    def unbind(self) -> None:
        """Stop delivering (shutdown): later publishes are ignored."""
        self._loop = None

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def last_seq(self) -> int:
        """The seq of the newest event delivered so far (0 before the first)."""
        return self._last_seq

    def publish(self, event_type: str, data: Mapping[str, Any]) -> None:
        """Queue an event for every subscriber that wants it; returns at once."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        loop = self._loop
        if loop is None:
            return  # not started or shut down: nobody can be listening
        ts = self._clock().astimezone(UTC).isoformat()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(event_type, ts, data)
            return
        try:
            loop.call_soon_threadsafe(self._deliver, event_type, ts, data)
        except RuntimeError:  # the loop closed under us: shutting down
            log.debug("event %s dropped: the event loop is closed", event_type)

    def publish_many(self, events: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        for event_type, data in events:
            self.publish(event_type, data)

    @contextmanager
    def subscribe(self, types: frozenset[str] | None = None) -> Iterator[Subscription]:
        """A subscription for the `with` block (call on the hub's loop)."""
        subscription = Subscription(types=types, max_queued=self._queue_size)
        self._subscribers.add(subscription)
        try:
            yield subscription
        finally:
            self._subscribers.discard(subscription)

    def _deliver(self, event_type: str, ts: str, data: Mapping[str, Any]) -> None:
        with self._lock:  # the loop is one thread; the lock only guards a misuse
            seq = next(self._seq)
            self._last_seq = seq
        event = {"seq": seq, "type": event_type, "ts": ts, "data": dict(data)}
        for subscription in list(self._subscribers):
            if not subscription.wants(event_type):
                continue
            if subscription.queue.qsize() >= subscription.max_queued:
                self._cut_off(subscription, seq=seq, ts=ts)
                continue
            subscription.queue.put_nowait(event)

    def _cut_off(self, subscription: Subscription, *, seq: int, ts: str) -> None:
        self._subscribers.discard(subscription)
        subscription.lagged = True
        if self._metrics is not None:
            self._metrics.events_dropped.inc()
        log.warning(
            "event stream: a subscriber with %d unread events is disconnected (lagging)",
            subscription.queue.qsize(),
        )
        subscription.queue.put_nowait(
            {
                "seq": None,
                "type": "lagged",
                "ts": ts,
                "data": {
                    "missed_from_seq": seq,
                    "reason": f"more than {subscription.max_queued} events unread: reconnect "
                    "and reload the current state",
                },
            }
        )


MonotonicClock = Callable[[], float]
Scheduler = Callable[[float, Callable[[], None]], object]
"""Run a callback after a delay in seconds (default: the running loop's `call_later`)."""


class TelemetryCoalescer:
    """At most one `telemetry` event per site per `interval_s`, the newest reading last.

    Call `offer` on the hub's loop (the fleet service's ingest runs there). The first reading
    of a site after a quiet interval goes out at once; later ones within the interval replace
    each other and go out when it ends.
    """

    def __init__(
        self,
        hub: EventHub,
        *,
        interval_s: float = 1.0,
        monotonic: MonotonicClock | None = None,
        schedule: Scheduler | None = None,
    ) -> None:
        self._hub = hub
        self._interval_s = interval_s
        self._monotonic = monotonic or time.monotonic
        self._schedule = schedule
        self._last_sent: dict[str, float] = {}
        self._pending: dict[str, Mapping[str, Any]] = {}

    def offer(self, site_id: str, data: Mapping[str, Any]) -> None:
        now = self._monotonic()
        last = self._last_sent.get(site_id)
        if last is None or now - last >= self._interval_s:
            if site_id not in self._pending:
                self._send(site_id, data, now)
                return
        first_pending = site_id not in self._pending
        self._pending[site_id] = data
        if first_pending:
            delay = self._interval_s - (now - last) if last is not None else 0.0
            self._later(max(delay, 0.0), lambda: self.flush(site_id))

    def flush(self, site_id: str) -> None:
        """Send the site's pending reading now (the scheduler calls this)."""
        data = self._pending.pop(site_id, None)
        if data is not None:
            self._send(site_id, data, self._monotonic())

    def _send(self, site_id: str, data: Mapping[str, Any], now: float) -> None:
        self._last_sent[site_id] = now
        self._hub.publish("telemetry", data)

    def _later(self, delay: float, callback: Callable[[], None]) -> None:
        if self._schedule is not None:
            self._schedule(delay, callback)
        else:
            asyncio.get_running_loop().call_later(delay, callback)
