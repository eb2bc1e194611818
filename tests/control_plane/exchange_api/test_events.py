"""The event hub and the telemetry coalescer, as units: threads, filters, lagging, seq."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from control_plane.events import (
    EVENT_TYPES,
    EventHub,
    EventMetrics,
    TelemetryCoalescer,
    parse_type_filter,
)


def _drain(queue: asyncio.Queue[dict[str, object]]) -> list[dict[str, object]]:
    found = []
    while not queue.empty():
        found.append(queue.get_nowait())
    return found


async def test_events_published_from_other_threads_arrive_in_order_with_seq() -> None:
    hub = EventHub()
    hub.bind(asyncio.get_running_loop())
    with hub.subscribe() as subscription:
        worker = threading.Thread(
            target=lambda: [hub.publish("trade", {"n": n}) for n in range(200)]
        )
        worker.start()
        worker.join()
        got = [await subscription.get() for _ in range(200)]
    assert [e["data"] for e in got] == [{"n": n} for n in range(200)]
    assert [e["seq"] for e in got] == list(range(1, 201))
    assert hub.last_seq == 200
    assert hub.subscriber_count == 0


async def test_a_lagging_subscriber_is_cut_off_without_blocking_the_publisher() -> None:
    registry = CollectorRegistry()
    hub = EventHub(metrics=EventMetrics(registry), queue_size=3)
    hub.bind(asyncio.get_running_loop())
    with hub.subscribe() as slow, hub.subscribe(frozenset({"trade"})) as fast:
        for n in range(10):
            hub.publish("trade", {"n": n})  # on the loop: delivered at once, never awaits
            assert fast.queue.get_nowait()["data"] == {"n": n}  # the fast one keeps up
        assert hub.subscriber_count == 1
        events = _drain(slow.queue)
    assert [e["type"] for e in events] == ["trade", "trade", "trade", "lagged"]
    lagged = events[-1]
    assert lagged["data"]["missed_from_seq"] == 4  # type: ignore[index]
    assert "reconnect" in lagged["data"]["reason"]  # type: ignore[index]
    assert slow.lagged and not fast.lagged
    assert registry.get_sample_value("bess_plane_ws_events_dropped_total") == 1.0


async def test_a_filter_delivers_only_the_types_asked_for() -> None:
    hub = EventHub()
    hub.bind(asyncio.get_running_loop())
    with hub.subscribe(parse_type_filter("order")) as orders:
        hub.publish("trade", {})
        hub.publish("order.filled", {})
        hub.publish("telemetry", {})
        hub.publish("order.cancelled", {})
        got = _drain(orders.queue)
    assert [(e["type"], e["seq"]) for e in got] == [("order.filled", 2), ("order.cancelled", 4)]


def test_type_filters_parse_names_and_prefixes_and_refuse_unknown_ones() -> None:
    assert parse_type_filter(None) is None
    assert parse_type_filter(" ") is None
    assert parse_type_filter("trade, ALARM") == {"trade", "alarm"}
    assert parse_type_filter("site") == {"site.connected", "site.disconnected"}
    assert parse_type_filter("order,order.filled") == {t for t in EVENT_TYPES if "order" in t}
    with pytest.raises(ValueError, match=r"unknown event types \['trades'\]"):
        parse_type_filter("trades")


def test_an_unbound_hub_drops_events_and_unknown_types_are_a_bug() -> None:
    hub = EventHub()
    hub.publish("trade", {"n": 1})  # nobody can listen yet: ignored
    assert hub.last_seq == 0
    with pytest.raises(ValueError, match="unknown event type"):
        hub.publish("orders", {})
    with pytest.raises(ValueError, match="queue_size"):
        EventHub(queue_size=0)


class _FakeTime:
    def __init__(self) -> None:
        self.now = 100.0
        self.scheduled: list[tuple[float, Callable[[], None]]] = []

    def monotonic(self) -> float:
        return self.now

    def schedule(self, delay: float, callback: Callable[[], None]) -> None:
        self.scheduled.append((delay, callback))


async def test_telemetry_is_coalesced_to_one_per_site_per_second_newest_last() -> None:
    hub = EventHub()
    hub.bind(asyncio.get_running_loop())
    time = _FakeTime()
    coalescer = TelemetryCoalescer(hub, monotonic=time.monotonic, schedule=time.schedule)
    with hub.subscribe() as subscription:
        coalescer.offer("a", {"site_id": "a", "soc_pct": 50})  # first: at once
        coalescer.offer("b", {"site_id": "b", "soc_pct": 10})  # another site: at once
        time.now += 0.3
        coalescer.offer("a", {"site_id": "a", "soc_pct": 51})  # within 1 s: held
        time.now += 0.3
        coalescer.offer("a", {"site_id": "a", "soc_pct": 52})  # replaces the held one
        assert [e["data"] for e in _drain(subscription.queue)] == [
            {"site_id": "a", "soc_pct": 50},
            {"site_id": "b", "soc_pct": 10},
        ]
        [(delay, flush)] = time.scheduled  # one trailing send, when the second is over
        assert delay == pytest.approx(0.7)
        time.now += 0.4
        flush()
        assert [e["data"] for e in _drain(subscription.queue)] == [{"site_id": "a", "soc_pct": 52}]
        time.now += 0.5
        coalescer.offer("a", {"site_id": "a", "soc_pct": 53})  # 0.5 s after the last: held
        assert _drain(subscription.queue) == []
        time.now += 0.5
        time.scheduled[-1][1]()
        time.now += 5
        coalescer.offer("a", {"site_id": "a", "soc_pct": 54})  # quiet for 5 s: at once
        assert [e["data"]["soc_pct"] for e in _drain(subscription.queue)] == [53, 54]  # type: ignore[index]
