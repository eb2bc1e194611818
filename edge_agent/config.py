"""The agent's site configuration: one YAML file, validated once at start, then passed down.

Precedence: built-in defaults < the YAML site file < environment variables. The spec's
variables (``BESS_MODBUS_HOST``, ``BESS_MQTT_BROKER``, ``BESS_REST_ENABLED``, ``BESS_API_KEY``,
``BESS_UPDATE_INTERVAL`` …, see ``ENV_VARS``) override the file, so a technician can fix one
value on site without editing it. Every problem is reported in one ``ConfigError`` that names
the field, the value and what is allowed; contradictions (min SoC ≥ max SoC, a power limit
above the battery's rating, a setpoint refresh slower than the device's revert timeout) are
refused before anything touches the battery.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .executor import ExecutorConfigError, ExecutorSettings, check_revert_timeout
from .guard import GuardLimits
from .modbus_source import ModbusSourceSettings
from .mqtt_source import MqttSourceSettings
from .readings import Quantity
from .rest_ingest import RestIngestSettings
from .uplink import UplinkSettings

SITE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class ConfigError(ValueError):
    """The site configuration cannot be used; ``problems`` lists every reason, one per line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid configuration ({source}):\n{lines}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BatteryConfig(_Model):
    """Nameplate of the battery behind the inverter."""

    capacity_kwh: float = Field(gt=0, allow_inf_nan=False)
    max_charge_kw: float = Field(gt=0, allow_inf_nan=False)
    max_discharge_kw: float = Field(gt=0, allow_inf_nan=False)


class LimitsConfig(_Model):
    """What the local safety guard enforces (DESIGN decision 9: safety lives on the edge)."""

    min_soc_pct: float = Field(default=15.0, ge=0, le=100)
    max_soc_pct: float = Field(default=90.0, ge=0, le=100)
    soc_hysteresis_pct: float = Field(default=2.0, ge=0, le=50)
    taper_horizon_s: float = Field(default=300.0, gt=0)
    charge_limit_kw: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    discharge_limit_kw: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    ramp_kw_per_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    temp_warning_c: float = Field(default=45.0, allow_inf_nan=False)
    temp_stop_c: float = Field(default=55.0, allow_inf_nan=False)
    stale_after_s: float = Field(default=10.0, gt=0)
    require_temperature: bool = False


class SourcesConfig(_Model):
    modbus: ModbusSourceSettings | None = None
    mqtt: MqttSourceSettings = MqttSourceSettings()
    rest: RestIngestSettings = RestIngestSettings()
    # Which source wins per quantity when several deliver it; the default order is
    # modbus > mqtt > rest for every quantity.
    priorities: dict[Quantity, list[Literal["modbus", "mqtt", "rest"]]] = Field(
        default_factory=dict
    )
    stale_after_s: float = Field(default=10.0, gt=0)


class TelemetryConfig(_Model):
    interval_s: float = Field(default=1.0, gt=0, le=3600, description="BESS_UPDATE_INTERVAL")


class StorageConfig(_Model):
    data_dir: Path = Field(default=Path("var/bess-edge"), description="BESS_DATA_DIR")
    outbox_max_rows: int = Field(default=1_000_000, ge=1000)
    outbox_max_age_s: float = Field(default=7 * 86_400, gt=0)
    synchronous: Literal["FULL", "NORMAL", "EXTRA"] = "FULL"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox.sqlite"

    @property
    def schedules_path(self) -> Path:
        return self.data_dir / "schedules.sqlite"


class MetricsConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)


