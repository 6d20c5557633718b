"""A map from a particle data set at given poses: the oracle's reconstruction, half maps, and the weighted maps
of the pseudo-symmetry relaxation — one loop for all of them."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset, make_loader
from ..physics.backproject import BackprojectionAccumulator
from ..progress import progress


def backproject_dataset(dataset: ParticleDataset, rotations: np.ndarray | Tensor,
                        shifts_A: np.ndarray | Tensor | None = None, *, weights: np.ndarray | Tensor | None = None,
                        halves: bool = False, half: int | None = None, snr: float | None = None, batch: int = 256,
                        symmetry: Tensor | None = None, device: torch.device | str = "cpu") -> list[Tensor]:
    """Maps ``(D, D, D)`` with every particle inserted at each of its K poses: rotations ``(N, [K,] 3, 3)``,
    origins ``shifts_A`` ``(N, [K,] 2)`` Å, each counted ``weights`` ``(N, [K])`` times (default once).

    Returns ``[map]`` of all particles, or of one ``half`` (0: the even ones, 1: the odd ones); with ``halves``
    ``[map, even map, odd map]``. ``snr`` and ``symmetry`` (a point group ``(G, 3, 3)`` to impose): see
    :class:`BackprojectionAccumulator`.
    """
    n = len(dataset)
    rot = torch.as_tensor(rotations, dtype=torch.float32).reshape(n, -1, 3, 3)
    shifts = None if shifts_A is None else torch.as_tensor(shifts_A, dtype=torch.float32).reshape(n, -1, 2)
    counts = None if weights is None else torch.as_tensor(weights, dtype=torch.float32).reshape(n, -1)
    parts = [BackprojectionAccumulator(dataset.box, snr=snr, symmetry=symmetry, device=device)
             for _ in range(2 if halves else 1)]
    sampler = None if half is None else range(half, n, 2)
    for b in progress(make_loader(dataset, batch, sampler=sampler), desc="backprojecting", unit="batch"):
        for part, acc in enumerate(parts):
            keep = b["index"] % len(parts) == part  # even / odd particles with halves, else all of them
            rows = b["index"][keep]
            for k in range(rot.shape[1]) if len(rows) else ():
                acc.add(b["images"][keep], rot[rows, k], None if shifts is None else shifts[rows, k],
                        b["ctf"][keep] if "ctf" in b else None, dataset.pixel_size_A,
                        image_weights=None if counts is None else counts[rows, k])
    maps = [acc.finalize().cpu() for acc in parts]
    if halves:
        parts[0] += parts[1]
        maps.insert(0, parts[0].finalize().cpu())
    return maps
