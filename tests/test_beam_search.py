"""Heuristic beam search over the Hopf grid + gradient refinement, against the true poses of simulated data."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import roma
import torch

from cryopose.geometry.so3_search import grid_search
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map
from cryopose.methods.beam_search import BeamSearchConfig, beam_search, refine
from cryopose.methods.losses import noise_sigma, slice_loss, target_spectra
from cryopose.physics.fourier import hartley3_centered
from cryopose.physics.projection import circular_mask, render
from cryopose.simulation.simulate import SimulationConfig, simulate


def _simulated(out, **sim):
    """256 images (32 px, SNR 1) of the demo molecule, the true map as the volume, and the whitened L2 cost
    ``cost(rotations, radius=None, shifts=None)`` (the whole band always; shifts in Å, default zero); returns it
    with the true rotations, shifts and the pixel size."""
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=256, snr=1.0, **sim), out)
    table = read_particles(out / "particles.star")
    batch = ParticleDataset(table, normalize=False).__getitems__(np.arange(len(table)))
    sigma = noise_sigma(batch["images"])
    truth = torch.tensor(np.array(read_map(out / "ground_truth.mrc").data), dtype=torch.float64)
    volume = hartley3_centered(truth).float() / sigma
    mask = torch.nonzero(circular_mask(32).flatten()).squeeze(1)
    target = target_spectra(batch["images"], sigma, mask)

    def cost(rotations, radius=None, shifts=None):  # (B, K, 3, 3) -> (B, K)
        spectra = render(volume, rotations, table.apix, ctf=batch["ctf"], shifts_A=shifts, real_space=False)
        return slice_loss(spectra.flatten(-2)[..., mask], target)

    return cost, torch.from_numpy(table.rotations).float(), torch.from_numpy(table.shifts_A).float(), table.apix


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Centred images: the cost and the true rotations."""
    return _simulated(tmp_path_factory.mktemp("beam"), seed=5)[:2]


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """Images with shifts of 2 px standard deviation: the cost, true rotations, shifts (Å) and pixel size."""
    return _simulated(tmp_path_factory.mktemp("shifted"), seed=7, shift_std_px=2.0)


def _errors(rotations, truth):
    return torch.rad2deg(roma.rotmat_geodesic_distance(rotations, truth))


def test_global_search_then_gradient_refinement_finds_the_true_poses(problem):
    cost, truth = problem
    cfg = BeamSearchConfig(width=8, depth=5, gd_steps=20, lr=0.05)
    searched, searched_cost = grid_search(cost, len(truth), width=cfg.width, depth=cfg.depth)
    refined, refined_cost = refine(cost, searched, cfg.gd_steps, cfg.lr)
    grid_err, err = _errors(searched, truth), _errors(refined, truth)
    # level 5 cells are ~2° apart; the descent leaves the grid and lowers every particle's cost
    assert err.median() < 2.0 and (err < 5).float().mean() > 0.8
    assert err.median() < grid_err.median() and (refined_cost <= searched_cost).all()
    assert refined_cost.mean() < searched_cost.mean()
    _, _, full_cost = beam_search(cost, len(truth), cfg)
    torch.testing.assert_close(full_cost, refined_cost)


def test_search_from_an_initial_pose_recovers_it_from_30_degrees(problem):
    """The encoder's pose seeds the search: the c base cells nearest to it (Cryo2SSNet's heuristic)."""
    cost, truth = problem
    gen = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(len(truth), 3, generator=gen), dim=-1)
    initial = roma.rotvec_to_rotmat(axis * np.deg2rad(30)) @ truth
    rotations, _, _ = beam_search(cost, len(truth), BeamSearchConfig(), initial=initial)  # paper c=4, i=5, n=20
    err = _errors(rotations, truth)
    assert err.median() < 2.5 and (err < 5).float().mean() > 0.85
    shallow, _ = grid_search(cost, len(truth), width=4, depth=2, initial=initial)
    assert _errors(shallow, truth).median() > 2 * err.median()  # depth buys precision


