"""Shared fixtures: repositories on every backend (local, memory, and S3 on a SeaweedFS
server started for the session; see s3server.py; Azure on Azurite, azureserver.py)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import azureserver
import pytest
import s3server

import frazil

# the benchmark scripts (bench/) are importable by the tests that run their short forms
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests a test module lists in ``KNOWN_LIMITS`` (test id -> reason) as
    strict expected failures (see tests/test_storage.py)."""
    for item in items:
        limits = getattr(getattr(item, "module", None), "KNOWN_LIMITS", None)
        if limits and item.name in limits:
            item.add_marker(pytest.mark.xfail(reason=limits[item.name], strict=True))
        _skip_if_param(item)
    # Long soak and stress runs (@pytest.mark.slow) run only with FRAZIL_LONG=1; each
    # has a short version that always runs, so `make test` still covers the same code.
    # FRAZIL_FAST=1 (`make test-fast`) leaves out what needs the S3 server too.
    dropped = [
        item
        for item in items
        if (not LONG and item.get_closest_marker("slow")) or (FAST and _needs_s3(item))
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        keep = set(map(id, items)) - set(map(id, dropped))
        items[:] = [item for item in items if id(item) in keep]


def _skip_if_param(item: pytest.Item) -> None:
    """xarray's ``skip_if_param(name=value, reason=..., condition=...)`` marker (its test
    suite, run by tests/test_xarray_backends.py, uses it; xarray's own top-level conftest
    implements it and is not installed): skip the parametrized case whose parameters match."""
    params = getattr(getattr(item, "callspec", None), "params", {})
    for mark in item.iter_markers("skip_if_param"):
        wanted = {k: v for k, v in mark.kwargs.items() if k not in ("reason", "condition")}
        if mark.kwargs.get("condition", True) and all(
            k in params and params[k] == v for k, v in wanted.items()
        ):
            item.add_marker(pytest.mark.skip(reason=mark.kwargs.get("reason", "skip_if_param")))


# modules the fast suite leaves out: soaks, kills and state machines that make up most of
# the full suite's time, and the dask cluster (their short forms run in `make test`)
_HEAVY = (
    "test_crash.py",
    "test_load.py",
    "test_repo_stateful.py",
    "test_zarr_stateful.py",
    "test_hierarchy_history.py",
    "test_dask.py",
    "test_faults.py",
    "test_xarray.py",
)


def _needs_s3(item: pytest.Item) -> bool:
    """Left out of the fast suite: runs against the S3 server (by its module, name,
    parameters or fixtures), or is in one of the heavy modules."""
    fixtures = set(getattr(item, "fixturenames", ()))
    return (
        "s3" in item.nodeid.lower()
        or "azure" in item.nodeid.lower()
        or bool(fixtures & {"s3_server", "testbucket", "azure_server"})
        or item.nodeid.split("::")[0].endswith(_HEAVY)
    )


LONG = os.environ.get("FRAZIL_LONG") == "1"
"""True when FRAZIL_LONG=1: the long versions of soak and stress tests run."""

FAST = os.environ.get("FRAZIL_FAST") == "1"
"""True when FRAZIL_FAST=1: tests that need the S3 server are left out (and starting it
fails, so that one that slips through is seen)."""

if FAST:
    s3server.refuse_to_start("FRAZIL_FAST=1: this test needs the S3 server; mark its id")
    azureserver.refuse_to_start("FRAZIL_FAST=1: this test needs Azurite; mark its id")


@pytest.fixture(scope="session", autouse=True)
def _stop_s3_server() -> Iterator[None]:
    """The S3 server starts on first use; stop it when the session ends."""
    yield
    s3server.shutdown()
    azureserver.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> s3server.SeaweedServer:
    """The session's SeaweedFS server (endpoint_url; credentials are s3server.ACCESS_KEY
    and SECRET_KEY). Starting it fails the test if it cannot start: never a skip."""
    return s3server.server()


@pytest.fixture(scope="session")
def azure_server() -> azureserver.AzuriteServer:
    """The session's Azurite (blob service; the well-known development account, container
    azureserver.CONTAINER). Starting it fails the test if it cannot start: never a skip."""
    return azureserver.server()


@pytest.fixture(params=["local", "memory", "s3"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], frazil.Storage]:
    """Returns a function giving the same storage location each call."""
    if request.param == "memory":
        mem = frazil.in_memory_storage()
        return lambda: mem
    if request.param == "s3":
        prefix = s3server.new_prefix()
        return lambda: s3server.storage(prefix)
    return lambda: frazil.local_filesystem_storage(tmp_path / "repo")


@pytest.fixture
def repo(storage_factory: Callable[[], frazil.Storage]) -> frazil.Repository:
    return frazil.Repository.create(storage_factory())
