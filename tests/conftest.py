"""Fixtures shared across test modules."""

from __future__ import annotations

import pytest
from binpkg_fixture import binpkgs
from example_build import ExampleRelease, example_release


@pytest.fixture(scope="session")
def release(tmp_path_factory: pytest.TempPathFactory) -> ExampleRelease:
    return example_release(tmp_path_factory)


__all__ = ["binpkgs", "release"]  # session fixtures for every test module
