"""Scenarios as data: a battery, a timeline of events and the expected outcome, in YAML.

A scenario runs under a ``SteppedClock``: a simulated day takes a fraction of a second. The
file format (documented in ``hil/README.md``)::

    name: bms_limits
    battery: {capacity_kwh: 200, max_charge_kw: 100}   # BatterySpec overrides
    initial: {soc_pct: 90, temperature_c: 25}
    step_s: 5                                           # physics step, simulated seconds
    events:
      - at: 0
        setpoint_kw: -100
        refresh_every: 30s        # a controller that keeps writing (revert timeout!)
      - at: 30m
        fault: {kind: freeze, params: {quantities: [soc_pct]}, duration: 5m}
      - at: 40m
        clear_fault: all
      - at: 1h
        frequency: {hz: 49.8, duration: 30s}
      - at: 2h
        stop_refresh: true        # the controller dies; the inverter reverts to 0 kW
    expect:
      - at: 20m
        soc_pct: {between: [99.9, 100]}
        power_kw: {eq: 0, tol: 0.01}
        alarms: {contains: soc_full}

Events at an offset are applied first, then the expectations at the same offset are checked.
A malformed file raises :class:`ScenarioError` naming the file, line, path, value and what is
allowed.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .clock import SteppedClock
from .config import build_spec, format_duration, make_fault, parse_duration_s
from .faults import FaultKind
from .grid import GridFrequency
from .model import Alarm, BatterySpec, BatteryStatus
from .sim import QUANTITIES, Measurements, Simulator

SCENARIO_DIR = Path(__file__).parent / "scenarios"
DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)

Duration = Annotated[float, BeforeValidator(parse_duration_s)]

# What an expectation can look at, by kind.
NUMERIC_QUANTITIES = (*QUANTITIES, "energy_kwh", "self_discharged_kwh")
SET_QUANTITIES = {"alarms": [a.value for a in Alarm], "faults": [k.value for k in FaultKind]}
TEXT_QUANTITIES = {"status": [s.value for s in BatteryStatus]}
ALL_QUANTITIES = (*NUMERIC_QUANTITIES, *SET_QUANTITIES, *TEXT_QUANTITIES)
NUMERIC_OPS = ("eq", "tol", "between", "gt", "ge", "lt", "le")
SET_OPS = ("contains", "not_contains", "empty")
TEXT_OPS = ("eq", "ne")


class ScenarioError(ValueError):
    """A scenario file that cannot be read; ``problems`` holds one line per mistake."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid scenario {source}:\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    """Refuses unknown keys, naming the keys that are allowed."""

    model_config = ConfigDict(frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            unknown = [str(k) for k in data if k not in allowed]
            if unknown:
                raise ValueError(
                    f"unknown key {', '.join(repr(k) for k in unknown)}; "
                    f"allowed: {', '.join(sorted(allowed))}"
                )
        return data


class FaultSpec(_Strict):
    kind: FaultKind
    params: dict[str, Any] = Field(default_factory=dict)
    duration: Duration | None = None  # None = until cleared

    @model_validator(mode="after")
    def _valid_fault(self) -> FaultSpec:
        make_fault(self.kind, self.params, duration_s=self.duration)  # raises with the reason
        return self


class FrequencySpec(_Strict):
    hz: float = Field(gt=40.0, lt=70.0)
    duration: Duration = Field(gt=0)


class Event(_Strict):
    at: Duration
    setpoint_kw: float | None = None
    refresh_every: Duration | None = None
    stop_refresh: bool | None = None
    fault: FaultSpec | None = None
    clear_fault: str | None = None  # a fault kind or "all"
    frequency: FrequencySpec | None = None
    note: str | None = None

    @field_validator("clear_fault")
    @classmethod
    def _clear_kind(cls, value: str | None) -> str | None:
        allowed = ["all", *(k.value for k in FaultKind)]
        if value is not None and value not in allowed:
            raise ValueError(f"{value!r} is not a fault kind; allowed: {', '.join(allowed)}")
        return value

    @model_validator(mode="after")
    def _one_action(self) -> Event:
        actions = [
            name
            for name in ("setpoint_kw", "stop_refresh", "fault", "clear_fault", "frequency")
            if getattr(self, name) is not None
        ]
        if len(actions) != 1:
            raise ValueError(
                "an event does exactly one of setpoint_kw (with optional refresh_every), "
                f"stop_refresh, fault, clear_fault, frequency; this one has {actions or 'none'}"
            )
        if self.refresh_every is not None:
            if self.setpoint_kw is None:
                raise ValueError("refresh_every belongs to a setpoint_kw event")
            if not self.refresh_every > 0:
                raise ValueError(f"refresh_every must be > 0 s (got {self.refresh_every})")
        if self.stop_refresh is False:
            raise ValueError("stop_refresh can only be true")
        return self


class Check(_Strict):
    eq: float | str | None = None
    ne: str | None = None
    tol: float = Field(default=0.0, ge=0)
    between: tuple[float, float] | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    contains: list[str] | None = None
    not_contains: list[str] | None = None
    empty: bool | None = None

    @field_validator("contains", "not_contains", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("between")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and value[0] > value[1]:
            raise ValueError(f"between needs [low, high] with low <= high (got {list(value)})")
        return value

    def ops(self) -> list[str]:
        return [n for n in type(self).model_fields if n != "tol" and getattr(self, n) is not None]

    def describe(self) -> str:
        parts: list[str] = []
        if self.eq is not None:
            eq = f"{self.eq:g}" if isinstance(self.eq, float | int) else self.eq
            parts.append(f"= {eq}" + (f" ± {self.tol:g}" if self.tol else ""))
        if self.ne is not None:
            parts.append(f"≠ {self.ne}")
        if self.between is not None:
            parts.append(f"between {self.between[0]:g} and {self.between[1]:g}")
        for op, sym in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            value = getattr(self, op)
            if value is not None:
                parts.append(f"{sym} {value:g}")
        if self.contains is not None:
            parts.append(f"contains {', '.join(self.contains)}")
        if self.not_contains is not None:
            parts.append(f"without {', '.join(self.not_contains)}")
        if self.empty is not None:
            parts.append("empty" if self.empty else "not empty")
        return ", ".join(parts)

    def evaluate(self, actual: Any) -> bool:
        ok = True
        if isinstance(actual, float):
            if isinstance(self.eq, float | int):
                ok &= abs(actual - self.eq) <= self.tol
            if self.between is not None:
                ok &= self.between[0] <= actual <= self.between[1]
            ok &= self.gt is None or actual > self.gt
            ok &= self.ge is None or actual >= self.ge
            ok &= self.lt is None or actual < self.lt
            ok &= self.le is None or actual <= self.le
        elif isinstance(actual, list):
            if self.contains is not None:
                ok &= all(x in actual for x in self.contains)
            if self.not_contains is not None:
                ok &= not any(x in actual for x in self.not_contains)
            if self.empty is not None:
                ok &= (not actual) is self.empty
        else:
            ok &= self.eq is None or actual == self.eq
            ok &= self.ne is None or actual != self.ne
        return ok


class Expect(_Strict):
    at: Duration
    note: str | None = None
    checks: dict[str, Check]

    @model_validator(mode="before")
    @classmethod
    def _gather_checks(cls, data: Any) -> Any:
        """``{at, note, <quantity>: <check>...}`` -> ``{at, note, checks: {...}}``."""
        if not isinstance(data, dict) or "checks" in data:
            return data
        out: dict[str, Any] = {k: data[k] for k in ("at", "note") if k in data}
        checks: dict[str, Any] = {}
        for name, check in data.items():
            if name in ("at", "note"):
                continue
            if name not in ALL_QUANTITIES:
                raise ValueError(
                    f"unknown quantity {name!r}; allowed: at, note, {', '.join(ALL_QUANTITIES)}"
                )
            if not isinstance(check, dict):  # shorthand: `soc_pct: 50`, `alarms: soc_full`
                key = "contains" if name in SET_QUANTITIES else "eq"
                check = {key: check}
            checks[name] = check
        if not checks:
            raise ValueError(f"an expectation checks at least one of: {', '.join(ALL_QUANTITIES)}")
        out["checks"] = checks
        return out

    @model_validator(mode="after")
    def _ops_fit_quantities(self) -> Expect:
        allowed: tuple[str, ...]
        names: list[str]
        for name, check in self.checks.items():
            ops = check.ops()
            if not ops:
                raise ValueError(f"{name}: no comparison given")
            if name in SET_QUANTITIES:
                allowed, names = SET_OPS, SET_QUANTITIES[name]
                listed = [*(check.contains or []), *(check.not_contains or [])]
                bad = [x for x in listed if x not in names]
                if bad:
                    raise ValueError(f"{name}: unknown {bad}; allowed: {', '.join(names)}")
            elif name in TEXT_QUANTITIES:
                allowed, names = TEXT_OPS, TEXT_QUANTITIES[name]
                for value in (check.eq, check.ne):
                    if value is not None and value not in names:
                        raise ValueError(
                            f"{name}: {value!r} is not a {name}; allowed: {', '.join(names)}"
                        )
            else:
                allowed = NUMERIC_OPS
                if isinstance(check.eq, str):
                    raise ValueError(f"{name}: eq needs a number (got {check.eq!r})")
            wrong = [op for op in ops if op not in allowed]
            if wrong:
                raise ValueError(
                    f"{name}: {', '.join(wrong)} does not apply; use {', '.join(allowed)}"
                )
        return self


class Initial(_Strict):
    soc_pct: float = Field(default=50.0, ge=0, le=100)
    temperature_c: float | None = Field(default=None, ge=-40, le=120)


class GridSpec(_Strict):
    nominal_hz: float = Field(default=50.0, gt=40, lt=70)
    noise_std_hz: float = Field(default=0.02, ge=0, le=1)
    reversion_s: float = Field(default=30.0, gt=0)
    seed: int = 0


class Scenario(_Strict):
    name: str | None = None
    description: str = ""
    battery: dict[str, float] = Field(default_factory=dict)
    initial: Initial = Field(default_factory=Initial)
    map: str | None = None  # the register map a live `serve` of this battery would use
    step_s: float = Field(default=1.0, gt=0, le=60)
    start: datetime = DEFAULT_START
    grid: GridSpec = Field(default_factory=GridSpec)
    duration: Duration | None = None
    events: list[Event] = Field(default_factory=list)
    expect: list[Expect] = Field(default_factory=list)

    @field_validator("battery", mode="before")
    @classmethod
    def _valid_battery(cls, value: Any) -> Any:
        if isinstance(value, dict):
            build_spec(value)  # unknown names and impossible combinations, with the reason
        return value

    @field_validator("start")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start needs a time zone, e.g. 2026-01-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _fits_duration(self) -> Scenario:
        last = max([e.at for e in self.events] + [x.at for x in self.expect], default=0.0)
        if self.duration is not None and self.duration < last:
            raise ValueError(
                f"duration {format_duration(self.duration)} ends before the last event or "
                f"expectation at {format_duration(last)}"
            )
        return self

    @property
    def spec(self) -> BatterySpec:
        return build_spec(self.battery)

    @property
    def end_s(self) -> float:
        last = max([e.at for e in self.events] + [x.at for x in self.expect], default=0.0)
        return self.duration if self.duration is not None else last


# -- loading ---------------------------------------------------------------------------------


def _yaml_line(root: yaml.Node | None, loc: tuple[int | str, ...]) -> int | None:
    """1-based line of the deepest node of ``loc`` found in the composed YAML tree."""
    node = root
    line = None if node is None else node.start_mark.line + 1
    for part in loc:
        nxt: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    nxt = value
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if 0 <= part < len(node.value):
                nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _problems(source: str, text: str, err: ValidationError) -> list[str]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        root = None
    problems = []
    for e in err.errors():
        # Drop pydantic's internal steps: the `checks` we gather and union-member tags.
        loc = tuple(p for p in e["loc"] if p != "checks" and not str(p).startswith("function-"))
        msg = str(e["msg"]).removeprefix("Value error, ")
        value = e.get("input")
        got = (
            f" (got {value!r})"
            if isinstance(value, str | int | float | bool) and repr(value) not in msg
            else ""
        )
        line = _yaml_line(root, loc)
        where = f"{source}:{line}" if line else source
        problems.append(f"{where}: {_path(loc)}: {msg}{got}")
    return problems


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """A validated scenario from YAML text; ``ScenarioError`` says precisely what is wrong."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ScenarioError(source, [f"{where}: not valid YAML: {problem}"]) from None
    if not isinstance(data, dict):
        raise ScenarioError(
            source, [f"{source}: a scenario is a YAML mapping (name, battery, events, expect...)"]
        )
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(source, _problems(source, text, exc)) from None
    if scenario.name is None:
        scenario = scenario.model_copy(update={"name": Path(source).stem})
    return scenario


