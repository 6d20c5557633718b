"""Local refinement against half maps: poses a few degrees off settle near where the data put them."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from cryopose.evaluate.poses import pose_error
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.methods.half_maps import LocalRefineConfig, local_refine
from cryopose.methods.losses import noise_sigma
from cryopose.simulation.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shifted")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=1000, snr=0.5, shift_std_px=1.0, seed=5), folder)
    return folder


def test_local_refinement_brings_poses_6_degrees_off_near_the_truth(shifted):
    """Every pose turned 6° about a random axis and shifted 1.5 Å: the refinement against the other half's map
    recovers rotations and shifts (measured: median 6.2° -> 2.9°, shifts 1.5 -> 0.49 Å, all within 10°), and
    each round turns the poses less than the one before."""
    table = read_particles(shifted / "particles.star")
    dataset = ParticleDataset(table)
    gen = torch.Generator().manual_seed(0)
    axes = torch.nn.functional.normalize(torch.randn(len(table), 3, generator=gen, dtype=torch.float64), dim=1)
    start = (roma.rotvec_to_rotmat(axes * np.radians(6.0)) @ torch.as_tensor(table.rotations)).numpy()
    angle = torch.rand(len(table), generator=gen, dtype=torch.float64) * 2 * np.pi
    off = table.shifts_A + 1.5 * torch.stack([angle.cos(), angle.sin()], 1).numpy()
    sigma = noise_sigma(dataset.__getitems__(np.arange(256))["images"])
    rot, shifts, record = local_refine(dataset, start, off, sigma, LocalRefineConfig(rounds=5))
    before = pose_error(start, table.rotations, off, table.shifts_A)
    after = pose_error(rot, table.rotations, shifts, table.shifts_A)
    assert 5.5 < before.rotation_median_deg < 6.5 and before.shift_median_A > 1.4
    assert after.rotation_median_deg < 3.5 and after.rotation_within_10deg > 0.98
    assert after.shift_median_A < 0.8
    turns = record["median_turn_deg"]
    assert len(turns) == 5 and all(b < a for a, b in zip(turns, turns[1:]))
