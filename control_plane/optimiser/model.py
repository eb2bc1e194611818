"""The battery schedule optimiser ("SOC-Optimierung"): one battery, one price series, one plan.

Pure: no I/O, no clock, no FastAPI. `optimise(problem)` builds a mixed-integer linear program
and solves it with HiGHS (`highspy`). The formulation, per interval t of length h hours:

    variables   c_t >= 0 charge kW, d_t >= 0 discharge kW (grid side), e_t stored kWh at the
                end of t, b_t in {0, 1} (1 = may charge, 0 = may discharge)
    power       c_t <= min(max_charge_kw, grid_kw) * b_t
                d_t <= min(max_discharge_kw, grid_kw) * (1 - b_t)
    energy      e_t = e_{t-1} + h * (eta_c * c_t - d_t / eta_d),    e_{-1} = initial SoC
    SoC         min_soc <= e_t <= max_soc                              (soft, see below)
    end         e_T >= target (or == target)                          (soft)
    positions   p_t MW bought (> 0): c_t - d_t >= 1000 p_t; sold (< 0): d_t - c_t >= 1000 |p_t|
                                                                      (soft)
    cycles      sum over each UTC day of h * d_t / eta_d <= cycles * capacity * covered/24 h
                                                                      (soft, optional)
    maximise    sum_t price_t * h / 1000 * (d_t - c_t + 1000 p_t)          additional trades
                - degradation * h / 1000 * (c_t + d_t)                     throughput cost
                - penalty * slack                                          relaxations

**Never charge and discharge in the same interval.** With a negative price (or a position that
must be absorbed by a full battery) an LP gains by doing both at once: the losses burn energy.
The binary b_t forbids it. Solving a MILP for every plan would be slow for no reason, so the LP
without b_t is solved first: when its optimum never does both at once it is feasible for the
MILP and, being the optimum of a relaxation, optimal for it too; only otherwise is the MILP
solved (HiGHS branch and bound).

**Positions are physical commitments.** A position already traded must be delivered by the
battery; the plan may trade more in the same direction but never offsets it by trading back
(closing a position is the desk's decision, made with an explicit order). So positions can make
the problem infeasible.

**Always a plan.** The SoC limits, the end target, the positions and the cycle limit are soft:
each has a slack variable whose penalty (`penalty_eur_per_kwh`, far above any price) makes the
solver use it only when nothing else is possible; `plan.relaxed` says which constraints were
relaxed, where, and by how much. The stored energy itself stays in [0, capacity] (physics),
and the plan with every slack at its need is always feasible (c = d = 0 is), so HiGHS cannot
answer "infeasible". An initial SoC below the minimum thus yields a plan that charges back as
fast as the limits allow, saying that the minimum was relaxed until then.

Sign convention of the output as on the wire (protos/bess/v1/edgelink.proto): power + =
discharge (export), - = charge (import). Prices EUR/MWh, powers kW, energies kWh, money EUR.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal

import highspy
import numpy as np
import numpy.typing as npt

from control_plane.exchange.models import DeliveryPeriod, NewOrder, Side
from control_plane.fleet.models import (
    SCHEDULE_INTERVAL_MINUTES,
    NewSchedule,
    ScheduleInterval,
)

__all__ = [
    "Battery",
    "InvalidProblemError",
    "OptimiserError",
    "Plan",
    "Problem",
    "Relaxation",
    "SolverError",
    "optimise",
    "silence_highs_banner",
]

FloatArray = npt.NDArray[np.float64]

SIMULTANEOUS_TOL_KW = 1e-6
"""Charge and discharge both above this in one interval count as simultaneous."""
RELAXED_TOL = 1e-6
"""A slack above this (kWh or kW) is reported as a relaxation."""


class OptimiserError(Exception):
    """Base of the optimiser's errors.

    OptimiserError
     +-- InvalidProblemError (ValueError)   a battery or problem that breaks a rule (says which)
     +-- SolverError                        HiGHS failed (should not happen: the model is
                                            always feasible and bounded)
    """


class InvalidProblemError(OptimiserError, ValueError):
    pass


class SolverError(OptimiserError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Battery:
    """What the optimiser needs to know of a battery (nameplate, limits, economics)."""

    capacity_kwh: float
    max_charge_kw: float
    max_discharge_kw: float
    min_soc_pct: float = 15.0
    max_soc_pct: float = 90.0
    charge_efficiency: float = 0.95
    """Stored kWh per kWh taken from the grid."""
    discharge_efficiency: float = 0.95
    """kWh delivered to the grid per stored kWh."""
    grid_limit_kw: float | None = None
    """The connection's limit (both directions); None = only the converter limits."""
    degradation_eur_per_mwh: float = 0.0
    """Cost per MWh of throughput: charged plus discharged energy, grid side."""
    max_cycles_per_day: float | None = None
    """Equivalent full cycles (discharged stored energy / capacity) per UTC day; None = any."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        for name in ("capacity_kwh", "max_charge_kw", "max_discharge_kw"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                problems.append(f"{name} must be a positive number, got {value!r}")
        for name in ("min_soc_pct", "max_soc_pct"):
            value = getattr(self, name)
            if not _finite(value) or not 0 <= value <= 100:
                problems.append(f"{name} must be within 0..100, got {value!r}")
        if not problems and self.min_soc_pct >= self.max_soc_pct:
            problems.append(
                f"min_soc_pct {self.min_soc_pct} must be below max_soc_pct {self.max_soc_pct}"
            )
        for name in ("charge_efficiency", "discharge_efficiency"):
            value = getattr(self, name)
            if not _finite(value) or not 0 < value <= 1:
                problems.append(f"{name} must be in (0, 1] (a fraction, not %), got {value!r}")
        if self.grid_limit_kw is not None and (
            not _finite(self.grid_limit_kw) or self.grid_limit_kw <= 0
        ):
            problems.append(f"grid_limit_kw must be positive or absent, got {self.grid_limit_kw!r}")
        if not _finite(self.degradation_eur_per_mwh) or self.degradation_eur_per_mwh < 0:
            problems.append(
                f"degradation_eur_per_mwh must be >= 0, got {self.degradation_eur_per_mwh!r}"
            )
        if self.max_cycles_per_day is not None and (
            not _finite(self.max_cycles_per_day) or self.max_cycles_per_day <= 0
        ):
            problems.append(
                f"max_cycles_per_day must be positive or absent, got {self.max_cycles_per_day!r}"
            )
        if problems:
            raise InvalidProblemError("battery: " + "; ".join(problems))

    @property
    def charge_limit_kw(self) -> float:
        grid = self.grid_limit_kw if self.grid_limit_kw is not None else math.inf
        return min(self.max_charge_kw, grid)

    @property
    def discharge_limit_kw(self) -> float:
        grid = self.grid_limit_kw if self.grid_limit_kw is not None else math.inf
        return min(self.max_discharge_kw, grid)

    def kwh(self, soc_pct: float) -> float:
        return self.capacity_kwh * soc_pct / 100.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One planning run: the battery, the intervals and their prices, the state and positions."""

    battery: Battery
    start: datetime
    """Start of the first interval (UTC, aligned to `interval_minutes`)."""
    interval_minutes: Literal[15, 60]
    prices_eur_per_mwh: Sequence[float]
    initial_soc_pct: float
    end_soc_pct: float | None = None
    """Target SoC at the end of the horizon; None = no target."""
    end_soc_exact: bool = False
    """True: end exactly at the target; False: at least at the target."""
    positions_mw: Sequence[float] = ()
    """Already traded per interval, MW (+ bought: must charge, - sold: must discharge); empty =
    none."""
    penalty_eur_per_kwh: float | None = None
    """Cost per kWh (per interval) of a relaxed constraint; None = 1000 x the largest energy
    value in the problem, so a relaxation never pays."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.interval_minutes not in (15, 60):
            problems.append(f"interval_minutes must be 15 or 60, got {self.interval_minutes!r}")
        start = self.start
        if not isinstance(start, datetime) or start.tzinfo is None:
            problems.append("start must be a timezone-aware datetime (UTC inside, DESIGN 8)")
        else:
            start = start.astimezone(UTC)
            object.__setattr__(self, "start", start)
            if self.interval_minutes in (15, 60) and (
                start.second or start.microsecond or start.minute % self.interval_minutes
            ):
                problems.append(
                    f"start {start.isoformat()} is not aligned to {self.interval_minutes} min"
                )
        prices = tuple(float(p) for p in self.prices_eur_per_mwh)
        object.__setattr__(self, "prices_eur_per_mwh", prices)
        if not prices:
            problems.append("prices_eur_per_mwh needs at least one interval")
        bad = [i for i, p in enumerate(prices) if not math.isfinite(p)]
        if bad:
            problems.append(f"prices must be finite numbers; interval {bad[0]} is {prices[bad[0]]}")
        positions = tuple(float(p) for p in self.positions_mw)
        object.__setattr__(self, "positions_mw", positions)
        if positions and len(positions) != len(prices):
            problems.append(
                f"positions_mw has {len(positions)} values for {len(prices)} intervals; give one "
                "per interval or none"
            )
        if any(not math.isfinite(p) for p in positions):
            problems.append("positions_mw must be finite numbers")
        if not _finite(self.initial_soc_pct) or not 0 <= self.initial_soc_pct <= 100:
            problems.append(f"initial_soc_pct must be within 0..100, got {self.initial_soc_pct!r}")
        if self.end_soc_pct is not None and (
            not _finite(self.end_soc_pct) or not 0 <= self.end_soc_pct <= 100
        ):
            problems.append(f"end_soc_pct must be within 0..100, got {self.end_soc_pct!r}")
        if self.penalty_eur_per_kwh is not None and (
            not _finite(self.penalty_eur_per_kwh) or self.penalty_eur_per_kwh <= 0
        ):
            problems.append("penalty_eur_per_kwh must be positive")
        if problems:
            raise InvalidProblemError("problem: " + "; ".join(problems))

    @property
    def n(self) -> int:
        return len(self.prices_eur_per_mwh)

    @property
    def hours(self) -> float:
        return self.interval_minutes / 60.0

    @property
    def step(self) -> timedelta:
        return timedelta(minutes=self.interval_minutes)

    @property
    def end(self) -> datetime:
        return self.start + self.n * self.step

    def starts(self) -> list[datetime]:
        return [self.start + i * self.step for i in range(self.n)]

    def positions(self) -> FloatArray:
        if not self.positions_mw:
            return np.zeros(self.n)
        return np.asarray(self.positions_mw, dtype=np.float64)


@dataclass(frozen=True, slots=True)
class Relaxation:
    """A soft constraint the plan had to break, summed over the intervals where it did."""

    constraint: Literal["soc_min", "soc_max", "end_soc", "position", "cycles"]
    first: datetime
    """Start of the first interval (or day, for cycles) where it was broken."""
    intervals: int
    max_amount: float
    unit: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The optimiser's answer; arrays per interval, power sign + = discharge."""

    problem: Problem
    charge_kw: tuple[float, ...]
    discharge_kw: tuple[float, ...]
    soc_pct: tuple[float, ...]
    """At the end of each interval."""
    revenue_eur: float
    """From the additional trades (beyond positions), at the interval prices."""
    degradation_cost_eur: float
    penalty_eur: float
    relaxed: tuple[Relaxation, ...] = ()
    milp: bool = False
    """True when the LP wanted to charge and discharge at once and the MILP was solved."""
    solve_seconds: float = 0.0
    starts: tuple[datetime, ...] = field(default=())

    @property
    def objective_eur(self) -> float:
        """Revenue minus degradation: what the plan is worth (relaxation penalties aside)."""
        return self.revenue_eur - self.degradation_cost_eur

    @property
    def power_kw(self) -> tuple[float, ...]:
        """Net power per interval, + = discharge, - = charge (EdgeLink sign)."""
        return tuple(d - c for c, d in zip(self.charge_kw, self.discharge_kw, strict=True))

    @property
    def trade_kw(self) -> tuple[float, ...]:
        """Additional trade per interval beyond positions: + = sell, - = buy (kW)."""
        pos = self.problem.positions()
        return tuple(_clean(p + 1000.0 * float(q)) for p, q in zip(self.power_kw, pos, strict=True))

    @property
    def throughput_kwh(self) -> float:
        h = self.problem.hours
        return h * (sum(self.charge_kw) + sum(self.discharge_kw))

    @property
    def cycles(self) -> float:
        """Equivalent full cycles: discharged stored energy / capacity."""
        b = self.problem.battery
        return (
            self.problem.hours * sum(self.discharge_kw) / b.discharge_efficiency / (b.capacity_kwh)
        )

    def to_schedule(self, *, origin: str = "optimiser") -> NewSchedule:
        """The plan as the fleet's schedule: 15-minute intervals (an hour becomes 4 quarters)."""
        quarters = self.problem.interval_minutes // SCHEDULE_INTERVAL_MINUTES
        step = timedelta(minutes=SCHEDULE_INTERVAL_MINUTES)
        intervals = tuple(
            ScheduleInterval(start + q * step, _clean(power))
            for start, power in zip(self.starts, self.power_kw, strict=True)
            for q in range(quarters)
        )
        return NewSchedule(
            valid_from=self.problem.start,
            valid_until=self.problem.end,
            intervals=intervals,
            origin=origin,
        )

    def proposed_orders(
        self, *, market: str, portfolio: str, site: str, counterparty: str | None = None
    ) -> list[NewOrder]:
        """The orders the plan implies beyond positions (proposed, not sent): BUY where it
        charges more than bought, SELL where it discharges more than sold; limit = the
        interval's price, quantity in whole kW; an hourly plan trades hour blocks."""
        orders: list[NewOrder] = []
        for start, trade, price in zip(
            self.starts, self.trade_kw, self.problem.prices_eur_per_mwh, strict=True
        ):
            mw = Decimal(repr(abs(float(trade)) / 1000.0)).quantize(
                Decimal("0.001"), rounding=ROUND_HALF_EVEN
            )
            if mw == 0:
                continue
            delivery = (
                DeliveryPeriod.hour_block(start)
                if self.problem.interval_minutes == 60
                else DeliveryPeriod.quarter(start)
            )
            orders.append(
                NewOrder(
                    side=Side.SELL if trade > 0 else Side.BUY,
                    quantity_mw=mw,
                    limit_price_eur_per_mwh=Decimal(repr(price)).quantize(
                        Decimal("0.01"), rounding=ROUND_HALF_EVEN
                    ),
                    market=market,
                    delivery=delivery,
                    portfolio=portfolio,
                    counterparty=counterparty or portfolio,
                    site=site,
                )
            )
        return orders


