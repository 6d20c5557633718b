"""Pose search for images (Cryo2SSNet §4.3): Hopf-grid beam search, in-plane shift search, gradient refinement.

The cost ``cost(rotations (B, K, 3, 3), radius=None, shifts=None) -> (B, K)`` scores K candidate poses of each of
B images in one call (Cryo2SSNet: L2 between the denoised image and the denoised projection); ``radius``
(pixels), when the cost supports it, limits the frequencies compared; ``shifts`` ``(B, K, 2)`` (None: the
starting shifts it was built with). Rotations are searched on the grid
(:func:`~cryopose.geometry.so3_search.grid_search`) from the cells nearest to an initial pose (the encoder's)
and / or the best cells of level ``start_level`` scored up to ``start_radius``: Cryo2SSNet starts at the 72 base
cells (``start_level=0``), so coarse that a narrow beam often keeps only a pseudo-symmetric particle's wrong
basin. An ``incumbent`` pose per image (e.g. the one found in the previous epoch) competes with the grid's best,
so a particle searched again never moves to a pose that fits its image worse. ``gd_steps`` steps of gradient
descent on an axis-angle perturbation ``R = Exp(ω)·R_search`` then leave the grid; a particle whose refined pose
costs more than its searched one keeps the searched one.

In-plane shifts, when the images have them, are searched locally (:func:`shift_search`: a grid around the
current shift, then finer 3 × 3 grids) twice: in the start band at the best cell of the base level, before the
starting cells are chosen, and over the whole band at the grid's best rotation, before the gradient refinement.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import roma
import torch
from torch import Tensor

from ..geometry.so3_search import grid_search

Cost = Callable[..., Tensor]  # (rotations (B, K|1, 3, 3), radius=None, shifts=None (B, K|1, 2)) -> (B, K)


@dataclass
class BeamSearchConfig:
    """Search settings (paper values as defaults): beam width c, depth i, n gradient steps of size ``lr``;
    ``explore``: also start from the c best cells, not only the c nearest to the initial pose; the starting
    cells are those of ``start_level``, scored up to ``start_radius`` pixels (None: the cost's whole band).
    Shifts (in the cost's units, Å in cryopose): a ``(2·shift_span + 1)²`` grid of step ``shift_step``, then
    ``shift_levels − 1`` grids of 3 × 3 with the step halved each time, every shift component within
    ``± shift_limit``."""

    width: int = 4
    depth: int = 5
    gd_steps: int = 20
    lr: float = 0.05
    explore: bool = False
    start_level: int = 0
    start_radius: float | None = None
    shift_step: float = 1.0
    shift_span: int = 2
    shift_levels: int = 3
    shift_limit: float | None = None


def shift_grid(shifts: Tensor, step: float, span: int, limit: float | None = None) -> Tensor:
    """Candidate shifts ``(B, (2·span + 1)², 2)`` on a grid of ``step`` around each of ``shifts`` ``(B, 2)``, every
    component within ``± limit`` (None: unbounded)."""
    axis = torch.arange(-span, span + 1, device=shifts.device, dtype=shifts.dtype) * step
    candidates = shifts[:, None] + torch.cartesian_prod(axis, axis)
    return candidates if limit is None else candidates.clamp(-limit, limit)


@torch.no_grad()
def shift_search(cost: Cost, rotations: Tensor, shifts: Tensor, cfg: BeamSearchConfig,
                 radius: float | None = None) -> tuple[Tensor, Tensor]:
    """Best shifts ``(B, 2)`` near ``shifts`` ``(B, 2)`` at fixed ``rotations`` ``(B, 3, 3)``, scored up to
    ``radius`` pixels, and their costs ``(B,)``: coarse-to-fine local grids (:class:`BeamSearchConfig`); a
    particle keeps its start unless a candidate costs less."""
    best = cost(rotations[:, None], radius=radius, shifts=shifts[:, None]).squeeze(1)
    step, span = cfg.shift_step, cfg.shift_span
    for _ in range(cfg.shift_levels):
        candidates = shift_grid(shifts, step, span, cfg.shift_limit)
        scores = cost(rotations[:, None], radius=radius, shifts=candidates)  # one slice, K shifts each
        low, pick = scores.min(1)
        better = low < best
        shifts = torch.where(better[:, None], candidates[torch.arange(len(pick)), pick], shifts)
        best = torch.where(better, low, best)
        step, span = step / 2, 1
    return shifts, best


def refine(cost: Cost, rotations: Tensor, steps: int, lr: float,
           shifts: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``steps`` of gradient descent on ``ω`` for ``R = Exp(ω)·R0`` (``(B, 3, 3)``) at ``shifts`` ``(B, 2)``
    (None: the cost's own); returns the refined rotations and their costs ``(B,)``, each particle keeping its
    start if the descent made it worse."""
    at = {} if shifts is None else {"shifts": shifts[:, None]}
    with torch.no_grad():
        start_cost = cost(rotations[:, None], **at).squeeze(1)
    omega = torch.zeros(rotations.shape[0], 3, device=rotations.device, dtype=rotations.dtype)
    for _ in range(steps):
        omega.requires_grad_(True)
        loss = cost((roma.rotvec_to_rotmat(omega) @ rotations)[:, None], **at).sum()
        (grad,) = torch.autograd.grad(loss, omega)
        omega = (omega - lr * grad).detach()
    with torch.no_grad():
        refined = roma.rotvec_to_rotmat(omega) @ rotations
        final = cost(refined[:, None], **at).squeeze(1)
        better = final < start_cost
        return torch.where(better[:, None, None], refined, rotations), torch.where(better, final, start_cost)


def beam_search(cost: Cost, batch: int, cfg: BeamSearchConfig, initial: Tensor | None = None,
                device=None, dtype=torch.float32, incumbent: Tensor | None = None,
                shifts: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor]:
    """Grid beam search, with shift searches from ``shifts`` ``(B, 2)`` when given, then gradient refinement of
    the rotations: rotations ``(B, 3, 3)``, shifts ``(B, 2)`` (None without ``shifts``) and costs ``(B,)``
    (module doc). The cost's own shifts must be ``shifts``; an ``incumbent`` rotation is kept, with its
    shift, where it costs less than what the search found."""
    grid = {"width": cfg.width, "explore": cfg.explore, "initial": initial, "device": device, "dtype": dtype}
    search = cost
    if shifts is not None:  # shifts first searched at the best cell of the base level, in the start band
        first, _ = grid_search(partial(cost, radius=cfg.start_radius), batch, depth=0, **grid)
        moved, _ = shift_search(cost, first, shifts.to(dtype), cfg, radius=cfg.start_radius)

        def search(rotations: Tensor, radius: float | None = None, shifts: Tensor | None = None) -> Tensor:
            return cost(rotations, radius=radius, shifts=moved[:, None] if shifts is None else shifts)

    rotations, costs = grid_search(search, batch, depth=cfg.depth, start_level=cfg.start_level,
                                   start_cost=partial(search, radius=cfg.start_radius), incumbent=incumbent, **grid)
    if shifts is not None:
        moved, costs = shift_search(cost, rotations, moved, cfg)
    if cfg.gd_steps > 0:
        rotations, costs = refine(cost, rotations, cfg.gd_steps, cfg.lr, None if shifts is None else moved)
    if shifts is None:
        return rotations, None, costs
    if incumbent is not None:  # scored at its own shifts (the grid scored it at the moved ones)
        held = cost(incumbent.to(dtype)[:, None]).squeeze(1)
        keep = held < costs
        rotations = torch.where(keep[:, None, None], incumbent.to(dtype), rotations)
        moved = torch.where(keep[:, None], shifts.to(dtype), moved)
        costs = torch.minimum(held, costs)
    return rotations, moved, costs
