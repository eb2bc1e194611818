"""One place that knows the battery's latest readings, from every source, with their age.

After Home Assistant's ``DataUpdateCoordinator`` (STYLE 7): polled sources (Modbus) are read
through ``Coordinator.poll``, push sources (MQTT, REST) deliver through ``Coordinator.ingest``;
the guard, schedule executor, uplink and metrics only ever read a ``Snapshot``. A failed poll
never raises into the control loop: it marks that source's readings stale, is logged loudly the
first time, quietly while it repeats and once more when the source recovers.

Choosing a reading per quantity (``snapshot``):

1. the highest-priority source whose reading is fresh (priority per quantity, default
   ``modbus > mqtt > rest``; sources not listed rank below the listed ones, by name);
2. else the freshest stale reading, flagged stale (so the guard sees *why* it must stop).

A reading is stale when it is older than ``stale_after_s`` for its quantity, stamped more than
``stale_after_s`` in the future (a clock went wrong; the same rule as the guard's), or comes
from a polled source whose last poll failed. Implausible readings (``check_plausible``) are
refused, counted per (source, quantity) and logged once until that pair delivers a good one.
A reading older than the one held for its (quantity, source) is passed to listeners (history
for the uplink) but does not replace the newer one.

Everything here runs on the event loop thread; push sources living in other threads hand
their readings over with ``loop.call_soon_threadsafe``. Time comes from the injected clock
(Unix seconds), never from the wall clock directly.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

from .readings import BatteryReader, Quantity, Reading, ReadingError, check_plausible

log = logging.getLogger(__name__)

Clock = Callable[[], float]
"""Returns the current time in Unix seconds."""

DEFAULT_SOURCE_PRIORITY: tuple[str, ...] = ("modbus", "mqtt", "rest")
DEFAULT_STALE_AFTER_S = 10.0  # the guard's default too: a 1 Hz source may miss a few polls

COUNTER_LABELS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "readings_accepted_total": ("source", "quantity"),
        "readings_refused_total": ("source", "quantity"),
        "readings_out_of_order_total": ("source", "quantity"),
        "polls_total": ("source",),
        "poll_failures_total": ("source",),
        "listener_errors_total": (),
    }
)
"""Label names of each counter in ``Coordinator.counters()`` (Prometheus naming)."""


@dataclass(frozen=True)
class SnapshotEntry:
    """The reading chosen for one quantity and whether it may be trusted."""

    reading: Reading
    stale: bool
    age_s: float  # now - reading.timestamp; negative when stamped in the future


@dataclass(frozen=True)
class Snapshot:
    """The best reading per quantity at ``taken_at``; missing quantities count as stale."""

    taken_at: float
    entries: Mapping[Quantity, SnapshotEntry]

    def __contains__(self, quantity: object) -> bool:
        return quantity in self.entries

    def reading(self, quantity: Quantity) -> Reading | None:
        entry = self.entries.get(quantity)
        return entry.reading if entry is not None else None

    def value(self, quantity: Quantity) -> float | None:
        entry = self.entries.get(quantity)
        return entry.reading.value if entry is not None else None

    def age_s(self, quantity: Quantity) -> float | None:
        entry = self.entries.get(quantity)
        return entry.age_s if entry is not None else None

    def is_stale(self, quantity: Quantity) -> bool:
        entry = self.entries.get(quantity)
        return entry is None or entry.stale

    def source(self, quantity: Quantity) -> str | None:
        entry = self.entries.get(quantity)
        return entry.reading.source if entry is not None else None

    def fresh_values(self) -> dict[Quantity, float]:
        """Values of every quantity that is not stale."""
        return {q: e.reading.value for q, e in self.entries.items() if not e.stale}


@dataclass(frozen=True)
class CoordinatorUpdate:
    """What listeners receive after every ingest and poll.

    ``readings`` are the readings accepted by this update (possibly none, e.g. after a failed
    poll); ``snapshot`` is the state right after it.
    """

    readings: tuple[Reading, ...]
    snapshot: Snapshot


Listener = Callable[[CoordinatorUpdate], None]


@dataclass
class SourceHealth:
    """Poll health of one polled source."""

    failing: bool = False
    consecutive_failures: int = 0
    failing_since: float | None = None
    last_error: str | None = None
    last_success_at: float | None = None


@dataclass
class _Counters:
    accepted: Counter[tuple[str, ...]] = field(default_factory=Counter)  # (source, quantity)
    refused: Counter[tuple[str, ...]] = field(default_factory=Counter)
    out_of_order: Counter[tuple[str, ...]] = field(default_factory=Counter)
    polls: Counter[str] = field(default_factory=Counter)
    poll_failures: Counter[str] = field(default_factory=Counter)
    listener_errors: int = 0


class Coordinator:
    """Latest readings per (quantity, source), the best one per quantity, and who to tell.

    Implements ``ReadingSink`` for push sources. Not thread-safe: call it on the loop thread.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        priorities: Mapping[Quantity, Sequence[str]] | None = None,
        default_priority: Sequence[str] = DEFAULT_SOURCE_PRIORITY,
        stale_after_s: Mapping[Quantity, float] | float = DEFAULT_STALE_AFTER_S,
        default_stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self._clock = clock
        self._default_priority = _check_priority("default_priority", default_priority)
        self._priorities = {
            Quantity(q): _check_priority(f"priorities[{Quantity(q).value}]", order)
            for q, order in (priorities or {}).items()
        }
        if isinstance(stale_after_s, Mapping):
            self._default_stale_s = _check_stale("default_stale_after_s", default_stale_after_s)
            self._stale_s = {
                Quantity(q): _check_stale(f"stale_after_s[{Quantity(q).value}]", s)
                for q, s in stale_after_s.items()
            }
        else:
            self._default_stale_s = _check_stale("stale_after_s", stale_after_s)
            self._stale_s = {}
        self._latest: dict[Quantity, dict[str, Reading]] = {}
        self._health: dict[str, SourceHealth] = {}
        self._refusing: set[tuple[str, Quantity]] = set()
        self._listeners: list[Listener] = []
        self._broken_listeners: set[int] = set()
        self._counters = _Counters()

    # -- configuration -------------------------------------------------------------------
    def priority(self, quantity: Quantity) -> tuple[str, ...]:
        """Source names in priority order for ``quantity`` (highest first)."""
        return self._priorities.get(quantity, self._default_priority)

    def stale_after_s(self, quantity: Quantity) -> float:
        return self._stale_s.get(quantity, self._default_stale_s)

    # -- input ---------------------------------------------------------------------------
    def ingest(self, readings: Iterable[Reading]) -> None:
        """Take readings from a push source (``ReadingSink``); refuses implausible ones."""
        accepted = self._accept(readings)
        if accepted:
            self._notify(tuple(accepted))

    async def poll(self, reader: BatteryReader, *, timeout_s: float | None = None) -> bool:
        """Read ``reader`` once and ingest what it returns; True if the poll succeeded.

        A failure (any exception, or no answer within ``timeout_s``) is not raised: the
        source's readings count as stale until a poll succeeds. Cancellation propagates.
        """
        name = reader.name
        self._counters.polls[name] += 1
        deadline = asyncio.timeout(timeout_s)
        try:
            async with deadline:
                readings = await reader.read()
        except Exception as exc:  # a broken source must not stop the control loop
            if deadline.expired():
                problem = f"no answer within {timeout_s:g} s"
            else:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._poll_failed(name, problem, exc)
            self._notify(())
            return False
        self._poll_succeeded(name)
        self._notify(tuple(self._accept(readings)))
        return True

    async def run_poller(
        self, reader: BatteryReader, *, interval_s: float, timeout_s: float | None = None
    ) -> None:
        """Poll ``reader`` every ``interval_s`` (real time) until cancelled.

        A slow poll delays the next one instead of stacking polls up; the default timeout is
        the interval itself (a reader that bounds its own requests should get a longer one, so
        that its own timeouts fire first). A poller told to stop stops, also when a reader
        swallowed the cancellation (a library bug): it checks ``Task.cancelling()`` after every
        poll.
        """
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ValueError(f"interval_s must be a finite number > 0 (got {interval_s!r})")
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        told_to_stop = task.cancelling() if task is not None else 0  # requests from before us
        next_due = loop.time()
        while True:
            await self.poll(reader, timeout_s=interval_s if timeout_s is None else timeout_s)
            if task is not None and task.cancelling() > told_to_stop:
                raise asyncio.CancelledError
            next_due = max(next_due + interval_s, loop.time())
            await asyncio.sleep(next_due - loop.time())

    def _accept(self, readings: Iterable[Reading]) -> list[Reading]:
        accepted: list[Reading] = []
        for reading in readings:
            key = (reading.source, reading.quantity)
            try:
                check_plausible(reading)
                if not math.isfinite(reading.timestamp):
                    raise ReadingError(
                        f"{reading.quantity.value} from {reading.source} has no valid "
                        f"timestamp ({reading.timestamp!r})"
                    )
            except ReadingError as exc:
                self._counters.refused[(reading.source, reading.quantity.value)] += 1
                if key not in self._refusing:
                    self._refusing.add(key)
                    log.warning(
                        "refusing readings: %s (logged once until %s delivers a plausible %s)",
                        exc,
                        reading.source,
                        reading.quantity.value,
                    )
                continue
            if key in self._refusing:
                self._refusing.discard(key)
                log.info(
                    "%s delivers a plausible %s again (%g)",
                    reading.source,
                    reading.quantity.value,
                    reading.value,
                )
            counter_key = (reading.source, reading.quantity.value)
            self._counters.accepted[counter_key] += 1
            by_source = self._latest.setdefault(reading.quantity, {})
            held = by_source.get(reading.source)
            if held is not None and reading.timestamp < held.timestamp:
                self._counters.out_of_order[counter_key] += 1
            else:
                by_source[reading.source] = reading
            accepted.append(reading)
        return accepted

    def _poll_failed(self, name: str, problem: str, exc: Exception) -> None:
        now = self._clock()
        self._counters.poll_failures[name] += 1
        health = self._health.setdefault(name, SourceHealth())
        health.consecutive_failures += 1
        health.last_error = problem
        if not health.failing:
            health.failing = True
            health.failing_since = now
            log.error(
                "%s poll failed: %s; its readings count as stale until a poll succeeds "
                "(repeats are logged at debug level)",
                name,
                problem,
            )
            log.debug("%s poll failure details", name, exc_info=exc)
        else:
            log.debug(
                "%s poll failed again (%d in a row): %s", name, health.consecutive_failures, problem
            )

    def _poll_succeeded(self, name: str) -> None:
        now = self._clock()
        health = self._health.setdefault(name, SourceHealth())
        if health.failing:
            since = health.failing_since if health.failing_since is not None else now
            log.warning(
                "%s poll succeeds again after %d failed polls (%.1f s)",
                name,
                health.consecutive_failures,
                now - since,
            )
        health.failing = False
        health.consecutive_failures = 0
        health.failing_since = None
        health.last_success_at = now

    # -- output --------------------------------------------------------------------------
    def snapshot(self, now: float | None = None) -> Snapshot:
        """The best reading per quantity at ``now`` (default: the injected clock)."""
        if now is None:
            now = self._clock()
        entries: dict[Quantity, SnapshotEntry] = {}
        for quantity, by_source in self._latest.items():
            limit = self.stale_after_s(quantity)
            order = self.priority(quantity)
            best_fresh: tuple[tuple[int, str], SnapshotEntry] | None = None
            best_stale: tuple[tuple[float, int, str], SnapshotEntry] | None = None
            for source, reading in by_source.items():
                age = now - reading.timestamp
                stale = self._is_failing(source) or age > limit or age < -limit
                entry = SnapshotEntry(reading=reading, stale=stale, age_s=age)
                rank = (order.index(source), "") if source in order else (len(order), source)
                if not stale:
                    if best_fresh is None or rank < best_fresh[0]:
                        best_fresh = (rank, entry)
                else:
                    stale_rank = (abs(age), *rank)
                    if best_stale is None or stale_rank < best_stale[0]:
                        best_stale = (stale_rank, entry)
            chosen = best_fresh or best_stale
            if chosen is not None:
                entries[quantity] = chosen[1]
        return Snapshot(taken_at=now, entries=MappingProxyType(entries))

    def latest(self, quantity: Quantity, source: str) -> Reading | None:
        """The newest reading held for ``quantity`` from ``source`` (stale or not)."""
        return self._latest.get(quantity, {}).get(source)

    def health(self, source: str) -> SourceHealth:
        """Poll health of a polled source (a fresh ``SourceHealth`` if it was never polled)."""
        health = self._health.get(source)
        return SourceHealth(**health.__dict__) if health is not None else SourceHealth()

    def _is_failing(self, source: str) -> bool:
        health = self._health.get(source)
        return health is not None and health.failing

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every ingest and poll; returns a function that unsubscribes.

        A listener that raises is logged (once) and counted; the others still run.
        """
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, readings: tuple[Reading, ...]) -> None:
        if not self._listeners:
            return
        update = CoordinatorUpdate(readings=readings, snapshot=self.snapshot())
        for listener in list(self._listeners):
            try:
                listener(update)
            except Exception:  # one broken consumer must not starve the others
                self._counters.listener_errors += 1
                if id(listener) not in self._broken_listeners:
                    self._broken_listeners.add(id(listener))
                    log.exception("coordinator listener %r failed (logged once)", listener)

    def counters(self) -> dict[str, dict[tuple[str, ...], int]]:
        """Counters for metrics: name -> {label values: count}; labels in ``COUNTER_LABELS``."""
        c = self._counters
        return {
            "readings_accepted_total": dict(c.accepted),
            "readings_refused_total": dict(c.refused),
            "readings_out_of_order_total": dict(c.out_of_order),
            "polls_total": {(s,): n for s, n in c.polls.items()},
            "poll_failures_total": {(s,): n for s, n in c.poll_failures.items()},
            "listener_errors_total": {(): c.listener_errors},
        }


def _check_priority(what: str, order: Sequence[str]) -> tuple[str, ...]:
    if isinstance(order, str):
        raise TypeError(f"{what} must be a list of source names, not the string {order!r}")
    names = tuple(order)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} names {duplicates} more than once")
    return names


def _check_stale(what: str, seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise TypeError(f"{what} must be a number of seconds (got {seconds!r})")
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what} must be a finite number of seconds > 0 (got {seconds!r})")
    return float(seconds)
