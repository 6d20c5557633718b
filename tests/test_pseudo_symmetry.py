"""Near-symmetry of a map and the two-class relaxation that breaks a pseudo-symmetric blend of poses."""

from __future__ import annotations

import numpy as np
import pytest
import roma
import torch

from cryopose.evaluate.poses import pose_error
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map, write_map
from cryopose.methods.backprojection import backproject_dataset
from cryopose.methods.losses import noise_sigma
from cryopose.methods.pseudo_symmetry import relax_pseudo_symmetry
from cryopose.physics.align import MapAlignment, near_symmetry
from cryopose.simulation.simulate import SimulationConfig, simulate


def _map(folder) -> torch.Tensor:
    return torch.tensor(np.array(read_map(folder / "ground_truth.mrc").data))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=200, snr=1.0, seed=4), folder)
    return folder


def test_near_symmetry_finds_the_two_fold_it_was_given_and_none_in_an_asymmetric_map(demo):
    volume = _map(demo)
    two_fold = torch.tensor([[1.0, 0, 0], [0, -1, 0], [0, 0, -1]], dtype=torch.float64)  # 180° about x
    turned = MapAlignment(rotation=two_fold.numpy(), shift_px=np.zeros(3), mirrored=False,
                          correlation=1.0).apply(volume)
    found = near_symmetry(volume + turned, voxel_size_A=3.0)
    assert found.correlation > 0.95
    assert np.degrees(float(roma.rotmat_geodesic_distance(torch.as_tensor(found.rotation), two_fold))) < 3.0
    alone = near_symmetry(volume, voxel_size_A=3.0)  # never the identity, and nothing close to 1
    assert alone.to_dict()["rotation_angle_deg"] >= 60.0 and alone.correlation < 0.75


def test_an_asymmetric_map_leaves_the_poses_alone(demo):
    table = read_particles(demo / "particles.star")
    dataset = ParticleDataset(table)
    sigma = noise_sigma(dataset.__getitems__(np.arange(len(table)))["images"])
    rot, shifts, record = relax_pseudo_symmetry(dataset, _map(demo), table.rotations, None, sigma)
    assert record["relaxed"] is False and record["symmetry_correlation"] < 0.8
    assert rot is table.rotations and shifts is None


def test_relaxation_breaks_a_blend_of_4ake_poses_and_their_mates(shared_data, tmp_path):
    """4AKE's two chains make its map superpose on itself turned 180° (correlation ~0.96 at 4 Å/px). Half of the
    particles are put at their mate: the blend an ab initio run settles in. Scoring each half against the other
    half's map, the EM finds the true sense for almost every particle."""
    simulate(SimulationConfig(source=str(shared_data / "models/4AKE.pdb"), box=32, apix=4.0, n=2000, snr=1.0,
                              seed=1), tmp_path)
    table = read_particles(tmp_path / "particles.star")
    dataset = ParticleDataset(table)
    truth = _map(tmp_path)
    mates = near_symmetry(truth, voxel_size_A=4.0).transform_poses(table.rotations)[0]
    blend = np.where((np.random.default_rng(0).random(len(table)) < 0.5)[:, None, None], mates, table.rotations)
    before = pose_error(blend, table.rotations)
    assert before.rotation_within_10deg < 0.55
    sigma = noise_sigma(dataset.__getitems__(np.arange(512))["images"])
    rot, _, record = relax_pseudo_symmetry(dataset, truth, blend, None, sigma)
    after = pose_error(rot, table.rotations)
    assert record["relaxed"] and record["symmetry_correlation"] > 0.9
    assert abs(record["symmetry_angle_deg"] - 180.0) < 2.0
    # the true poses, refined in the EM against half maps of 4 Å pixels
    # (measured: median 1.6° off the truth, 97.6 % within 10°, 9 rounds)
    assert after.rotation_within_10deg > 0.9 and after.rotation_median_deg < 2.5
    assert record["rounds"] < 20 and record["last_changed"] < 0.005


