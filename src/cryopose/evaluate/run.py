"""The ``evaluate`` and ``fsc`` jobs: compare a reconstruction with ground truth, or two maps, and write reports.

``evaluate_run`` aligns the map to the reference (both hands), computes the FSC against it (resolution at 0.5)
and between half maps (0.143), aligns the estimated poses to the true ones, and writes ``evaluation.json``,
``map_aligned.mrc``, ``report.html`` and the figures and FSC table in ``plots/``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import roma
import torch

from ..errors import InputError
from ..io import read_particles
from ..io.atomic import atomic_path
from ..io.mrc import read_map, write_map
from ..io.particles import ParticleTable
from ..report.plots import FSCCurve
from ..physics.resample import resample_map
from .align import MapAlignment, align_maps
from .fsc import fsc, fsc_resolution, soft_sphere_mask
from .poses import MIRROR, fit_global_rotation, pose_error
from .report import write_fsc_files, write_report


# -------------------------------------------------------------------------------------------------- inputs
def _read_cubic(path: str | os.PathLike, apix: float | None) -> tuple[np.ndarray, float]:
    """``(D, D, D)`` data and the voxel size (Å; 0 when neither the header nor ``apix`` gives one)."""
    m = read_map(path, voxel_size_A=apix)
    return m.cubic(), m.voxel_size_A


def _read_maps(paths: list[Path], apix: float | None = None,
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


def _fsc_curve(label: str, a, b, apix: float, mask, thresholds: tuple[float, ...]) -> FSCCurve:
    freq, curve = fsc(a, b, apix, mask=mask)
    return FSCCurve(label, freq.numpy(), curve.numpy(), {t: fsc_resolution(freq, curve, t) for t in thresholds})


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------------------------------------------- poses
def _match(est: ParticleTable, truth: ParticleTable) -> tuple[np.ndarray, np.ndarray]:
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


def _pose_errors(est: ParticleTable, truth: ParticleTable, alignment: MapAlignment) -> tuple[dict, dict]:
    """Summary (``PoseError`` fields plus ``frame_vs_map_deg``) and per-particle errors ``(N,)`` of the
    estimated poses, first moved into the reference frame by the map ``alignment``."""
    for table in (est, truth):
        if table.rotations is None:
            raise InputError(table.source, "no poses (rlnAngleRot/Tilt/Psi) in this file")
    i_est, i_true = _match(est, truth)
    shifts = None if est.shifts_A is None else est.shifts_A[i_est]
    rot_est, shift_est = alignment.transform_poses(est.rotations[i_est], shifts)
    rot_true = truth.rotations[i_true]
    shift_true = None if truth.shifts_A is None or shift_est is None else truth.shifts_A[i_true]
    summary = pose_error(rot_est, rot_true, shift_est, shift_true)
    # per-particle errors with the alignment pose_error chose (hand, then least-squares rotation)
    cand = torch.as_tensor(rot_est)
    cand = MIRROR @ cand @ MIRROR if summary.mirrored else cand
    true = torch.as_tensor(rot_true)
    q = fit_global_rotation(cand, true)
    aligned = cand @ q
    rotation = torch.rad2deg(roma.rotmat_geodesic_distance(aligned, true)).numpy()
    viewing = np.degrees(np.arccos(np.clip((aligned[:, 2] * true[:, 2]).sum(-1).numpy(), -1, 1)))
    arrays = {"rotation_deg": rotation, "viewing_deg": viewing}
    if shift_true is not None:
        arrays["shift_A"] = np.linalg.norm(shift_est - shift_true, axis=1)
    frame = float(torch.rad2deg(roma.rotmat_geodesic_distance(q, torch.eye(3, dtype=q.dtype))))
    return {**summary.to_dict(), "frame_vs_map_deg": frame}, arrays


# ------------------------------------------------------------------------------------------------------ jobs
def _locate(target: Path, poses_est, halves) -> tuple[Path, Path | None, tuple[Path, Path] | None]:
    """The map, estimated poses and half maps of a run directory (``map.mrc``, ``poses.star``,
    ``half1.mrc``/``half2.mrc``) or of a map file; explicit arguments win."""
    if target.is_dir():
        map_path = target / "map.mrc"
        if not map_path.is_file():
            raise InputError(target, "run directory has no map.mrc")
        if poses_est is None and (target / "poses.star").is_file():
            poses_est = target / "poses.star"
        if halves is None and all((target / f"half{k}.mrc").is_file() for k in (1, 2)):
            halves = (target / "half1.mrc", target / "half2.mrc")
    elif target.is_file():
        map_path = target
    else:
        raise InputError(target, "no such map file or run directory")
    poses_est = None if poses_est is None else Path(poses_est)
    return map_path, poses_est, None if halves is None else (Path(halves[0]), Path(halves[1]))


def evaluate_run(map_path_or_run_dir: str | os.PathLike, ref_path: str | os.PathLike,
                 poses_truth: str | os.PathLike | None = None, poses_est: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None, apix: float | None = None,
                 halves: tuple[str | os.PathLike, str | os.PathLike] | None = None) -> dict:
    """Evaluate a reconstruction against a ground-truth map (and poses); returns the ``evaluation.json`` dict.

    Args:
        map_path_or_run_dir: a map, or a run directory holding ``map.mrc`` (and ``poses.star``,
            ``half1.mrc``/``half2.mrc``, used when present).
        ref_path: ground-truth map (resampled to the reconstruction's box and voxel size when they differ).
        poses_truth: true poses (.star/.cs); with estimated poses, pose errors are reported.
        poses_est: estimated poses (default: the run directory's ``poses.star``).
        out_dir: where the files go (default: the run directory, or the map's folder); figures in ``plots/``.
        apix: voxel size (Å) of the reconstruction and half maps, overriding their headers.
        halves: two half maps (default: the run directory's).
    """
    target = Path(map_path_or_run_dir)
    map_path, poses_est, halves = _locate(target, poses_est, halves)
    if poses_truth is not None and poses_est is None:
        raise InputError(target, "true poses were given but there are no estimated poses (poses.star) to compare")
    out = Path(out_dir) if out_dir is not None else (target if target.is_dir() else map_path.parent)
    ref_path = Path(ref_path)
    (est,), size = _read_maps([map_path], apix)
    ref, resampled = reference_on_grid(ref_path, est.shape[0], size)

    aligned, alignment = align_maps(est, ref, voxel_size_A=size)
    aligned = aligned.cpu().numpy()
    write_map(out / "map_aligned.mrc", aligned, size)
    box = ref.shape[0]
    edge = max(2.0, box / 16)
    mask = soft_sphere_mask(box, box / 2 - edge, edge)
    curves = [_fsc_curve("map vs reference", aligned, ref, size, mask, (0.5, 0.143))]
    result = {
        "map": str(map_path), "reference": str(ref_path), "reference_resampled": resampled, "box": box,
        "apix_A": size, "nyquist_A": 2 * size,
        "mask": f"soft sphere, radius {box / 2 - edge:.1f} px, raised-cosine edge {edge:.1f} px",
        "alignment": alignment.to_dict(),
        "fsc_vs_reference": {f"resolution_{t:g}_A": _finite(r) for t, r in curves[0].resolutions_A.items()},
        "fsc_halves": None, "poses": None,
    }
    if halves is not None:
        (h1, h2), _ = _read_maps(list(halves), apix, expect=(est.shape, size))
        curves.append(_fsc_curve("half map 1 vs 2", h1, h2, size, mask, (0.143,)))
        result["fsc_halves"] = {"half1": str(halves[0]), "half2": str(halves[1]),
                                "resolution_0.143_A": _finite(curves[1].resolutions_A[0.143])}
    errors = None
    if poses_truth is not None:
        result["poses"], errors = _pose_errors(read_particles(poses_est), read_particles(poses_truth), alignment)
        result["poses"].update(estimated=str(poses_est), truth=str(poses_truth))
    result["files"] = {"map_aligned": "map_aligned.mrc", "evaluation_json": "evaluation.json",
                       **write_report(out, result, curves, {"aligned map": aligned, "reference": ref}, errors)}
    with atomic_path(out / "evaluation.json") as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def fsc_maps(a: str | os.PathLike, b: str | os.PathLike, apix: float | None = None,
             mask: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> dict:
    """FSC of two maps (``cryopose fsc A B``): writes ``fsc_<A>_<B>.png`` and ``.csv`` into ``out_dir``
    (default: A's folder) and returns the resolutions at 0.143 and 0.5 (Å) and the file paths.

    ``apix`` overrides the headers' voxel size; ``mask`` is an MRC mask (same box) applied to both maps.
    """
    a, b = Path(a), Path(b)
    (map_a, map_b), size = _read_maps([a, b], apix)
    weights = None
    if mask is not None:
        (weights,), _ = _read_maps([Path(mask)], expect=(map_a.shape, size))
    curve = _fsc_curve(f"{a.stem} vs {b.stem}", map_a, map_b, size, weights, (0.143, 0.5))
    out = Path(out_dir) if out_dir is not None else a.parent
    png, table = write_fsc_files(out / f"fsc_{a.stem}_{b.stem}", [curve], f"FSC: {a.name} vs {b.name}")
    return {"map_a": str(a), "map_b": str(b), "apix_A": size, "box": map_a.shape[0], "nyquist_A": 2 * size,
            **{f"resolution_{t:g}_A": _finite(r) for t, r in curve.resolutions_A.items()},
            "png": str(png), "csv": str(table)}
