"""Comparing a reconstruction with the truth: maps read on one grid, FSC curves, and the errors of estimated poses
against true ones (particles paired by image)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import roma
import torch

from ..errors import InputError
from ..io.mrc import read_map
from ..io.particles import ParticleTable
from ..physics.align import MapAlignment
from ..physics.fsc import fsc, fsc_resolution
from ..physics.resample import resample_map
from ..report.plots import FSCCurve
from .poses import align_poses, summarise


# -------------------------------------------------------------------------------------------------- inputs
def _read_cubic(path: str | os.PathLike, apix: float | None) -> tuple[np.ndarray, float]:
    """``(D, D, D)`` data and the voxel size (Å; 0 when neither the header nor ``apix`` gives one)."""
    m = read_map(path, voxel_size_A=apix)
    return m.cubic(), m.voxel_size_A


def read_maps(paths: list[Path], apix: float | None = None,
               expect: tuple[tuple[int, ...], float] | None = None) -> tuple[list[np.ndarray], float]:
    """Maps of one box and voxel size (Å), returned with it: ``apix`` overrides the headers; ``expect`` is the
    (shape, voxel size) they must have, else the first map's. An InputError names the odd file."""
    maps = [_read_cubic(p, apix) for p in paths]
    shape, size = expect or (maps[0][0].shape, next((a for _, a in maps if a > 0), 0.0))
    if size <= 0:
        raise InputError(paths[0], "voxel size is not set in the header; give it (--apix)")
    for path, (data, a) in zip(paths, maps):
        if data.shape != shape:
            raise InputError(path, f"box {data.shape[0]} differs from {shape[0]} of the map it is compared with")
        if a > 0 and not math.isclose(a, size, rel_tol=0.01):
            raise InputError(path, f"voxel size {a:.4f} Å differs from {size:.4f} Å of the map it is compared with")
    return [d for d, _ in maps], size


def reference_on_grid(path: str | os.PathLike, box: int, apix: float) -> tuple[np.ndarray, bool]:
    """A reference map on a ``box``³ grid of ``apix`` Å (resampled about the box centre when its own grid
    differs; a header without voxel size means ``apix``), and whether it was resampled."""
    ref = read_map(path)
    data, size = ref.cubic(), ref.voxel_size_A or apix
    if data.shape[0] == box and math.isclose(size, apix, rel_tol=1e-3):
        return data, False
    if ref.voxel_size_A <= 0:
        raise InputError(path, f"box {data.shape[0]} differs from {box} and the header has no voxel size")
    return resample_map(torch.from_numpy(np.array(data, dtype=np.float64)), size, box, apix).float().numpy(), True


def fsc_curve(label: str, a, b, apix: float, mask, thresholds: tuple[float, ...]) -> FSCCurve:
    freq, curve = fsc(a, b, apix, mask=mask)
    return FSCCurve(label, freq.numpy(), curve.numpy(), {t: fsc_resolution(freq, curve, t) for t in thresholds})


def finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------------- poses
def match_particles(est: ParticleTable, truth: ParticleTable) -> tuple[np.ndarray, np.ndarray]:
    """Row indices pairing estimated with true particles: by image (stack path and index), by stack file name
    and index, or else by row order when both files have the same number of rows."""
    for key in (lambda f: str(f), lambda f: Path(str(f)).name):
        lookup = {(key(f), int(i)): n for n, (f, i) in enumerate(zip(truth.image_files, truth.image_indices))}
        rows = [lookup.get((key(f), int(i)), -1) for f, i in zip(est.image_files, est.image_indices)]
        if min(rows, default=-1) >= 0:
            return np.arange(len(est)), np.asarray(rows)
    if len(est) == len(truth):
        return np.arange(len(est)), np.arange(len(truth))
    raise InputError(est.source, f"cannot pair its {len(est)} particles with the {len(truth)} of {truth.source} "
                                 "(image names differ)")


def pose_errors(est: ParticleTable, truth: ParticleTable, alignment: MapAlignment,
                symmetry: torch.Tensor | None = None, no_pose: np.ndarray | None = None) -> tuple[dict, dict]:
    """Summary (``PoseError`` fields plus ``frame_vs_map_deg``) and per-particle errors ``(N,)`` of the
    estimated poses, first moved into the reference frame by the map ``alignment``; modulo the point group
    ``symmetry`` ``(G, 3, 3)`` of the reference when given. ``no_pose``: boolean over the rows of ``truth``, the
    images that hold no particle (simulated junk), left out."""
    for table in (est, truth):
        if table.rotations is None:
            raise InputError(table.source, "no poses (rlnAngleRot/Tilt/Psi) in this file")
    i_est, i_true = match_particles(est, truth)
    if no_pose is not None:
        i_est, i_true = i_est[~no_pose[i_true]], i_true[~no_pose[i_true]]
    shifts = None if est.shifts_A is None else est.shifts_A[i_est]
    rot_est, shift_est = alignment.transform_poses(est.rotations[i_est], shifts)
    shift_true = None if truth.shifts_A is None or shift_est is None else truth.shifts_A[i_true]
    fit = align_poses(rot_est, truth.rotations[i_true], symmetry=symmetry)
    arrays = {"rotation_deg": fit.error_deg.numpy(), "viewing_deg": fit.viewing_error_deg().numpy()}
    if shift_true is not None:
        arrays["shift_A"] = np.linalg.norm(shift_est - shift_true, axis=1)
    q = fit.rotation
    frame = float(torch.rad2deg(roma.rotmat_geodesic_distance(q, torch.eye(3, dtype=q.dtype))))
    return {**summarise(fit, shift_est, shift_true).to_dict(), "frame_vs_map_deg": frame}, arrays
