"""``cryopose predict-poses``: poses of held-out particles from a finished run's encoder and map."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from cryopose.cli import main
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map, write_map
from cryopose.jobs.predict import PredictOptions, predict
from cryopose.jobs.reconstruct import ReconstructOptions, reconstruct
from cryopose.simulation.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def run_and_new_particles(tmp_path_factory):
    """A one-epoch run on 200 images of the built-in molecule (32 px, SNR 0.5, 1 px shifts) whose map is then
    replaced by the truth in the units of its normalised images, and 300 new particles of the same sample."""
    root = tmp_path_factory.mktemp("predict")
    train, new, run = root / "train", root / "new", root / "run"
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=200, snr=0.5, shift_std_px=1.0, seed=4), train)
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=300, snr=0.5, shift_std_px=1.0, seed=5), new)
    reconstruct(train / "particles.star", run, ReconstructOptions(epochs=1, batch=32, local_rounds=0,
                                                                  relax_symmetry=False))
    std = ParticleDataset(read_particles(train / "particles.star")).std
    write_map(run / "map.mrc", read_map(new / "ground_truth.mrc").data / std, 3.0)
    return run, new


def _median_error_deg(found, truth) -> float:
    a, b = (torch.as_tensor(p.rotations) for p in (found, truth))
    return float(roma.rotmat_geodesic_distance(a, b).median().rad2deg())


def test_with_the_search_every_new_particle_gets_its_pose_under_the_runs_map(run_and_new_particles, tmp_path):
    """The encoder of a one-epoch run learned nothing; the global search under the map, then the local refinement,
    give the new particles their poses (measured: median error 2.9°, 76 % within 10°; shifts 0.3 Å)."""
    run, new = run_and_new_particles
    summary = predict(run, new / "particles.star", tmp_path / "poses.star", PredictOptions(search=True))
    found, truth = read_particles(tmp_path / "poses.star"), read_particles(new / "particles.star")
    assert summary["particles"] == 300 and summary["search_replaced"] > 0.5
    assert _median_error_deg(found, truth) < 4.0
    assert np.median(np.linalg.norm(found.shifts_A - truth.shifts_A, axis=1)) < 1.0


def test_the_encoder_alone_is_as_good_as_what_it_learned(run_and_new_particles, tmp_path, capsys):
    """Without the search the poses are the encoder's best heads, locally refined: after one epoch, random
    (median error far above the search's), and the command says how many images it did per second."""
    run, new = run_and_new_particles
    assert main(["--quiet", "predict-poses", str(run), str(new / "particles.star"), "-o",
                 str(tmp_path / "poses.star")]) == 0
    assert "images_per_s" in capsys.readouterr().out
    found, truth = read_particles(tmp_path / "poses.star"), read_particles(new / "particles.star")
    assert _median_error_deg(found, truth) > 30.0


def test_a_folder_that_is_not_a_finished_run_is_one_error_line(run_and_new_particles, tmp_path, capsys):
    _, new = run_and_new_particles
    assert main(["predict-poses", str(tmp_path), str(new / "particles.star"), "-o", str(tmp_path / "p.star")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a finished cryopose run" in err and str(tmp_path) in err


def test_particles_of_another_pixel_size_are_one_error_line(run_and_new_particles, tmp_path, capsys):
    """(``--apix`` also warns that it overrides the stack's header.)"""
    run, new = run_and_new_particles
    star = new / "particles.star"
    assert main(["predict-poses", str(run), str(star), "-o", str(tmp_path / "p.star"), "--apix", "2.0"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("cryopose: error:")]
    assert len(errors) == 1 and "pixel size 2 Å" in errors[0] and str(star) in errors[0]
