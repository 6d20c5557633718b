"""Gold-standard scoring: each half of the particles refined and scored against the map of the other half.

A particle's own image in the map it is scored against pulls its pose towards where it already is; scored against
the map of the other half (the even particles against the odd ones' map and back), as RELION's auto-refine does, it
is not. The map is weighted shell by shell by the FSC of the two halves (its expected signal share, a Wiener filter)
so that the noise of its high frequencies does not decide the scoring. The halves take turns (Gauss–Seidel): the
even particles are scored against the odd map and their map is rebuilt, then the odd particles against that.

:func:`local_refine` is that refinement for every particle's one pose after training: a run's map is the decoder's,
fitted to the very poses it is scored with, and its poses settle a few degrees from where the data put them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset, make_loader
from ..physics.fourier import hartley3_centered, shell_index
from ..physics.fsc import fsc
from ..physics.projection import circular_mask
from ..progress import progress
from .backprojection import backproject_dataset
from .losses import fitted_residual


def half_map(dataset: ParticleDataset, half: int, poses: list[Tensor], shifts: list[Tensor] | None,
             weights: Tensor, batch: int, device, symmetry: Tensor | None = None) -> Tensor:
    """Map ``(D, D, D)`` of the particles of one half (``index % 2 == half``), each inserted at its ``n`` candidate
    poses (``poses``, ``shifts``: ``n`` tensors ``(N, 3, 3)``, ``(N, 2)`` Å) with ``weights`` ``(N, n)``, with the
    point group ``symmetry`` ``(G, 3, 3)`` imposed (None: C1)."""
    return backproject_dataset(dataset, torch.stack(poses, 1), None if shifts is None else torch.stack(shifts, 1),
                               weights=weights, half=half, batch=batch, symmetry=symmetry, device=device)[0]


def refine_and_score(dataset: ParticleDataset, half: int, other_map: Tensor, shell_weights: Tensor,
                     poses: list[Tensor], shifts: list[Tensor] | None, sigma: float | Tensor, lr: float, steps: int,
                     resolution_A: float | None, batch: int, device) -> Tensor:
    """Log-likelihood ``(⌈(N − half) / 2⌉, n)`` of each candidate pose of the particles of one half, in index order,
    scored against ``other_map`` ``(D, D, D)`` with each Fourier shell weighted by ``shell_weights`` ``(D//2 + 1,)``
    (Gaussian noise ``sigma`` per Fourier coefficient, amplitude fitted per candidate), up to ``resolution_A`` (None:
    Nyquist). The candidates are first refined against that map by ``steps`` Adam steps of rate ``lr`` (radians;
    shifts the same at half the box), in place in ``poses`` and ``shifts``."""
    weights = shell_weights.to(other_map.device)
    shell = shell_index(dataset.box, other_map.device).clamp(max=len(weights) - 1)
    volume = (hartley3_centered(other_map.double()) * weights[shell]).float().to(device)
    radius = None if resolution_A is None else dataset.box * dataset.pixel_size_A / resolution_A
    pixels = torch.nonzero(circular_mask(dataset.box, radius, device=device).flatten()).squeeze(1)
    n, out = len(poses), []
    for b in make_loader(dataset, batch, sampler=range(half, len(dataset), 2)):
        keep = b["index"]
        b = {"images": b["images"].to(device), "ctf": b["ctf"].to(device)}
        rot = torch.stack([p[keep] for p in poses], 1).to(device)
        shift = None if shifts is None else torch.stack([s[keep] for s in shifts], 1).to(device)
        if steps:
            turn = torch.zeros(len(keep), n, 3, device=device, requires_grad=True)
            move = torch.zeros(len(keep), n, 2, device=device, requires_grad=shift is not None)
            opt = torch.optim.Adam([{"params": [turn], "lr": lr},
                                    {"params": [move], "lr": lr * dataset.box * dataset.pixel_size_A / 2}])
            for _ in range(steps):
                opt.zero_grad()
                fitted_residual(volume, b, rot @ roma.rotvec_to_rotmat(turn), None if shift is None else shift + move,
                                dataset.pixel_size_A, sigma, pixels).sum().backward()
                opt.step()
            rot = rot @ roma.rotvec_to_rotmat(turn.detach())
            for i, p in enumerate(poses):
                p[keep] = rot[:, i].to(p)
            if shift is not None:
                shift = shift + move.detach()
                for i, s in enumerate(shifts):
                    s[keep] = shift[:, i].to(s)
        with torch.no_grad():
            cost = fitted_residual(volume, b, rot, shift, dataset.pixel_size_A, sigma, pixels)
        out.append(-0.5 * cost.cpu())
    return torch.cat(out)


def round_in_turns(dataset: ParticleDataset, maps: list[Tensor], poses: list[Tensor], shifts: list[Tensor] | None,
                   p: Tensor, sigma: float | Tensor, lr: float, steps: int, resolution_A: float | None, batch: int,
                   device, symmetry: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
    """One round in turns (module doc) over the ``n`` candidate poses of every particle: each half refined and scored
    against the other's ``maps`` (two ``(D, D, D)``, FSC-weighted here), its weights ``p`` ``(N, n)`` replaced by the
    posterior over its candidates and its map rebuilt with them (point group ``symmetry`` imposed; only the particles
    ``keep`` ``(N,)`` bool, default all, enter the maps), all in place. Returns the weights before the round."""
    before = p.clone()
    for half in (0, 1):
        weights = fsc(maps[0], maps[1])[1].clamp(0, 1)  # per shell: the other map's expected signal share
        p[half::2] = torch.softmax(refine_and_score(dataset, half, maps[1 - half], weights, poses, shifts, sigma, lr,
                                                    steps, resolution_A, batch, device), dim=1)
        if keep is not None:
            p[half::2] *= keep[half::2, None]
        maps[half] = half_map(dataset, half, poses, shifts, p, batch, device, symmetry)
    return before


@dataclass(frozen=True)
class LocalRefineConfig:
    """Settings of :func:`local_refine`: ``rounds`` of ``steps`` Adam steps per pose at rate ``lr`` (radians; shifts
    the same at half the box) in the first round, halved every round so that the poses settle; ``resolution_A``:
    highest resolution refined (None: Nyquist); ``batch``: images per batch."""

    rounds: int = 5
    steps: int = 5
    lr: float = 0.02
    resolution_A: float | None = None
    batch: int = 256


def local_refine(dataset: ParticleDataset, rotations: np.ndarray, shifts_A: np.ndarray | None, sigma: float | Tensor,
                 cfg: LocalRefineConfig = LocalRefineConfig(), device: torch.device | str = "cpu",
                 symmetry: Tensor | None = None,
                 keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Rotations ``(N, 3, 3)`` and origins ``(N, 2)`` Å refined locally against the half maps (module doc), and a
    record: the median turn of the poses in each round (degrees, over the particles kept). ``sigma``: noise per
    Fourier coefficient; ``symmetry``: a point group ``(G, 3, 3)`` imposed on the half maps (the poses in its frame),
    or None; ``keep``: boolean ``(N,)``, the particles that enter the half maps (default all; junk is left out)."""
    poses = [torch.tensor(rotations, dtype=torch.float32)]  # refined in place
    shifts = None if shifts_A is None else [torch.tensor(shifts_A, dtype=torch.float32)]
    kept = torch.ones(len(dataset), dtype=torch.bool) if keep is None else torch.as_tensor(keep)
    p = kept[:, None].float()
    maps = [half_map(dataset, half, poses, shifts, p, cfg.batch, device, symmetry) for half in (0, 1)]
    turned = []
    for r in progress(range(cfg.rounds), desc="local refinement", unit="round"):
        before = poses[0].clone()
        round_in_turns(dataset, maps, poses, shifts, p, sigma, cfg.lr * 0.5**r, cfg.steps, cfg.resolution_A,
                       cfg.batch, device, symmetry, kept.float())
        turn = roma.rotmat_geodesic_distance(before[kept], poses[0][kept])
        turned.append(round(float(turn.median().rad2deg()), 3))
    return (poses[0].double().numpy(), None if shifts is None else shifts[0].double().numpy(),
            {"rounds": cfg.rounds, "median_turn_deg": turned})