# -- the model -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Layout:
    """Column indices of the variables."""

    n: int
    days: list[tuple[int, int, float]]  # (first, last + 1, covered hours) per UTC day
    cycles: bool
    end_lo: bool
    end_hi: bool
    milp: bool

    @property
    def c(self) -> int:
        return 0

    @property
    def d(self) -> int:
        return self.n

    @property
    def e(self) -> int:
        return 2 * self.n

    @property
    def soc_lo(self) -> int:
        return 3 * self.n

    @property
    def soc_hi(self) -> int:
        return 4 * self.n

    @property
    def pos(self) -> int:
        return 5 * self.n

    @property
    def end(self) -> int:
        return 6 * self.n  # end_lo then end_hi

    @property
    def cyc(self) -> int:
        return self.end + int(self.end_lo) + int(self.end_hi)

    @property
    def b(self) -> int:
        return self.cyc + (len(self.days) if self.cycles else 0)

    @property
    def num_col(self) -> int:
        return self.b + (self.n if self.milp else 0)


def _days(problem: Problem) -> list[tuple[int, int, float]]:
    out: list[tuple[int, int, float]] = []
    starts = problem.starts()
    i = 0
    while i < problem.n:
        day = starts[i].date()
        j = i
        while j < problem.n and starts[j].date() == day:
            j += 1
        out.append((i, j, (j - i) * problem.hours))
        i = j
    return out


