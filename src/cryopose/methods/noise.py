"""The images' noise model: the standard deviation of the noise per Fourier coefficient, per resolution shell.

Both methods whiten their data terms by it (:func:`cryopose.methods.losses.target_spectra` and the decoder's
renders), and so do the pose refinements after training. ``white``: one σ for every coefficient, from the outer
shells (:func:`cryopose.methods.losses.noise_sigma`). ``shell``: σ per shell, first from the images outside the
particle (a soft-edged disc), then, after training, from the residuals of the images under the map at their poses, as
RELION estimates its noise spectrum. Real noise is coloured (its power falls with frequency; ice adds a ring): one σ
weights the low frequencies wrongly, in the loss and in every pose search.

A noise model is a grid ``(D, D)`` of σ on the centred spectrum (constant for ``white``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset, make_loader
from ..physics.fourier import fft2_centered, frequency_grid_2d, hartley3_centered
from ..physics.projection import circular_mask, render
from .config import NOISE_MODELS
from .losses import noise_sigma, pixel_shells, shell_mean


def shell_grid(shell_sigma: Tensor, box: int) -> Tensor:
    """σ per shell ``(D//2 + 1,)`` spread over the centred spectrum: ``(D, D)`` float32."""
    return shell_sigma.float()[pixel_shells(box, shell_sigma.device)].view(box, box)


def white_model(images: Tensor) -> Tensor:
    """One σ for every coefficient (:func:`noise_sigma`) from images ``(B, D, D)``: ``(D, D)``."""
    box = images.shape[-1]
    return torch.full((box, box), noise_sigma(images), device=images.device)


def outside_model(images: Tensor, radius_px: float | None = None) -> Tensor:
    """σ per shell ``(D, D)`` from the images ``(B, D, D)`` outside a disc of ``radius_px`` (default 0.4·D) about the
    centre, with a cosine edge of 0.05·D: the power of the masked images per shell, divided by the mask's mean
    square (stationary noise keeps its spectrum under a window, smoothed by the window's transform)."""
    box = images.shape[-1]
    radius = 0.4 * box if radius_px is None else radius_px
    edge = 0.05 * box
    r = frequency_grid_2d(box, 1.0 / box, device=images.device).norm(dim=-1)  # (D, D) pixels
    mask = 0.5 - 0.5 * torch.cos(torch.pi * ((r - radius) / edge).clamp(0, 1))  # 0 inside, 1 beyond the edge
    power = fft2_centered(images * mask).abs().square().flatten(-2) / mask.square().mean()
    every = torch.arange(box * box, device=images.device)
    return shell_grid(shell_mean(power, every, box).sqrt(), box)


def reference_sigma(model: Tensor) -> float:
    """One σ for the model ``(D, D)``: its RMS over the coefficients beyond 0.8 Nyquist (the white estimate's
    shells), the unit of the methods' whitened volumes."""
    box = model.shape[-1]
    ring = circular_mask(box, device=model.device) & ~circular_mask(box, 0.8 * box / 2, device=model.device)
    return float(model[ring].square().mean().sqrt())


def initial_model(kind: str, images: Tensor) -> Tensor:
    """The noise model ``kind`` (:data:`NOISE_MODELS`) ``(D, D)`` from a sample of images ``(B, D, D)``."""
    if kind == "white":
        return white_model(images)
    if kind == "shell":
        return outside_model(images)
    raise ValueError(f"unknown noise model {kind!r} (use {' or '.join(NOISE_MODELS)})")


@torch.no_grad()
def residual_model(dataset: ParticleDataset, density: Tensor, rotations: np.ndarray, shifts_A: np.ndarray | None,
                   model: Tensor, sample: int = 1024, batch: int = 256, seed: int = 0,
                   device: torch.device | str = "cpu", keep: np.ndarray | None = None) -> Tensor:
    """σ per shell ``(D, D)`` from the residuals ``Y − a·CTF·P(map)`` of up to ``sample`` particles (among ``keep``
    ``(N,)`` bool, default all) under the map ``density`` ``(D, D, D)`` at their rotations ``(N, 3, 3)`` and origins
    ``(N, 2)`` Å, with each image's amplitude ``a`` fitted by least squares in the whitened units of ``model``
    ``(D, D)``. Shells the map does not reach (all zero) keep ``model``'s σ."""
    box = dataset.box
    volume = hartley3_centered(density.double()).float().to(device)
    among = np.arange(len(dataset)) if keep is None else np.flatnonzero(keep)
    pick = np.sort(np.random.default_rng(seed).choice(among, min(sample, len(among)), replace=False))
    w2 = model.flatten().to(device).square().reciprocal()  # whitening weights of the amplitude fit
    total, count = torch.zeros(box // 2 + 1, dtype=torch.float64, device=device), 0
    reached = torch.zeros(box // 2 + 1, dtype=torch.bool, device=device)
    every = torch.arange(box * box, device=device)
    for b in make_loader(dataset, batch, sampler=pick):
        i = b["index"].numpy()
        rot = torch.as_tensor(rotations[i], dtype=torch.float32, device=device)
        shift = None if shifts_A is None else torch.as_tensor(shifts_A[i], dtype=torch.float32, device=device)
        pred = render(volume, rot, dataset.pixel_size_A, ctf=b["ctf"].to(device), shifts_A=shift,
                      real_space=False).flatten(-2)
        y = fft2_centered(b["images"].to(device)).flatten(-2)
        a = (pred.conj() * y * w2).real.sum(-1) / (pred.abs().square() * w2).sum(-1).clamp(min=1e-12)
        residual = (y - a[:, None] * pred).abs().square()
        total += shell_mean(residual, every, box) * len(i)
        reached |= shell_mean(pred.abs().square(), every, box) > 0
        count += len(i)
    old = model.flatten().to(device)
    new = shell_grid((total / count).sqrt(), box).flatten()
    return torch.where(reached[pixel_shells(box, device)], new, old).view(box, box)


def shell_profile(model: Tensor) -> list[float]:
    """σ per shell ``(D//2 + 1)`` of a model ``(D, D)``, relative to :func:`reference_sigma` (for the log)."""
    box = model.shape[-1]
    every = torch.arange(box * box, device=model.device)
    return [round(float(v), 4) for v in shell_mean(model.flatten()[None], every, box) / reference_sigma(model)]
