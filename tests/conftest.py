"""Shared fixtures. Tests needing MNIST skip without data locally but fail in CI (CI=true)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI replays the same examples on every run (a red CI is reproducible); locally hypothesis
# explores new ones, and keeps any failure it finds in .hypothesis/ until it is fixed.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing in CI (set HYPERSPARSE_DATA)")
    pytest.skip(f"{what} not available")


@pytest.fixture(scope="session")
def mnist_available() -> bool:
    """Skip (locally) or fail (CI) unless the MNIST test IDX files can be found."""
    from hypersparse.data import find_idx_dir

    if find_idx_dir("mnist", None, ("test",)) is None:
        _missing("MNIST test IDX files")
    return True


@pytest.fixture(scope="session")
def fashion_available() -> bool:
    from hypersparse.data import find_idx_dir

    if find_idx_dir("fashion-mnist", None, ("train", "test")) is None:
        _missing("Fashion-MNIST")
    return True


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
