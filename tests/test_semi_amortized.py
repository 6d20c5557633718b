"""Semi-amortized reconstruction on small data (32 px, 1,000 images): stage 2 from a map such as stage 1 leaves it,
and the whole job through both stages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import roma
import torch

from cryopose.evaluate.measure import evaluator
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map
from cryopose.jobs.reconstruct import ReconstructOptions, reconstruct
from cryopose.methods.losses import noise_sigma, signal_shell_rms, target_spectra
from cryopose.methods.semi_amortized import SemiAmortized, SemiAmortizedConfig
from cryopose.physics.fourier import hartley3_centered, radius_grid
from cryopose.simulation.simulate import SimulationConfig, simulate
from cryopose.train.loop import LoopConfig, train
from cryopose.train.run_dir import MetricsLog


@pytest.mark.slow
def test_direct_stage_from_a_20A_map_finds_the_poses_and_sharpens_the_map(tmp_path):
    """Stage 1 hands over a map fitted up to 20 Å and poses mostly wrong (random here); the search of the first
    direct epoch puts most particles near their pose (scored up to 20 Å, the band at the switch), and the
    per-particle pose steps and volume steps, the band widening over 3 epochs, then take the map from 20 Å to
    under 10 Å. The epoch logs the share of the searched particles whose pose the search replaced. Measured: 19.9,
    18.6, 17.5, 16.6, 10.3, 9.3, 8.8 Å; median pose error 131° → 8.5° after the search, 8.4° at the end (62 % within
    10°; the map, fitted by 750 Adam steps, still limits the poses)."""
    data, run = tmp_path / "data", tmp_path / "run"
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=1000, snr=0.5, seed=2), data)
    run.mkdir()
    table = read_particles(data / "particles.star")
    dataset = ParticleDataset(table)
    stats = dataset.__getitems__(np.arange(256))
    sigma = noise_sigma(stats["images"])
    init_rms = signal_shell_rms(stats["images"], stats["ctf"], table.apix, sigma)
    cfg = SemiAmortizedConfig(heads=2, switch_epoch=0, marginal_epochs=0, search_epochs=(0,))
    method = SemiAmortized(cfg, len(dataset), 32, table.apix, sigma, torch.device("cpu"), init_rms=init_rms)
    truth = torch.tensor(np.array(read_map(data / "ground_truth.mrc").data), dtype=torch.float64)
    inside = radius_grid(32) <= method.radius_start  # the 20 Å band; beyond it the decoder as initialised
    method.volume.set_hartley(torch.where(inside, hartley3_centered(truth) / (dataset.std * sigma),
                                          method.volume.hartley().double()))
    method.best_rotations = roma.random_rotmat(len(dataset), generator=torch.Generator().manual_seed(0))
    measure = evaluator(table.apix, truth.float(), table.rotations)
    records = [measure(method.density(), *method.poses())]

    def hook(epoch: int, m: SemiAmortized) -> dict:
        records.append(measure(m.density(), *m.poses()))
        return records[-1]

    train(method, dataset, run, LoopConfig(epochs=6, batch=8), torch.device("cpu"), MetricsLog(run / "log.jsonl"),
          on_epoch_end=hook)
    resolution = [r["resolution_0.5_A"] for r in records]
    median = [r["pose_error_median_deg"] for r in records]
    assert resolution[0] > 18 and median[0] > 90
    assert all(b < a for a, b in zip(resolution, resolution[1:]))  # sharper every epoch
    assert resolution[-1] < 10 and median[1] < 10 and median[-1] < 10
    assert records[-1]["pose_within_10deg"] > 0.55
    logged = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    assert logged[0]["search_replaced"] > 0.9  # from random poses the search moves almost every particle
    assert all("search_replaced" not in r for r in logged[1:])  # logged in search epochs only


@pytest.mark.slow
def test_both_stages_from_nothing_reach_the_poses_by_repeated_searches(tmp_path):
    """The whole job from a random start, without marginal epochs. Stage 1 (8 epochs, 1,000 steps) fits a 20 Å map
    but its encoder learns no poses (median ~125°, as random); after the switch, a global search every other epoch
    re-poses the particles under a map that each search and the pose and volume steps in between sharpen. Measured
    on one thread (data seeds 2 / 3): 21.9 / 21.7 Å and 125° / 125° at the switch; medians after the searches 81,
    29, 21, 16, 12° and at the end 11.2° / 13.2° (43 % / 37 % within 10°), maps 8.2 / 8.4 Å; seed 2 on two threads
    (other rounding, another path): 14.5°, 27 %, 9.0 Å. With a single search (8 + 6 epochs) the median ended at
    98°. It runs with the white noise model these were measured with (at a later commit, two threads: 15.3°, 8.9 Å;
    the shell model's path on the same white-noise data: 18.5° on two threads, 32.6° on one; white 20.6° on one)."""
    data, run = tmp_path / "data", tmp_path / "run"
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=1000, snr=0.5, seed=2), data)
    reconstruct(data / "particles.star", run, ReconstructOptions(
        epochs=20, batch=8, ref=data / "ground_truth.mrc", relax_symmetry=False, noise_model="white",
        method_options={"switch_epoch": 8, "marginal_epochs": 0, "search_epochs": (0, 2, 4, 6, 8)}))
    records = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["kind"] == "epoch"]
    switch, last = records[7], records[-1]
    assert switch["stage"] == "amortized" and last["stage"] == "direct"
    assert switch["resolution_0.5_A"] > 20 and switch["pose_error_median_deg"] > 100
    assert last["resolution_0.5_A"] < 10 and last["pose_error_median_deg"] < 18
    assert last["pose_within_10deg"] > 0.2


