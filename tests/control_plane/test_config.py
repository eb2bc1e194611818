"""PlaneSettings: precedence (defaults < file < environment) and refused combinations."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.cli import main
from control_plane.config import PlaneSettings, SettingsError, load_settings


def test_defaults_bind_loopback_on_the_spec_ports() -> None:
    s = PlaneSettings()
    assert (s.http_host, s.http_port, s.grpc_host, s.grpc_port) == (
        "127.0.0.1",
        9000,
        "127.0.0.1",
        50051,
    )
    assert s.store_description.startswith("sqlite:")


def test_environment_wins_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "plane.yaml"
    path.write_text("http_port: 9100\ngrpc_port: 50100\nsqlite_path: /from/file.db\n")
    monkeypatch.setenv("BESS_PLANE_GRPC_PORT", "50200")
    monkeypatch.setenv("SQLITE_PATH", str(tmp_path / "env.db"))
    s = load_settings(path)
    assert (s.http_port, s.grpc_port, s.sqlite_file) == (9100, 50200, tmp_path / "env.db")


def test_database_url_wins_and_is_never_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://bess:s3cret@db.example:5432/bess")
    s = load_settings()
    assert s.store_description == "postgresql:postgresql://bess@db.example:5432/bess"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"grpc_host": "0.0.0.0"}, "EdgeLink runs without TLS"),  # noqa: S104
        (
            {
                "grpc_host": "10.0.0.1",
                "allow_unauthenticated_remote": True,
                "profile": "production",
            },
            "refused in the production profile",
        ),
        ({"database_url": "mysql://x"}, "must be a PostgreSQL DSN"),
        ({"http_port": 70000}, "less than or equal to 65535"),
        ({"profile": "staging"}, "'development' or 'production'"),
    ],
)
def test_refused(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PlaneSettings(**values)  # type: ignore[arg-type]


def test_bad_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "plane.yaml"
    path.write_text("http_port: [1\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(path)
    path.write_text("http_prot: 1\n")
    with pytest.raises(SettingsError, match="http_prot: Extra inputs are not permitted"):
        load_settings(path)


def test_cli_check_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "plane.yaml"
    path.write_text("http_port: 9100\n")
    assert main(["check-config", "--config", str(path)]) == 0
    assert '"http_port": 9100' in capsys.readouterr().out
    path.write_text("grpc_host: 0.0.0.0\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "EdgeLink runs without TLS" in capsys.readouterr().err


def test_policy_path_from_the_environment_is_validated_by_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert PlaneSettings().policy_path is None
    policy = tmp_path / "policy.yaml"
    policy.write_text("soc:\n  min_pct: 20\n")
    config = tmp_path / "plane.yaml"
    config.write_text(f"policy_path: {tmp_path / 'from-file.yaml'}\n")
    monkeypatch.setenv("POLICY_PATH", str(policy))
    assert load_settings(config).policy_path == policy  # the environment wins
    assert main(["check-config"]) == 0
    assert '"min_pct": 20.0' in capsys.readouterr().out
    policy.write_text("soc:\n  min_pct: 95\n  max_pct: 90\nthrottle:\n  burst: 3\n")
    assert main(["check-config"]) == 2
    err = capsys.readouterr().err
    assert f"policy file {policy} is invalid" in err
    assert "soc: min_pct 95.0 must be below max_pct 90.0" in err
    assert "throttle.burst: unknown key" in err
    monkeypatch.setenv("POLICY_PATH", str(tmp_path / "missing.yaml"))
    assert main(["serve"]) == 2  # stops before serving
    assert "missing.yaml: No such file or directory" in capsys.readouterr().err


def test_http_may_bind_any_address_now_that_it_has_access_control() -> None:
    assert PlaneSettings(http_host="0.0.0.0").http_host == "0.0.0.0"  # noqa: S104


STRONG = "x" * 32


@pytest.mark.parametrize("name", ["HMAC_SECRET", "API_KEY"])
@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("demo", "demo value, refused in the production profile"),
        ("phoenyra_demo_secret", "demo value"),
        ("short-but-not-a-demo", "20 characters, at least 32"),
        ("   ", "is empty"),
    ],
)
def test_weak_secrets_are_refused_outside_development(
    monkeypatch: pytest.MonkeyPatch, name: str, secret: str, message: str
) -> None:
    monkeypatch.setenv(name, secret)
    monkeypatch.setenv("BESS_PLANE_PROFILE", "production")
    with pytest.raises(SettingsError, match=message) as caught:
        load_settings()
    assert "secrets.token_urlsafe(32)" in str(caught.value)
    assert len(secret) < 5 or secret not in str(caught.value), "the secret is not echoed"


def test_demo_secrets_are_fine_in_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HMAC_SECRET", "phoenyra_demo_secret")
    monkeypatch.setenv("API_KEY", "demo")
    s = load_settings()
    assert s.hmac_key() == b"phoenyra_demo_secret"
    assert s.api_key is not None and "demo" not in repr(s)


def test_hmac_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "hmac"
    secret_file.write_text(STRONG + "\n")
    s = PlaneSettings(profile="production", hmac_secret_file=secret_file)
    assert s.hmac_key() == STRONG.encode()
    with pytest.raises(ValueError, match="not both"):
        PlaneSettings(hmac_secret_file=secret_file, hmac_secret=STRONG)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"hmac_secret_file .*No such file"):
        PlaneSettings(hmac_secret_file=tmp_path / "missing")
    secret_file.write_text("demo\n")
    with pytest.raises(ValueError, match="demo value"):
        PlaneSettings(profile="production", hmac_secret_file=secret_file)


def test_sqlite_synchronous_defaults_to_full_env_may_choose_normal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PlaneSettings().sqlite_synchronous == "FULL"
    monkeypatch.setenv("BESS_PLANE_SQLITE_SYNCHRONOUS", "normal")
    assert load_settings().sqlite_synchronous == "NORMAL"
    monkeypatch.setenv("BESS_PLANE_SQLITE_SYNCHRONOUS", "OFF")
    with pytest.raises(SettingsError, match=r"sqlite_synchronous: Input should be 'FULL' or"):
        load_settings()
