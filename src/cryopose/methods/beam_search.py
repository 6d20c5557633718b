"""Heuristic beam search over the Hopf-fibration SO(3) grid, then gradient refinement (Cryo2SSNet §4.3).

The search is generic in its cost: ``cost(rotations (B, K, 3, 3)) -> (B, K)`` scores K candidate poses of each of
B images in one call (Cryo2SSNet: L2 between the denoised image and the denoised projection). Starting cells
are the ``width`` base cells (72, level 0) nearest to an initial pose (the encoder's), or the ``width`` best of
all 72 when there is none (with ``explore``, both: the search stays global while the encoder is still poor);
each level subdivides the kept cells into 8 children and keeps the ``width`` best, for
``depth`` levels. ``gd_steps`` steps of gradient descent on an axis-angle perturbation ``R = Exp(ω)·R_search``
then leave the grid; a particle whose refined pose costs more than its searched one keeps the searched one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import roma
import torch
from torch import Tensor

from ..geometry.so3_grid import (cell_quaternions, children, matrix_to_quaternion, n_cells, nearest_cells,
                                 quaternion_to_matrix)

Cost = Callable[[Tensor], Tensor]


@dataclass
class BeamSearchConfig:
    """Search settings (paper values as defaults): beam width c, depth i, n gradient steps of size ``lr``;
    ``explore``: also start from the c best base cells, not only the c nearest to the initial pose."""

    width: int = 4
    depth: int = 5
    gd_steps: int = 20
    lr: float = 0.05
    explore: bool = False


def _grid_rotations(level: int, cells: Tensor, dtype: torch.dtype) -> Tensor:
    return quaternion_to_matrix(cell_quaternions(level, cells, dtype=dtype))


@torch.no_grad()
def grid_search(cost: Cost, batch: int, cfg: BeamSearchConfig, initial: Tensor | None = None,
                device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Beam search only: best grid rotations ``(B, 3, 3)`` at level ``depth`` and their costs ``(B,)``.

    Each level costs one call of ``cost`` on ``(B, 8·width)`` candidates (``(B, 72)`` more for the first level
    without ``initial`` rotations ``(B, 3, 3)`` or with ``explore``).
    """
    cells = None
    if initial is not None:
        cells = nearest_cells(matrix_to_quaternion(initial.to(dtype)), 0, cfg.width)  # (B, c)
        device = cells.device
    if cells is None or cfg.explore:
        base = torch.arange(n_cells(0), device=device).expand(batch, -1)
        scores = cost(_grid_rotations(0, base, dtype))
        if cells is not None:  # the nearest cells are kept anyway: take the best of the others
            scores = scores.scatter(1, cells, float("inf"))
        best = base.gather(1, scores.topk(min(cfg.width, base.shape[1]), largest=False).indices)
        cells = best if cells is None else torch.cat([cells, best], 1)
    scores = None
    for level in range(cfg.depth):
        cells = children(level, cells).flatten(1)  # (B, 8c) at level + 1
        scores = cost(_grid_rotations(level + 1, cells, dtype))
        keep = scores.topk(min(cfg.width, cells.shape[1]), largest=False).indices
        cells, scores = cells.gather(1, keep), scores.gather(1, keep)
    if scores is None:  # depth 0: the starting cells themselves
        scores = cost(_grid_rotations(0, cells, dtype))
    best = scores.argmin(1, keepdim=True)
    rotations = _grid_rotations(cfg.depth, cells.gather(1, best).squeeze(1), dtype)
    return rotations, scores.gather(1, best).squeeze(1)


def refine(cost: Cost, rotations: Tensor, steps: int, lr: float) -> tuple[Tensor, Tensor]:
    """``steps`` of gradient descent on ``ω`` for ``R = Exp(ω)·R0`` (``(B, 3, 3)``); returns the refined
    rotations and their costs ``(B,)``, each particle keeping its start if the descent made it worse."""
    with torch.no_grad():
        start_cost = cost(rotations[:, None]).squeeze(1)
    omega = torch.zeros(rotations.shape[0], 3, device=rotations.device, dtype=rotations.dtype)
    for _ in range(steps):
        omega.requires_grad_(True)
        loss = cost((roma.rotvec_to_rotmat(omega) @ rotations)[:, None]).sum()
        (grad,) = torch.autograd.grad(loss, omega)
        omega = (omega - lr * grad).detach()
    with torch.no_grad():
        refined = roma.rotvec_to_rotmat(omega) @ rotations
        final = cost(refined[:, None]).squeeze(1)
        better = final < start_cost
        return torch.where(better[:, None, None], refined, rotations), torch.where(better, final, start_cost)


def beam_search(cost: Cost, batch: int, cfg: BeamSearchConfig, initial: Tensor | None = None,
                device=None, dtype=torch.float32) -> tuple[Tensor, Tensor]:
    """Grid beam search then gradient refinement: rotations ``(B, 3, 3)`` and costs ``(B,)`` (module doc)."""
    rotations, costs = grid_search(cost, batch, cfg, initial, device, dtype)
    if cfg.gd_steps > 0:
        rotations, costs = refine(cost, rotations, cfg.gd_steps, cfg.lr)
    return rotations, costs
