"""Shared test fixtures: the real files in ../shared/data (tests skip cleanly where they are absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` relative to the repository root; skips the test when it is absent."""
    if not (SHARED_DATA / "MANIFEST.md").is_file():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def relion() -> None:
    """Skip unless RELION 3.1's command-line programs are installed (`apt-get install -y relion`)."""
    if shutil.which("relion_project") is None or shutil.which("relion_reconstruct") is None:
        pytest.skip("RELION (relion_project, relion_reconstruct) is not installed")
