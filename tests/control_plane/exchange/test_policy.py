"""policy.yaml: defaults, the shipped example, and one clear error per bad key."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import control_plane.exchange
from control_plane.exchange.models import Market, MarketRegistry, PricingRule
from control_plane.exchange.policy import Policy, PolicyError, ThrottleRate, load_policy

EXAMPLE = Path(control_plane.exchange.__file__).parent / "policy.example.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_design_values() -> None:
    policy = Policy()
    assert policy.pricing is PricingRule.MIDPOINT
    assert (policy.soc.min_pct, policy.soc.max_pct) == (15, 90)
    assert (policy.soc.charge_efficiency, policy.soc.discharge_efficiency) == (0.95, 0.95)
    assert policy.soc.max_telemetry_age_s == 300
    assert policy.soc.require_site is False
    assert policy.throttle.rate("epex_at") == ThrottleRate(orders_per_second=10, burst=20)
    assert list(policy.market_registry()) == list(MarketRegistry.default())


def test_the_shipped_example_loads_and_equals_the_defaults() -> None:
    policy = load_policy(EXAMPLE)
    default = Policy()
    assert policy.pricing == default.pricing
    assert policy.soc == default.soc
    assert policy.throttle == default.throttle
    assert list(policy.market_registry()) == list(default.market_registry())


def test_empty_file_is_the_default_policy(tmp_path: Path) -> None:
    assert load_policy(_write(tmp_path, "# nothing set\n")) == Policy()


def test_markets_replace_the_default_registry(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "pricing: resting\n"
        "markets:\n"
        "  epex_at:\n"
        "    price_min_eur_per_mwh: -150.5\n"
        "    max_quantity_mw: 0.1\n"
        "    gate_closure_min: 5\n"
        "    product_minutes: [15]\n"
        "throttle:\n"
        "  markets:\n"
        "    epex_at: {orders_per_second: 0.5, burst: 1}\n",
    )
    policy = load_policy(path)
    assert policy.pricing is PricingRule.RESTING
    (market,) = policy.market_registry()
    assert market == Market(
        "epex_at",
        price_min_eur_per_mwh=Decimal("-150.5"),
        max_quantity_mw=Decimal("0.1"),
        gate_closure=timedelta(minutes=5),
        product_minutes=frozenset({15}),
    )
    assert policy.throttle.rate("epex_at") == ThrottleRate(orders_per_second=0.5, burst=1)


BAD = {
    "min not below max": ("soc: {min_pct: 90, max_pct: 90}", "soc: min_pct 90.0 must be below"),
    "pct above 100": ("soc: {max_pct: 101}", "soc.max_pct: Input should be less than or equal"),
    "zero efficiency": ("soc: {charge_efficiency: 0}", "soc.charge_efficiency: Input should be"),
    "efficiency above 1": (
        "soc: {discharge_efficiency: 1.05}",
        "soc.discharge_efficiency: Input should be less than or equal to 1",
    ),
    "zero telemetry age": ("soc: {max_telemetry_age_s: 0}", "soc.max_telemetry_age_s"),
    "typo": ("soc: {min_soc: 10}", "soc.min_soc: unknown key"),
    "unknown section": ("risk: {}", "risk: unknown key"),
    "unknown pricing": ("pricing: cheapest", "pricing: Input should be 'midpoint' or 'resting'"),
    "zero rate": (
        "throttle: {default: {orders_per_second: 0, burst: 1}}",
        "throttle.default.orders_per_second: Input should be greater than 0",
    ),
    "fractional burst": (
        "throttle: {default: {orders_per_second: 1, burst: 1.5}}",
        "throttle.default.burst",
    ),
    "throttle for a market not traded": (
        "throttle: {markets: {nordpool: {orders_per_second: 1, burst: 1}}}",
        "throttle.markets lists nordpool, which are not traded (markets: epex_at, epex_de_lu)",
    ),
    "price bounds inverted": (
        "markets: {epex_at: {price_min_eur_per_mwh: 100, price_max_eur_per_mwh: 50}}",
        "markets.epex_at: price_min_eur_per_mwh 100 must be below the max 50",
    ),
    "bad market id": ("markets: {EPEX: {}}", "markets.EPEX: market_id must match"),
    "unknown market key": ("markets: {epex_at: {tick: 1}}", "markets.epex_at.tick: unknown key"),
    "no markets": ("markets: {}", "list at least one market"),
    "negative gate closure": (
        "markets: {epex_at: {gate_closure_min: -1}}",
        "markets.epex_at.gate_closure_min",
    ),
    "not a mapping": ("- soc\n", "must hold a mapping"),
    "not YAML": ("soc: [1\n", "is not valid YAML"),
}


@pytest.mark.parametrize(("text", "message"), BAD.values(), ids=BAD)
def test_bad_policy_names_file_key_and_problem(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_every_problem_is_listed_one_per_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "soc: {min_pct: -1, max_pct: 200}\nthrottle: {burst: 2}\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"policy file {path} is invalid:"
    assert [line.split(":")[0] for line in lines[1:]] == [
        "  - soc.min_pct",
        "  - soc.max_pct",
        "  - throttle.burst",
    ]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.yaml: No such file"):
        load_policy(tmp_path / "nope.yaml")
