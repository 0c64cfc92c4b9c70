"""Shared fixtures: the real data beside the checkout (../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MLIP_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; tests using it skip in a clone that lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(
            f"real DFT reference files not found at {SHARED_DATA} "
            "(CI provides ../shared/data; set MLIP_SHARED_DATA to point elsewhere)"
        )
    return SHARED_DATA
