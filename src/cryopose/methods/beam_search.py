"""Heuristic beam search over the Hopf-fibration SO(3) grid, then gradient refinement (Cryo2SSNet §4.3).

The search is generic in its cost: ``cost(rotations (B, K, 3, 3), radius=None) -> (B, K)`` scores K candidate
poses of each of B images in one call (Cryo2SSNet: L2 between the denoised image and the denoised projection);
``radius`` (pixels), when the cost supports it, limits the frequencies compared. Starting cells are the
``width`` cells of level ``start_level`` nearest to an initial pose (the encoder's), or the ``width`` best of
all of that level when there is none (with ``explore``, both: the search stays global while the encoder is still
poor); each level subdivides the kept cells into 8 children and keeps the ``width`` best, down to level
``depth``. ``gd_steps`` steps of gradient descent on an axis-angle perturbation ``R = Exp(ω)·R_search``
then leave the grid; a particle whose refined pose costs more than its searched one keeps the searched one.
Cryo2SSNet starts at the 72 base cells (``start_level=0``), so coarse that a
narrow beam then often keeps only a pseudo-symmetric particle's wrong basin. Under the true map of 4AKE
(64 px, SNR 0.1, c=4, 20 descent steps) 45 % of the images end more than 10° off from level 0, 21 % from all 576
cells of level 1 scored up to 12 px (about the cost of the 72 base cells at full band), 12 % from level 2 at 8 px
(four times that cost); in 92–99 % of those images the true pose costs less than the one found.
An ``incumbent`` pose per image (e.g. the one found in the previous epoch) competes with the grid's best before
the refinement, so a particle searched again never moves to a pose that fits its image worse.

In-plane shifts, when the images have them, are searched locally (:func:`shift_search`: a grid around the
current shift, then finer 3 × 3 grids) twice: in the start band at the best cell of the base level (72 cells),
before the starting cells are chosen, and over the whole band at the grid's best rotation, before the rotation's
gradient refinement. Measured on simulated images (32 px, SNR 1, true map, starting rotations 20° and shifts
1.5 px RMS per axis off): searched at the starting shifts the rotations end 30° off (median); with both shift
searches 2.1°, the shifts 0.16 px off. The cost then takes ``shifts=`` ``(B, K, 2)`` (None: the starting shifts
it was built with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import roma
import torch
from torch import Tensor

from ..geometry.so3_grid import (cell_quaternions, children, matrix_to_quaternion, n_cells, nearest_cells,
                                 quaternion_to_matrix)

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


def _grid_rotations(level: int, cells: Tensor, dtype: torch.dtype) -> Tensor:
    return quaternion_to_matrix(cell_quaternions(level, cells, dtype=dtype))


@torch.no_grad()
def start_cells(cost: Cost, batch: int, cfg: BeamSearchConfig, initial: Tensor | None = None,
                device=None, dtype=torch.float32) -> Tensor:
    """The search's starting cells ``(B, c)`` of level ``start_level``: the ``width`` nearest to ``initial``
    rotations ``(B, 3, 3)`` and / or (without ``initial``, or with ``explore``) the ``width`` best of the
    whole level, scored up to ``start_radius`` (one call of ``cost`` on ``(B, 72·8^start_level)`` candidates)."""
    start = cfg.start_level
    cells = None
    if initial is not None:
        cells = nearest_cells(matrix_to_quaternion(initial.to(dtype)), start, cfg.width)  # (B, c)
        device = cells.device
    if cells is None or cfg.explore:
        base = torch.arange(n_cells(start), device=device).expand(batch, -1)
        scores = cost(_grid_rotations(start, base, dtype), radius=cfg.start_radius)
        if cells is not None:  # the nearest cells are kept anyway: take the best of the others
            scores = scores.scatter(1, cells, float("inf"))
        best = base.gather(1, scores.topk(min(cfg.width, base.shape[1]), largest=False).indices)
        cells = best if cells is None else torch.cat([cells, best], 1)
    return cells


@torch.no_grad()
def descend(cost: Cost, cells: Tensor, cfg: BeamSearchConfig, dtype=torch.float32,
            incumbent: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """From the starting ``cells`` ``(B, c)``, keep the ``width`` best children per level down to ``depth``
    (one call of ``cost`` on ``(B, 8·width)`` candidates per level): the best rotations ``(B, 3, 3)`` and their
    costs ``(B,)``. An ``incumbent`` ``(B, 3, 3)`` replaces the grid's result where it costs less."""
    start = cfg.start_level
    scores = None
    for level in range(start, cfg.depth):
        cells = children(level, cells).flatten(1)  # (B, 8c) at level + 1
        scores = cost(_grid_rotations(level + 1, cells, dtype))
        keep = scores.topk(min(cfg.width, cells.shape[1]), largest=False).indices
        cells, scores = cells.gather(1, keep), scores.gather(1, keep)
    if scores is None:  # no level below the start: the starting cells themselves
        scores = cost(_grid_rotations(start, cells, dtype))
    best = scores.argmin(1, keepdim=True)
    rotations = _grid_rotations(max(cfg.depth, start), cells.gather(1, best).squeeze(1), dtype)
    costs = scores.gather(1, best).squeeze(1)
    if incumbent is not None:
        held = cost(incumbent.to(dtype)[:, None]).squeeze(1)
        rotations = torch.where((held < costs)[:, None, None], incumbent.to(dtype), rotations)
        costs = torch.minimum(held, costs)
    return rotations, costs


