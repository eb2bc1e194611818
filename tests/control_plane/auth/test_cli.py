"""`bess-plane keys ...` on the configured store: the key is printed once, on stdout only."""

from __future__ import annotations

from pathlib import Path

import pytest

from control_plane.cli import main


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "plane.yaml"
    path.write_text(f"sqlite_path: {tmp_path / 'plane.sqlite3'}\n")
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_create_list_rotate_revoke(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(
        capsys, "keys", "create", "--name", "ops", "--role", "admin", "--config", str(config)
    )
    assert code == 0, err
    token = out.strip()
    assert token.startswith("bess_") and "\n" not in token
    key_id = token.split("_")[1]
    assert f"created key {key_id} ('ops', role admin)" in err
    assert token not in err

    code, out, err = _run(capsys, "keys", "list", "--config", str(config))
    assert code == 0
    assert f"bess_{key_id}_…" in out and "admin" in out and "active" in out
    assert token.split("_", 2)[2] not in out

    code, out, err = _run(
        capsys, "keys", "rotate", key_id, "--grace-hours", "2", "--config", str(config)
    )
    assert code == 0, err
    new_id = out.strip().split("_")[1]
    assert new_id != key_id and f"rotated {key_id} to {new_id}" in err
    listing = _run(capsys, "keys", "list", "--config", str(config))[1]
    assert "expiring" in listing  # the old key, during its grace period

    assert _run(capsys, "keys", "revoke", key_id, "--config", str(config))[0] == 0
    code, _, err = _run(capsys, "keys", "revoke", key_id, "--config", str(config))
    assert code == 1 and "revoked already" in err
    code, _, err = _run(capsys, "keys", "revoke", "nope", "--config", str(config))
    assert code == 1 and "no API key with id 'nope'" in err


def test_bad_arguments_are_refused(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["keys", "create", "--name", "x", "--role", "root", "--config", str(config)])
    assert "invalid choice: 'root'" in capsys.readouterr().err
    code, out, err = _run(
        capsys,
        "keys",
        "create",
        "--name",
        "x",
        "--role",
        "viewer",
        "--expires-in",
        "0",
        "--config",
        str(config),
    )
    assert (code, out) == (1, "")
    assert "expiry must be more than 0" in err