class LoggingConfig(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"


class SiteConfig(_Model):
    site_id: str = Field(pattern=SITE_ID_PATTERN)
    battery: BatteryConfig
    limits: LimitsConfig = LimitsConfig()
    sources: SourcesConfig = SourcesConfig()
    executor: ExecutorSettings = ExecutorSettings()
    telemetry: TelemetryConfig = TelemetryConfig()
    uplink: UplinkSettings | None = None
    storage: StorageConfig = StorageConfig()
    metrics: MetricsConfig = MetricsConfig()
    logging: LoggingConfig = LoggingConfig()

    @model_validator(mode="after")
    def _no_contradictions(self) -> Self:
        problems: list[str] = []
        b, lim = self.battery, self.limits
        if lim.min_soc_pct >= lim.max_soc_pct:
            problems.append(
                f"limits.min_soc_pct ({lim.min_soc_pct:g}) must be below limits.max_soc_pct "
                f"({lim.max_soc_pct:g})"
            )
        if lim.charge_limit_kw is not None and lim.charge_limit_kw > b.max_charge_kw:
            problems.append(
                f"limits.charge_limit_kw ({lim.charge_limit_kw:g}) is above the battery's "
                f"rating battery.max_charge_kw ({b.max_charge_kw:g})"
            )
        if lim.discharge_limit_kw is not None and lim.discharge_limit_kw > b.max_discharge_kw:
            problems.append(
                f"limits.discharge_limit_kw ({lim.discharge_limit_kw:g}) is above the battery's "
                f"rating battery.max_discharge_kw ({b.max_discharge_kw:g})"
            )
        if lim.temp_warning_c >= lim.temp_stop_c:
            problems.append(
                f"limits.temp_warning_c ({lim.temp_warning_c:g}) must be below "
                f"limits.temp_stop_c ({lim.temp_stop_c:g})"
            )
        fallback = self.executor.fallback_kw
        if fallback > b.max_discharge_kw or -fallback > b.max_charge_kw:
            problems.append(f"executor.fallback_kw ({fallback:g}) is beyond the battery's rating")
        modbus = self.sources.modbus
        revert = modbus.revert_timeout_s if modbus else None
        if revert:
            try:
                check_revert_timeout(self.executor, revert)
            except ExecutorConfigError as exc:
                problems.append(f"executor vs sources.modbus.revert_timeout_s: {exc}")
        if problems:
            raise ValueError("\n".join(problems))
        self.guard_limits()  # the guard's own checks: the file can never build an unsafe guard
        return self

    def guard_limits(self) -> GuardLimits:
        b, lim = self.battery, self.limits
        return GuardLimits(
            capacity_kwh=b.capacity_kwh,
            max_charge_kw=b.max_charge_kw,
            max_discharge_kw=b.max_discharge_kw,
            charge_limit_kw=lim.charge_limit_kw,
            discharge_limit_kw=lim.discharge_limit_kw,
            min_soc_pct=lim.min_soc_pct,
            max_soc_pct=lim.max_soc_pct,
            soc_hysteresis_pct=lim.soc_hysteresis_pct,
            taper_horizon_s=lim.taper_horizon_s,
            ramp_kw_per_s=lim.ramp_kw_per_s,
            temp_warning_c=lim.temp_warning_c,
            temp_stop_c=lim.temp_stop_c,
            stale_after_s=lim.stale_after_s,
            require_temperature=lim.require_temperature,
        )


# -- environment overrides ------------------------------------------------------------------


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no)")


@dataclass(frozen=True)
class EnvVar:
    name: str
    path: tuple[str, ...]  # where in the config tree it lands
    parse: Callable[[str], Any] = str
    help: str = ""
    secret: bool = False