def _penalty(problem: Problem) -> float:
    if problem.penalty_eur_per_kwh is not None:
        return problem.penalty_eur_per_kwh
    prices = problem.prices_eur_per_mwh
    biggest = max(abs(p) for p in prices) + problem.battery.degradation_eur_per_mwh + 1.0
    # EUR per kWh of the dearest energy, x 1000 (and / the round-trip losses): no trade pays it.
    return biggest / problem.battery.charge_efficiency / problem.battery.discharge_efficiency


def _build(problem: Problem, *, milp: bool) -> tuple[highspy.HighsLp, _Layout]:
    b = problem.battery
    n, h = problem.n, problem.hours
    prices = np.asarray(problem.prices_eur_per_mwh)
    pos = problem.positions()
    days = _days(problem)
    lay = _Layout(
        n=n,
        days=days,
        cycles=b.max_cycles_per_day is not None,
        end_lo=problem.end_soc_pct is not None,
        end_hi=problem.end_soc_pct is not None and problem.end_soc_exact,
        milp=milp,
    )
    ncol = lay.num_col
    penalty = _penalty(problem)
    cost = np.zeros(ncol)
    lower = np.zeros(ncol)
    upper = np.full(ncol, highspy.kHighsInf)
    deg = b.degradation_eur_per_mwh * h / 1000.0
    cost[lay.c : lay.c + n] = -prices * h / 1000.0 - deg
    cost[lay.d : lay.d + n] = prices * h / 1000.0 - deg
    upper[lay.c : lay.c + n] = b.charge_limit_kw
    upper[lay.d : lay.d + n] = b.discharge_limit_kw
    upper[lay.e : lay.e + n] = b.capacity_kwh
    cost[lay.soc_lo : lay.soc_lo + n] = -penalty
    cost[lay.soc_hi : lay.soc_hi + n] = -penalty
    cost[lay.pos : lay.pos + n] = -penalty * h  # kW short for h hours
    upper[lay.pos : lay.pos + n] = np.where(pos != 0, highspy.kHighsInf, 0.0)
    cost[lay.end : lay.b] = -penalty
    if milp:
        upper[lay.b : lay.b + n] = 1.0

    rows_lo: list[float] = []
    rows_hi: list[float] = []
    starts: list[int] = []
    index: list[int] = []
    value: list[float] = []

    def row(cols: list[int], vals: list[float], lo: float, hi: float) -> None:
        starts.append(len(index))
        index.extend(cols)
        value.extend(vals)
        rows_lo.append(lo)
        rows_hi.append(hi)

    inf = highspy.kHighsInf
    e_min, e_max = b.kwh(b.min_soc_pct), b.kwh(b.max_soc_pct)
    e0 = b.kwh(problem.initial_soc_pct)
    eta_c, eta_d = b.charge_efficiency, b.discharge_efficiency
    for t in range(n):
        # energy balance: e_t - e_{t-1} - h eta_c c_t + h / eta_d d_t = 0 (e_{-1} = e0)
        cols = [lay.e + t, lay.c + t, lay.d + t]
        vals = [1.0, -h * eta_c, h / eta_d]
        if t > 0:
            cols.append(lay.e + t - 1)
            vals.append(-1.0)
            row(cols, vals, 0.0, 0.0)
        else:
            row(cols, vals, e0, e0)
        row([lay.e + t, lay.soc_lo + t], [1.0, 1.0], e_min, inf)
        row([lay.e + t, lay.soc_hi + t], [1.0, -1.0], -inf, e_max)
        if pos[t] > 0:  # bought: c - d + slack >= 1000 p
            row([lay.c + t, lay.d + t, lay.pos + t], [1.0, -1.0, 1.0], 1000.0 * pos[t], inf)
        elif pos[t] < 0:  # sold: d - c + slack >= 1000 |p|
            row([lay.d + t, lay.c + t, lay.pos + t], [1.0, -1.0, 1.0], -1000.0 * pos[t], inf)
        if milp:  # c <= C b ; d <= D (1 - b)
            row([lay.c + t, lay.b + t], [1.0, -b.charge_limit_kw], -inf, 0.0)
            row([lay.d + t, lay.b + t], [1.0, b.discharge_limit_kw], -inf, b.discharge_limit_kw)
    if problem.end_soc_pct is not None:
        target = b.kwh(problem.end_soc_pct)
        row([lay.e + n - 1, lay.end], [1.0, 1.0], target, inf)
        if problem.end_soc_exact:
            row([lay.e + n - 1, lay.end + 1], [1.0, -1.0], -inf, target)
    if b.max_cycles_per_day is not None:
        for k, (first, last, covered_h) in enumerate(days):
            limit = b.max_cycles_per_day * b.capacity_kwh * covered_h / 24.0
            cols = [lay.d + t for t in range(first, last)] + [lay.cyc + k]
            vals = [h / eta_d] * (last - first) + [-1.0]
            row(cols, vals, -inf, limit)

    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = len(rows_lo)
    lp.sense_ = highspy.ObjSense.kMaximize
    lp.col_cost_ = cost
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.asarray(rows_lo)
    lp.row_upper_ = np.asarray(rows_hi)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.num_col_ = ncol
    lp.a_matrix_.num_row_ = len(rows_lo)
    lp.a_matrix_.start_ = np.asarray([*starts, len(index)], dtype=np.int32)
    lp.a_matrix_.index_ = np.asarray(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.asarray(value)
    if milp:
        integrality = [highspy.HighsVarType.kContinuous] * ncol
        for t in range(n):
            integrality[lay.b + t] = highspy.HighsVarType.kInteger
        lp.integrality_ = integrality
    return lp, lay


def silence_highs_banner() -> None:
    """Make the process's first HiGHS solver with stdout pointed at /dev/null.

    HiGHS writes its banner to the C-level stdout when the first solver of a process is made,
    whatever the options; that would break `bess-plane backtest --json`. Only for
    single-threaded entry points (CLI, benchmarks): it swaps file descriptor 1 for a moment.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()  # type: ignore[no-untyped-call]
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _solve(lp: highspy.HighsLp, *, milp: bool) -> FloatArray:
    solver = highspy.Highs()  # type: ignore[no-untyped-call]
    solver.setOptionValue("output_flag", False)
    solver.setOptionValue("threads", 1)
    if milp:
        solver.setOptionValue("mip_rel_gap", 1e-9)
        solver.setOptionValue("mip_abs_gap", 1e-9)
    solver.passModel(lp)
    solver.run()
    status = solver.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise SolverError(f"HiGHS ended with {solver.modelStatusToString(status)}")
    return np.asarray(solver.getSolution().col_value, dtype=np.float64)


def optimise(problem: Problem) -> Plan:
    """The revenue-maximising plan (always one: relaxed constraints are in `plan.relaxed`)."""
    began = time.perf_counter()
    lp, lay = _build(problem, milp=False)
    x = _solve(lp, milp=False)
    n = problem.n
    both = np.minimum(x[lay.c : lay.c + n], x[lay.d : lay.d + n]) > SIMULTANEOUS_TOL_KW
    milp = bool(both.any())
    if milp:
        lp, lay = _build(problem, milp=True)
        x = _solve(lp, milp=True)
    return _plan(problem, lay, x, milp=milp, seconds=time.perf_counter() - began)


def _plan(problem: Problem, lay: _Layout, x: FloatArray, *, milp: bool, seconds: float) -> Plan:
    b = problem.battery
    n, h = problem.n, problem.hours
    c = np.clip(x[lay.c : lay.c + n], 0.0, None)
    d = np.clip(x[lay.d : lay.d + n], 0.0, None)
    if milp:  # the binary rules it out; clear solver noise below the tolerance
        d = np.where(x[lay.b : lay.b + n] > 0.5, 0.0, d)
        c = np.where(x[lay.b : lay.b + n] > 0.5, c, 0.0)
    e = x[lay.e : lay.e + n]
    prices = np.asarray(problem.prices_eur_per_mwh)
    pos = problem.positions()
    revenue = float(np.sum(prices * h / 1000.0 * (d - c + 1000.0 * pos)))
    degradation = float(b.degradation_eur_per_mwh * h / 1000.0 * np.sum(c + d))
    penalty_cost = _penalty(problem)
    slack_total = (
        float(np.sum(x[lay.soc_lo : lay.soc_lo + n]) + np.sum(x[lay.soc_hi : lay.soc_hi + n]))
        + h * float(np.sum(x[lay.pos : lay.pos + n]))
        + float(np.sum(x[lay.end : lay.b]))
    )
    starts = problem.starts()
    relaxed: list[Relaxation] = []

    def report(
        kind: Literal["soc_min", "soc_max", "end_soc", "position", "cycles"],
        amounts: FloatArray,
        at: list[datetime],
        unit: str,
        what: str,
    ) -> None:
        hit = np.flatnonzero(amounts > RELAXED_TOL)
        if hit.size:
            worst = float(amounts[hit].max())
            relaxed.append(
                Relaxation(
                    constraint=kind,
                    first=at[int(hit[0])],
                    intervals=int(hit.size),
                    max_amount=worst,
                    unit=unit,
                    message=f"{what}: broken in {hit.size} interval(s) from "
                    f"{at[int(hit[0])].isoformat()}, by up to {worst:.3f} {unit}",
                )
            )

    report(
        "soc_min",
        x[lay.soc_lo : lay.soc_lo + n],
        starts,
        "kWh",
        f"SoC below the minimum {b.min_soc_pct:g} %",
    )
    report(
        "soc_max",
        x[lay.soc_hi : lay.soc_hi + n],
        starts,
        "kWh",
        f"SoC above the maximum {b.max_soc_pct:g} %",
    )
    if problem.end_soc_pct is not None:
        end_gap = np.asarray([float(np.sum(x[lay.end : lay.cyc]))])
        cmp = "==" if problem.end_soc_exact else ">="
        report(
            "end_soc",
            end_gap,
            [starts[-1]],
            "kWh",
            f"end SoC {cmp} {problem.end_soc_pct:g} % not reached",
        )
    report(
        "position",
        x[lay.pos : lay.pos + n],
        starts,
        "kW",
        "traded position not deliverable",
    )
    if lay.cycles:
        report(
            "cycles",
            x[lay.cyc : lay.cyc + len(lay.days)],
            [starts[first] for first, _, _ in lay.days],
            "kWh",
            f"more than {b.max_cycles_per_day:g} cycles per day",
        )
    return Plan(
        problem=problem,
        charge_kw=tuple(_clean(v) for v in c),
        discharge_kw=tuple(_clean(v) for v in d),
        soc_pct=tuple(float(v) / b.capacity_kwh * 100.0 for v in e),
        revenue_eur=revenue,
        degradation_cost_eur=degradation,
        penalty_eur=penalty_cost * slack_total,
        relaxed=tuple(relaxed),
        milp=milp,
        solve_seconds=seconds,
        starts=tuple(starts),
    )


def _clean(value: float) -> float:
    """Solver noise (|x| < 1e-9 kW) as 0, so schedules say 0.0, not -1e-12."""
    v = float(value)
    return 0.0 if abs(v) < 1e-9 else v


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