def grid_search(cost: Cost, batch: int, cfg: BeamSearchConfig, initial: Tensor | None = None,
                device=None, dtype=torch.float32, incumbent: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Beam search only (:func:`start_cells` then :func:`descend`): best grid rotations ``(B, 3, 3)`` at level
    ``depth`` and their costs ``(B,)``."""
    return descend(cost, start_cells(cost, batch, cfg, initial, device, dtype), cfg, dtype, incumbent)


@torch.no_grad()
def shift_search(cost: Cost, rotations: Tensor, shifts: Tensor, cfg: BeamSearchConfig,
                 radius: float | None = None) -> tuple[Tensor, Tensor]:
    """Best shifts ``(B, 2)`` near ``shifts`` ``(B, 2)`` at fixed ``rotations`` ``(B, 3, 3)``, scored up to
    ``radius`` pixels, and their costs ``(B,)``: coarse-to-fine local grids (:class:`BeamSearchConfig`); a
    particle keeps its start unless a candidate costs less."""
    best = cost(rotations[:, None], radius=radius, shifts=shifts[:, None]).squeeze(1)
    step, span = cfg.shift_step, cfg.shift_span
    for _ in range(cfg.shift_levels):
        axis = torch.arange(-span, span + 1, device=shifts.device, dtype=shifts.dtype) * step
        offsets = torch.cartesian_prod(axis, axis)  # (K, 2)
        candidates = shifts[:, None] + offsets
        if cfg.shift_limit is not None:
            candidates = candidates.clamp(-cfg.shift_limit, cfg.shift_limit)
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
    search = cost
    if shifts is not None:  # shifts first searched at the best cell of the base level, in the start band
        coarse = replace(cfg, start_level=0)
        candidates = _grid_rotations(0, start_cells(cost, batch, coarse, initial, device, dtype), dtype)
        best = cost(candidates, radius=cfg.start_radius).argmin(1)
        first = candidates[torch.arange(len(best), device=best.device), best]
        moved, _ = shift_search(cost, first, shifts.to(dtype), cfg, radius=cfg.start_radius)

        def search(rotations: Tensor, radius: float | None = None, shifts: Tensor | None = None) -> Tensor:
            return cost(rotations, radius=radius, shifts=moved[:, None] if shifts is None else shifts)

    cells = start_cells(search, batch, cfg, initial, device, dtype)
    rotations, costs = descend(search, cells, cfg, dtype, incumbent)
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
