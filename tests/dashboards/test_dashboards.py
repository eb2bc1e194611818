"""dashboards/: valid Grafana JSON, and every metric an expression uses is really exported.

The plane's names come from the /metrics output of a real `create_app` (store, gRPC server);
the agent's from `edge_agent.metrics.AgentMetrics`' registry, collected over a fake agent, so a
renamed metric fails here instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.guard import GuardReason
from edge_agent.metrics import AgentMetrics
from edge_agent.uplink import UplinkState
from tests.control_plane.plane import running_plane, settings_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "dashboards"
PLANE = DASHBOARDS / "control_plane.json"
AGENT = DASHBOARDS / "edge_agent.json"

_KEYWORDS = set("by without on ignoring group_left group_right bool and or unless offset".split())


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, regexes
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors ($__rate_interval, 1h)
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    names = set()
    for match in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", text):
        name, call = match.groups()
        if call is None and name not in _KEYWORDS:
            names.add(name)
    return names


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def expressions(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in _panels(dashboard) for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            found = re.fullmatch(r"label_values\(\s*(.+?)\s*,\s*\w+\s*\)", text)
            assert found, f"variable {var['name']}: unexpected query {text!r}"
            exprs.append(found.group(1))
    return exprs


def exported(families: Iterable[Any]) -> set[str]:
    """Every series name the metric families produce, also for families without samples yet."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "summary": ("_count", "_sum"),
    }
    names: set[str] = set()
    for family in families:
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in suffixes.get(family.type, ()))
    return names


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def test_metric_names_skip_functions_labels_and_ranges() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, route) (rate(x_bucket{route=~"/a|b"}[5m]))) '
        '- ignoring(stream) y{instance=~"$instance"} * on(instance) group_left z_total == bool 1'
    )
    assert metric_names(expr) == {"x_bucket", "y", "z_total"}
    assert metric_names("G_PNL_REAL") == {"G_PNL_REAL"}


@pytest.mark.parametrize("path", [PLANE, AGENT], ids=lambda p: p.name)
def test_dashboard_is_well_formed(path: Path) -> None:
    dashboard = _load(path)
    ids = [p["id"] for p in _panels(dashboard)]
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{path.name}: panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert metric_names(target["expr"]), f"{panel['title']!r}: {target['expr']!r}"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_uids_differ_and_provisioning_points_at_the_folder() -> None:
    assert _load(PLANE)["uid"] != _load(AGENT)["uid"]
    provider = yaml.safe_load((DASHBOARDS / "provisioning/dashboards/bess.yaml").read_text())
    assert provider["providers"][0]["type"] == "file"
    assert provider["providers"][0]["options"]["path"]
    datasource = yaml.safe_load(
        (DASHBOARDS / "provisioning/datasources/prometheus.yaml").read_text()
    )
    assert datasource["datasources"][0]["type"] == "prometheus"


async def test_plane_dashboard_uses_only_metrics_the_plane_exports(tmp_path: Path) -> None:
    async with running_plane(settings_for(tmp_path)) as plane:
        assert (await plane.client.get("/health")).status_code == 200  # one observed request
        text = (await plane.client.get("/metrics")).text
    available = exported(text_string_to_metric_families(text))
    used = {name for expr in expressions(_load(PLANE)) for name in metric_names(expr)}
    assert {"bess_plane_orders_total", "G_EXPO_E", "G_PNL_REAL"} <= used  # exchange panels
    missing = sorted(used - available)
    assert not missing, f"control_plane.json uses metrics the plane does not export: {missing}"


class _FakeAgent:
    """What AgentMetrics reads of an agent, with every optional part present."""

    def __init__(self) -> None:
        stream = SimpleNamespace(depth=3, oldest_age_s=1.5, dropped_total=0, last_seq=42)
        self.guard = SimpleNamespace(
            counters=dict.fromkeys(GuardReason, 0), active_reasons=set(), stop_reason=None
        )
        self.modbus = self.mqtt = self.rest = None
        self.coordinator = SimpleNamespace(counters=lambda: {"readings_refused_total": {}})
        self._outbox = {"telemetry": stream, "events": stream}
        self.outbox = SimpleNamespace(stats=self._outbox_stats)
        self.uplink = SimpleNamespace(stats=self._uplink_stats)

    async def _outbox_stats(self) -> dict[str, Any]:
        return self._outbox

    async def _uplink_stats(self) -> Any:
        return SimpleNamespace(
            state=UplinkState.CONNECTED,
            reconnects_total=1,
            samples_sent_total=40,
            acked_through_seq=39,
        )


class _Snapshot:
    def value(self, quantity: object) -> float:
        return 1.0

    def age_s(self, quantity: object) -> float:
        return 0.5

    def is_stale(self, quantity: object) -> bool:
        return False


async def test_agent_dashboard_uses_only_metrics_the_agent_exports() -> None:
    metrics = AgentMetrics(_FakeAgent())  # type: ignore[arg-type]
    executor = SimpleNamespace(
        requested_kw=10.0,
        applied_kw=8.0,
        writes_total=5,
        write_failures_total=0,
        deviation_events_total=0,
    )
    await metrics.refresh(snapshot=_Snapshot(), executor=executor)  # type: ignore[arg-type]
    available = exported(metrics.registry.collect())
    assert "bess_edge_uplink_acked_seq" in available  # the fake reached the uplink metrics
    used = {name for expr in expressions(_load(AGENT)) for name in metric_names(expr)}
    missing = sorted(used - available)
    assert not missing, f"edge_agent.json uses metrics the agent does not export: {missing}"
