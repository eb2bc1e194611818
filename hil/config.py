"""Settings and small parsers shared by the CLI, the scenario runner and the control endpoint.

Everything a user types (durations such as ``"10m"``, fault specs such as
``modbus_exception:code=4@60+30``, ``k=v`` parameters) is parsed here, once, into typed values
with error messages that name the offending text and what is allowed.
"""

from __future__ import annotations

import re
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .faults import FAULT_PARAMS, Fault, FaultKind
from .model import BatterySpec
from .sim import QUANTITIES


def iso_utc(timestamp: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and a ``Z``."""
    text = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# -- durations ------------------------------------------------------------------------------

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)")
DURATION_HELP = "a number of seconds or a duration such as 90s, 10m, 1h30m, 2d"


def parse_duration_s(value: object) -> float:
    """Seconds from ``600``, ``"600"``, ``"10m"``, ``"1h30m"``, ``"2.5s"`` or ``"1d"``."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration; give {DURATION_HELP}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().lower()
        try:
            seconds = float(text)
        except ValueError:
            compact = text.replace(" ", "")
            parts = _DURATION_PART.findall(compact)
            if not parts or "".join(n + u for n, u in parts) != compact:
                raise ValueError(f"{value!r} is not a duration; give {DURATION_HELP}") from None
            seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    else:
        raise ValueError(f"{value!r} is not a duration; give {DURATION_HELP}")
    if not seconds >= 0 or seconds == float("inf"):
        raise ValueError(f"duration must be a finite number >= 0 (got {value!r})")
    return seconds


def format_duration(seconds: float) -> str:
    """``5400`` -> ``"1h30m"``; sub-second values keep their decimals."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    rest = int(seconds)
    out = ""
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    if rest or not out:
        out += f"{rest}s"
    return out


# -- parameters -----------------------------------------------------------------------------


def coerce_scalar(text: str) -> Any:
    """A command-line value as the type it looks like: int, float, bool, None or str."""
    lowered = text.strip().lower()
    if lowered in {"true", "yes", "on"}:
        return True
    if lowered in {"false", "no", "off"}:
        return False
    if lowered in {"none", "null"}:
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_params(tokens: list[str]) -> dict[str, Any]:
    """``["code=4", "quantities=soc_pct,power_kw"]`` -> ``{"code": 4, "quantities": [...]}``.

    A value with commas becomes a list; a token without ``=`` continues the previous list.
    """
    params: dict[str, Any] = {}
    last: str | None = None
    for token in tokens:
        if "=" not in token:
            if last is None:
                raise ValueError(f"parameter {token!r} must look like name=value")
            previous = params[last]
            items = previous if isinstance(previous, list) else [previous]
            params[last] = [*items, coerce_scalar(token)]
            continue
        name, _, raw = token.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"parameter {token!r} has no name; write name=value")
        params[name] = (
            [coerce_scalar(v) for v in raw.split(",") if v] if "," in raw else coerce_scalar(raw)
        )
        last = name
    return params


# -- faults ---------------------------------------------------------------------------------

FAULT_KINDS = ", ".join(k.value for k in FaultKind)


def make_fault(
    kind: str | FaultKind,
    params: dict[str, Any] | None = None,
    *,
    start: float | None = None,
    duration_s: float | None = None,
) -> Fault:
    """A validated ``Fault``: known kind, known parameters, parameter values of the right type."""
    try:
        fault_kind = FaultKind(kind)
    except ValueError:
        raise ValueError(f"unknown fault {kind!r}; choose one of: {FAULT_KINDS}") from None
    clean = dict(params or {})
    allowed = FAULT_PARAMS[fault_kind]
    unknown = sorted(set(clean) - set(allowed))
    if unknown:
        takes = ", ".join(f"{k} (default {v!r})" for k, v in allowed.items()) or "no parameters"
        raise ValueError(f"fault {fault_kind.value!r} does not take {unknown}; it takes {takes}")
    if "code" in clean:
        code = clean["code"]
        if isinstance(code, bool) or not isinstance(code, int) or not 1 <= code <= 255:
            raise ValueError(f"modbus_exception code must be an integer 1..255 (got {code!r})")
    for name in ("value", "hz", "c_per_s"):
        if name in clean:
            value = clean[name]
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"fault parameter {name} must be a number (got {value!r})")
            clean[name] = float(value)
    if "quantities" in clean and isinstance(clean["quantities"], str):
        clean["quantities"] = [clean["quantities"]]
    names = list(clean.get("quantities") or [])
    if "quantity" in clean:
        names.append(clean["quantity"])
    bad = [n for n in names if n not in QUANTITIES]
    if bad:
        raise ValueError(f"unknown quantity {bad}; choose from: {', '.join(QUANTITIES)}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"fault duration must be > 0 s (got {duration_s})")
    return Fault(kind=fault_kind, start=start, duration_s=duration_s, params=clean)


_FAULT_ARG = re.compile(
    r"^(?P<kind>[A-Za-z_]+)(?::(?P<params>[^@+]*))?"
    r"(?:@(?P<start>[0-9.]+[a-z]*))?(?:\+(?P<duration>[0-9.]+[a-z]*))?$"
)
FAULT_ARG_HELP = (
    "KIND[:name=value,...][@START][+DURATION], e.g. modbus_exception:code=4@60+30 "
    "or freeze:quantities=soc_pct,power_kw+5m"
)


class ScheduledFault(BaseModel):
    """A fault from the command line: ``offset_s`` after the simulator starts (None = at once)."""

    model_config = ConfigDict(frozen=True)

    kind: FaultKind
    params: dict[str, Any] = Field(default_factory=dict)
    offset_s: float | None = None
    duration_s: float | None = None

    def to_fault(self, t0: float) -> Fault:
        start = None if self.offset_s is None else t0 + self.offset_s
        return make_fault(self.kind, self.params, start=start, duration_s=self.duration_s)


def parse_fault_arg(text: str) -> ScheduledFault:
    """Parse ``--fault`` text, :data:`FAULT_ARG_HELP`."""
    match = _FAULT_ARG.match(text.strip())
    if not match:
        raise ValueError(f"cannot read fault {text!r}; write {FAULT_ARG_HELP}")
    raw_params = match["params"] or ""
    params = parse_params([t for t in raw_params.split(",") if t]) if raw_params else {}
    offset = parse_duration_s(match["start"]) if match["start"] else None
    duration = parse_duration_s(match["duration"]) if match["duration"] else None
    fault = make_fault(match["kind"].lower(), params, duration_s=duration)  # validates
    return ScheduledFault(
        kind=fault.kind, params=fault.params, offset_s=offset, duration_s=duration
    )


# -- battery spec ---------------------------------------------------------------------------

SPEC_FIELDS = tuple(f.name for f in fields(BatterySpec))


def build_spec(overrides: dict[str, Any] | None = None) -> BatterySpec:
    """``BatterySpec`` defaults with ``overrides``; unknown names are refused with the list."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(SPEC_FIELDS))
    if unknown:
        raise ValueError(f"unknown battery setting {unknown}; allowed: {', '.join(SPEC_FIELDS)}")
    for name, value in overrides.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"battery setting {name} must be a number (got {value!r})")
    return BatterySpec(**{k: float(v) for k, v in overrides.items()})