def test_head_shares_of_an_epoch_resumed_midway_count_every_batch(tmp_path):
    """The share of images won by each head (cryoSPIN Fig. 5) covers the whole epoch when the run was
    checkpointed and resumed inside it."""
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=64, snr=1.0, seed=3), tmp_path)
    dataset = ParticleDataset(read_particles(tmp_path / "particles.star"))
    batches = [dataset.__getitems__(np.arange(i, i + 16)) for i in range(0, 64, 16)]
    cfg = SemiAmortizedConfig(heads=3, switch_epoch=2)

    def fresh() -> SemiAmortized:
        return SemiAmortized(cfg, len(dataset), 32, dataset.pixel_size_A, 1.0, torch.device("cpu"))

    method = fresh()
    method.begin_epoch(0)
    for batch in batches[:2]:
        method.step(batch)
    resumed = fresh()  # the checkpoint taken after two of the four batches, loaded the way train() resumes
    resumed.load_state_dict(method.state_dict())
    resumed.begin_epoch(0)
    for batch in batches[2:]:
        resumed.step(batch)
    assert int(resumed.wins.sum()) == 64
    share = resumed.end_epoch(0)["head_share"]
    assert len(share) == 3 and abs(sum(share) - 1.0) < 1e-3
    assert int(resumed.wins.sum()) == 0  # the next epoch counts afresh


def _with_true_map(tmp_path, cfg: SemiAmortizedConfig, n: int = 48, shift_std_px: float = 0.0):
    """A method switched to stage 2 on small simulated data, its volume the true map (whitened units)."""
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=n, snr=1.0, seed=5, shift_std_px=shift_std_px),
             tmp_path)
    table = read_particles(tmp_path / "particles.star")
    dataset = ParticleDataset(table)
    sigma = noise_sigma(dataset.__getitems__(np.arange(n))["images"])
    method = SemiAmortized(cfg, n, 32, table.apix, sigma, torch.device("cpu"))
    truth = torch.tensor(np.array(read_map(tmp_path / "ground_truth.mrc").data), dtype=torch.float64)
    method.volume.set_hartley(hartley3_centered(truth) / (dataset.std * sigma))
    method.best_rotations = roma.random_rotmat(n, generator=torch.Generator().manual_seed(1))
    method.begin_epoch(cfg.switch_epoch)
    return method, dataset, table


def test_stage_2_shifts_step_in_pixels_not_at_the_rotation_rate(tmp_path):
    cfg = SemiAmortizedConfig(heads=2, switch_epoch=0, shifts=True)
    method, _, table = _with_true_map(tmp_path, cfg, n=8)
    assert method.opt_pose.lr == [cfg.lr_pose, pytest.approx(cfg.lr_shift_px * table.apix)]