@pytest.mark.slow
def test_relaxation_breaks_a_blend_of_noisy_poses_in_turns(shared_data, tmp_path):
    """Poses of a run are a few degrees off. Scoring both halves at once against the other's previous map, regions
    of views where the halves disagree swap sense every round and the blend persists (measured: 79 % within 10°,
    27 % of the particles still changing side after 40 rounds); scoring them in turns converges: 87.7 % in 21 rounds
    with FSC-weighted half maps (unweighted: 85.0 %, 34 rounds)."""
    simulate(SimulationConfig(source=str(shared_data / "models/4AKE.pdb"), box=32, apix=4.0, n=2000, snr=0.5,
                              seed=1), tmp_path)
    table = read_particles(tmp_path / "particles.star")
    dataset = ParticleDataset(table)
    rng = np.random.default_rng(0)
    mates = near_symmetry(_map(tmp_path), voxel_size_A=4.0).transform_poses(table.rotations)[0]
    blend = np.where((rng.random(len(table)) < 0.5)[:, None, None], mates, table.rotations)
    errors = torch.as_tensor(rng.normal(size=(len(table), 3)) * np.deg2rad(2.0) / np.sqrt(3))  # 2° rms
    noisy = blend @ roma.rotvec_to_rotmat(errors).numpy()
    volume, = backproject_dataset(dataset, noisy, None)
    sigma = noise_sigma(dataset.__getitems__(np.arange(512))["images"])
    rot, _, record = relax_pseudo_symmetry(dataset, volume, noisy, None, sigma)
    assert record["relaxed"] and record["last_changed"] < 0.005 and record["rounds"] < 30
    assert pose_error(rot, table.rotations).rotation_within_10deg > 0.85


def _three_fold(volume: torch.Tensor) -> torch.Tensor:
    """``volume`` plus its copies turned by 120° and 240° about z (an exact C3 map)."""
    turn = MapAlignment(rotation=roma.rotvec_to_rotmat(torch.tensor([0, 0, 2 * np.pi / 3])).double().numpy(),
                        shift_px=np.zeros(3), mirrored=False, correlation=1.0)
    once = turn.apply(volume)
    return volume + once + turn.apply(once)


def test_an_exact_symmetry_is_reported_and_not_relaxed(demo):
    table = read_particles(demo / "particles.star")
    dataset = ParticleDataset(table)
    sigma = noise_sigma(dataset.__getitems__(np.arange(len(table)))["images"])
    rot, _, record = relax_pseudo_symmetry(dataset, _three_fold(_map(demo)), table.rotations, None, sigma)
    assert record["exact"] and not record["relaxed"] and record["symmetry_correlation"] >= 0.97
    assert abs(record["symmetry_angle_deg"] - 120) < 2 and rot is table.rotations


@pytest.mark.slow
def test_relaxation_of_a_three_fold_blend_finds_each_particles_power_of_the_operator(demo, tmp_path):
    """A pseudo-C3 map (an exact C3 map plus half of one of its three parts: self-superposition 0.96 at 120°) with
    each particle at its pose turned by a random power of the operator: a third at the truth. A two-class EM over
    {pose, mate} cannot bring back the particles two turns away; the three-class EM brings back almost all
    (measured on 2,000 images: 88.9 % within 10°, median 3.4°, 30 rounds; the two-class EM: 49.7 %, not settled
    after 40 rounds)."""
    write_map(tmp_path / "pseudo_c3.mrc", (_three_fold(_map(demo)) + 0.5 * _map(demo)).numpy(), 3.0)
    simulate(SimulationConfig(source=str(tmp_path / "pseudo_c3.mrc"), box=32, apix=3.0, n=1200, snr=1.0, seed=1),
             tmp_path / "sim")
    table = read_particles(tmp_path / "sim/particles.star")
    dataset = ParticleDataset(table)
    truth = _map(tmp_path / "sim")
    sym = near_symmetry(truth, voxel_size_A=3.0)
    turned = [table.rotations]
    for _ in range(2):
        turned.append(sym.transform_poses(turned[-1])[0])
    power = np.random.default_rng(0).integers(0, 3, len(table))
    blend = np.stack(turned, 1)[np.arange(len(table)), power]
    assert pose_error(blend, table.rotations).rotation_within_10deg < 0.4
    sigma = noise_sigma(dataset.__getitems__(np.arange(512))["images"])
    rot, _, record = relax_pseudo_symmetry(dataset, truth, blend, None, sigma)
    assert record["relaxed"] and record["order"] == 3 and 0.9 < record["symmetry_correlation"] < 0.97
    after = pose_error(rot, table.rotations)
    assert after.rotation_within_10deg > 0.85 and after.rotation_median_deg < 4.0
