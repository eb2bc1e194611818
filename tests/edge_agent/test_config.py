"""Loading the site file: environment overrides, precedence, and errors a technician can act on.

Every test passes ``env`` explicitly, so the developer's own BESS_* variables never leak in.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import ENV_VARS, ConfigError, SiteConfig, load_config, parse_config
from edge_agent.readings import Quantity

BASE = """\
site_id: site-1
battery: {capacity_kwh: 200, max_charge_kw: 100, max_discharge_kw: 100}
sources:
  modbus: {host: 192.168.1.100, preset: generic}
  mqtt: {username: agent}
"""
KEY = "k" * 24  # a REST API key long enough to be accepted


def problems(text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env or {})
    return info.value.problems


def one_problem(text: str, env: dict[str, str] | None = None) -> str:
    found = problems(text, env)
    assert len(found) == 1, found
    return found[0]


# -- environment overrides ------------------------------------------------------------------

Getter = Callable[[SiteConfig], Any]


def _modbus(cfg: SiteConfig) -> Any:
    assert cfg.sources.modbus is not None
    return cfg.sources.modbus


def _uplink_target(cfg: SiteConfig) -> Any:
    return cfg.uplink.target if cfg.uplink is not None else None


def _tls(cfg: SiteConfig) -> Any:
    assert cfg.uplink is not None
    return cfg.uplink.tls


PLANE = {"BESS_UPLINK_TARGET": "plane.example:50051"}
TLS_ON = {**PLANE, "BESS_UPLINK_TLS_ENABLED": "true"}
MTLS = {
    **TLS_ON,
    "BESS_UPLINK_TLS_CA_FILE": "/tls/ca.crt",
    "BESS_UPLINK_TLS_CERT_FILE": "/tls/site.crt",
    "BESS_UPLINK_TLS_KEY_FILE": "/tls/site.key",
}


def _secret(value: Any) -> Any:
    return value.get_secret_value() if value is not None else None


# (variable, text, getter, expected, other variables the value needs)
ENV_CASES: list[tuple[str, str, Getter, Any, dict[str, str]]] = [
    ("BESS_SITE_ID", "site-9", lambda c: c.site_id, "site-9", {}),
    ("BESS_MODBUS_HOST", "10.0.0.9", lambda c: _modbus(c).host, "10.0.0.9", {}),
    ("BESS_MODBUS_PORT", "1502", lambda c: _modbus(c).port, 1502, {}),
    ("BESS_MODBUS_UNIT_ID", "3", lambda c: _modbus(c).unit_id, 3, {}),
    ("BESS_MODBUS_PRESET", "sma", lambda c: _modbus(c).preset, "sma", {}),
    ("BESS_MODBUS_SOC_REGISTER", "100", lambda c: _modbus(c).soc_register, 100, {}),
    ("BESS_MODBUS_POWER_REGISTER", "101", lambda c: _modbus(c).power_register, 101, {}),
    ("BESS_MODBUS_TEMP_REGISTER", "102", lambda c: _modbus(c).temp_register, 102, {}),
    ("BESS_MQTT_ENABLED", "true", lambda c: c.sources.mqtt.enabled, True, {}),
    ("BESS_MQTT_BROKER", "broker.local", lambda c: c.sources.mqtt.host, "broker.local", {}),
    ("BESS_MQTT_PORT", "8883", lambda c: c.sources.mqtt.port, 8883, {}),
    ("BESS_MQTT_USERNAME", "bess", lambda c: c.sources.mqtt.username, "bess", {}),
    ("BESS_MQTT_PASSWORD", "pw-1", lambda c: _secret(c.sources.mqtt.password), "pw-1", {}),
    (
        "BESS_MQTT_TOPIC_SOC",
        "site/soc",
        lambda c: c.sources.mqtt.topics[Quantity.SOC_PCT].topic,
        "site/soc",
        {},
    ),
    (
        "BESS_MQTT_TOPIC_POWER",
        "site/p",
        lambda c: c.sources.mqtt.topics[Quantity.ACTIVE_POWER_KW].topic,
        "site/p",
        {},
    ),
    (
        "BESS_MQTT_TOPIC_TEMP",
        "site/t",
        lambda c: c.sources.mqtt.topics[Quantity.TEMPERATURE_C].topic,
        "site/t",
        {},
    ),
    ("BESS_REST_ENABLED", "yes", lambda c: c.sources.rest.enabled, True, {"BESS_API_KEY": KEY}),
    ("BESS_REST_PORT", "9600", lambda c: c.sources.rest.port, 9600, {}),
    ("BESS_API_KEY", KEY, lambda c: _secret(c.sources.rest.api_key), KEY, {}),
    ("BESS_UPDATE_INTERVAL", "5", lambda c: c.telemetry.interval_s, 5.0, {}),
    ("BESS_DATA_DIR", "/srv/bess", lambda c: c.storage.data_dir, Path("/srv/bess"), {}),
    ("BESS_UPLINK_TARGET", "plane.example:50051", _uplink_target, "plane.example:50051", {}),
    ("BESS_UPLINK_TLS_ENABLED", "1", lambda c: _tls(c).enabled, True, PLANE),
    ("BESS_UPLINK_TLS_CA_FILE", "/e/ca.crt", lambda c: _tls(c).ca_file, Path("/e/ca.crt"), MTLS),
    ("BESS_UPLINK_TLS_CERT_FILE", "/e/s.crt", lambda c: _tls(c).cert_file, Path("/e/s.crt"), MTLS),
    ("BESS_UPLINK_TLS_KEY_FILE", "/e/s.key", lambda c: _tls(c).key_file, Path("/e/s.key"), MTLS),
    ("BESS_UPLINK_TLS_SERVER_NAME", "p.test", lambda c: _tls(c).server_name, "p.test", TLS_ON),
    ("BESS_METRICS_PORT", "9200", lambda c: c.metrics.port, 9200, {}),
    ("BESS_LOG_LEVEL", "debug", lambda c: c.logging.level, "DEBUG", {}),
]


def test_every_env_var_is_covered() -> None:
    assert {case[0] for case in ENV_CASES} == {v.name for v in ENV_VARS}


@pytest.mark.parametrize(
    ("name", "text", "get", "expected", "extra"), ENV_CASES, ids=[c[0] for c in ENV_CASES]
)
def test_env_var_overrides_its_field(
    name: str, text: str, get: Getter, expected: Any, extra: dict[str, str]
) -> None:
    before = parse_config(BASE, env=extra)
    assert get(before) != expected  # the variable really changes something
    assert get(parse_config(BASE, env={**extra, name: text})) == expected


def test_precedence_default_file_env() -> None:
    assert parse_config(BASE, env={}).telemetry.interval_s == 1.0  # built-in default
    with_file = BASE + "telemetry: {interval_s: 2}\n"
    assert parse_config(with_file, env={}).telemetry.interval_s == 2.0  # the file wins
    env = {"BESS_UPDATE_INTERVAL": "0.5"}
    assert parse_config(with_file, env=env).telemetry.interval_s == 0.5  # the environment wins


def test_env_fills_a_section_the_file_lacks() -> None:
    text = "site_id: s\nbattery: {capacity_kwh: 10, max_charge_kw: 5, max_discharge_kw: 5}\n"
    cfg = parse_config(text, env={"BESS_MODBUS_HOST": "10.1.1.1", "BESS_MODBUS_UNIT_ID": "3"})
    assert cfg.sources.modbus is not None
    assert (cfg.sources.modbus.host, cfg.sources.modbus.unit_id) == ("10.1.1.1", 3)
    cfg = parse_config(text, env={"BESS_UPLINK_TARGET": "127.0.0.1:50051"})
    assert cfg.uplink is not None and cfg.uplink.target == "127.0.0.1:50051"


def test_a_site_certificate_needs_all_three_tls_files() -> None:
    env = {**MTLS}
    del env["BESS_UPLINK_TLS_CA_FILE"]
    found = one_problem(BASE, env)
    assert "go together" in found and "missing tls.ca_file" in found
    assert "bess-plane site-cert" in found


def test_modbus_disabled_by_env_ignores_its_other_variables() -> None:
    env = {"BESS_MODBUS_ENABLED": "false", "BESS_MODBUS_PORT": "not-a-port"}
    assert parse_config(BASE, env=env).sources.modbus is None
    assert parse_config(BASE, env={"BESS_MODBUS_ENABLED": "true"}).sources.modbus is not None


def test_rest_enabled_needs_an_api_key() -> None:
    problem = one_problem(BASE, {"BESS_REST_ENABLED": "true"})
    assert "BESS_API_KEY" in problem and "sources.rest" in problem
    cfg = parse_config(BASE, env={"BESS_REST_ENABLED": "1", "BESS_API_KEY": KEY})
    assert cfg.sources.rest.enabled


def test_load_config_reads_the_process_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "site.yaml"
    path.write_text(BASE)
    monkeypatch.setenv("BESS_MODBUS_HOST", "10.9.9.9")
    modbus = load_config(path).sources.modbus
    assert modbus is not None and modbus.host == "10.9.9.9"
    modbus = load_config(path, env={}).sources.modbus
    assert modbus is not None and modbus.host == "192.168.1.100"


# -- bad values -----------------------------------------------------------------------------


def test_bad_env_value_names_variable_and_value() -> None:
    problem = one_problem(BASE, {"BESS_MODBUS_PORT": "abc"})
    assert "BESS_MODBUS_PORT" in problem and "'abc'" in problem and "int" in problem
    problem = one_problem(BASE, {"BESS_MQTT_ENABLED": "maybe"})
    assert "BESS_MQTT_ENABLED" in problem and "'maybe'" in problem


def test_out_of_range_env_value_names_field_variable_value_and_limit() -> None:
    problem = one_problem(BASE, {"BESS_MODBUS_PORT": "70000"})
    assert "sources.modbus.port" in problem
    assert "BESS_MODBUS_PORT" in problem
    assert "70000" in problem and "65535" in problem
    problem = one_problem(BASE, {"BESS_LOG_LEVEL": "loud"})
    assert "logging.level" in problem and "'LOUD'" in problem
    assert "'DEBUG', 'INFO', 'WARNING' or 'ERROR'" in problem


@pytest.mark.parametrize(
    ("snippet", "field", "value", "allowed"),
    [
        ("limits: {min_soc_pct: 150}", "limits.min_soc_pct", "150", "less than or equal to 100"),
        ("logging: {format: xml}", "logging.format", "'xml'", "'text' or 'json'"),
        ("telemetry: {interval_s: -1}", "telemetry.interval_s", "-1", "greater than 0"),
        ("site_id: 'has space'", "site_id", "'has space'", "pattern"),
    ],
)
def test_bad_file_value_names_field_value_and_allowed(
    snippet: str, field: str, value: str, allowed: str
) -> None:
    text = BASE.replace("site_id: site-1\n", "") if snippet.startswith("site_id") else BASE
    problem = one_problem(text + snippet + "\n")
    assert problem.startswith(field), problem
    assert value in problem and allowed in problem


def test_missing_required_fields_are_all_listed() -> None:
    found = problems("site_id: s\n")
    assert found == ["battery: required but missing"]
    found = problems("battery: {capacity_kwh: 1}\n")
    assert "site_id: required but missing" in found
    assert "battery.max_charge_kw: required but missing" in found


# -- contradictions -------------------------------------------------------------------------


def test_contradictions_are_refused_together() -> None:
    text = BASE + (
        "limits: {min_soc_pct: 95, max_soc_pct: 90, charge_limit_kw: 120, "
        "discharge_limit_kw: 150, temp_warning_c: 60, temp_stop_c: 55}\n"
    )
    found = problems(text)
    assert "limits.min_soc_pct (95) must be below limits.max_soc_pct (90)" in found
    assert any("limits.charge_limit_kw (120)" in p and "max_charge_kw (100)" in p for p in found)
    assert any(
        "limits.discharge_limit_kw (150)" in p and "max_discharge_kw (100)" in p for p in found
    )
    assert "limits.temp_warning_c (60) must be below limits.temp_stop_c (55)" in found


def test_equal_soc_limits_are_a_contradiction() -> None:
    problem = one_problem(BASE + "limits: {min_soc_pct: 50, max_soc_pct: 50}\n")
    assert "min_soc_pct (50) must be below" in problem


def test_refresh_slower_than_the_devices_revert_timeout_is_refused() -> None:
    text = BASE.replace("preset: generic}", "preset: generic, revert_timeout_s: 5}")
    text += "executor: {refresh_interval_s: 10}\n"
    found = problems(text)
    assert any(
        "sources.modbus.revert_timeout_s" in p and "refresh_interval_s (10 s)" in p for p in found
    ), found
    # Refreshing well within the revert timeout is fine.
    ok = text.replace("refresh_interval_s: 10", "refresh_interval_s: 1")
    modbus = parse_config(ok, env={}).sources.modbus
    assert modbus is not None and modbus.revert_timeout_s == 5


def test_fallback_beyond_the_rating_is_refused() -> None:
    problem = one_problem(BASE + "executor: {fallback_kw: 500}\n")
    assert "executor.fallback_kw (500)" in problem


# -- file problems --------------------------------------------------------------------------


def test_malformed_yaml_reports_line_and_column() -> None:
    text = BASE + "limits:\n  min_soc_pct: 10\n   max_soc_pct: 90\n"
    problem = one_problem(text)
    assert problem.startswith("not valid YAML at line 8, column"), problem
    problem = one_problem(BASE + "limits:\n\tmin_soc_pct: 1\n")
    assert "line 7, column 1" in problem and "'\\t'" in problem


def test_unknown_fields_are_named() -> None:
    found = problems(BASE + "batery: {capacity_kwh: 1}\nlimits: {min_soc: 3}\n")
    assert any(p.startswith("batery: unknown field") for p in found)
    assert any(p.startswith("limits.min_soc: unknown field") for p in found)
    assert all("check the spelling" in p for p in found)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    assert "must be a YAML mapping" in one_problem("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml", env={})
    assert info.value.source.endswith("nope.yaml")
    assert "file not found" in info.value.problems[0] and "bess-edge init" in info.value.problems[0]


def test_empty_file_asks_for_the_required_fields() -> None:
    found = problems("")
    assert "site_id: required but missing" in found and "battery: required but missing" in found


# -- secrets --------------------------------------------------------------------------------

SECRET = "hunter2-Very-Secret-Value"  # noqa: S105 - a test value that must never be echoed


@pytest.mark.parametrize(
    ("text", "env"),
    [
        # a password without a username (nested model check)
        (BASE.replace("  mqtt: {username: agent}\n", ""), {"BESS_MQTT_PASSWORD": SECRET}),
        # a wrong type in the file: the value is not echoed for a secret field
        (BASE.replace("{username: agent}", "{username: agent, password: [" + SECRET + "]}"), {}),
        (BASE + f"uplink: {{target: 'plane:1', token_file: 3, token_env: {SECRET}=x}}\n", {}),
        # a REST key that is too short, and the key from the spec
        (BASE, {"BESS_REST_ENABLED": "true", "BESS_API_KEY": SECRET[:10]}),
        (BASE, {"BESS_REST_ENABLED": "true", "BESS_API_KEY": "bess_telemetry_key"}),
        # a bad value elsewhere while secrets are set
        (
            BASE + "limits: {min_soc_pct: 99}\n",
            {"BESS_API_KEY": SECRET, "BESS_MQTT_PASSWORD": SECRET},
        ),
    ],
)
def test_secrets_never_appear_in_errors(text: str, env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, env=env)
    message = str(info.value)
    for secret in (SECRET, SECRET[:10], "bess_telemetry_key"):
        assert secret not in message, message


def test_scalar_secret_of_the_wrong_type_is_not_echoed() -> None:
    text = BASE.replace("{username: agent}", "{username: agent, password: 987654321}")
    problem = one_problem(text)
    assert problem.startswith("sources.mqtt.password:") and "987654321" not in problem


def test_secret_str_hides_the_value_in_repr() -> None:
    cfg = parse_config(BASE, env={"BESS_MQTT_PASSWORD": SECRET, "BESS_API_KEY": SECRET})
    assert SECRET not in repr(cfg) and SECRET not in str(cfg.model_dump())
