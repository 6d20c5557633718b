"""A run killed with SIGKILL in either stage resumes from its last checkpoint and ends exactly where an
uninterrupted run ends (CPU runs are deterministic); the seed makes runs reproducible."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from conftest import checkpointed_loop, wait_for_mid_epoch_checkpoint

from cryopose.io.mrc import read_map
from cryopose.simulation.simulate import SimulationConfig, simulate

ARGS = ["--epochs", "5", "--switch-epoch", "2", "--marginal-epochs", "1", "--heads", "2", "--batch", "16",
        "--device", "cpu", "--checkpoint-minutes", "0.002"]  # epochs: 2 amortized, 1 marginal, 2 direct


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kill")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=480, snr=0.5, seed=4), folder)
    return folder / "particles.star"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted run (seed 0)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    _run(data, run)
    return run


def _run(particles, run, *extra, wait=True):
    cmd = [sys.executable, "-m", "cryopose", "reconstruct", str(particles), "-o", str(run), *ARGS, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    if wait:
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    return proc


def _epochs(run):
    lines = (run / "log.jsonl").read_text().splitlines() if (run / "log.jsonl").exists() else []
    return [json.loads(line) for line in lines if json.loads(line)["kind"] == "epoch"]


def _kill_during_epoch(particles, run, epoch: int) -> str:
    """Start a run, SIGKILL it while it trains ``epoch`` (after a mid-epoch checkpoint), return that stage."""
    proc = _run(particles, run, wait=False)
    wait_for_mid_epoch_checkpoint(proc, run, epoch)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return "amortized" if epoch < 2 else "direct"


@pytest.mark.slow
@pytest.mark.parametrize("epoch", [1, 3])
def test_sigkill_then_resume_matches_an_uninterrupted_run(data, reference, tmp_path, epoch):
    run = tmp_path / "killed"
    stage = _kill_during_epoch(data, run, epoch)
    assert len(_epochs(run)) == epoch and (run / "checkpoint.pt").is_file()
    killed = checkpointed_loop(run)
    assert killed["epoch"] == epoch and killed["batch"] > 0, killed  # resumes mid-epoch
    assert not (run / "map.mrc").exists()
    _run(data, run, "--resume")
    records = _epochs(run)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert records[epoch]["stage"] == stage
    np.testing.assert_allclose(read_map(run / "map.mrc").data, read_map(reference / "map.mrc").data,
                               rtol=1e-4, atol=1e-5 * float(np.abs(read_map(reference / "map.mrc").data).max()))
    resumed = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
               if json.loads(line)["kind"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["epoch"] == epoch and resumed[0]["batch"] == killed["batch"]


@pytest.mark.slow
def test_same_seed_same_run_other_seed_other_run(data, reference, tmp_path):
    _run(data, tmp_path / "b")
    _run(data, tmp_path / "c", "--seed", "1")
    a, b, c = (read_map(path / "map.mrc").data for path in (reference, tmp_path / "b", tmp_path / "c"))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3 * np.abs(a).max()
