"""The optimiser on hand-computable cases, and on random instances against an independent
formulation (SciPy's `milp`, built column-wise with the SoC eliminated) plus an independent
check of every constraint."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from control_plane.exchange.models import DeliveryPeriod, Side
from control_plane.optimiser.model import (
    Battery,
    InvalidProblemError,
    Plan,
    Problem,
    optimise,
)

T0 = datetime(2025, 3, 4, tzinfo=UTC)


def battery(**kw) -> Battery:
    base = dict(
        capacity_kwh=1000.0,
        max_charge_kw=500.0,
        max_discharge_kw=500.0,
        min_soc_pct=0.0,
        max_soc_pct=100.0,
        charge_efficiency=0.9,
        discharge_efficiency=0.9,
    )
    base.update(kw)
    return Battery(**base)


def problem(prices, *, minutes=60, soc=0.0, **kw) -> Problem:
    bat = kw.pop("battery", None) or battery()
    return Problem(
        battery=bat,
        start=T0,
        interval_minutes=minutes,
        prices_eur_per_mwh=prices,
        initial_soc_pct=soc,
        **kw,
    )


# -- hand-computable -------------------------------------------------------------------------


def test_two_prices_one_cycle_earns_the_analytic_revenue():
    # 2 h at 20, 2 h at 100 EUR/MWh; 1000 kWh, 500 kW, 90 % each way, empty at start.
    # Charge 2 h x 500 kW = 1000 kWh from the grid -> 900 kWh stored (full would be 1000, so
    # the power limit binds); discharge all 900 stored -> 810 kWh delivered.
    plan = optimise(problem([20, 20, 100, 100]))
    assert plan.charge_kw == pytest.approx((500, 500, 0, 0))
    discharged = 900 * 0.9
    assert sum(plan.discharge_kw) == pytest.approx(discharged)
    revenue = discharged / 1000 * 100 - 1.0 * 20
    assert plan.revenue_eur == pytest.approx(revenue)
    assert plan.objective_eur == pytest.approx(revenue)
    assert plan.soc_pct[-1] == pytest.approx(0)
    assert plan.relaxed == ()
    assert plan.cycles == pytest.approx(0.9)


def test_degradation_cost_reduces_the_analytic_value():
    deg = 10.0
    plan = optimise(problem([20, 20, 100, 100], battery=battery(degradation_eur_per_mwh=deg)))
    throughput_mwh = 1.0 + 0.81
    assert plan.degradation_cost_eur == pytest.approx(deg * throughput_mwh)
    assert plan.objective_eur == pytest.approx(0.81 * 100 - 20 - deg * throughput_mwh)


def test_a_spread_below_losses_plus_degradation_is_not_cycled():
    # 0.81 round trip: buying at 50 and selling at 60 loses (60 * 0.81 < 50).
    assert optimise(problem([50, 50, 60, 60])).throughput_kwh == pytest.approx(0)


def test_flat_prices_do_not_cycle_because_of_degradation():
    flat = battery(charge_efficiency=1.0, discharge_efficiency=1.0, degradation_eur_per_mwh=1.0)
    # Lossless, so only the degradation cost stands against cycling; the stored energy is
    # kept for after the horizon (end target), else selling it would pay.
    plan = optimise(problem([80.0] * 24, soc=50, end_soc_pct=50, battery=flat))
    assert plan.throughput_kwh == pytest.approx(0, abs=1e-6)
    assert plan.objective_eur == pytest.approx(0, abs=1e-9)


def test_negative_prices_charge_but_never_charge_and_discharge_at_once():
    plan = optimise(problem([-50, -50, -50, -50], soc=50))
    c, d = np.array(plan.charge_kw), np.array(plan.discharge_kw)
    assert not np.any((c > 1e-9) & (d > 1e-9))
    # Paid to import: the plan absorbs more than the empty room alone allows, by cycling
    # between intervals (the losses burn energy), and ends full.
    net_import_kwh = float(np.sum(c - d))
    assert net_import_kwh > 500 / 0.9
    assert plan.soc_pct[-1] == pytest.approx(100)
    assert plan.revenue_eur == pytest.approx(net_import_kwh / 1000 * 50)
    assert plan.milp  # the LP wanted both at once; the binary had to forbid it


def test_a_single_negative_interval_with_a_full_battery_does_not_burn_energy():
    plan = optimise(problem([-100], soc=100))
    assert plan.charge_kw == (0.0,) and plan.discharge_kw == (0.0,)
    assert plan.revenue_eur == pytest.approx(0)


def test_end_soc_target_is_respected():
    # High price first, low later: without a target the battery would end empty.
    plan = optimise(problem([100, 100, 20, 20], soc=80, end_soc_pct=80))
    assert plan.soc_pct[-1] >= 80 - 1e-7
    assert plan.relaxed == ()
    exact = optimise(problem([100, 20, 20, 20], soc=0, end_soc_pct=30, end_soc_exact=True))
    assert exact.soc_pct[-1] == pytest.approx(30)


def test_positions_are_delivered_and_only_extended():
    # Sold 0.2 MW in hour 2 at a low price: must discharge it although buying is cheaper.
    prices = [100, 100, 10, 10]
    plan = optimise(problem(prices, soc=50, positions_mw=[0, 0, -0.2, 0.1]))
    assert plan.power_kw[2] >= 200 - 1e-6
    assert plan.power_kw[3] <= -100 + 1e-6
    trade = plan.trade_kw
    assert trade[2] >= -1e-6 and trade[3] <= 1e-6  # never trades a position back
    # Revenue counts only the additional trades.
    expect = sum(p * t / 1000 for p, t in zip(prices, trade, strict=True))
    assert plan.revenue_eur == pytest.approx(expect)


def test_infeasible_start_soc_gives_a_relaxed_plan_that_says_so():
    slow = battery(min_soc_pct=20, max_soc_pct=90, max_charge_kw=50)
    plan = optimise(problem([100, 100, 100, 100], soc=5, battery=slow))
    assert [r.constraint for r in plan.relaxed] == ["soc_min"]
    relaxed = plan.relaxed[0]
    assert relaxed.first == T0
    # Charging at 50 kW x 0.9: 45 kWh per hour; 200 - 50 = 150 kWh short at the start.
    # After 3 h it is 15 kWh short; the 4th hour charges just those (no later use for more).
    assert relaxed.intervals == 3
    assert relaxed.max_amount == pytest.approx(150 - 45)
    assert plan.charge_kw == pytest.approx((50, 50, 50, 15 / 0.9))
    assert plan.soc_pct[-1] == pytest.approx(20)
    assert "below the minimum 20 %" in relaxed.message


def test_impossible_position_is_relaxed_and_reported():
    plan = optimise(problem([50, 50], soc=50, positions_mw=[-2, 0]))
    assert [r.constraint for r in plan.relaxed] == ["position"]
    # 500 kWh stored x 0.9 = 450 kWh deliverable in the hour: 2000 - 450 kW short.
    assert plan.relaxed[0].max_amount == pytest.approx(1550)
    assert plan.discharge_kw[0] == pytest.approx(450)
    assert plan.soc_pct[0] == pytest.approx(0)


def test_cycle_limit_per_day():
    prices = [10, 100] * 12
    limited = optimise(problem(prices, soc=0, battery=battery(max_cycles_per_day=1.0)))
    assert limited.cycles <= 1.0 + 1e-9
    free = optimise(problem(prices, soc=0))
    assert free.cycles > 1.5


def test_grid_limit_caps_power():
    plan = optimise(problem([20, 20, 100, 100], battery=battery(grid_limit_kw=300)))
    assert max(plan.charge_kw) <= 300 + 1e-9
    assert max(plan.discharge_kw) <= 300 + 1e-9


def test_hourly_plan_becomes_four_quarters_with_edgelink_sign():
    plan = optimise(problem([20, 20, 100, 100]))
    schedule = plan.to_schedule()
    assert schedule.interval_minutes == 15
    assert len(schedule.intervals) == 16
    assert schedule.valid_from == T0 and schedule.valid_until == T0 + timedelta(hours=4)
    assert [i.power_kw for i in schedule.intervals[:4]] == [-500.0] * 4  # charge: negative
    assert schedule.intervals[8].power_kw > 0  # discharge: positive
    assert schedule.intervals[5].start == T0 + timedelta(minutes=75)


def test_proposed_orders_buy_where_charging_and_sell_where_discharging():
    plan = optimise(problem([20, 20, 100.125, 100], soc=0, positions_mw=[0.2, 0, 0, 0]))
    orders = plan.proposed_orders(market="epex_at", portfolio="desk", site="s1")
    by_start = {o.delivery.start: o for o in orders}
    first = by_start[T0]
    assert first.side is Side.BUY
    assert first.quantity_mw == Decimal("0.300")  # 500 kW charged, 200 kW already bought
    assert first.delivery == DeliveryPeriod.hour_block(T0)
    assert first.limit_price_eur_per_mwh == Decimal("20.00")
    sell = by_start[T0 + timedelta(hours=2)]
    assert sell.side is Side.SELL
    assert sell.limit_price_eur_per_mwh == Decimal("100.12")
    assert sell.site == "s1" and sell.portfolio == "desk" and sell.counterparty == "desk"
    quarter = optimise(problem([20, 100], minutes=15)).proposed_orders(
        market="epex_at", portfolio="desk", site="s1"
    )
    assert [o.delivery.minutes for o in quarter] == [15, 15]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"battery": {"min_soc_pct": 90, "max_soc_pct": 10}}, "min_soc_pct 90"),
        ({"battery": {"charge_efficiency": 95}}, "charge_efficiency must be in (0, 1]"),
        ({"battery": {"capacity_kwh": 0}}, "capacity_kwh must be a positive number"),
        ({"problem": {"prices_eur_per_mwh": []}}, "at least one interval"),
        ({"problem": {"prices_eur_per_mwh": [1, math.nan]}}, "interval 1 is nan"),
        ({"problem": {"positions_mw": [1]}}, "positions_mw has 1 values for 2 intervals"),
        ({"problem": {"initial_soc_pct": 120}}, "initial_soc_pct must be within 0..100"),
        ({"problem": {"start": datetime(2025, 1, 1, 0, 15, tzinfo=UTC)}}, "not aligned"),
        ({"problem": {"start": datetime(2025, 1, 1)}}, "timezone-aware"),
        ({"problem": {"interval_minutes": 30}}, "interval_minutes must be 15 or 60"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(InvalidProblemError, match=message.replace("(", r"\(").replace(")", r"\)")):
        args = dict(
            battery=battery(**kwargs.get("battery", {})),
            start=T0,
            interval_minutes=60,
            prices_eur_per_mwh=[1, 2],
            initial_soc_pct=50,
        )
        args.update(kwargs.get("problem", {}))
        Problem(**args)


# -- random instances ------------------------------------------------------------------------


def independent_optimum(p: Problem) -> float:
    """The same problem as SciPy `milp` with binaries always on and the SoC eliminated:
    e_t = e0 + sum_{k<=t} h (eta_c c_k - d_k / eta_d). Variables [c, d, b]; hard constraints."""
    b = p.battery
    n, h = p.n, p.hours
    prices = np.asarray(p.prices_eur_per_mwh)
    pos = p.positions()
    deg = b.degradation_eur_per_mwh
    # milp minimises
    cost = np.concatenate([(prices + deg) * h / 1000, (-prices + deg) * h / 1000, np.zeros(n)])
    lower_tri = np.tril(np.ones((n, n)))
    soc_rows = np.hstack(
        [
            lower_tri * h * b.charge_efficiency,
            -lower_tri * h / b.discharge_efficiency,
            np.zeros((n, n)),
        ]
    )
    e0 = b.kwh(p.initial_soc_pct)
    constraints = [LinearConstraint(soc_rows, b.kwh(b.min_soc_pct) - e0, b.kwh(b.max_soc_pct) - e0)]
    eye = np.eye(n)
    cmax, dmax = b.charge_limit_kw, b.discharge_limit_kw
    constraints.append(
        LinearConstraint(np.hstack([eye, np.zeros((n, n)), -cmax * eye]), -np.inf, 0)
    )
    constraints.append(
        LinearConstraint(np.hstack([np.zeros((n, n)), eye, dmax * eye]), -np.inf, dmax)
    )
    net = np.hstack([eye, -eye, np.zeros((n, n))])  # c - d
    lo = np.where(pos > 0, 1000 * pos, -np.inf)
    hi = np.where(pos < 0, 1000 * pos, np.inf)
    constraints.append(LinearConstraint(net, lo, hi))
    if p.end_soc_pct is not None:
        target = b.kwh(p.end_soc_pct) - e0
        constraints.append(
            LinearConstraint(soc_rows[-1:], target, target if p.end_soc_exact else np.inf)
        )
    if b.max_cycles_per_day is not None:
        day_of = [s.date() for s in p.starts()]
        for day in sorted(set(day_of)):
            mask = np.array([d == day for d in day_of], dtype=float)
            row = np.concatenate([np.zeros(n), mask * h / b.discharge_efficiency, np.zeros(n)])
            limit = b.max_cycles_per_day * b.capacity_kwh * mask.sum() * h / 24
            constraints.append(LinearConstraint(row[None, :], -np.inf, limit))
    integrality = np.concatenate([np.zeros(2 * n), np.ones(n)])
    ub = np.concatenate([np.full(n, cmax), np.full(n, dmax), np.ones(n)])
    res = milp(
        cost,
        constraints=constraints,
        integrality=integrality,
        bounds=Bounds(np.zeros(3 * n), ub),
        options={"mip_rel_gap": 1e-10},
    )
    assert res.status == 0, res.message
    constant = float(np.sum(prices * pos * h))
    return -float(res.fun) + constant


def check_constraints(plan: Plan) -> None:
    """Every rule of the problem, recomputed from the plan's powers alone."""
    p = plan.problem
    b = p.battery
    h, tol = p.hours, 1e-6
    c, d = np.array(plan.charge_kw), np.array(plan.discharge_kw)
    assert np.all(c >= -tol) and np.all(d >= -tol)
    assert np.all(c <= b.max_charge_kw + tol) and np.all(d <= b.max_discharge_kw + tol)
    if b.grid_limit_kw is not None:
        assert np.all(np.abs(d - c) <= b.grid_limit_kw + tol)
    assert not np.any((c > tol) & (d > tol)), "charge and discharge at once"
    e = b.kwh(p.initial_soc_pct) + np.cumsum(
        h * (b.charge_efficiency * c - d / b.discharge_efficiency)
    )
    assert np.allclose(e / b.capacity_kwh * 100, plan.soc_pct, atol=1e-6)
    assert np.all(e >= b.kwh(b.min_soc_pct) - tol) and np.all(e <= b.kwh(b.max_soc_pct) + tol)
    pos = p.positions()
    net_sale = d - c
    assert np.all(net_sale[pos < 0] >= -1000 * pos[pos < 0] - tol)
    assert np.all(-net_sale[pos > 0] >= 1000 * pos[pos > 0] - tol)
    if p.end_soc_pct is not None:
        assert e[-1] >= b.kwh(p.end_soc_pct) - tol
        if p.end_soc_exact:
            assert e[-1] <= b.kwh(p.end_soc_pct) + tol
    if b.max_cycles_per_day is not None:
        days = [s.date() for s in p.starts()]
        for day in set(days):
            mask = np.array([x == day for x in days])
            used = float(np.sum(d[mask])) * h / b.discharge_efficiency
            assert used <= b.max_cycles_per_day * b.capacity_kwh * mask.sum() * h / 24 + tol