def test_explore_keeps_the_search_global_when_the_initial_pose_is_wrong(problem):
    """An untrained encoder gives random poses: seeded from them the search stays far off, with ``explore``
    (also the c best base cells) it finds the true poses."""
    cost, truth = problem
    initial = roma.random_rotmat(len(truth), generator=torch.Generator().manual_seed(2))
    seeded, _ = grid_search(cost, len(truth), width=4, depth=4, initial=initial)
    explored, _ = grid_search(cost, len(truth), width=4, depth=4, explore=True, initial=initial)
    assert _errors(seeded, truth).median() > 30
    err = _errors(explored, truth)
    assert err.median() < 5 and (err < 10).float().mean() > 0.65  # depth 4: cells ~4° apart; measured 3.6°, 73 %


def test_semi_amortized_search_replaces_wrong_poses(tmp_path):
    """In an epoch of ``search_epochs`` (counted from the switch) a particle's first step searches the grid under
    the current map: particles whose best head is wrong (random here) move near their true pose. In the other
    epochs only the local pose steps run, which cannot repair them."""
    from cryopose.methods.semi_amortized import SemiAmortized, SemiAmortizedConfig
    from cryopose.models.poses import PoseTable

    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=64, snr=1.0, seed=6), tmp_path)
    table = read_particles(tmp_path / "particles.star")
    dataset = ParticleDataset(table)
    batch = dataset.__getitems__(np.arange(64))
    sigma = noise_sigma(batch["images"])
    cfg = SemiAmortizedConfig(heads=2, encoder="light", search_epochs=(1,), marginal_epochs=0, pose_steps=1,
                              lr_decoder_direct=0.0, resolution_start_A=None)  # the whole band at the switch
    method = SemiAmortized(cfg, 64, 32, table.apix, sigma, torch.device("cpu"))
    truth = torch.tensor(np.array(read_map(tmp_path / "ground_truth.mrc").data), dtype=torch.float64)
    method.volume.set_hartley(hartley3_centered(truth) / (dataset.std * sigma))  # normalised, whitened units
    method.best_rotations = roma.random_rotmat(64, generator=torch.Generator().manual_seed(1))
    true_rotations = torch.from_numpy(table.rotations).float()
    errors = []
    for epoch in (cfg.switch_epoch, cfg.switch_epoch + 1):  # the switch (poses from the random best heads), then
        method.begin_epoch(epoch)                             # the search epoch
        assert isinstance(method.table, PoseTable)
        errors.append(_errors(method.table.all_rotations(), true_rotations))
        method.step(batch)
    after = _errors(method.table.all_rotations(), true_rotations)
    assert errors[0].median() > 60 and errors[1].median() > 60  # no search in the first direct epoch
    assert bool((method.searched_at == cfg.switch_epoch + 1).all())
    assert after.median() < 6 and (after < 15).float().mean() > 0.85  # depth-4 cells are ~4° apart


@pytest.mark.slow
def test_a_finer_start_finds_the_right_basin_more_often(problem):
    """Starting from all 576 cells of level 1 (scored at low frequencies only) instead of the 72 base cells."""
    cost, truth = problem
    initial = roma.random_rotmat(len(truth), generator=torch.Generator().manual_seed(3))
    shares = []
    for level, radius in ((0, None), (1, 8.0)):
        found, _ = grid_search(cost, len(truth), width=2, depth=4, explore=True, start_level=level,
                               start_cost=partial(cost, radius=radius), initial=initial)
        shares.append(float((_errors(found, truth) < 10).float().mean()))
    assert shares[0] < 0.8 and shares[1] > 0.9, shares  # measured 61 % and 95 % within 10°


def test_an_incumbent_pose_is_kept_when_the_search_does_no_better(problem):
    cost, truth = problem
    grid = {"width": 1, "depth": 3, "explore": True}
    initial = roma.random_rotmat(len(truth), generator=torch.Generator().manual_seed(4))
    alone, alone_cost = grid_search(cost, len(truth), **grid, initial=initial)
    held, held_cost = grid_search(cost, len(truth), **grid, initial=initial, incumbent=truth)
    truth_cost = cost(truth[:, None]).squeeze(1)
    torch.testing.assert_close(held_cost, torch.minimum(alone_cost, truth_cost))
    kept = truth_cost < alone_cost
    assert kept.float().mean() > 0.3  # a narrow, shallow search often does worse than the true pose
    assert _errors(held[kept], truth[kept]).max() < 1e-3


