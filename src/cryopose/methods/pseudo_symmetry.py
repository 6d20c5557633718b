"""Pseudo-symmetry relaxation: each particle takes its pose or its mate under the map's near-symmetry.

A particle made of nearly identical parts (the two chains of 4AKE, the HSP90 dimer) has a map that almost
superposes on itself under a rotation ``S`` (~180°), and an ab initio run settles in a self-consistent blend: about
half of the particles sit at the pose that shows the other part where the true one should be, and the map is the
average of both senses. The data can still tell them apart (on 4AKE 99 % of the particles fit their true pose
better than its mate under the true map), but the blend gives no asymmetric signal to start from.

We detect ``S`` by superposing the map onto itself (:func:`~cryopose.evaluate.align.near_symmetry`) and, when it
correlates above a threshold, run a two-class expectation-maximisation over {pose, mate} per particle, in the
manner of RELION's ``--relax_sym`` but without a given point group: the even and odd particles are reconstructed
separately, each weighted by the probability of each of its two poses, and each particle is scored against the
map of the *other* half. Without that split a particle's own contribution to the map keeps it where it is and the
blend does not break; with it the asymmetric part of the map grows from the noise, round after round. Each half
can break the symmetry either way; when the two disagree (the total log-likelihood of one half's assignment under
the other's map is negative), the even half is turned round so that both follow one sense.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..evaluate.align import MapAlignment, near_symmetry
from ..io.dataset import ParticleDataset, make_loader
from ..physics.backproject import BackprojectionAccumulator
from ..physics.fourier import hartley3_centered
from ..physics.projection import circular_mask, render
from .losses import target_spectra


@dataclass(frozen=True)
class RelaxConfig:
    """Settings of :func:`relax_pseudo_symmetry`.

    min_correlation: relax only when the map's best self-superposition at least ``exclude_deg`` from the identity
        correlates above this (4AKE's true map 0.91, its blend 0.92).
    exclude_deg: rotations closer than this to the identity (degrees) are not symmetries (a smooth map correlates
        well with itself turned a little: 0.77 at 32° for an early 4AKE map).
    rounds: most EM rounds; ``tolerance``: stop when fewer than this share of particles change side in a round.
    batch: images per batch.
    """

    min_correlation: float = 0.8
    exclude_deg: float = 60.0
    rounds: int = 40
    tolerance: float = 0.005
    batch: int = 256


def _half_maps(dataset: ParticleDataset, poses: tuple[Tensor, Tensor], shifts: tuple[Tensor | None, Tensor | None],
               p_first: Tensor, batch: int, device) -> list[Tensor]:
    """Maps ``(D, D, D)`` of the even and odd particles, each inserted at ``poses[0]`` with weight ``p_first``
    and at ``poses[1]`` with ``1 − p_first``."""
    parts = [BackprojectionAccumulator(dataset.box, device=device) for _ in range(2)]
    for b in make_loader(dataset, batch):
        index = b["index"]
        for half, acc in enumerate(parts):
            sel = index % 2 == half
            keep = index[sel]
            for rot, shift, weight in zip(poses, shifts, (p_first, 1 - p_first)):
                acc.add(b["images"][sel], rot[keep], None if shift is None else shift[keep], b["ctf"][sel],
                        dataset.pixel_size_A, image_weights=weight[keep])
    return [acc.finalize() for acc in parts]


def _log_odds(dataset: ParticleDataset, half_maps: list[Tensor], poses: tuple[Tensor, Tensor],
              shifts: tuple[Tensor | None, Tensor | None], sigma: float, batch: int, device) -> Tensor:
    """Log-likelihood ratio ``(N,)`` of ``poses[0]`` over ``poses[1]`` for every particle, scored against the map
    of the other half (Gaussian noise ``sigma`` per Fourier coefficient, amplitude fitted per candidate)."""
    volumes = [hartley3_centered(v.double()).float().to(device) for v in half_maps[::-1]]  # even <- odd map
    pixels = torch.nonzero(circular_mask(dataset.box, device=device).flatten()).squeeze(1)
    out = torch.empty(len(dataset))
    for b in make_loader(dataset, batch):
        index = b["index"]
        target = target_spectra(b["images"].to(device), sigma, pixels)
        for half, volume in enumerate(volumes):
            sel = index % 2 == half
            keep = index[sel]
            rot = torch.stack([p[keep] for p in poses], 1).to(device)
            shift = None if shifts[0] is None else torch.stack([s[keep] for s in shifts], 1).to(device)
            pred = render(volume, rot, dataset.pixel_size_A, ctf=b["ctf"][sel].to(device), shifts_A=shift,
                          real_space=False, pixels=pixels) / sigma
            y = target[sel.to(device)]
            fit = (pred.conj() * y[:, None]).real.sum(-1).square() / pred.abs().square().sum(-1).clamp(min=1e-12)
            cost = y.abs().square().sum(-1)[:, None] - fit  # least-squares residual with the best amplitude
            out[keep] = 0.5 * (cost[:, 1] - cost[:, 0]).cpu()
    return out


def relax_pseudo_symmetry(dataset: ParticleDataset, volume: Tensor, rotations: np.ndarray,
                          shifts_A: np.ndarray | None, sigma: float, cfg: RelaxConfig = RelaxConfig(),
                          device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Poses ``(N, 3, 3)`` and origins ``(N, 2)`` (Å) with each particle at its pose or at its mate under the
    near-symmetry of ``volume`` ``(D, D, D)``, whichever the two-class EM prefers, and a record of what was done.

    ``sigma``: noise standard deviation per Fourier coefficient of the images (:func:`losses.noise_sigma`).
    The poses come back unchanged when the map is not pseudo-symmetric (``min_correlation``).
    """
    sym: MapAlignment = near_symmetry(volume, voxel_size_A=dataset.pixel_size_A, exclude_deg=cfg.exclude_deg)
    record = {"symmetry_angle_deg": sym.to_dict()["rotation_angle_deg"], "symmetry_correlation": sym.correlation,
              "relaxed": sym.correlation >= cfg.min_correlation}
    if not record["relaxed"]:
        return rotations, shifts_A, record
    mate_rot, mate_shift = sym.transform_poses(rotations, shifts_A)
    poses = tuple(torch.as_tensor(r, dtype=torch.float32) for r in (rotations, mate_rot))
    shifts = tuple(None if s is None else torch.as_tensor(s, dtype=torch.float32) for s in (shifts_A, mate_shift))
    p_first = torch.ones(len(dataset))  # start from the run's own poses (a blend is as good as a random split)
    even = torch.arange(len(dataset)) % 2 == 0
    bar = tqdm(range(cfg.rounds), desc="pseudo-symmetry", unit="round", leave=False)
    for rounds in bar:
        maps = _half_maps(dataset, poses, shifts, p_first, cfg.batch, device)
        log_odds = _log_odds(dataset, maps, poses, shifts, sigma, cfg.batch, device)
        new = torch.sigmoid(log_odds)
        if float(((2 * p_first - 1) * log_odds).sum()) < 0:  # each half followed the other's sense: keep one
            new[even] = 1 - new[even]
        changed = float(((new < 0.5) != (p_first < 0.5)).double().mean())
        p_first = new
        bar.set_postfix(changed=f"{changed:.3f}", confidence=f"{float((2 * p_first - 1).abs().mean()):.2f}")
        if changed < cfg.tolerance:
            break
    to_mate = (p_first < 0.5).numpy()
    if to_mate.mean() > 0.5:  # the same assignment seen from the other sense: move the fewer particles
        to_mate = ~to_mate
    rot = np.where(to_mate[:, None, None], mate_rot, rotations)
    shift = None if shifts_A is None else np.where(to_mate[:, None], mate_shift, shifts_A)
    record.update(rounds=rounds + 1, last_changed=changed, moved_to_mate=float(to_mate.mean()),
                  confidence=float((2 * p_first - 1).abs().mean()))
    return rot, shift, record
