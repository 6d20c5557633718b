"""Measuring a run while it trains: each epoch's map and poses against a reference map and true poses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..io.mrc import write_map
from ..io.run_files import epoch_map
from ..physics.align import align_maps
from ..physics.fsc import fsc, fsc_resolution, soft_sphere_mask
from .poses import pose_error

Measure = Callable[..., dict]  # (density (D, D, D), rotations (N, 3, 3), shifts (N, 2) Å | None) -> record


def evaluator(apix: float, reference: torch.Tensor | None, truth_rotations: np.ndarray | None,
              truth_shifts: np.ndarray | None = None, symmetry: torch.Tensor | None = None) -> Measure:
    """``measure(density, rotations, shifts=None) -> dict``: with a reference / true poses, the FSC-0.5
    resolution of the map ``(D, D, D)`` after alignment and the error of the poses ``(N, 3, 3)`` (modulo the
    point group ``symmetry`` ``(G, 3, 3)`` of the truth, in its frame, when given); with a reference and true
    shifts too, the error of the shifts ``(N, 2)`` Å once moved with the map's alignment (its translation
    included); empty without either."""
    mask = None if reference is None else soft_sphere_mask(reference.shape[-1])

    def measure(density: torch.Tensor, rotations: np.ndarray, shifts: np.ndarray | None = None) -> dict:
        record, moved = {}, None
        if reference is not None:
            aligned, alignment = align_maps(density, reference, voxel_size_A=apix)
            record["resolution_0.5_A"] = fsc_resolution(*fsc(aligned, reference, apix, mask), 0.5)
            record["map_mirrored"] = alignment.mirrored
            if shifts is not None and truth_shifts is not None:
                moved = alignment.transform_poses(rotations, shifts)[1]
        if truth_rotations is not None:
            err = pose_error(rotations, truth_rotations, moved, truth_shifts, symmetry=symmetry)
            record.update(pose_error_mean_deg=err.rotation_mean_deg, pose_error_median_deg=err.rotation_median_deg,
                          pose_within_10deg=err.rotation_within_10deg)
            if err.shift_median_A is not None:
                record["shift_error_median_A"] = err.shift_median_A
        return record

    return measure


def epoch_evaluator(run: Path, apix: float, measure: Measure) -> Callable[[int, object], dict]:
    """``on_epoch_end(epoch, method)`` hook of the training loop: writes the epoch's map
    (:func:`cryopose.io.run_files.epoch_map`) and returns ``measure`` of the map and poses."""

    def hook(epoch: int, method) -> dict:
        density = method.density().cpu()
        write_map(run / epoch_map(epoch), density.numpy(), apix)
        return measure(density, *method.poses())

    return hook
