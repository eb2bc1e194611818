"""Prometheus metrics of the agent, on a local port (``metrics.port``, default 9108).

Values are read from the components at scrape time through one custom collector, so nothing is
counted twice; the few that need the outbox thread or the uplink (async) are refreshed by the
sampler every telemetry interval and served from that cache. Names follow Prometheus' guide
(base units, ``_total`` for counters) with the ``bess_edge_`` prefix; label values are bounded
(quantities, reasons, sources, streams — never ids or free text).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from .readings import Quantity
from .uplink import UplinkState

if TYPE_CHECKING:
    from .agent import Agent
    from .coordinator import Snapshot
    from .executor import ExecutorStatus
    from .outbox import StreamStats
    from .uplink import UplinkStats

log = logging.getLogger(__name__)

# Battery quantities exported as gauges: (quantity, metric name, help).
_GAUGES = (
    (Quantity.SOC_PCT, "bess_edge_soc_percent", "State of charge reported by the battery (%)"),
    (
        Quantity.ACTIVE_POWER_KW,
        "bess_edge_active_power_kw",
        "Active power at the inverter (kW, + discharge, - charge)",
    ),
    (Quantity.TEMPERATURE_C, "bess_edge_temperature_celsius", "Battery temperature (°C)"),
    (Quantity.GRID_FREQUENCY_HZ, "bess_edge_grid_frequency_hertz", "Grid frequency (Hz)"),
    (Quantity.VOLTAGE_V, "bess_edge_voltage_volts", "Battery voltage (V)"),
)


@dataclass
class _Cache:
    lock: threading.Lock = field(default_factory=threading.Lock)
    values: dict[Quantity, float] = field(default_factory=dict)
    ages: dict[Quantity, float] = field(default_factory=dict)
    executor: ExecutorStatus | None = None
    outbox: dict[str, StreamStats] = field(default_factory=dict)
    uplink: UplinkStats | None = None


class AgentMetrics(Collector):
    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._cache = _Cache()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: Any = None

    def serve(self, host: str, port: int) -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    async def refresh(self, *, snapshot: Snapshot, executor: ExecutorStatus) -> None:
        outbox = await self._agent.outbox.stats()
        uplink = await self._agent.uplink.stats() if self._agent.uplink is not None else None
        values: dict[Quantity, float] = {}
        ages: dict[Quantity, float] = {}
        for quantity, _name, _help in _GAUGES:
            value = snapshot.value(quantity)
            age = snapshot.age_s(quantity)
            if value is not None and not snapshot.is_stale(quantity):
                values[quantity] = value
            if age is not None:
                ages[quantity] = age
        with self._cache.lock:
            self._cache.values = values
            self._cache.ages = ages
            self._cache.executor = executor
            self._cache.outbox = outbox
            self._cache.uplink = uplink

    # -- collector -------------------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        with self._cache.lock:
            values = dict(self._cache.values)
            ages = dict(self._cache.ages)
            executor = self._cache.executor
            outbox = dict(self._cache.outbox)
            uplink = self._cache.uplink
        agent = self._agent

        for quantity, name, help_text in _GAUGES:
            gauge = GaugeMetricFamily(name, help_text)
            if quantity in values:
                gauge.add_metric([], values[quantity])
            yield gauge
        age = GaugeMetricFamily(
            "bess_edge_reading_age_seconds", "Age of the newest reading", labels=["quantity"]
        )
        for quantity, value in ages.items():
            age.add_metric([quantity.value], value)
        yield age

        if executor is not None:
            setpoints: tuple[tuple[str, str, float | None], ...] = (
                (
                    "bess_edge_setpoint_requested_kw",
                    "Setpoint asked for (schedule, command or fallback) before the guard (kW)",
                    executor.requested_kw,
                ),
                (
                    "bess_edge_setpoint_applied_kw",
                    "Setpoint after the guard, written to the battery (kW)",
                    executor.applied_kw,
                ),
            )
            for name, help_text, setpoint in setpoints:
                gauge = GaugeMetricFamily(name, help_text)
                if setpoint is not None:
                    gauge.add_metric([], setpoint)
                yield gauge
            yield CounterMetricFamily(
                "bess_edge_device_writes",
                "Setpoint writes to the battery",
                value=executor.writes_total,
            )
            yield CounterMetricFamily(
                "bess_edge_device_write_failures",
                "Setpoint writes that failed",
                value=executor.write_failures_total,
            )
            yield CounterMetricFamily(
                "bess_edge_setpoint_deviations",
                "Episodes of the battery not following its setpoint",
                value=executor.deviation_events_total,
            )

        guard = CounterMetricFamily(
            "bess_edge_guard_interventions",
            "Setpoints the safety guard changed, by reason",
            labels=["reason"],
        )
        for reason, count in agent.guard.counters.items():
            guard.add_metric([reason.value], count)
        yield guard
        active = GaugeMetricFamily(
            "bess_edge_guard_active",
            "1 for each reason the guard is changing the setpoint for right now",
            labels=["reason"],
        )
        for reason in agent.guard.counters:
            active.add_metric([reason.value], 1.0 if reason in agent.guard.active_reasons else 0.0)
        yield active
        stopped = GaugeMetricFamily("bess_edge_stopped", "1 while a stop order is in force")
        stopped.add_metric([], 1.0 if agent.guard.stop_reason is not None else 0.0)
        yield stopped

        depth = GaugeMetricFamily(
            "bess_edge_outbox_rows", "Rows waiting in the outbox", labels=["stream"]
        )
        oldest = GaugeMetricFamily(
            "bess_edge_outbox_oldest_unacked_age_seconds",
            "Age of the oldest row the plane has not acknowledged",
            labels=["stream"],
        )
        dropped = CounterMetricFamily(
            "bess_edge_outbox_dropped_rows",
            "Rows dropped because the outbox was full or too old",
            labels=["stream"],
        )
        last_seq = GaugeMetricFamily(
            "bess_edge_outbox_last_seq", "Last sequence number assigned", labels=["stream"]
        )
        for stream, stats in outbox.items():
            depth.add_metric([stream], stats.depth)
            oldest.add_metric([stream], stats.oldest_age_s)
            dropped.add_metric([stream], stats.dropped_total)
            last_seq.add_metric([stream], stats.last_seq)
        yield from (depth, oldest, dropped, last_seq)

        errors = CounterMetricFamily(
            "bess_edge_source_errors",
            "Failed reads and refused readings, by source and kind",
            labels=["source", "kind"],
        )
        if agent.modbus is not None:
            modbus = agent.modbus.stats
            errors.add_metric(["modbus", "poll_failure"], modbus.poll_failures)
            for kind, count in modbus.batch_failures.items():
                errors.add_metric(["modbus", kind], count)
            for code, count in modbus.device_exceptions.items():
                errors.add_metric(["modbus", f"exception_{code}"], count)
            errors.add_metric(["modbus", "implausible"], sum(modbus.implausible.values()))
        if agent.mqtt is not None:
            errors.add_metric(["mqtt", "malformed"], _total(dict(agent.mqtt.stats.malformed)))
        if agent.rest is not None:
            responses = agent.rest.stats.as_dict()["responses"]
            rejected = sum(n for code, n in responses.items() if int(code) >= 400)
            errors.add_metric(["rest", "rejected"], rejected)
        refused: dict[str, int] = {}
        for labels, count in agent.coordinator.counters()["readings_refused_total"].items():
            refused[labels[0]] = refused.get(labels[0], 0) + count
        for source, count in refused.items():
            errors.add_metric([source, "implausible"], count)
        yield errors

        state = GaugeMetricFamily(
            "bess_edge_uplink_state", "1 for the uplink's current state", labels=["state"]
        )
        current = uplink.state if uplink is not None else UplinkState.STOPPED
        for s in UplinkState:
            state.add_metric([s.value], 1.0 if s is current else 0.0)
        yield state
        if uplink is not None:
            yield CounterMetricFamily(
                "bess_edge_uplink_reconnects",
                "Redials of the EdgeLink stream",
                value=uplink.reconnects_total,
            )
            yield CounterMetricFamily(
                "bess_edge_uplink_samples_sent",
                "Telemetry samples sent (resends included)",
                value=uplink.samples_sent_total,
            )
            acked = GaugeMetricFamily(
                "bess_edge_uplink_acked_seq", "Highest telemetry seq the plane acknowledged"
            )
            acked.add_metric([], uplink.acked_through_seq)
            yield acked


def _total(value: Any) -> float:
    if isinstance(value, dict):
        return float(sum(_total(v) for v in value.values()))
    return float(value)