ENV_VARS: tuple[EnvVar, ...] = (
    EnvVar("BESS_SITE_ID", ("site_id",), help="site id"),
    EnvVar("BESS_MODBUS_HOST", ("sources", "modbus", "host"), help="inverter/BMS address"),
    EnvVar("BESS_MODBUS_PORT", ("sources", "modbus", "port"), int),
    EnvVar("BESS_MODBUS_UNIT_ID", ("sources", "modbus", "unit_id"), int),
    EnvVar("BESS_MODBUS_PRESET", ("sources", "modbus", "preset")),
    EnvVar("BESS_MODBUS_SOC_REGISTER", ("sources", "modbus", "soc_register"), int),
    EnvVar("BESS_MODBUS_POWER_REGISTER", ("sources", "modbus", "power_register"), int),
    EnvVar("BESS_MODBUS_TEMP_REGISTER", ("sources", "modbus", "temp_register"), int),
    EnvVar("BESS_MQTT_ENABLED", ("sources", "mqtt", "enabled"), _bool),
    EnvVar("BESS_MQTT_BROKER", ("sources", "mqtt", "host")),
    EnvVar("BESS_MQTT_PORT", ("sources", "mqtt", "port"), int),
    EnvVar("BESS_MQTT_USERNAME", ("sources", "mqtt", "username")),
    EnvVar("BESS_MQTT_PASSWORD", ("sources", "mqtt", "password"), secret=True),
    EnvVar("BESS_MQTT_TOPIC_SOC", ("sources", "mqtt", "topics", Quantity.SOC_PCT.value)),
    EnvVar("BESS_MQTT_TOPIC_POWER", ("sources", "mqtt", "topics", "active_power_kw")),
    EnvVar("BESS_MQTT_TOPIC_TEMP", ("sources", "mqtt", "topics", "temperature_c")),
    EnvVar("BESS_REST_ENABLED", ("sources", "rest", "enabled"), _bool),
    EnvVar("BESS_REST_PORT", ("sources", "rest", "port"), int),
    EnvVar("BESS_API_KEY", ("sources", "rest", "api_key"), secret=True),
    EnvVar("BESS_UPDATE_INTERVAL", ("telemetry", "interval_s"), float),
    EnvVar("BESS_DATA_DIR", ("storage", "data_dir")),
    EnvVar("BESS_UPLINK_TARGET", ("uplink", "target")),
    EnvVar("BESS_UPLINK_TLS_ENABLED", ("uplink", "tls", "enabled"), _bool),
    EnvVar("BESS_UPLINK_TLS_CA_FILE", ("uplink", "tls", "ca_file"), help="plane CA (PEM)"),
    EnvVar("BESS_UPLINK_TLS_CERT_FILE", ("uplink", "tls", "cert_file"), help="site cert"),
    EnvVar("BESS_UPLINK_TLS_KEY_FILE", ("uplink", "tls", "key_file"), help="site key file"),
    EnvVar("BESS_UPLINK_TLS_SERVER_NAME", ("uplink", "tls", "server_name")),
    EnvVar("BESS_METRICS_PORT", ("metrics", "port"), int),
    EnvVar("BESS_LOG_LEVEL", ("logging", "level"), str.upper),
)


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def apply_env(
    raw: dict[str, Any], env: Mapping[str, str]
) -> tuple[dict[str, Any], list[str], dict[str, str]]:
    """Overlay the environment onto the raw file tree.

    Returns the new tree, the problems found and, for error messages, which dotted field each
    variable set.
    """
    tree = _deep_copy(raw)
    problems: list[str] = []
    origin: dict[str, str] = {}
    modbus_enabled = env.get("BESS_MODBUS_ENABLED")
    if modbus_enabled is not None:
        try:
            if not _bool(modbus_enabled):
                tree.setdefault("sources", {})["modbus"] = None
        except ValueError as exc:
            problems.append(f"environment BESS_MODBUS_ENABLED: {exc}")
    for var in ENV_VARS:
        text = env.get(var.name)
        if text is None:
            continue
        if var.path[:2] == ("sources", "modbus") and modbus_enabled is not None:
            try:
                if not _bool(modbus_enabled):
                    continue  # disabled: its other variables are ignored
            except ValueError:
                continue
        try:
            value = var.parse(text)
        except ValueError:
            shown = "***" if var.secret else repr(text)
            problems.append(f"environment {var.name} = {shown}: not a valid {var.parse.__name__}")
            continue
        _set(tree, var.path, value)
        origin[".".join(var.path)] = var.name
    return tree, problems, origin


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# -- loading ----------------------------------------------------------------------------------

_SECRET_FIELD = re.compile(r"(password|api_key|token|secret)", re.IGNORECASE)


def _describe_error(err: Mapping[str, Any], origin: Mapping[str, str]) -> list[str]:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    if not loc:  # cross-field checks name their fields themselves, one per line
        text = str(err["msg"]).removeprefix("Value error, ")
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [_describe_field_error(loc, err, origin)]


def _describe_field_error(loc: str, err: Mapping[str, Any], origin: Mapping[str, str]) -> str:
    where = loc
    if loc in origin:
        where = f"{loc} (from environment {origin[loc]})"
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{where}: required but missing"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field (check the spelling; `bess-edge init` shows every field)"
    value = err.get("input")
    if _SECRET_FIELD.search(loc) or isinstance(value, dict | list) or value is None:
        return f"{where}: {message}"
    return f"{where} = {value!r}: {message}"


def parse_config(
    text: str, *, source: str = "<text>", env: Mapping[str, str] | None = None
) -> SiteConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [f"not valid YAML{where}: {problem}"]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            source, ["the file must be a YAML mapping (site_id, battery, limits, sources, ...)"]
        )
    tree, problems, origin = apply_env(raw, os.environ if env is None else env)
    if problems:
        raise ConfigError(source, problems)
    try:
        return SiteConfig.model_validate(tree)
    except ValidationError as exc:
        problems = [
            line for e in exc.errors(include_url=False) for line in _describe_error(e, origin)
        ]
        raise ConfigError(source, problems) from None


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> SiteConfig:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(file), ["file not found (create one with `bess-edge init > site.yaml`)"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), [f"cannot read the file: {exc}"]) from None
    return parse_config(text, source=str(file), env=env)