def resolve_scenario_path(name_or_path: str | Path) -> Path:
    """A file path, or the name of a shipped scenario (``day_cycle``)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = SCENARIO_DIR / f"{name_or_path}.yaml"
    if shipped.exists():
        return shipped
    names = ", ".join(p.stem for p in shipped_scenarios())
    raise FileNotFoundError(f"no scenario file {str(name_or_path)!r}; shipped scenarios: {names}")


def load_scenario(name_or_path: str | Path) -> Scenario:
    path = resolve_scenario_path(name_or_path)
    return parse_scenario(path.read_text(encoding="utf-8"), str(path))


def shipped_scenarios() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))


# -- running ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    at_s: float
    quantity: str
    expected: str
    actual: Any
    passed: bool
    note: str | None = None


@dataclass
class ScenarioReport:
    name: str
    source: str
    simulated_s: float
    wall_time_s: float
    checks: list[CheckResult] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "passed": self.passed,
            "simulated_s": self.simulated_s,
            "wall_time_s": round(self.wall_time_s, 4),
            "checks": [asdict(c) for c in self.checks],
            "final": self.final,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def format(self) -> str:
        lines = [
            f"Scenario {self.name} ({self.source}): {format_duration(self.simulated_s)} "
            f"simulated in {self.wall_time_s:.2f} s"
        ]
        group: tuple[float, str | None] | None = None
        for c in self.checks:
            if (c.at_s, c.note) != group:
                group = (c.at_s, c.note)
                lines.append(f"  at {format_duration(c.at_s)}" + (f" - {c.note}" if c.note else ""))
            mark = "PASS" if c.passed else "FAIL"
            lines.append(
                f"    {mark}  {c.quantity:<16} {c.expected:<26} actual {_fmt_actual(c.actual)}"
            )
        n_fail = len(self.failed)
        verdict = "PASSED" if n_fail == 0 else "FAILED"
        lines.append(f"{verdict}: {len(self.checks) - n_fail} passed, {n_fail} failed")
        return "\n".join(lines)


def _fmt_actual(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.1f}"
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value)


def _observe(sim: Simulator, m: Measurements, quantity: str) -> Any:
    if quantity == "alarms":
        return sorted(a.value for a in m.alarms)
    if quantity == "faults":
        return sorted({f.kind.value for f in sim.faults.all() if f.active(m.timestamp)})
    if quantity == "status":
        return m.status.value
    if quantity in ("energy_kwh", "self_discharged_kwh"):
        return float(getattr(sim.state, quantity))
    return float(getattr(m, quantity))


def build_simulator(scenario: Scenario) -> tuple[Simulator, SteppedClock]:
    clock = SteppedClock(start=scenario.start.timestamp())
    g = scenario.grid
    grid = GridFrequency(
        nominal_hz=g.nominal_hz, noise_std_hz=g.noise_std_hz, reversion_s=g.reversion_s, seed=g.seed
    )
    sim = Simulator(
        scenario.spec,
        clock,
        soc_pct=scenario.initial.soc_pct,
        temperature_c=scenario.initial.temperature_c,
        grid=grid,
        max_step_s=scenario.step_s,
    )
    return sim, clock


def _apply(sim: Simulator, event: Event) -> None:
    if event.setpoint_kw is not None:
        sim.command_power_kw(event.setpoint_kw)
    elif event.fault is not None:
        f = event.fault
        sim.inject(make_fault(f.kind, f.params, duration_s=f.duration))
    elif event.clear_fault is not None:
        sim.faults.clear(None if event.clear_fault == "all" else FaultKind(event.clear_fault))
    elif event.frequency is not None:
        freq = event.frequency
        sim.inject(make_fault(FaultKind.FREQUENCY_EVENT, {"hz": freq.hz}, duration_s=freq.duration))


def run_scenario(source: str | Path | Scenario) -> ScenarioReport:
    """Run a scenario (file path, shipped name or parsed) to its end and check expectations."""
    wall0 = time.perf_counter()
    if isinstance(source, Scenario):
        scenario, origin = source, "<scenario>"
    else:
        path = resolve_scenario_path(source)
        scenario, origin = load_scenario(path), str(path)
    sim, clock = build_simulator(scenario)
    t0 = clock.now()
    events = sorted(scenario.events, key=lambda e: e.at)  # stable: file order at equal times
    expects = sorted(scenario.expect, key=lambda x: x.at)
    end = scenario.end_s
    checks: list[CheckResult] = []
    refresh: tuple[float, float] | None = None  # (kW, every) of the refreshing controller
    next_refresh = float("inf")
    ie = ix = 0
    while True:
        t = min(
            events[ie].at if ie < len(events) else float("inf"),
            expects[ix].at if ix < len(expects) else float("inf"),
            next_refresh,
            end,
        )
        if t > end:
            t = end
        clock.advance(max(0.0, t0 + t - clock.now()))
        sim.sync()
        if refresh is not None and next_refresh <= t:
            sim.command_power_kw(refresh[0])
            next_refresh += refresh[1]
        while ie < len(events) and events[ie].at <= t:
            event = events[ie]
            ie += 1
            if event.setpoint_kw is not None or event.stop_refresh:
                refresh, next_refresh = None, float("inf")
            if event.setpoint_kw is not None and event.refresh_every is not None:
                refresh = (event.setpoint_kw, event.refresh_every)
                next_refresh = t + event.refresh_every
            _apply(sim, event)
        if ix < len(expects) and expects[ix].at <= t:
            m = sim.measure()
            while ix < len(expects) and expects[ix].at <= t:
                x = expects[ix]
                ix += 1
                for quantity, check in x.checks.items():
                    actual = _observe(sim, m, quantity)
                    checks.append(
                        CheckResult(
                            at_s=x.at,
                            quantity=quantity,
                            expected=check.describe(),
                            actual=actual,
                            passed=check.evaluate(actual),
                            note=x.note,
                        )
                    )
        if t >= end and ie >= len(events) and ix >= len(expects):
            break
    m = sim.measure()
    final = {
        "soc_pct": round(m.soc_pct, 4),
        "power_kw": round(m.power_kw, 4),
        "temperature_c": round(m.temperature_c, 3),
        "energy_kwh": round(sim.state.energy_kwh, 4),
        "charged_kwh": round(m.charged_kwh, 4),
        "discharged_kwh": round(m.discharged_kwh, 4),
        "alarms": sorted(a.value for a in m.alarms),
    }
    return ScenarioReport(
        name=scenario.name or "scenario",
        source=origin,
        simulated_s=end,
        wall_time_s=time.perf_counter() - wall0,
        checks=checks,
        final=final,
    )
