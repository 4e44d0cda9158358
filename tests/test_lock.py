"""The lock files: what runs here is what they pin, and pyproject.toml admits it."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import ROOT

DEV_LOCK = ROOT / "requirements.lock"
RUNTIME_LOCK = ROOT / "requirements-runtime.lock"


def pins(path: Path) -> dict[str, str]:
    """``name -> version`` of the lock's lines whose markers hold here."""
    found = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        spec, _, marker = text.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        name, _, version = spec.strip().partition("==")
        found[canonicalize_name(name)] = version.strip()
    return found


def test_every_locked_package_is_installed_at_its_locked_version() -> None:
    wrong = {}
    for name, version in pins(DEV_LOCK).items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != version:
            wrong[name] = f"locked {version}, installed {installed}"
    assert not wrong, f"run make install (the venv is not the lock): {wrong}"


def test_the_runtime_lock_is_the_dev_lock_without_the_tools() -> None:
    dev, runtime = pins(DEV_LOCK), pins(RUNTIME_LOCK)
    assert {n: dev.get(n) for n in runtime} == runtime


@pytest.mark.parametrize("extra", [None, "dev", "test", "lint", "bench"])
def test_pyproject_admits_the_locked_versions(extra: str | None) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = (
        project["dependencies"]
        if extra is None
        else project["optional-dependencies"][extra]
    )
    locked = pins(DEV_LOCK)
    for line in wanted:
        requirement = Requirement(line)
        version = locked[canonicalize_name(requirement.name)]
        assert requirement.specifier.contains(version), f"{line} refuses {version}"
