"""How well each particle's image fits the final map at its pose: the score that flags junk (ice, carbon,
aggregates) among the picks.

The score is the share of the image's power (whitened Fourier coefficients up to ``resolution_A``) that the map's
projection at the particle's pose explains, ``1 − ‖Y − a·Ŷ‖² / ‖Y‖²`` with the amplitude ``a`` fitted, minus the
population's median: an image of noise only and an image of something else (ice, carbon) are both explained by
no projection and score low, where the residual alone would pass the noise-only image as a perfect fit.
``reconstruct`` writes it to ``poses.star`` as ``rlnLogLikeliContribution`` (larger is better).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset, make_loader
from ..physics.fourier import hartley3_centered
from ..physics.projection import circular_mask
from .losses import fitted_residual, target_spectra


@torch.no_grad()
def fit_scores(dataset: ParticleDataset, density: Tensor, rotations: np.ndarray, shifts_A: np.ndarray | None,
               sigma: float | Tensor, resolution_A: float | None = None, batch: int = 256,
               device: torch.device | str = "cpu") -> np.ndarray:
    """Scores ``(N,)`` of the particles (module doc) under the map ``density`` ``(D, D, D)`` at their rotations
    ``(N, 3, 3)`` and origins ``(N, 2)`` Å; ``sigma``: noise standard deviation per Fourier coefficient."""
    volume = hartley3_centered(density.double()).float().to(device)
    radius = None if resolution_A is None else dataset.box * dataset.pixel_size_A / resolution_A
    pixels = torch.nonzero(circular_mask(dataset.box, radius, device=device).flatten()).squeeze(1)
    rot = torch.as_tensor(rotations, dtype=torch.float32)
    shift = None if shifts_A is None else torch.as_tensor(shifts_A, dtype=torch.float32)
    out = np.empty(len(dataset))
    for b in make_loader(dataset, batch):
        i = b["index"]
        images = {"images": b["images"].to(device), "ctf": b["ctf"].to(device)}
        residual = fitted_residual(volume, images, rot[i][:, None].to(device),
                                   None if shift is None else shift[i][:, None].to(device),
                                   dataset.pixel_size_A, sigma, pixels)
        power = target_spectra(images["images"], sigma, pixels).abs().square().sum(-1)
        out[i.numpy()] = (1 - residual[:, 0] / power.clamp(min=1e-12)).double().cpu().numpy()
    return out - np.median(out)


def worst(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Boolean ``(N,)``: the ``fraction`` of the particles with the lowest scores."""
    if not 0 <= fraction < 1:
        raise ValueError(f"the fraction excluded must be in [0, 1), not {fraction}")
    return scores < np.quantile(scores, fraction) if fraction > 0 else np.zeros(len(scores), dtype=bool)
