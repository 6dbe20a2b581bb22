"""Fixtures shared across test modules, and the background seed sweep's hooks."""

from __future__ import annotations

import pytest

import background_sweep
from binpkg_fixture import binpkgs
from example_build import ExampleRelease, example_release


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> ExampleRelease:
    return example_release(tmp_path_factory)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    background_sweep.run_last(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    background_sweep.start_if_selected(session)


def pytest_sessionfinish(session: pytest.Session) -> None:
    background_sweep.stop(session)


__all__ = ["binpkgs", "release"]  # session fixtures for every test module
