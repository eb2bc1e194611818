"""The control plane's settings: one pydantic-settings class, built once in `main()` or by the
caller of `create_app(settings)`, then passed down (STYLE item 4).

Precedence: defaults < the settings file (`bess-plane serve --config FILE`, YAML, keys are the
field names below) < environment variables. Environment names: `SQLITE_PATH`, `DATABASE_URL`
(a PostgreSQL DSN; it wins over SQLite when set), `POLICY_PATH` (the exchange's pre-trade
policy, `control_plane/exchange/policy.py`) and `BESS_PLANE_<FIELD>` for the rest, e.g.
`BESS_PLANE_HTTP_PORT`, `BESS_PLANE_GRPC_PORT`, `BESS_PLANE_PROFILE`, `BESS_PLANE_LOG_FORMAT`.

Access control (control_plane/auth): every HTTP route but /health, /ready, /metrics and the
docs needs an API key or an HMAC signature, so the HTTP API may bind any address. EdgeLink has its
own: with `edgelink_tls: mtls` every agent shows a site certificate of the plane's CA
(`control_plane/pki.py`), so the gRPC port may face the network. It defaults to `none` so the
embedded demo (plane and agent on one box, loopback) runs without certificates; a plaintext
EdgeLink refuses a non-loopback `grpc_host` unless `allow_unauthenticated_remote` is set, and
that is refused in production.
Secrets (`HMAC_SECRET`, `API_KEY`) must be at least 32 characters and not the spec's demo
values outside the development profile.
"""

from __future__ import annotations

import ipaddress
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from .auth.models import Role
from .credit.models import CreditError, thresholds
from .market.models import UnknownZoneError, zone

ENV_PREFIX = "BESS_PLANE_"
MIN_SECRET_CHARS = 32
DEMO_SECRETS = frozenset({"demo", "phoenyra_demo_secret", "bess_telemetry_key"})
"""The spec's sample values: fine on a developer's laptop, refused anywhere else."""
HOW_TO_GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'


class SettingsError(ValueError):
    """The settings cannot be used; the message names every problem, one per line."""


