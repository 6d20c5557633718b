"""Shared test fixtures (the real files in ../shared/data, skipped cleanly where absent; RELION) and helpers for
the tests that kill a run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

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


def checkpointed_loop(run) -> dict:
    """The loop state (epoch, batch within it, ...) of the run's checkpoint."""
    return torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["loop"]


def wait_for_mid_epoch_checkpoint(proc, run, epoch: int, timeout: float = 300) -> None:
    """Poll until ``run/checkpoint.pt`` is (atomically) replaced by one taken inside ``epoch``, after at least
    one of its batches; a run that ends or overshoots first fails."""
    path, seen = run / "checkpoint.pt", None
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:])
        assert time.monotonic() < deadline, f"no checkpoint inside epoch {epoch} within {timeout} s"
        try:
            stat = path.stat()
        except FileNotFoundError:
            stat = None
        if stat is not None and (stat.st_ino, stat.st_mtime_ns) != seen:
            seen = (stat.st_ino, stat.st_mtime_ns)
            loop = checkpointed_loop(run)
            assert loop["epoch"] <= epoch, f"the run passed epoch {epoch} before a mid-epoch checkpoint: {loop}"
            if loop["epoch"] == epoch and loop["batch"] > 0:
                return
        time.sleep(0.01)
