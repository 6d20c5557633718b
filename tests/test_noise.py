"""The noise model per resolution shell: estimated from the images outside the particle and from the residuals
under a map, against the spectrum the simulation drew, and the decoder's data term whitened by it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map
from cryopose.methods.decoder import ExplicitDecoder
from cryopose.methods.noise import (
    outside_model,
    residual_model,
    shell_profile,
    white_model,
)
from cryopose.physics.fourier import hartley3_centered
from cryopose.simulation.simulate import SimulationConfig, noise_power, simulate


@pytest.fixture(scope="module")
def pink(tmp_path_factory):
    """600 images of the built-in molecule (32 px, 3 Å/px, SNR 0.1) in pink noise, the truth and the true
    spectrum's σ per shell relative to its reference (``shell_profile``)."""
    data = tmp_path_factory.mktemp("pink")
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=600, snr=0.1, noise_spectrum="pink", seed=3), data)
    table = read_particles(data / "particles.star")
    dataset = ParticleDataset(table)
    truth = torch.tensor(np.array(read_map(data / "ground_truth.mrc").data), dtype=torch.float64)
    true = np.array(shell_profile(torch.from_numpy(noise_power("pink", 32, 3.0)).sqrt().float()))
    return table, dataset, truth, true


def test_outside_and_residual_models_recover_a_pink_spectrum_that_one_sigma_misses(pink):
    """The images outside a disc of 0.4·D, and the residuals under the true map at the true poses, give the drawn
    spectrum within 6 % in every shell from 1 px to Nyquist; one σ from the outer shells is 1.8× too low at 2 px."""
    table, dataset, truth, true = pink
    images = dataset.__getitems__(np.arange(len(dataset)))["images"]
    outside = outside_model(images)
    ratio = np.array(shell_profile(outside))[1:] / true[1:]
    assert np.abs(ratio - 1).max() < 0.06, ratio
    residual = residual_model(dataset, truth.float(), table.rotations, None, outside)
    ratio = np.array(shell_profile(residual))[1:] / true[1:]
    assert np.abs(ratio - 1).max() < 0.06, ratio
    assert true[2] / np.array(shell_profile(white_model(images)))[2] > 1.6


def test_the_decoder_whitens_each_shell_by_the_noise_model(pink):
    """Under the true map at the true poses only noise is left, so the whitened data term is ½ per coefficient
    (unit noise power) when each shell is whitened by its own σ; one σ from the outer shells leaves the low
    shells' noise unwhitened, and the data term is above ½ (measured: 0.50 and 0.69)."""
    table, dataset, truth, _ = pink
    batch = dataset.__getitems__(np.arange(len(dataset)))
    rotations = torch.as_tensor(table.rotations, dtype=torch.float32)[:, None]
    loss = {}
    for name, model in (("shell", outside_model(batch["images"])), ("white", white_model(batch["images"]))):
        dec = ExplicitDecoder(32, 3.0, model, torch.device("cpu"), lr=1e-2, mantissa_exponent=False, init_rms=1.0)
        dec.volume.set_hartley(hartley3_centered(truth) / (dataset.std * dec.sigma))
        with torch.no_grad():
            loss[name] = float(dec.pose_loss(rotations, None, batch, dec.target(batch["images"]),
                                             dec.volume.hartley()).mean())
    assert loss["shell"] == pytest.approx(0.5, abs=0.03)
    assert loss["white"] > 0.6


def test_a_run_logs_its_noise_models_and_the_report_plots_them_against_the_simulated_one(pink, tmp_path):
    """``reconstruct`` logs the noise model it starts from and the one from the residuals after training;
    ``evaluate`` plots both against the spectrum the simulation drew and reports their largest error."""
    from cryopose.jobs.evaluate import evaluate_run
    from cryopose.jobs.reconstruct import ReconstructOptions, reconstruct

    table, _, _, _ = pink
    data = table.source.parent
    run = tmp_path / "run"
    reconstruct(data / "particles.star", run, ReconstructOptions(epochs=1, batch=32, local_rounds=0,
                                                                  relax_symmetry=False))
    result = evaluate_run(run, data / "ground_truth.mrc")
    errors = result["noise"]["max_error_vs_simulation"]
    assert set(errors) == {"start: outside the particle", "after training: residuals"}
    assert errors["start: outside the particle"] < 0.06
    assert (run / "plots" / "noise.png").stat().st_size > 0
