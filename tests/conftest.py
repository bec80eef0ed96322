"""Shared fixtures: repositories on every local backend."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import frazil


@pytest.fixture(params=["local", "memory"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], frazil.Storage]:
    """Returns a function giving the same storage location each call."""
    if request.param == "memory":
        mem = frazil.in_memory_storage()
        return lambda: mem
    return lambda: frazil.local_filesystem_storage(tmp_path / "repo")


@pytest.fixture
def repo(storage_factory: Callable[[], frazil.Storage]) -> frazil.Repository:
    return frazil.Repository.create(storage_factory())
