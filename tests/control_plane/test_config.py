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
        ({"http_host": "0.0.0.0"}, "no authentication yet"),  # noqa: S104
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
    path.write_text("http_host: 0.0.0.0\n")
    assert main(["check-config", "--config", str(path)]) == 2
    assert "no authentication yet" in capsys.readouterr().err


def test_sqlite_synchronous_defaults_to_full_env_may_choose_normal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert PlaneSettings().sqlite_synchronous == "FULL"
    monkeypatch.setenv("BESS_PLANE_SQLITE_SYNCHRONOUS", "normal")
    assert load_settings().sqlite_synchronous == "NORMAL"
    monkeypatch.setenv("BESS_PLANE_SQLITE_SYNCHRONOUS", "OFF")
    with pytest.raises(SettingsError, match=r"sqlite_synchronous: Input should be 'FULL' or"):
        load_settings()