# -- MQTT -----------------------------------------------------------------------------------

# Quantity -> (default topic suffix, unit). ``status`` is the battery's operating state; the
# availability topic (``<prefix>/status``, online/offline, last will) is separate.
MQTT_QUANTITIES: dict[str, tuple[str, str]] = {
    "soc_pct": ("soc", "%"),
    "power_kw": ("power", "kW"),
    "temperature_c": ("temperature", "°C"),
    "frequency_hz": ("frequency", "Hz"),
    "voltage_v": ("voltage", "V"),
    "setpoint_kw": ("setpoint", "kW"),
    "reactive_power_kvar": ("reactive_power", "kvar"),
    "soh_pct": ("soh", "%"),
    "charged_kwh": ("charged_energy", "kWh"),
    "discharged_kwh": ("discharged_energy", "kWh"),
    "status": ("state", ""),
    "alarms": ("alarms", ""),
}
DEFAULT_MQTT_QUANTITIES = ("soc_pct", "power_kw", "temperature_c", "frequency_hz")


class MqttSettings(BaseModel):
    """How the simulated battery publishes telemetry to an MQTT broker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str | None = None  # None = "bess-hil-<random>"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: int = Field(default=30, ge=5)
    username: str | None = None
    password: SecretStr | None = None
    tls: bool = False
    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    tls_insecure: bool = False  # skip host-name check (test rigs with self-signed certs)

    topic_prefix: str = "bess"
    quantities: tuple[str, ...] = DEFAULT_MQTT_QUANTITIES
    topics: dict[str, str] = Field(default_factory=dict)  # quantity -> full topic override
    payload_format: Literal["plain", "json"] = "plain"
    single_topic: str | None = None  # JSON mode: every quantity in one message on this topic
    decimals: int = Field(default=3, ge=0, le=9)
    qos: Literal[0, 1, 2] = 1
    retain: bool = False

    interval_s: float = Field(default=1.0, gt=0)  # in SIMULATED seconds
    min_real_interval_s: float = Field(default=0.02, ge=0)  # flood guard for very fast clocks
    reconnect_min_delay_s: int = Field(default=1, ge=1)
    reconnect_max_delay_s: int = Field(default=30, ge=1)
    connect_timeout_s: float = Field(default=5.0, ge=0)  # how long __aenter__ waits for the broker

    @field_validator("quantities")
    @classmethod
    def _known_quantities(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [q for q in value if q not in MQTT_QUANTITIES]
        if unknown:
            raise ValueError(f"unknown quantity {unknown}; allowed: {', '.join(MQTT_QUANTITIES)}")
        if not value:
            raise ValueError("publish at least one quantity")
        return value

    @field_validator("topic_prefix")
    @classmethod
    def _clean_prefix(cls, value: str) -> str:
        value = value.strip().strip("/")
        if not value or any(c in value for c in "#+"):
            raise ValueError(f"topic prefix {value!r} must be non-empty without # or +")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MqttSettings:
        unknown = [q for q in self.topics if q not in MQTT_QUANTITIES]
        if unknown:
            raise ValueError(
                f"topics for unknown quantity {unknown}; allowed: {', '.join(MQTT_QUANTITIES)}"
            )
        if self.single_topic is not None and self.payload_format != "json":
            raise ValueError("single_topic needs payload_format 'json'")
        if (self.certfile or self.keyfile or self.ca_certs or self.tls_insecure) and not self.tls:
            raise ValueError("TLS files or tls_insecure given but tls is off; set tls=true")
        if self.reconnect_max_delay_s < self.reconnect_min_delay_s:
            raise ValueError("reconnect_max_delay_s must be >= reconnect_min_delay_s")
        return self

    def topic_for(self, quantity: str) -> str:
        return self.topics.get(quantity) or f"{self.topic_prefix}/{MQTT_QUANTITIES[quantity][0]}"

    @property
    def status_topic(self) -> str:
        """Availability: ``online`` while publishing, ``offline`` (retained; also the will)."""
        return f"{self.topic_prefix}/status"


def parse_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``"broker"`` / ``"broker:1884"`` / ``"[::1]:1883"`` -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host:
        raise ValueError(f"{text!r} has no host; write HOST or HOST:PORT")
    if not port_text:
        return host, default_port
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port in {text!r} must be a number 1..65535") from None
    if not 1 <= port <= 65535:
        raise ValueError(f"port in {text!r} must be 1..65535")
    return host, port
