"""The committed EdgeLink stubs are exactly what protos/generate.py writes today."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOS = REPO / "protos"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _generated(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted((root / "bess").rglob("*"))
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(PROTOS / "generate.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"protos/generate.py failed:\n{result.stdout}{result.stderr}"

    fresh = _generated(tmp_path)
    committed = _generated(PROTOS)
    assert fresh, "protos/generate.py wrote no stubs"

    missing = sorted(fresh.keys() - committed.keys())
    stale = sorted(committed.keys() - fresh.keys())
    differ = sorted(
        name for name in fresh.keys() & committed.keys() if fresh[name] != committed[name]
    )
    problems = [f"protos/{name} is missing" for name in missing]
    problems += [f"protos/{name} has no .proto any more" for name in stale]
    problems += [f"protos/{name} differs from its .proto" for name in differ]
    assert not problems, "generated stubs are stale; run `make protos`:\n" + "\n".join(problems)