def test_shift_search_recovers_shifts_and_the_rotations_they_hid(shifted):
    """Encoder-like starting poses: rotations 20° off, shifts 1.5 px (RMS per axis) off. With the shift searches
    (at the start level's best cell, at the grid's best rotation) the shifts end within a fraction of a pixel
    and the rotations as good as the search does at the true shifts (measured 0.16 px, 2.1°, 73 % within 5°);
    searched at the starting shifts the rotations are far off (~30°)."""
    cost, truth, true_shifts, apix = shifted
    gen = torch.Generator().manual_seed(1)
    axis = torch.nn.functional.normalize(torch.randn(len(truth), 3, generator=gen), dim=-1)
    initial = roma.rotvec_to_rotmat(axis * np.deg2rad(20)) @ truth
    start = true_shifts + 1.5 * apix * torch.randn(len(truth), 2, generator=gen)
    cfg = BeamSearchConfig(shift_step=apix, shift_limit=8 * apix)

    def at_start(rotations, radius=None, shifts=None):
        return cost(rotations, radius, start[:, None] if shifts is None else shifts)

    rotations, shifts, costs = beam_search(at_start, len(truth), cfg, initial=initial, shifts=start)
    miss = (shifts - true_shifts).norm(dim=-1) / apix  # pixels
    err = _errors(rotations, truth)
    assert miss.median() < 0.3 and (miss < 1).float().mean() > 0.85, (miss.median(), (miss < 1).float().mean())
    assert err.median() < 2.5 and (err < 5).float().mean() > 0.65, (err.median(), (err < 5).float().mean())
    fixed, _, _ = beam_search(at_start, len(truth), cfg, initial=initial)  # no shift search
    assert _errors(fixed, truth).median() > 5 * err.median()
    shifts_cost = cost(rotations[:, None], shifts=shifts[:, None]).squeeze(1)
    torch.testing.assert_close(costs, shifts_cost)


def test_search_supervised_step_searches_shifts_and_supervises_the_encoder_with_them(tmp_path):
    """One search step under the true map, from an untrained encoder (shifts ~0): the stored shifts are the
    searched ones, within a pixel of the truth for most particles (measured 0.17 px median, 88 % within 1 px),
    and the rotations are found (random-pose start; measured 3.1° median)."""
    from cryopose.methods.search_supervised import SearchSupervised, SearchSupervisedConfig

    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=64, snr=1.0, seed=8, shift_std_px=1.5), tmp_path)
    table = read_particles(tmp_path / "particles.star")
    dataset = ParticleDataset(table)
    batch = dataset.__getitems__(np.arange(64))
    sigma = noise_sigma(batch["images"])
    cfg = SearchSupervisedConfig(encoder="light", shifts=True, denoiser_factor=0, resolution_start_A=None,
                                 beam_depth=4, gd_steps=5, lr_decoder=0.0)
    method = SearchSupervised(cfg, 64, 32, table.apix, sigma, torch.device("cpu"))
    truth = torch.tensor(np.array(read_map(tmp_path / "ground_truth.mrc").data), dtype=torch.float64)
    method.volume.set_hartley(hartley3_centered(truth) / (dataset.std * sigma))  # normalised, whitened units
    method.begin_epoch(0)
    before = method.encoder(batch["images"])[1][:, 0].detach()
    record = method.step(batch)
    rotations, shifts = method.poses()
    miss = np.linalg.norm(shifts - table.shifts_A, axis=1) / table.apix
    start = (before.double().numpy() - table.shifts_A)
    assert np.median(np.linalg.norm(start, axis=1)) / table.apix > 1.2  # the encoder's shifts: ~0
    assert np.median(miss) < 0.4 and (miss < 1).mean() > 0.7, (np.median(miss), (miss < 1).mean())
    err = _errors(torch.from_numpy(rotations).float(), torch.from_numpy(table.rotations).float())
    assert err.median() < 6, err.median()
    assert record["supervision"] > 0
