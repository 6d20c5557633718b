"""Search-supervised (Cryo2SSNet) pieces that the end-to-end tests in test_reconstruct.py do not isolate."""

from __future__ import annotations

import roma
import torch

from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.methods.search_supervised import SearchSupervised, SearchSupervisedConfig
from cryopose.physics.fourier import ifft2_centered, radius_grid
from cryopose.physics.projection import render
from cryopose.simulation.simulate import SimulationConfig, simulate


def test_denoised_search_cost_sees_only_the_current_band(tmp_path):
    """Coefficients beyond the band are still at their random start: the denoised cost must not render them
    (it did: the same candidates scored differently when only those coefficients changed)."""
    simulate(SimulationConfig(source="demo", box=32, apix=3.0, n=4, snr=1.0, seed=6), tmp_path)
    dataset = ParticleDataset(read_particles(tmp_path / "particles.star"))
    batch = dataset.__getitems__([0, 1, 2, 3])
    torch.manual_seed(0)
    method = SearchSupervised(SearchSupervisedConfig(resolution_start_A=20.0), 4, 32, dataset.pixel_size_A, 1.0,
                              torch.device("cpu"))
    method.set_band(0, 10)  # stage 1 starts at 20 Å: radius 4.8 px
    volume = method.volume.hartley().detach()
    outside = radius_grid(32) > method.radius + 2
    changed = torch.where(outside, 10 * torch.randn(volume.shape), volume)
    clean = method.denoiser(batch["images"])[:, None]
    candidates = roma.random_rotmat(24, generator=torch.Generator().manual_seed(1)).reshape(4, 6, 3, 3)

    def whole_disc(v):  # the cost as it was: every coefficient rendered
        spectra = render(v * method.sigma, candidates, method.apix, ctf=batch["ctf"], real_space=False)
        return (method.denoiser(ifft2_centered(spectra).real) - clean).square().mean((-2, -1))

    assert not torch.allclose(whole_disc(volume), whole_disc(changed))  # the test can tell
    torch.testing.assert_close(method.denoised_cost(volume, candidates, None, batch, clean),
                               method.denoised_cost(changed, candidates, None, batch, clean))
    assert method.denoised_cost(volume, candidates, None, batch, clean).shape == (4, 6)
