"""Cryo2SSNet's MLP denoiser and its SNR-corrected ("unbiased") L2 loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset, make_loader
from cryopose.methods.losses import noise_sigma
from cryopose.models.denoiser import MLPDenoiser, snr_from_noise, unbiased_l2
from cryopose.simulation.simulate import SimulationConfig, simulate


def test_unbiased_l2_is_the_error_to_the_clean_signal():
    """For I = (d + e)/√(1 + 1/s) with unit-variance signal d and noise variance 1/s: E[loss(I, d)] = 0 and
    E[loss(I, 0)] = E|d|² = 1."""
    gen = torch.Generator().manual_seed(0)
    s = 0.1
    d = torch.randn(2000, 16, 16, generator=gen)
    noisy = (d + torch.randn(2000, 16, 16, generator=gen) / np.sqrt(s)) / np.sqrt(1 + 1 / s)
    assert float(unbiased_l2(noisy, d, s).mean()) == pytest.approx(0.0, abs=0.06)  # 3σ of the estimate
    assert float(unbiased_l2(noisy, torch.zeros_like(d), s).mean()) == pytest.approx(1.0, abs=0.06)


def test_denoiser_trained_on_noisy_images_only_recovers_the_clean_ones(tmp_path):
    config = dict(source="demo", box=32, apix=3.0, n=2000, seed=2, noise_seed=7)
    simulate(SimulationConfig(snr=0.3, **config), tmp_path / "noisy")
    simulate(SimulationConfig(snr=1e6, **config), tmp_path / "clean")  # same poses and CTF, no noise to speak of
    noisy = ParticleDataset(read_particles(tmp_path / "noisy/particles.star"))
    clean = ParticleDataset(read_particles(tmp_path / "clean/particles.star"))
    index = np.arange(256)
    images, truth = noisy.__getitems__(index)["images"], clean.__getitems__(index)["images"]
    snr = snr_from_noise(images, noise_sigma(images))
    assert snr == pytest.approx(0.3, rel=0.25)

    torch.manual_seed(0)
    model = MLPDenoiser(32, factor=8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        for batch in make_loader(noisy, 64, shuffle=True):
            loss = unbiased_l2(batch["images"], model(batch["images"]), 0.3).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    def corr(a, b):
        a, b = a - a.mean((-2, -1), keepdim=True), b - b.mean((-2, -1), keepdim=True)
        return float(((a * b).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1)))).mean())

    with torch.no_grad():
        denoised = model(images)
    assert corr(images, truth) < 0.55  # √(s / (1 + s)) ≈ 0.48 for the raw images
    assert corr(denoised, truth) > corr(images, truth) + 0.2
