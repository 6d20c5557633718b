"""The reconstruct job: run directory, outputs, refusal to overwrite, and resume from a checkpoint."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from cryopose.errors import InputError
from cryopose.io import read_particles
from cryopose.io.mrc import read_map
from cryopose.jobs.reconstruct import ReconstructOptions, reconstruct
from cryopose.simulation.simulate import SimulationConfig, simulate

FAST = {"heads": 3, "switch_epoch": 1, "encoder": "light"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=96, snr=0.5, seed=1), folder)
    return folder


def _epochs(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "epoch"]


def test_run_directory_outputs_and_resume(tiny, tmp_path):
    run = tmp_path / "run"
    reconstruct(tiny / "particles.star", run, ReconstructOptions(epochs=2, batch=16, ref=tiny / "ground_truth.mrc",
                                                           method_options=FAST))
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["shifts"] is False  # the simulated shifts are all zero
    assert read_map(run / "map.mrc").data.shape == (32, 32, 32)
    assert sorted(p.name for p in (run / "maps").iterdir()) == ["epoch_001.mrc", "epoch_002.mrc"]
    poses = read_particles(run / "poses.star")
    assert len(poses) == 96 and poses.rotations is not None
    np.testing.assert_allclose(np.linalg.det(poses.rotations), 1.0, atol=1e-5)
    records = _epochs(run)
    assert [r["stage"] for r in records] == ["amortized", "marginal"]
    assert all(np.isfinite(r["resolution_0.5_A"]) and r["resolution_0.5_A"] >= 6.0 for r in records)
    assert all(r["peak_rss_MB"] > 100 for r in records)  # torch alone takes more
    assert len(records[0]["head_share"]) == 3 and sum(records[0]["head_share"]) == pytest.approx(1.0, abs=1e-3)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    done, symmetry = log[-1], [r for r in log if r["kind"] == "symmetry"]
    local = [r for r in log if r["kind"] == "local_refinement"]
    # after training every pose is refined against the half maps (5 rounds by default), measured like an epoch
    assert len(local) == 1 and len(local[0]["median_turn_deg"]) == 5 and np.isfinite(local[0]["resolution_0.5_A"])
    assert done["kind"] == "done" and done["pose_within_10deg"] == local[0]["pose_within_10deg"]
    assert done["peak_rss_MB"] >= records[-1]["peak_rss_MB"]
    # the demo protein has no pseudo-symmetry: checked once after training, nothing relaxed
    assert len(symmetry) == 1 and not symmetry[0]["relaxed"] and symmetry[0]["symmetry_correlation"] < 0.8

    with pytest.raises(InputError, match="already holds a run"):
        reconstruct(tiny / "particles.star", run, ReconstructOptions(epochs=2, batch=16, method_options=FAST))
    reconstruct(tiny / "particles.star", run, ReconstructOptions(epochs=3, batch=16, method_options=FAST), resume=True)
    records = _epochs(run)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert (run / "maps/epoch_003.mrc").is_file()
    kinds = [json.loads(line)["kind"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert "resume" in kinds


def test_a_copy_taken_at_the_switch_can_continue_stage_1(tiny, tmp_path):
    """Branching a run at its switch (cryoSPIN Fig. 4): a resume may move the switch of a run that has not
    switched yet; a run that has cannot move it past its own."""
    import shutil

    trunk, branch = tmp_path / "trunk", tmp_path / "branch"
    reconstruct(tiny / "particles.star", trunk, ReconstructOptions(epochs=1, batch=16, method_options=FAST,
                                                                relax_symmetry=False))
    shutil.copytree(trunk, branch)
    reconstruct(tiny / "particles.star", branch,
                ReconstructOptions(epochs=2, batch=16, method_options={"switch_epoch": 2}), resume=True)
    assert [r["stage"] for r in _epochs(branch)] == ["amortized", "amortized"]
    assert json.loads((branch / "config.json").read_text())["options"]["switch_epoch"] == 2
    reconstruct(tiny / "particles.star", trunk, ReconstructOptions(epochs=2, batch=16), resume=True)
    assert [r["stage"] for r in _epochs(trunk)] == ["amortized", "marginal"]
    with pytest.raises(InputError, match="the switch cannot move from 1 to 3 epochs"):
        reconstruct(tiny / "particles.star", trunk,
                    ReconstructOptions(epochs=3, batch=16, method_options={"switch_epoch": 3}), resume=True)
    assert json.loads((trunk / "config.json").read_text())["options"]["switch_epoch"] == 1  # left as it was


def test_search_supervised_shares_the_run_directory_and_resumes(tiny, tmp_path):
    """Cryo2SSNet through the same loop: stages, searched poses better than the encoder's, outputs, resume."""
    run = tmp_path / "ss"
    options = {"switch_epoch": 1, "beam_depth": 3, "gd_steps": 5, "denoiser_steps": 20, "denoise_epochs": 1}
    first = ReconstructOptions(method="search-supervised", epochs=1, batch=16, ref=tiny / "ground_truth.mrc",
                               method_options=options)
    reconstruct(tiny / "particles.star", run, first)
    reconstruct(tiny / "particles.star", run, replace(first, epochs=2), resume=True)
    records = _epochs(run)
    assert [(r["epoch"], r["stage"]) for r in records] == [(0, "search"), (1, "end-to-end")]
    assert records[0]["search_gain"] > 0  # the search lowers the data term of the encoder's poses
    assert json.loads((run / "config.json").read_text())["options"]["beam_depth"] == 3
    pretrain = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
                if json.loads(line)["kind"] == "pretrain"]
    assert len(pretrain) == 1 and pretrain[0]["snr"] == pytest.approx(0.5, rel=0.3)  # estimated; simulated 0.5
    poses = read_particles(run / "poses.star")
    np.testing.assert_allclose(np.linalg.det(poses.rotations), 1.0, atol=1e-5)
    assert read_map(run / "map.mrc").data.shape == (32, 32, 32)


def test_unknown_method_option_is_a_clear_error(tiny, tmp_path):
    with pytest.raises(InputError, match="search-supervised"):
        reconstruct(tiny / "particles.star", tmp_path / "bad",
                    ReconstructOptions(method="search-supervised", method_options={"heads": 3}))