def random_problem(rng: np.random.Generator) -> Problem:
    minutes = int(rng.choice([15, 60]))
    n = int(rng.integers(2, 40))
    lo = float(rng.uniform(0, 30))
    bat = Battery(
        capacity_kwh=float(rng.uniform(100, 5000)),
        max_charge_kw=float(rng.uniform(50, 2500)),
        max_discharge_kw=float(rng.uniform(50, 2500)),
        min_soc_pct=lo,
        max_soc_pct=float(rng.uniform(lo + 20, 100)),
        charge_efficiency=float(rng.uniform(0.8, 1.0)),
        discharge_efficiency=float(rng.uniform(0.8, 1.0)),
        grid_limit_kw=float(rng.uniform(50, 2500)) if rng.random() < 0.3 else None,
        degradation_eur_per_mwh=float(rng.uniform(0, 30)),
        max_cycles_per_day=float(rng.uniform(0.5, 3)) if rng.random() < 0.3 else None,
    )
    prices = rng.normal(60, 80, n).round(2)  # many negative ones
    soc = float(rng.uniform(bat.min_soc_pct, bat.max_soc_pct))
    # A feasible reference schedule: half the power at random, clipped by the SoC limits;
    # positions are parts of it, the end target its end SoC: so the instance is feasible.
    h = minutes / 60
    e = bat.kwh(soc)
    positions = np.zeros(n)
    for t in range(n):
        want = float(rng.uniform(-bat.charge_limit_kw, bat.discharge_limit_kw)) / 2
        if want < 0:
            room = (bat.kwh(bat.max_soc_pct) - e) / (h * bat.charge_efficiency)
            power = -min(-want, room)
            e += -power * h * bat.charge_efficiency
        else:
            avail = (e - bat.kwh(bat.min_soc_pct)) * bat.discharge_efficiency / h
            power = min(want, avail)
            e -= power * h / bat.discharge_efficiency
        if rng.random() < 0.3:
            positions[t] = -power / 1000 * float(rng.uniform(0, 1))
    end = None
    if rng.random() < 0.5:
        end = max(bat.min_soc_pct, min(bat.max_soc_pct, e / bat.capacity_kwh * 100 - 1e-6))
    cycles_ok = bat.max_cycles_per_day is None
    if not cycles_ok:  # drop positions that might need more cycles than allowed
        positions[:] = 0
    return Problem(
        battery=bat,
        start=T0 + timedelta(hours=int(rng.integers(0, 24))),
        interval_minutes=minutes,  # type: ignore[arg-type]
        prices_eur_per_mwh=prices.tolist(),
        initial_soc_pct=soc,
        end_soc_pct=end if cycles_ok else None,
        end_soc_exact=bool(rng.random() < 0.3),
        positions_mw=positions.round(6).tolist(),
    )


@pytest.mark.parametrize("seed", range(60))
def test_random_instances_are_feasible_and_optimal(seed):
    p = random_problem(np.random.default_rng(seed))
    plan = optimise(p)
    assert plan.relaxed == (), plan.relaxed
    check_constraints(plan)
    expected = independent_optimum(p)
    assert plan.objective_eur == pytest.approx(expected, rel=1e-6, abs=1e-6)
