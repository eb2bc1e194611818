"""The project's own rules about packaging, checked against the installed metadata."""

from __future__ import annotations

import importlib
import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# DESIGN.md decision 1: the agent beside the battery stays light.
NOT_ON_THE_EDGE = {"fastapi", "starlette", "uvicorn", "pandas", "duckdb", "reportlab", "numpy"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> dict[str, list[str]]:
    """Every distribution the requirements pull in, with the chain that pulls it."""
    seen: dict[str, list[str]] = {}
    todo = [(Requirement(r), [Requirement(r).name]) for r in requirements]
    while todo:
        req, chain = todo.pop()
        name = _norm(req.name)
        if name in seen:
            continue
        seen[name] = chain
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            continue  # not installed here: nothing further to follow
        for raw in dist.requires or []:
            sub = Requirement(raw)
            wanted = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in wanted):
                todo.append((sub, [*chain, sub.name]))
    return seen


def test_edge_install_pulls_no_plane_dependencies() -> None:
    project = PYPROJECT["project"]
    pulled = _closure(project["dependencies"] + project["optional-dependencies"]["edge"])
    offenders = {n: " -> ".join(c) for n, c in pulled.items() if n in NOT_ON_THE_EDGE}
    assert not offenders, f"the [edge] install pulls plane-only packages: {offenders}"


def test_plane_extra_really_holds_the_heavy_packages() -> None:
    # Guards the test above from passing vacuously (e.g. if it stopped resolving anything).
    project = PYPROJECT["project"]
    pulled = _closure(project["optional-dependencies"]["plane"])
    assert {"fastapi", "pandas", "duckdb", "reportlab"} <= set(pulled)


def test_protocol_libraries_are_pinned_exactly() -> None:
    project = PYPROJECT["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["edge"]]
    pins = {_norm(r.name): str(r.specifier) for r in reqs}
    assert pins["pymodbus"].startswith("=="), "pin pymodbus exactly (LIBRARY-NOTES.md)"
    assert pins["grpcio"].startswith("=="), "pin grpcio exactly (LIBRARY-NOTES.md)"


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_resolve(script: str) -> None:
    module, _, attr = PYPROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_every_top_level_folder_says_what_lives_there() -> None:
    # The folders the repository holds (not what a run left behind, e.g. var/ or .venv/).
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    names = {line.split("/", 1)[0] for line in listed if "/" in line}
    folders = [ROOT / n for n in sorted(names) if not n.startswith(".")]
    missing = [p.name for p in folders if not (p / "README.md").is_file()]
    assert not missing, f"folders without a README.md: {missing}"
    readme = (ROOT / "README.md").read_text()
    unmapped = [p.name for p in folders if f"`{p.name}/`" not in readme]
    assert not unmapped, f"folders missing from the map in README.md: {unmapped}"
