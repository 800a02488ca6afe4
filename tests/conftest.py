"""Shared fixtures: real data from ../shared/data and small synthetic slides made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ENV = "WSI_SEG_TEST_DATA"
REQUIRE_ENV = "WSI_SEG_REQUIRE_DATA"


def shared_data_dir() -> Path:
    """Where the real slides and annotations live: $WSI_SEG_TEST_DATA or ../shared/data."""
    return Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder; skips (or fails, when $WSI_SEG_REQUIRE_DATA=1) if it is absent.

    CI sets WSI_SEG_REQUIRE_DATA=1 so a missing data folder can never turn into a green run.
    """
    path = shared_data_dir()
    if not (path / "slides").is_dir():
        reason = f"real test data not found at {path} (set {DATA_ENV})"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(reason + f"; {REQUIRE_ENV}=1 makes this a failure")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def real_slides(shared_data: Path) -> Path:
    return shared_data / "slides"


def pytest_sessionstart(session: pytest.Session) -> None:
    """The backend asked for is the one the tests run on: ``KERAS_BACKEND=jax pytest`` that
    silently ran TensorFlow (Keras imported before the variable applied, or JAX missing and a
    fallback taken) would pass every JAX check without running JAX."""
    wanted = os.environ.get("KERAS_BACKEND")
    if not wanted:
        return
    import keras

    got = keras.backend.backend()
    if got != wanted:
        raise pytest.UsageError(f"KERAS_BACKEND={wanted} was asked for but Keras runs on {got}")
