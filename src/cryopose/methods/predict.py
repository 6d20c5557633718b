"""Poses for particles a run did not train on (amortized inference): the run's encoder proposes, its map decides.

Each image goes through the trained encoder once; its heads' poses are scored under the run's final map and the
best is kept. With ``search`` the SO(3) grid is also searched globally under that map (the semi-amortized
method's search) and each particle keeps the better of the two poses, for encoders that learned no poses. Every
pose is then refined locally against the map (Adam steps of rotation and shift, the rate halved each round).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import roma
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset, make_loader
from ..physics.fourier import hartley3_centered
from ..progress import progress
from .autoencoder import EncoderDecoder
from .beam_search import BeamSearchConfig, beam_search
from .half_maps import refine_and_score


@dataclass(frozen=True)
class PredictConfig:
    """Settings of :func:`predict_poses`: ``search`` the grid too (``search_width`` cells kept per level over
    ``search_depth`` levels, the first scored up to ``search_resolution_A``); ``local_rounds`` rounds of
    ``local_steps`` Adam steps at rate ``lr`` (radians) halved every round; ``batch`` images per batch."""

    search: bool = False
    search_width: int = 8
    search_depth: int = 4
    search_resolution_A: float = 10.0
    local_rounds: int = 3
    local_steps: int = 5
    lr: float = 0.02
    batch: int = 64


@torch.no_grad()
def _assign(model: EncoderDecoder, dataset: ParticleDataset, volume: Tensor, cfg: PredictConfig,
            device) -> tuple[Tensor, Tensor | None, Tensor]:
    """Rotations ``(N, 3, 3)``, shifts ``(N, 2)`` Å or None, and whether the search replaced the encoder's pose
    ``(N,)``, of every particle: the encoder's best head under the whitened Hartley ``volume``, or the search's."""
    n, shifted = len(dataset), model.cfg.shifts
    rotations, replaced = torch.empty(n, 3, 3), torch.zeros(n, dtype=torch.bool)
    shifts = torch.zeros(n, 2) if shifted else None
    search = BeamSearchConfig(cfg.search_width, cfg.search_depth, gd_steps=0, explore=True, start_level=1,
                              start_radius=model.radius_at(cfg.search_resolution_A), shift_step=model.apix,
                              shift_limit=model.encoder.max_shift_A)
    for b in progress(make_loader(dataset, cfg.batch), desc="poses", unit="batch"):
        index = b["index"]
        batch = {"images": b["images"].to(device), "ctf": b["ctf"].to(device)}
        target = model.target(batch["images"])
        heads, head_shifts = model.encoder(batch["images"])  # (B, H, 3, 3), (B, H, 2) | None
        best = model.pose_loss(heads, head_shifts, batch, target, volume).argmin(1)
        rows = torch.arange(len(best), device=best.device)
        rot, shift = heads[rows, best], None if head_shifts is None else head_shifts[rows, best]
        if cfg.search:  # from the picked centres: the encoder's pose competes at them
            centre = None if shift is None else torch.zeros_like(shift)

            def cost(r: Tensor, radius: float | None = None, shifts: Tensor | None = None) -> Tensor:
                at = centre[:, None] if shifts is None and centre is not None else shifts
                return model.pose_loss(r, at, batch, target, volume, radius)

            found, moved, _ = beam_search(cost, len(index), search, initial=rot, device=device, incumbent=rot,
                                          shifts=centre)
            replaced[index] = ((found - rot).abs().amax((1, 2)) > 1e-6).cpu()
            rot, shift = found, moved
        rotations[index] = rot.float().cpu()
        if shifted:
            shifts[index] = shift.float().cpu()
    return rotations, shifts, replaced


def predict_poses(model: EncoderDecoder, dataset: ParticleDataset, density: Tensor,
                  cfg: PredictConfig = PredictConfig(),
                  device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Rotations ``(N, 3, 3)`` and origins ``(N, 2)`` Å (None when the run has no shifts) of the particles of
    ``dataset`` under the trained ``model`` and the run's map ``density`` ``(D, D, D)`` (module doc), and a record:
    the share of particles whose pose the search replaced and the median turn of each local round (degrees)."""
    model.encoder.eval()
    model.set_band(0, 0)  # the map's whole band, whatever band the run's decoder had reached
    volume = (hartley3_centered(density.double()) / model.sigma).float().to(device)
    rotations, shifts, replaced = _assign(model, dataset, volume, cfg, device)
    poses, offsets = [rotations], None if shifts is None else [shifts]  # refined in place
    flat = torch.ones(dataset.box // 2 + 1)  # the map as it is: no half maps to weigh it by
    turned = []
    for r in range(cfg.local_rounds):
        before = poses[0].clone()
        for half in (0, 1):
            refine_and_score(dataset, half, density, flat, poses, offsets, model.noise, cfg.lr * 0.5**r,
                             cfg.local_steps, None, 256, device)
        turned.append(round(float(roma.rotmat_geodesic_distance(before, poses[0]).median().rad2deg()), 3))
    record = {"searched": cfg.search, "search_replaced": float(replaced.float().mean()),
              "median_turn_deg": turned}
    return poses[0].double().numpy(), None if offsets is None else offsets[0].double().numpy(), record

