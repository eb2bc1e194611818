"""The exchange's pre-trade policy: `policy.yaml` (path from `POLICY_PATH`) as a validated model.

Every key is optional; a missing file setting means the built-in default, so an empty file (or
no file at all) is the default policy. Unknown keys are refused, so a typo never silently
turns a limit off. `control_plane/exchange/policy.example.yaml` lists every key with its
default. Units are in the key names (STYLE 12):

- `pricing`: `midpoint` (the spec's mean of the two limits, default) or `resting` (the resting
  order's price), DESIGN 6.
- `markets`: per market id the `Market` fields (`price_min_eur_per_mwh`,
  `price_max_eur_per_mwh`, `max_quantity_mw`, `gate_closure_min`, `product_minutes`). When
  given it *replaces* the default registry (EPEX AT and DE-LU): only the listed markets
  trade. **The maximum order size is the market's `max_quantity_mw`**: the engine's
  validation refuses a larger order (422, nothing stored), so there is no second setting for
  it and no `MaxOrderSize` check.
- `soc`: the SoC feasibility check (DESIGN 5): `min_pct` < `max_pct` in [0, 100] (15 / 90),
  `charge_efficiency` and `discharge_efficiency` in (0, 1] (0.95 each: grid -> cells and
  cells -> grid), `max_telemetry_age_s` > 0 (300), `require_site` (false: an order without a
  site is a purely financial position and skips the check; true: it is rejected).
- `throttle`: a token bucket per market: `default` (`orders_per_second` > 0, `burst` >= 1
  whole orders; 10 / 20) and `markets` with per-market overrides (ids must be traded
  markets). Counted per market, not per portfolio: the spec asks for rate limiting per market,
  and the bucket protects the engine and the venue from a flood whoever sends it.

`load_policy(path)` raises `PolicyError`, whose message names the file and, one per line,
each key path and its problem.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from control_plane.exchange.models import Market, MarketRegistry, PricingRule

__all__ = [
    "MarketPolicy",
    "Policy",
    "PolicyError",
    "SocPolicy",
    "ThrottlePolicy",
    "ThrottleRate",
    "load_policy",
]


class PolicyError(ValueError):
    """The policy file cannot be used; the message names the file and every problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketPolicy(_Strict):
    """One market's validation limits; a missing key keeps `Market`'s default."""

    price_min_eur_per_mwh: Decimal | None = None
    price_max_eur_per_mwh: Decimal | None = None
    max_quantity_mw: Decimal | None = Field(
        default=None, description="the maximum order size (MW) of this market"
    )
    gate_closure_min: Annotated[float, Field(ge=0)] | None = None
    product_minutes: frozenset[int] | None = None

    def build(self, market_id: str) -> Market:
        """The `Market` (`ValueError` naming the problem if the limits contradict)."""
        kwargs: dict[str, Any] = {
            name: value
            for name in ("price_min_eur_per_mwh", "price_max_eur_per_mwh", "max_quantity_mw")
            if (value := getattr(self, name)) is not None
        }
        if self.gate_closure_min is not None:
            kwargs["gate_closure"] = timedelta(minutes=self.gate_closure_min)
        if self.product_minutes is not None:
            kwargs["product_minutes"] = self.product_minutes
        return Market(market_id, **kwargs)


class SocPolicy(_Strict):
    """Limits and efficiencies of the energy-based SoC feasibility check (DESIGN 5)."""

    min_pct: float = Field(default=15.0, ge=0, le=100)
    max_pct: float = Field(default=90.0, ge=0, le=100)
    charge_efficiency: float = Field(default=0.95, gt=0, le=1)
    """Share of the energy bought that ends up stored."""
    discharge_efficiency: float = Field(default=0.95, gt=0, le=1)
    """Share of the stored energy taken out that reaches the grid."""
    max_telemetry_age_s: float = Field(default=300.0, gt=0)
    require_site: bool = False

    @model_validator(mode="after")
    def _min_below_max(self) -> Self:
        if self.min_pct >= self.max_pct:
            raise ValueError(
                f"min_pct {self.min_pct} must be below max_pct {self.max_pct} "
                "(the SoC window the battery may use)"
            )
        return self


class ThrottleRate(_Strict):
    """A token bucket: `burst` orders at once, refilled at `orders_per_second`."""

    orders_per_second: float = Field(gt=0)
    burst: int = Field(ge=1)


class ThrottlePolicy(_Strict):
    """Placements per market: `default` for every market without an entry in `markets`."""

    default: ThrottleRate = ThrottleRate(orders_per_second=10, burst=20)
    markets: dict[str, ThrottleRate] = Field(default_factory=dict)

    def rate(self, market_id: str) -> ThrottleRate:
        return self.markets.get(market_id, self.default)


class Policy(_Strict):
    """The whole policy file."""

    pricing: PricingRule = PricingRule.MIDPOINT
    markets: dict[str, MarketPolicy] | None = Field(
        default=None, description="replaces the default markets when given"
    )
    soc: SocPolicy = SocPolicy()
    throttle: ThrottlePolicy = ThrottlePolicy()

    @model_validator(mode="after")
    def _markets_consistent(self) -> Self:
        if self.markets is not None:
            if not self.markets:
                raise ValueError("markets: list at least one market, or leave the key out")
            for market_id, block in self.markets.items():
                try:
                    block.build(market_id)
                except ValueError as exc:
                    problem = str(exc).removeprefix(f"market {market_id!r}: ")
                    raise ValueError(f"markets.{market_id}: {problem}") from None
        known = self.market_ids()
        unknown = sorted(set(self.throttle.markets) - set(known))
        if unknown:
            raise ValueError(
                f"throttle.markets lists {', '.join(unknown)}, which are not traded "
                f"(markets: {', '.join(known)})"
            )
        return self

    def market_ids(self) -> list[str]:
        if self.markets is None:
            return [m.market_id for m in MarketRegistry.default()]
        return list(self.markets)

    def market_registry(self) -> MarketRegistry:
        """The markets the exchange trades: the file's, or the default registry."""
        if self.markets is None:
            return MarketRegistry.default()
        return MarketRegistry(block.build(market_id) for market_id, block in self.markets.items())


def load_policy(path: Path) -> Policy:
    """The policy in the YAML file `path` (`PolicyError` naming every problem)."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"policy file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise PolicyError(
            f"policy file {path} must hold a mapping (pricing:, markets:, soc:, throttle:), "
            f"not {type(raw).__name__}"
        )
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        raise PolicyError(f"policy file {path} is invalid:\n{_problems(exc)}") from None


def _problems(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (see control_plane/exchange/policy.example.yaml)"
        # a check across keys (model validator) has no location; its message names the keys
        lines.append(f"  - {where}: {message}" if where else f"  - {message}")
    return "\n".join(lines)
