"""``cryopose evaluate``: compare a reconstruction with ground truth and write a report.

``evaluate_run`` aligns the map to the reference (both hands), computes the FSC against it (resolution at 0.5)
and between half maps (0.143), aligns the estimated poses to the true ones, and writes ``evaluation.json``,
``map_aligned.mrc``, ``report.html`` and the figures and FSC table in ``plots/``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..errors import InputError
from ..evaluate.compare import finite, fsc_curve, pose_errors, read_maps, reference_on_grid
from ..evaluate.junk import junk_found, simulated_junk
from ..evaluate.noise import noise_spectra
from ..evaluate.report import write_report
from ..evaluate.symmetry import fit_symmetry
from ..geometry.symmetry import point_group
from ..io import read_particles
from ..io.atomic import atomic_path
from ..io.mrc import write_map
from ..io.run_files import EVALUATION, HALF_MAPS, LOG, MAP, MAP_ALIGNED, POSES
from ..physics.align import align_maps
from ..physics.fsc import soft_sphere_mask
from ..train.run_dir import MetricsLog


def _locate(target: Path, poses_est, halves) -> tuple[Path, Path | None, tuple[Path, Path] | None]:
    """The map, estimated poses and half maps of a run directory (:mod:`cryopose.io.run_files`) or of a map
    file; explicit arguments win."""
    if target.is_dir():
        map_path = target / MAP
        if not map_path.is_file():
            raise InputError(target, f"run directory has no {MAP}")
        if poses_est is None and (target / POSES).is_file():
            poses_est = target / POSES
        if halves is None and all((target / name).is_file() for name in HALF_MAPS):
            halves = tuple(target / name for name in HALF_MAPS)
    elif target.is_file():
        map_path = target
    else:
        raise InputError(target, "no such map file or run directory")
    poses_est = None if poses_est is None else Path(poses_est)
    return map_path, poses_est, None if halves is None else (Path(halves[0]), Path(halves[1]))


def evaluate_run(map_path_or_run_dir: str | os.PathLike, ref_path: str | os.PathLike,
                 poses_truth: str | os.PathLike | None = None, poses_est: str | os.PathLike | None = None,
                 out_dir: str | os.PathLike | None = None, apix: float | None = None,
                 halves: tuple[str | os.PathLike, str | os.PathLike] | None = None, symmetry: str = "C1",
                 oracle_A: float | None = None) -> dict:
    """Evaluate a reconstruction against a ground-truth map (and poses); returns the ``evaluation.json`` dict.

    Args:
        map_path_or_run_dir: a map, or a run directory holding ``map.mrc`` (and ``poses.star``,
            ``map_half1.mrc``/``map_half2.mrc``, used when present).
        ref_path: ground-truth map (resampled to the reconstruction's box and voxel size when they differ).
        poses_truth: true poses (.star/.cs); with estimated poses, pose errors are reported.
        poses_est: estimated poses (default: the run directory's ``poses.star``).
        out_dir: where the files go (default: the run directory, or the map's folder); figures in ``plots/``.
        apix: voxel size (Å) of the reconstruction and half maps, overriding their headers.
        halves: two half maps (default: the run directory's).
        symmetry: point group of the reference (:func:`~cryopose.geometry.symmetry.point_group`), with its axes
            fitted to the reference (RELION's frame when the reference is in it); pose errors are modulo it.
        oracle_A: resolution (Å) of the map from the true poses, drawn on the training curves of a run directory
            whose log measured its epochs against the truth (``reconstruct --ref``).
    """
    point_group(symmetry)  # an unknown group fails before any work
    target = Path(map_path_or_run_dir)
    map_path, poses_est, halves = _locate(target, poses_est, halves)
    if poses_truth is not None and poses_est is None:
        raise InputError(target, "true poses were given but there are no estimated poses (poses.star) to compare")
    out = Path(out_dir) if out_dir is not None else (target if target.is_dir() else map_path.parent)
    ref_path = Path(ref_path)
    (est,), size = read_maps([map_path], apix)
    ref, resampled = reference_on_grid(ref_path, est.shape[0], size)

    aligned, alignment = align_maps(est, ref, voxel_size_A=size)
    aligned = aligned.cpu().numpy()
    write_map(out / MAP_ALIGNED, aligned, size)
    box = ref.shape[0]
    edge = max(2.0, box / 16)
    mask = soft_sphere_mask(box, box / 2 - edge, edge)
    curves = [fsc_curve("map vs reference", aligned, ref, size, mask, (0.5, 0.143))]
    result = {
        "map": str(map_path), "reference": str(ref_path), "reference_resampled": resampled, "box": box,
        "apix_A": size, "nyquist_A": 2 * size,
        "mask": f"soft sphere, radius {box / 2 - edge:.1f} px, raised-cosine edge {edge:.1f} px",
        "alignment": alignment.to_dict(),
        "fsc_vs_reference": {f"resolution_{t:g}_A": finite(r) for t, r in curves[0].resolutions_A.items()},
        "fsc_halves": None, "poses": None,
    }
    if halves is not None:
        (h1, h2), _ = read_maps(list(halves), apix, expect=(est.shape, size))
        curves.append(fsc_curve("half map 1 vs 2", h1, h2, size, mask, (0.143,)))
        result["fsc_halves"] = {"half1": str(halves[0]), "half2": str(halves[1]),
                                "resolution_0.143_A": finite(curves[1].resolutions_A[0.143])}
    errors = None
    if poses_truth is not None:
        group = None if symmetry.strip().upper() == "C1" else fit_symmetry(ref, symmetry).elements()
        estimated, truth = read_particles(poses_est), read_particles(poses_truth)
        junk = simulated_junk(ref_path.parent / "simulation.json", len(truth))  # images with no pose to find
        result["poses"], errors = pose_errors(estimated, truth, alignment, group, no_pose=junk)
        result["poses"].update(estimated=str(poses_est), truth=str(poses_truth), symmetry=symmetry,
                               simulated_junk_excluded=0 if junk is None else int(junk.sum()))
        result["junk"] = None if junk is None else junk_found(estimated, truth, junk)
    records = MetricsLog(target / LOG).records() if target.is_dir() and (target / LOG).exists() else []
    epochs = [r for r in records if r.get("kind") == "epoch"]
    result["noise"] = noise_spectra(records, box, size, ref_path.parent / "simulation.json")
    result["files"] = {"map_aligned": MAP_ALIGNED, "evaluation_json": EVALUATION,
                       **write_report(out, result, curves, {"aligned map": aligned, "reference": ref}, errors,
                                      epochs, oracle_A, result["noise"])}
    with atomic_path(out / EVALUATION) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def run(args: argparse.Namespace) -> None:
    result = evaluate_run(args.run, args.ref, poses_truth=args.poses, apix=args.apix, out_dir=args.output,
                          symmetry=args.symmetry)
    print(json.dumps({k: result[k] for k in ("fsc_vs_reference", "fsc_halves", "poses") if result.get(k)},
                     indent=2))
