"""Generate the Python stubs (messages, gRPC, and their .pyi) from protos/bess/**/*.proto.

Usage: ``python protos/generate.py [--out DIR]`` (default: beside the .proto files).
This is the only way stubs are made; tests/protos/test_contract_fresh.py fails when the
committed ones differ from what this script writes.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

PROTO_ROOT = Path(__file__).resolve().parent
# What protoc and the mypy-protobuf plugins write for each .proto; anything matching these
# under the output's bess/ tree is generated, so stale stubs of a removed .proto are deleted.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")


def proto_files(root: Path = PROTO_ROOT) -> list[str]:
    """Return the .proto files under root/bess, relative to root, in a stable order."""
    return sorted(p.relative_to(root).as_posix() for p in (root / "bess").rglob("*.proto"))


def generated_files(out: Path) -> list[Path]:
    """Return the generated stub files under out/bess, relative to out, in a stable order."""
    package_dir = out / "bess"
    if not package_dir.is_dir():
        return []
    return sorted(
        p.relative_to(out)
        for p in package_dir.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    )


def _plugin(name: str) -> str:
    """Find a protoc plugin next to this interpreter (the venv's bin/), else on PATH."""
    # Not resolved: a venv's python is a symlink to the base interpreter, and the plugins
    # live beside the link, not beside its target.
    bin_dir = Path(sys.executable).parent
    for candidate in (bin_dir / name, bin_dir / f"{name}.exe"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH (dev extra)")
    return found


def generate(out: Path, root: Path = PROTO_ROOT) -> list[Path]:
    """Write stubs for every .proto under root into out; return the generated files."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in generated_files(out):
        (out / stale).unlink()
    well_known = resources.files("grpc_tools").joinpath("_proto")
    args = [
        "grpc_tools.protoc",
        f"--proto_path={root}",
        f"--proto_path={well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        # Paths relative to --proto_path, so the "source:" lines in the stubs do not depend on
        # where the repository or the output directory is.
        *proto_files(root),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")
    return generated_files(out)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and generate."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=PROTO_ROOT,
        help="output directory (default: %(default)s, beside the .proto files)",
    )
    args = parser.parse_args(argv)
    out: Path = args.out.resolve()
    written = generate(out)
    print(f"generated {len(written)} files in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
