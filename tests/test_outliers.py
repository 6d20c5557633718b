"""Junk left out of training: the outlier filter's cut, and a short run on simulated junk."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cryopose.evaluate.junk import simulated_junk
from cryopose.io import read_particles
from cryopose.jobs.evaluate import evaluate_run
from cryopose.jobs.reconstruct import ReconstructOptions, reconstruct
from cryopose.methods.outliers import OutlierFilter, explained_share
from cryopose.simulation.simulate import SimulationConfig, simulate


def test_explained_share_is_one_for_a_perfect_prediction_and_below_zero_for_excess_power():
    target = torch.randn(3, 50, dtype=torch.complex64)
    power = 0.5 * target.abs().square().mean(-1)
    assert torch.allclose(explained_share(torch.zeros(3), target), torch.ones(3))
    assert torch.allclose(explained_share(power, target), torch.zeros(3))  # as good as predicting nothing
    assert (explained_share(2 * power, target) < 0).all()


def _scores(filt: OutlierFilter, scores: np.ndarray, start: int = 0) -> np.ndarray:
    """Feed ``scores`` (explained shares) in batches of 8 from particle ``start``; returns the weights given."""
    target = torch.ones(len(scores), 4, dtype=torch.complex64)  # ½ mean |Y|² = ½: loss = ½ (1 − score)
    loss = 0.5 * (1 - torch.as_tensor(scores, dtype=torch.float32))
    index = torch.arange(start, start + len(scores))
    return torch.cat([filt.weights(index[i:i + 8], loss[i:i + 8], target[i:i + 8])
                      for i in range(0, len(scores), 8)]).numpy()


def test_the_cut_comes_from_the_epochs_own_scores_and_carries_over_to_the_next_epoch():
    rng = np.random.default_rng(0)
    good, junk = rng.normal(0.3, 0.05, 400), rng.normal(-0.1, 0.03, 100)
    scores = np.concatenate([good, junk])[rng.permutation(500)]
    filt = OutlierFilter(500, mads=2.0, device=torch.device("cpu"), min_scored=256)
    weights = _scores(filt, scores)
    assert weights[:248].all()  # until 256 images are scored (the batch that reaches 256 included) no cut
    later = slice(248, 500)  # scored under a cut from the epoch's own scores
    out = weights[later] == 0
    assert out[scores[later] < 0.1].all() and out[scores[later] > 0.1].mean() < 0.01  # the junk, few particles
    assert filt.end_epoch()["left_out"] == pytest.approx((1 - weights).mean(), abs=1e-4)
    kept, cut = filt.kept(), float(filt.cut)
    assert -0.1 < cut < 0.25 and (kept == (scores >= cut)).all()  # by their scores in the epoch, the first 248 too
    again = _scores(filt, scores[:8])  # the next epoch starts under the last cut
    assert (again == (scores[:8] >= cut)).all()
    state = filt.state_dict()
    other = OutlierFilter(500, mads=2.0, device=torch.device("cpu"))
    other.load_state_dict(state)
    assert float(other.cut) == float(filt.cut) and (other.kept() == filt.kept()).all()


def test_no_image_is_left_out_when_the_filter_is_off():
    filt = OutlierFilter(300, mads=0.0, device=torch.device("cpu"))
    assert _scores(filt, np.r_[np.full(290, 0.3), np.full(10, -0.5)]).all()


def test_training_leaves_the_junk_out_and_the_run_reports_it(tmp_path):
    """600 images of the demo molecule, 20 % of them junk (only noise, or a blob through the CTF): after two epochs
    the filter leaves out the junk and keeps the particles (measured: 85 % of the junk left out, 0.2 % of the
    particles)."""
    sim = tmp_path / "sim"
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=600, snr=0.5, seed=3, junk_fraction=0.2), sim)
    junk = np.zeros(600, dtype=bool)
    junk[json.loads((sim / "simulation.json").read_text())["junk_indices"]] = True
    run = tmp_path / "run"
    summary = reconstruct(sim / "particles.star", run, ReconstructOptions(epochs=2, relax_symmetry=False,
                                                                          local_rounds=0))
    state = torch.load(run / "checkpoint.pt", weights_only=False)["method"]["outliers"]
    left_out = (state["last"] < state["cut"]).numpy()
    assert left_out[junk].mean() > 0.75 and left_out[~junk].mean() < 0.02
    assert summary["left_out_as_junk"] == left_out.sum()
    classes = read_particles(run / "poses.star").extra["rlnClassNumber"]
    assert (classes == np.where(left_out, 2, 1)).all()  # relion_reconstruct --class 1 rebuilds map.mrc
    result = evaluate_run(run, sim / "ground_truth.mrc", poses_truth=sim / "particles.star")
    assert result["poses"]["n"] == 600 - junk.sum()  # the junk has no true pose
    assert result["junk"]["junk_left_out_share"] == pytest.approx(left_out[junk].mean())
    assert result["junk"]["particles_left_out_share"] == pytest.approx(left_out[~junk].mean())
    assert simulated_junk(sim / "simulation.json", 599) is None  # true poses of another stack: no junk to drop
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records if r["kind"] == "junk"] == ["junk"]
    assert all("left_out" in r for r in records if r["kind"] == "epoch")
