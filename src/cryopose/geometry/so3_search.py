"""Beam search over the Hopf grid of SO(3) (:mod:`~cryopose.geometry.so3_grid`) for the rotations of least cost.

The cost scores ``K`` candidate rotations of each of ``B`` problems in one call: ``(B, K, 3, 3) -> (B, K)``
(lower is better; +inf excludes a rotation). The starting cells are ``width`` cells of level ``start_level``: the
nearest to an initial rotation, the best of the whole level when there is none, or both with ``explore``. Each
level below replaces the kept cells by their 8 children and keeps the ``width`` best, down to level ``depth``.
The whole starting level, the same rotations for every problem, is passed once as ``(1, K, 3, 3)``: the cost
broadcasts it over the problems (a renderer then slices each rotation once, not once per problem).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .so3_grid import cell_quaternions, children, matrix_to_quaternion, n_cells, nearest_cells, quaternion_to_matrix

Cost = Callable[[Tensor], Tensor]  # rotations (B, K, 3, 3) -> costs (B, K)


def _rotations(level: int, cells: Tensor, dtype: torch.dtype) -> Tensor:
    return quaternion_to_matrix(cell_quaternions(level, cells, dtype=dtype))


@torch.no_grad()
def grid_search(cost: Cost, batch: int, *, width: int, depth: int, start_level: int = 0, explore: bool = False,
                start_cost: Cost | None = None, initial: Tensor | None = None, incumbent: Tensor | None = None,
                device=None, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Best grid rotations ``(B, 3, 3)`` at level ``max(depth, start_level)`` and their costs ``(B,)``.

    Args:
        cost: the cost of the levels below the start (and of the start when ``depth <= start_level``).
        batch: number of problems ``B``.
        width: cells kept per level (the beam).
        depth: last level searched.
        start_level: level of the starting cells (``72·8^start_level`` cells).
        explore: with ``initial``, also start from the ``width`` best cells of the whole level.
        start_cost: the cost that picks the best starting cells (default ``cost``).
        initial: ``(B, 3, 3)`` rotations whose ``width`` nearest cells start the search.
        incumbent: ``(B, 3, 3)`` rotations that replace the grid's result where they cost less.
        device, dtype: of the cells and rotations when there is no ``initial``.
    """
    cells = None
    if initial is not None:
        cells = nearest_cells(matrix_to_quaternion(initial.to(dtype)), start_level, width)  # (B, width)
        device = cells.device
    if cells is None or explore:
        every = torch.arange(n_cells(start_level), device=device)
        # the same rotations for every problem, passed once: (1, K, 3, 3), the costs broadcast to (B, K)
        scores = (start_cost or cost)(_rotations(start_level, every[None], dtype)).expand(batch, -1)
        every = every.expand(batch, -1)
        if cells is not None:  # the nearest cells are kept anyway: take the best of the others
            scores = scores.scatter(1, cells, float("inf"))
        best = every.gather(1, scores.topk(min(width, every.shape[1]), largest=False).indices)
        cells = best if cells is None else torch.cat([cells, best], 1)
    scores = None
    for level in range(start_level, depth):
        cells = children(level, cells).flatten(1)  # (B, 8·width) at level + 1
        scores = cost(_rotations(level + 1, cells, dtype))
        keep = scores.topk(min(width, cells.shape[1]), largest=False).indices
        cells, scores = cells.gather(1, keep), scores.gather(1, keep)
    if scores is None:  # no level below the start: the starting cells themselves
        scores = cost(_rotations(start_level, cells, dtype))
    best = scores.argmin(1, keepdim=True)
    rotations = _rotations(max(depth, start_level), cells.gather(1, best).squeeze(1), dtype)
    costs = scores.gather(1, best).squeeze(1)
    if incumbent is not None:
        held = cost(incumbent.to(dtype)[:, None]).squeeze(1)
        rotations = torch.where((held < costs)[:, None, None], incumbent.to(dtype), rotations)
        costs = torch.minimum(held, costs)
    return rotations, costs