class BillingParty(BaseModel):
    """An invoice issuer or recipient as printed (`billing_issuer`, `billing_recipients`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    address: list[str] = Field(default_factory=list, max_length=8)
    vat_id: str | None = Field(default=None, max_length=32)
    iban: str | None = Field(default=None, max_length=42)
    bic: str | None = Field(default=None, max_length=11)
    email: str | None = Field(default=None, max_length=200)


class PlaneSettings(BaseSettings):
    """Everything the plane process needs to start."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", frozen=True, populate_by_name=True
    )

    profile: Literal["development", "production"] = "development"
    data_dir: Path = Path("data/plane")
    sqlite_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("SQLITE_PATH", "sqlite_path"),
        description="SQLite database file; default <data_dir>/plane.sqlite3",
    )
    database_url: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "database_url"),
        description="PostgreSQL DSN (postgresql://user@host/db); wins over SQLite when set",
    )
    policy_path: Path | None = Field(
        default=None,
        validation_alias=AliasChoices("POLICY_PATH", "policy_path"),
        description="exchange pre-trade policy (YAML); unset = the built-in defaults",
    )
    exchange_expiry_interval_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="seconds between two sweeps that expire resting orders at gate closure "
        "(placing, cancelling and listing expire due orders anyway)",
    )
    sqlite_synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL",
        description="SQLite durability: FULL (an acknowledged trade survives a power loss) or "
        "NORMAL (survives a process crash; about twice the commit rate)",
    )
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=9000, ge=0, le=65535)
    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(default=50051, ge=0, le=65535)
    allow_unauthenticated_remote: bool = Field(
        default=False,
        description="let the EdgeLink gRPC server bind a non-loopback address without mTLS "
        "(development only)",
    )
    hmac_secret: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("HMAC_SECRET", "hmac_secret"),
        description="shared secret of HMAC-signed requests; unset = signing disabled",
    )
    hmac_secret_file: Path | None = Field(
        default=None, description="file holding the HMAC secret (instead of hmac_secret)"
    )
    hmac_role: Role = Field(default=Role.TRADER, description="role of HMAC-signed requests")
    api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("API_KEY", "api_key"),
        description="optional static key from the environment (bootstrap, read-mostly)",
    )
    api_key_role: Role = Field(default=Role.VIEWER, description="role of the static API_KEY")
    edgelink_tls: Literal["none", "mtls"] = Field(
        default="none",
        description="none: plaintext EdgeLink (loopback demo); mtls: TLS with a site "
        "certificate from the plane's CA required of every agent",
    )
    pki_dir: Path | None = Field(
        default=None, description="the CA and the EdgeLink server certificate; <data_dir>/pki"
    )
    grpc_tls_names: list[str] | None = Field(
        default=None,
        description="names the agents dial (DNS names or IPs) for the server certificate; "
        "default localhost, 127.0.0.1 and grpc_host",
    )
    server_cert_days: int = Field(default=397, ge=1, le=3650)
    site_cert_days: int = Field(default=397, ge=1, le=3650)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    heartbeat_interval_s: int = Field(default=10, ge=1, le=3600)
    shutdown_grace_s: float = Field(default=5.0, ge=0, le=300)
    market_zones: Annotated[list[str], NoDecode] = Field(
        default=["AT"],
        description="bidding zones the market feed fetches (codes such as AT, DE_LU, or EICs)",
    )
    market_sources: Annotated[list[str] | None, NoDecode] = Field(
        default=None,
        description="price sources the feed polls (entsoe, awattar); unset = entsoe when "
        "ENTSOE_TOKEN is set, else none (prices then come only from `bess-plane prices import`)",
    )
    market_source_priority: Annotated[list[str], NoDecode] = Field(
        default=["entsoe", "awattar", "file"],
        description="which source's price wins when several have the same interval",
    )
    entsoe_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("ENTSOE_TOKEN", "entsoe_token"),
        description="ENTSO-E Transparency Platform security token (never in a file in git)",
    )
    update_interval_s: int = Field(
        default=300,
        ge=10,
        le=86400,
        validation_alias=AliasChoices("UPDATE_INTERVAL", "update_interval_s"),
        description="seconds between two market-feed runs per source and zone",
    )
    # Credit (control_plane/credit): counterparty exposure, utilisation alerts, pre-trade check.
    credit_alert_thresholds_pct: Annotated[list[Decimal], NoDecode] = Field(
        default=[Decimal(75), Decimal(90)],
        description="utilisation (% of the limit) at which a counterparty alerts, once per "
        "crossing; a counterparty's own thresholds win",
    )
    credit_pfe_addon_pct: Decimal = Field(
        default=Decimal(10),
        ge=0,
        le=100,
        description="price-move add-on of the potential future exposure, in % of the notional "
        "of open orders and undelivered trades",
    )
    credit_require_counterparty: bool = Field(
        default=False,
        description="reject orders of counterparties without credit master data",
    )
    credit_refresh_interval_s: float = Field(
        default=5.0,
        ge=0.1,
        le=3600,
        description="seconds between two evaluations of every exposure (gauges, alerts)",
    )
    # Billing (control_plane/billing): who issues the invoices, VAT, payment terms, numbering,
    # and the recipients' addresses per counterparty id (a counterparty missing here is
    # invoiced under its id, and generation says so).
    billing_issuer: BillingParty = Field(
        default=BillingParty(name="Phoenyra BESS Trade"),
        description="the invoice issuer: name, address lines, vat_id, iban, bic, email",
    )
    billing_vat_rate_pct: Decimal = Field(
        default=Decimal(20),
        ge=0,
        le=100,
        decimal_places=3,
        description="VAT rate in % on every invoice (20: Austria; 0 with a reverse-charge note)",
    )
    billing_vat_note: str | None = Field(
        default=None,
        max_length=300,
        description="printed on every invoice, e.g. 'Reverse charge: the recipient owes the VAT'",
    )
    billing_payment_days: int = Field(
        default=14, ge=0, le=365, description="days from the invoice date to the due date"
    )
    billing_number_prefix: str = Field(
        default="PHO",
        pattern=r"^[A-Z0-9]{1,12}$",
        description="invoice numbers are <prefix>-<year>-<nnnnnn>, gapless per year",
    )
    billing_timezone: str = Field(
        default="Europe/Vienna",
        description="time zone of billing months, delivery days and invoice dates",
    )
    billing_recipients: dict[str, BillingParty] = Field(
        default_factory=dict,
        description="recipient per counterparty id: {ACME: {name, address, vat_id, ...}}",
    )
    agent_keepalive_time_s: float = Field(
        default=10.0,
        ge=1.0,
        description="shortest gRPC keepalive interval of the agents (theirs defaults to 30 s): "
        "the server permits pings that often, else it answers GOAWAY too_many_pings",
    )
    # -- grid (control_plane/grid) --------------------------------------------------------
    grid_site_areas: dict[str, str] = Field(
        default_factory=dict,
        description="area of each site, {site_id: area} (JSON in the environment); sites not "
        "named are in grid_default_area",
    )
    grid_default_area: str | None = Field(
        default=None,
        max_length=64,
        description="area of the sites not in grid_site_areas; unset = the first market zone, "
        "else 'default'",
    )
    grid_normal_band_hz: tuple[float, float] = Field(
        default=(49.8, 50.2), description="frequency outside it raises a warning"
    )
    grid_alarm_band_hz: tuple[float, float] = Field(
        default=(49.7, 50.3), description="frequency outside it raises an alarm"
    )
    grid_stale_after_s: float = Field(
        default=60.0, gt=0, le=86400, description="older frequency readings are not counted"
    )
    grid_tie_lines: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="borders whose physical flows are shown, e.g. AT>DE_LU,AT>CZ (needs "
        "ENTSOE_TOKEN)",
    )
    grid_refresh_s: int = Field(
        default=900, ge=60, le=86400, description="seconds load and flows are cached"
    )

    # -- risk (control_plane/risk): VaR limits, alerts, history ------------------------------
    risk_window_days: int = Field(
        default=250, ge=20, le=1000, description="days of price history behind VaR figures"
    )
    risk_limit_level: float = Field(
        default=0.99, ge=0.9, lt=1.0, description="VaR level the VaR limits are checked at"
    )
    risk_limit_horizon_days: int = Field(
        default=1, ge=1, le=30, description="VaR horizon of the limits and the metrics, days"
    )
    risk_alert_thresholds_pct: Annotated[list[float], NoDecode] = Field(
        default=[75.0, 90.0, 100.0],
        description="limit utilisations (%) whose upward crossing raises a risk.alert",
    )
    risk_history_ttl_s: float = Field(
        default=300.0, ge=0, le=86400, description="how long a zone's price history is cached"
    )
    risk_evaluate_interval_s: float = Field(
        default=60.0, ge=5, le=86400, description="seconds between two limit evaluations"
    )
    risk_backtest_days: int = Field(
        default=1830, ge=30, le=7300, description="days of stored prices the report back-tests"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env or secrets-dir magic: what configures the plane is the file and the env.
        return (init_settings, env_settings)

    @field_validator("grpc_tls_names", mode="before")
    @classmethod
    def _names_from_text(cls, value: Any) -> Any:
        # The environment may give a JSON list or, simpler, "plane.example.com,10.0.0.5".
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "market_zones",
        "market_sources",
        "market_source_priority",
        "credit_alert_thresholds_pct",
        mode="before",
    )
    @classmethod
    def _list_from_text(cls, value: Any) -> Any:
        # From the environment: a JSON list or simpler "AT,DE_LU".
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("risk_alert_thresholds_pct", mode="before")
    @classmethod
    def _thresholds_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):  # the environment: "75,90,100" or a JSON list
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [float(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator("risk_alert_thresholds_pct")
    @classmethod
    def _sane_thresholds(cls, value: list[float]) -> list[float]:
        if not value or any(not 0 < t <= 1000 for t in value):
            raise ValueError("risk_alert_thresholds_pct needs values in (0, 1000], e.g. 75,90,100")
        return sorted(set(value))

    @field_validator("market_zones")
    @classmethod
    def _known_zones(cls, value: list[str]) -> list[str]:
        codes = []
        for code in value:
            try:
                codes.append(zone(code).code)
            except UnknownZoneError as exc:
                raise ValueError(str(exc)) from None
        return list(dict.fromkeys(codes))

    @field_validator("market_sources", "market_source_priority")
    @classmethod
    def _source_names(cls, value: list[str] | None) -> list[str] | None:
        for name in value or ():
            if not _SOURCE_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a source name (lower-case letters, digits, _; e.g. entsoe)"
                )
        return value

    @field_validator("credit_alert_thresholds_pct")
    @classmethod
    def _credit_thresholds(cls, value: list[Decimal]) -> list[Decimal]:
        try:
            return list(thresholds(value, "credit_alert_thresholds_pct"))
        except CreditError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("billing_timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. Europe/Vienna)") from None
        return value

    @field_validator("grid_tie_lines", mode="before")
    @classmethod
    def _tie_lines_from_text(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("grid_tie_lines")
    @classmethod
    def _known_tie_lines(cls, value: list[str]) -> list[str]:
        lines = []
        for text in value:
            a, sep, b = text.partition(">")
            try:
                if not sep:
                    raise UnknownZoneError(text)
                lines.append(f"{zone(a).code}>{zone(b).code}")
            except UnknownZoneError:
                raise ValueError(
                    f"tie line {text!r}: write two bidding zones as FROM>TO, e.g. AT>DE_LU"
                ) from None
        return list(dict.fromkeys(lines))

    @field_validator("grid_normal_band_hz", "grid_alarm_band_hz")
    @classmethod
    def _band(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low < 50 < high:
            raise ValueError(f"a frequency band must be low < 50 < high (Hz), got {value}")
        return value

    @field_validator("sqlite_synchronous", mode="before")
    @classmethod
    def _upper_synchronous(cls, value: object) -> object:
        return value.strip().upper() if isinstance(value, str) else value

    @property
    def grid_area_default(self) -> str:
        """The area of sites not in `grid_site_areas`."""
        if self.grid_default_area:
            return self.grid_default_area
        return self.market_zones[0] if self.market_zones else "default"

    @model_validator(mode="after")
    def _refuse_contradictions(self) -> Self:
        plaintext_remote = self.edgelink_tls != "mtls" and not _is_loopback(self.grpc_host)
        if plaintext_remote and not self.allow_unauthenticated_remote:
            raise ValueError(
                f"grpc_host {self.grpc_host!r} is not a loopback address, but EdgeLink runs "
                "without TLS: set edgelink_tls to mtls (agents then show a site certificate, see "
                "`bess-plane site-cert`), or bind it to 127.0.0.1, or set "
                "allow_unauthenticated_remote in a development setup"
            )
        if self.allow_unauthenticated_remote and self.profile == "production":
            raise ValueError(
                "allow_unauthenticated_remote is refused in the production profile: use "
                "edgelink_tls: mtls for a remote EdgeLink"
            )
        (n_low, n_high), (a_low, a_high) = self.grid_normal_band_hz, self.grid_alarm_band_hz
        if not (a_low <= n_low and n_high <= a_high):
            raise ValueError(
                f"grid_alarm_band_hz {self.grid_alarm_band_hz} must contain grid_normal_band_hz "
                f"{self.grid_normal_band_hz} (e.g. 49.7-50.3 around 49.8-50.2)"
            )
        if self.hmac_secret is not None and self.hmac_secret_file is not None:
            raise ValueError("set hmac_secret (HMAC_SECRET) or hmac_secret_file, not both")
        hmac_key = self.hmac_key()
        if hmac_key is not None:
            _check_secret("HMAC_SECRET", hmac_key.decode(errors="replace"), self.profile)
        if self.api_key is not None:
            _check_secret("API_KEY", self.api_key.get_secret_value(), self.profile)
        for name in self.grpc_tls_names or ():
            if not (_is_ip(name) or _DNS_NAME.fullmatch(name)):
                raise ValueError(
                    f"grpc_tls_names: {name!r} is not a DNS name or IP address "
                    "(e.g. plane.example.com or 10.0.0.5)"
                )
        if self.grpc_tls_names is not None and not self.grpc_tls_names:
            raise ValueError("grpc_tls_names is empty: name at least one, or leave it unset")
        if self.database_url is not None:
            dsn = self.database_url.get_secret_value()
            if not dsn.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
                raise ValueError(
                    "DATABASE_URL must be a PostgreSQL DSN (postgresql://user@host:5432/db)"
                )
        return self

    def hmac_key(self) -> bytes | None:
        """The HMAC secret from the setting or its file (trailing newline stripped)."""
        if self.hmac_secret is not None:
            return self.hmac_secret.get_secret_value().encode()
        if self.hmac_secret_file is None:
            return None
        try:
            return self.hmac_secret_file.read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise ValueError(
                f"hmac_secret_file {self.hmac_secret_file}: {exc.strerror or exc}"
            ) from None

    @property
    def sqlite_file(self) -> Path:
        return self.sqlite_path or self.data_dir / "plane.sqlite3"

    @property
    def pki_directory(self) -> Path:
        return self.pki_dir or self.data_dir / "pki"

    @property
    def tls_names(self) -> list[str]:
        """The EdgeLink server certificate's names (an any-address bind is no name)."""
        if self.grpc_tls_names:
            return list(dict.fromkeys(self.grpc_tls_names))
        names = ["localhost", "127.0.0.1"]
        if self.grpc_host not in ("0.0.0.0", "::", "[::]", ""):  # noqa: S104 - compared only
            names.append(self.grpc_host.strip("[]"))
        return list(dict.fromkeys(names))

    @property
    def store_description(self) -> str:
        """Where the data lives, without credentials (for logs and /ready)."""
        if self.database_url is None:
            return f"sqlite:{self.sqlite_file}"
        return "postgresql:" + _without_password(self.database_url.get_secret_value())


def load_settings(config_file: Path | None = None) -> PlaneSettings:
    """Settings from the file (if any) overridden by the environment; SettingsError if bad."""
    file_values = _read_file(config_file) if config_file is not None else {}
    env_values = EnvSettingsSource(PlaneSettings)()
    try:
        return PlaneSettings.model_validate({**file_values, **_by_field(env_values)})
    except ValidationError as exc:
        where = f"{config_file} + environment" if config_file else "environment"
        problems = "\n".join(
            f"  - {'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SettingsError(f"invalid plane settings ({where}):\n{problems}") from None


def _by_field(values: dict[str, Any]) -> dict[str, Any]:
    """Env values keyed by field name, so they replace file values of the same field."""
    aliases = {
        "SQLITE_PATH": "sqlite_path",
        "DATABASE_URL": "database_url",
        "POLICY_PATH": "policy_path",
        "HMAC_SECRET": "hmac_secret",
        "API_KEY": "api_key",
        "ENTSOE_TOKEN": "entsoe_token",
        "UPDATE_INTERVAL": "update_interval_s",
    }
    return {aliases.get(key, aliases.get(key.upper(), key)): v for key, v in values.items()}


def _read_file(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"settings file {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"settings file {path} is not valid YAML: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SettingsError(f"settings file {path} must hold a mapping of setting: value")
    return {str(k): v for k, v in raw.items()}


def _check_secret(name: str, secret: str, profile: str) -> None:
    if not secret.strip():
        raise ValueError(f"{name} is empty: unset it, or generate one with {HOW_TO_GENERATE}")
    if profile == "development":
        return
    if secret in DEMO_SECRETS:
        raise ValueError(
            f"{name} is the spec's demo value, refused in the {profile} profile: "
            f"generate one with {HOW_TO_GENERATE}"
        )
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(
            f"{name} has {len(secret)} characters, at least {MIN_SECRET_CHARS} are needed in "
            f"the {profile} profile: generate one with {HOW_TO_GENERATE}"
        )


_SOURCE_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
_DNS_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _without_password(dsn: str) -> str:
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    userinfo, _, hostpart = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}@{hostpart}"