def test_a_search_that_replaces_a_pose_forgets_its_adam_moments(tmp_path):
    """Particles moved by the global search start their pose steps afresh; one the search leaves in place keeps
    its moments."""
    cfg = SemiAmortizedConfig(heads=2, switch_epoch=0, search_epochs=(0,))
    method, dataset, table = _with_true_map(tmp_path, cfg)
    index = torch.arange(len(dataset))
    batch = dataset.__getitems__(index.numpy())
    target = target_spectra(batch["images"], method.sigma, method.mask_index)
    method.search(batch, target, index, method.volume.hartley().detach())
    truth = torch.as_tensor(table.rotations, dtype=torch.float32)
    found = roma.rotmat_geodesic_distance(method.table.all_rotations(), truth) < math.radians(10)
    assert float(found.float().mean()) > 0.8  # the search finds the poses
    method.table.base[1:] = roma.random_rotmat(len(dataset) - 1, generator=torch.Generator().manual_seed(2))
    for moments in method.opt_pose.exp_avg + method.opt_pose.exp_avg_sq:
        moments.fill_(1.0)
    method.opt_pose.steps.fill_(7)
    method.search(batch, target, index, method.volume.hartley().detach())  # particle 0 is where it was found
    assert method.opt_pose.steps.tolist() == [7] + [0] * (len(dataset) - 1)
    assert float(method.opt_pose.exp_avg[0][1:].abs().sum()) == 0.0
    assert float(method.opt_pose.exp_avg[0][0].abs().sum()) > 0


def test_a_marginal_step_weights_the_volume_step_by_each_images_posterior_over_the_grid(tmp_path):
    """In a ``marginal`` epoch each image is scored at the 4,608 rotations of grid level 2 (about 15° apart) under
    the current map within the band (20 Å); the volume steps on the posterior-weighted loss and the particle takes
    its most probable rotation. Under the true map (SNR 1) that rotation is near the truth, and the posterior is
    spread over several rotations (its best holds less than all)."""
    cfg = SemiAmortizedConfig(heads=2, switch_epoch=0, marginal_epochs=1)
    method, dataset, table = _with_true_map(tmp_path, cfg)
    assert [method.stage(e) for e in (0, 1)] == ["marginal", "direct"] and len(method.grid) == 4608
    index = torch.arange(len(dataset))
    before = method.volume.hartley().detach().clone()
    method.step({**dataset.__getitems__(index.numpy()), "index": index})
    error = roma.rotmat_geodesic_distance(method.table.all_rotations(), torch.as_tensor(table.rotations).float())
    assert float(torch.rad2deg(error).median()) < 12
    assert 0.1 < method.end_epoch(0)["top_posterior"] < 0.9
    assert not torch.equal(before, method.volume.hartley().detach())


@pytest.mark.parametrize("marginal_epochs", [0, 2])
def test_marginal_epochs_start_the_shifts_at_the_picked_centres(marginal_epochs):
    """The marginal epochs replace the encoder's poses, shifts included: after the switch the particles' shifts are
    zero with them, the best heads' without."""
    cfg = SemiAmortizedConfig(heads=2, switch_epoch=1, marginal_epochs=marginal_epochs, shifts=True)
    method = SemiAmortized(cfg, 6, 32, 3.0, 1.0, torch.device("cpu"))
    method.best_shifts.copy_(torch.arange(12.0).view(6, 2))
    method.begin_epoch(1)
    expected = torch.zeros(6, 2) if marginal_epochs else torch.arange(12.0).view(6, 2)
    assert torch.equal(method.table.shift, expected)
    assert method.stage(1) == ("marginal" if marginal_epochs else "direct")


def test_marginal_epochs_walk_each_shift_a_pixel_at_a_time_towards_its_own(tmp_path):
    """With shifts the marginal step also marginalises over a 3 × 3 grid of 1 px steps around each particle's shift
    (zero at first): under the true map (SNR 1, shifts of 1.5 px standard deviation) the shifts walk towards the
    truth epoch by epoch, and the rotations with them (measured: median shift error 4.95, 2.21, 1.51, 1.44 Å; the
    grid's steps are 3 Å; rotations 9.4°)."""
    cfg = SemiAmortizedConfig(heads=2, switch_epoch=0, marginal_epochs=3, shifts=True)
    method, dataset, table = _with_true_map(tmp_path, cfg, shift_std_px=1.5)
    index = torch.arange(len(dataset))
    batch = {**dataset.__getitems__(index.numpy()), "index": index}
    true_shifts = torch.as_tensor(table.shifts_A).float()
    shift_errors = [float((method.table.shift - true_shifts).norm(dim=1).median())]
    for epoch in range(3):
        method.begin_epoch(epoch)
        method.step(batch)
        shift_errors.append(float((method.table.shift - true_shifts).norm(dim=1).median()))
    error = roma.rotmat_geodesic_distance(method.table.all_rotations(), torch.as_tensor(table.rotations).float())
    assert all(b < a for a, b in zip(shift_errors, shift_errors[1:]))
    assert shift_errors[0] > 4 and shift_errors[-1] < 1.8
    assert float(torch.rad2deg(error).median()) < 12
