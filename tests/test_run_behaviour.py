"""The command line as a user meets it: run-directory file names, --force, --resume before the first checkpoint,
a killed denoiser pre-training, progress bars and the global random state."""

from __future__ import annotations

import fcntl
import json
import os
import select
import struct
import subprocess
import sys
import termios

import numpy as np
import pytest
import torch

from cryopose.cli import main
from cryopose.io import read_particles
from cryopose.simulation.simulate import SimulationConfig, simulate

FAST = ["--epochs", "1", "--switch-epoch", "1", "--heads", "2", "--batch", "16", "--device", "cpu",
        "--no-relax-symmetry"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("behaviour")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=64, snr=0.5, seed=3), folder)
    return folder


def _kinds(run) -> list[str]:
    return [json.loads(line)["kind"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_exclude_worst_leaves_the_lowest_scores_out_and_poses_star_holds_every_score(data, tmp_path):
    run = tmp_path / "run"
    assert main(["reconstruct", str(data / "particles.star"), "-o", str(run), *FAST, "--halves",
                 "--exclude-worst", "0.25"]) == 0
    scores = read_particles(run / "poses.star").extra["rlnLogLikeliContribution"].astype(float)
    assert len(scores) == 64 and abs(np.median(scores)) < 1e-6  # relative to the population's median
    record = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "exclude"][-1]
    limit = record["score_below"]  # the lowest kept score; poses.star rounds scores to 6 decimals
    assert record["excluded"] == 16 and (scores < limit - 1e-6).sum() <= 16 <= (scores < limit + 1e-6).sum()


def test_evaluate_reads_the_half_maps_reconstruct_writes(data, tmp_path):
    run = tmp_path / "run"
    assert main(["reconstruct", str(data / "particles.star"), "-o", str(run), *FAST, "--halves"]) == 0
    assert main(["evaluate", str(run), "--ref", str(data / "ground_truth.mrc")]) == 0
    result = json.loads((run / "evaluation.json").read_text())
    assert result["fsc_halves"] is not None, "the half maps of the run were not found"
    assert result["fsc_halves"]["half1"].endswith("map_half1.mrc")
    assert 6.0 <= result["fsc_halves"]["resolution_0.143_A"] < 100.0


def test_force_removes_the_half_maps_of_the_run_it_replaces(data, tmp_path):
    run = tmp_path / "run"
    assert main(["reconstruct", str(data / "particles.star"), "-o", str(run), *FAST, "--halves"]) == 0
    assert (run / "map_half1.mrc").is_file()
    (run / "notes.txt").write_text("mine")
    assert main(["reconstruct", str(data / "particles.star"), "-o", str(run), *FAST, "--force"]) == 0
    assert not list(run.glob("map_half*.mrc")), "half maps of the replaced run survived --force"
    assert (run / "notes.txt").read_text() == "mine"  # files that are not the run's own stay


def test_resume_before_the_first_checkpoint_starts_over(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")  # a run killed before its first checkpoint
    assert main(["reconstruct", str(data / "particles.star"), "-o", str(run), *FAST, "--resume"]) == 0
    assert "no checkpoint" in capsys.readouterr().err
    assert (run / "map.mrc").is_file() and _kinds(run)[-1] == "done"
    assert "resume" not in _kinds(run)


def test_denoiser_pretraining_killed_midway_resumes_from_its_checkpoint(data, tmp_path, monkeypatch):
    """Pre-training checkpoints like any other stage: a run stopped during it continues from its last step."""
    from cryopose.models.denoiser import MLPDenoiser

    run = tmp_path / "ss"
    args = ["reconstruct", str(data / "particles.star"), "-o", str(run), "--method", "search-supervised",
            "--epochs", "1", "--switch-epoch", "1", "--batch", "16", "--device", "cpu", "--beam-depth", "2",
            "--gd-steps", "1", "--option", "denoiser_steps=30", "--checkpoint-minutes", "0", "--no-relax-symmetry"]
    forward, calls = MLPDenoiser.forward, []

    def interrupted(self, x):
        calls.append(len(x))
        if len(calls) == 20:
            raise KeyboardInterrupt
        return forward(self, x)

    monkeypatch.setattr(MLPDenoiser, "forward", interrupted)
    assert main(args) == 130
    monkeypatch.setattr(MLPDenoiser, "forward", forward)
    assert (run / "checkpoint.pt").is_file(), "nothing was checkpointed during pre-training"
    assert main([*args, "--resume"]) == 0
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r["kind"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["pretrain_step"] == 19  # 19 steps done and checkpointed
    pretrain = [r for r in records if r["kind"] == "pretrain"]
    assert len(pretrain) == 1 and pretrain[0]["steps"] == 30
    assert records[-1]["kind"] == "done"


def _run_on_a_terminal(cmd: list[str], env: dict) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal (where bars are shown) and return what it wrote."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a new pty is 0 columns wide
    proc = subprocess.Popen(cmd, stdout=follower, stderr=follower, env=env)
    chunks: list[bytes] = []
    while True:  # read while the follower is still open here: Linux drops unread output once it is closed
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            chunks.append(os.read(leader, 65536))
        elif proc.poll() is not None:
            break
    os.close(follower)
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("how", ["shown", "--quiet", "TQDM_DISABLE"])
def test_progress_bars_on_a_terminal_unless_silenced(data, tmp_path, how):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TQDM_DISABLE", None)
    quiet = []
    if how == "TQDM_DISABLE":
        env["TQDM_DISABLE"] = "1"
    elif how == "--quiet":
        quiet = ["--quiet"]
    cmd = [sys.executable, "-m", "cryopose", *quiet, "reconstruct", str(data / "particles.star"), "-o",
           str(tmp_path / "run"), *FAST]
    out = _run_on_a_terminal(cmd, env)
    assert ("epoch 1/1" in out) == (how == "shown"), out[-2000:]
    assert "resolution" in out or "map:" in out  # the summary is printed either way


def test_progress_bars_stay_out_of_logs(data, tmp_path):
    """stderr redirected to a file (a batch job's log): no bars."""
    cmd = [sys.executable, "-m", "cryopose", "reconstruct", str(data / "particles.star"), "-o", str(tmp_path / "r"),
           *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "epoch 1/1" not in result.stderr and "\r" not in result.stderr


def test_building_a_method_leaves_the_global_random_state_alone():
    from cryopose.methods.semi_amortized import SemiAmortized, SemiAmortizedConfig

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    first = SemiAmortized(SemiAmortizedConfig(heads=2), 8, 32, 3.0, 1.0, torch.device("cpu"), seed=5)
    assert torch.equal(torch.rand(4), expected)
    second = SemiAmortized(SemiAmortizedConfig(heads=2), 8, 32, 3.0, 1.0, torch.device("cpu"), seed=5)
    for a, b in zip(first.encoder.parameters(), second.encoder.parameters()):
        assert torch.equal(a, b)  # the seed still decides the initial weights


@pytest.mark.slow
def test_demo_runs_the_default_method_and_the_oracle_and_reports_both(tmp_path, capsys):
    """``cryopose demo`` as a user runs it (2,000 images of the built-in molecule, SNR 0.5, default settings): the
    oracle (true poses) and the default ab initio run are both evaluated against the truth, the run reaches the
    oracle's resolution with its poses within a few degrees (measured: 6.00 Å vs 6.00 Å, median 2.78°, all within
    10°), and the report holds the run's training curves."""
    assert main(["--quiet", "demo", "-o", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "ab initio (semi-amortized, default settings)" in out and "the true-pose map's" in out
    evaluation = json.loads((tmp_path / "demo/run/evaluation.json").read_text())
    oracle = json.loads((tmp_path / "demo/oracle/evaluation.json").read_text())
    best = oracle["fsc_vs_reference"]["resolution_0.5_A"]
    assert best < 6.5  # Nyquist 6 Å
    assert evaluation["fsc_vs_reference"]["resolution_0.5_A"] <= 1.1 * best
    assert evaluation["poses"]["n"] == 2000 and evaluation["poses"]["rotation_median_deg"] < 3.5
    assert evaluation["poses"]["rotation_within_10deg"] > 0.95
    assert evaluation["files"]["training_png"] == "plots/training.png"
    assert (tmp_path / "demo/run/plots/training.png").stat().st_size > 0
