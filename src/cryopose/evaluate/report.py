"""Files of an evaluation: FSC table (CSV), figures (PNG) and one HTML page summarising the numbers."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_path
from ..io.run_files import PLOTS, REPORT
from ..report.html import write_html
from ..report.plots import FSCCurve, plot_fsc, plot_map_views, plot_noise, plot_pose_errors, plot_training


def write_fsc_csv(path: str | os.PathLike, curves: Sequence[FSCCurve]) -> None:
    """One row per shell: frequency (Å⁻¹), resolution (Å) and the FSC of every curve (same shells)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["shell", "frequency_per_A", "resolution_A"] + [f"fsc_{c.label.replace(' ', '_')}"
                                                                    for c in curves])
    freq = np.asarray(curves[0].freq_A)
    for i, f in enumerate(freq):
        writer.writerow([i, f"{f:.6f}", f"{1 / f:.3f}" if f > 0 else "inf"] +
                        [f"{float(c.fsc[i]):.6f}" for c in curves])
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(buffer.getvalue(), encoding="utf-8")


def write_fsc_files(stem: str | os.PathLike, curves: Sequence[FSCCurve], title: str) -> tuple[Path, Path]:
    """``stem.png`` (the plot) and ``stem.csv`` (the table); returns both paths."""
    stem = Path(stem)
    png, table = stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".csv")
    plot_fsc(png, curves, title=title)
    write_fsc_csv(table, curves)
    return png, table


def _fmt(value, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}{unit}"
    return f"{value}{unit}"


def _resolution(value: float | None, nyquist: float) -> str:
    if value is not None and np.isclose(value, nyquist):
        return f"Nyquist ({nyquist:.2f} Å): never crossed"
    return _fmt(value, " Å")


def _sections(result: dict) -> list[tuple[str, dict[str, str]]]:
    """The report's tables from the ``evaluation.json`` dictionary."""
    ref, align, nyquist = result["fsc_vs_reference"], result["alignment"], result["nyquist_A"]
    sections = [("Map vs reference", {
        "resolution at FSC = 0.5": _resolution(ref["resolution_0.5_A"], nyquist),
        "resolution at FSC = 0.143": _resolution(ref["resolution_0.143_A"], nyquist),
        "real-space correlation after alignment": _fmt(align["correlation"], digits=3),
        "rotation applied to the map": _fmt(align["rotation_angle_deg"], "°", 1),
        "mirror image (hand flipped)": _fmt(align["mirrored"]),
        "shift applied (x, y, z)": ", ".join(f"{v:.2f}" for v in align["shift_A"]) + " Å",
    })]
    if result.get("fsc_halves"):
        sections.append(("Half maps", {
            "resolution at FSC = 0.143": _resolution(result["fsc_halves"]["resolution_0.143_A"], nyquist)}))
    poses = result.get("poses")
    if poses:
        sections.append(("Poses vs ground truth", {
            "particles compared": _fmt(poses["n"]) + (f" (the {poses['simulated_junk_excluded']} simulated junk "
                                                      "images have no pose)" if poses.get("simulated_junk_excluded")
                                                      else ""),
            "rotation error mean / median":
                f"{poses['rotation_mean_deg']:.2f}° / {poses['rotation_median_deg']:.2f}°",
            "particles within 10°": f"{100 * poses['rotation_within_10deg']:.1f} %",
            "viewing-direction error mean / median":
                f"{poses['viewing_mean_deg']:.2f}° / {poses['viewing_median_deg']:.2f}°",
            "shift error mean / median": "–" if poses["shift_mean_A"] is None else
                f"{poses['shift_mean_A']:.2f} Å / {poses['shift_median_A']:.2f} Å",
            "pose alignment vs map alignment (≈ 0° when they agree)": _fmt(poses["frame_vs_map_deg"], "°", 1) +
                (" and the other hand" if poses["mirrored"] else ""),
        }))
    junk = result.get("junk")
    if junk:
        sections.append(("Junk (simulated) left out of the map", {
            "simulated junk images": _fmt(junk["simulated_junk"]),
            "particles the run left out (rlnClassNumber 2)": _fmt(junk["left_out"]),
            "share of the junk left out": f"{100 * junk['junk_left_out_share']:.1f} %",
            "share of the real particles left out": f"{100 * junk['particles_left_out_share']:.1f} %"}))
    errors = (result.get("noise") or {}).get("max_error_vs_simulation")
    if errors:
        sections.append(("Noise model vs the simulated spectrum", {
            f"{label}: largest error over the shells": f"{100 * e:.1f} %" for label, e in errors.items()}))
    sections.append(("Inputs", {"map": result["map"], "reference": result["reference"] +
                                (" (resampled to the map's grid)" if result["reference_resampled"] else ""),
                                "box": f"{result['box']} voxels", "voxel size": _fmt(result["apix_A"], " Å", 3),
                                "FSC mask": result["mask"]}))
    return sections


def write_report(out_dir: str | os.PathLike, result: dict, curves: Sequence[FSCCurve], maps: dict[str, np.ndarray],
                 pose_errors: dict[str, np.ndarray] | None = None, epochs: Sequence[dict] = (),
                 oracle_A: float | None = None, noise: dict | None = None) -> dict[str, str]:
    """Write ``plots/fsc.png``/``fsc.csv``, ``plots/map_views.png``, ``plots/pose_errors.png`` (when
    ``pose_errors`` has ``rotation_deg``, ``viewing_deg`` and optionally ``shift_A``, each ``(N,)``),
    ``plots/training.png`` (when the run's ``epochs`` log records were measured against the truth; ``oracle_A``:
    the true-pose map's resolution), ``plots/noise.png`` (``noise``: ``frequency_per_A`` and ``sigma``, the
    spectra by label, see :func:`plot_noise`) and ``report.html`` (figures embedded) in ``out_dir``.

    Returns the written files (relative to ``out_dir``) by kind.
    """
    out = Path(out_dir)
    plots = out / PLOTS
    png, table = write_fsc_files(plots / "fsc", curves, "Fourier shell correlation")
    figures = [(png, "FSC of the aligned map with the reference (and between half maps)")]
    views = plots / "map_views.png"
    plot_map_views(views, maps, result["apix_A"], title="Aligned map and reference: central sections and projections")
    figures.append((views, "Central sections through the box centre and projections, in the reference frame"))
    if pose_errors is not None:
        errors = plots / "pose_errors.png"
        plot_pose_errors(errors, pose_errors["rotation_deg"], pose_errors["viewing_deg"], pose_errors.get("shift_A"))
        figures.append((errors, "Per-particle pose errors after global alignment to the true poses"))
    measured = [r for r in epochs if "resolution_0.5_A" in r or "pose_error_median_deg" in r]
    if measured:
        training = plots / "training.png"
        plot_training(training, measured, oracle_A)
        figures.append((training, "Resolution and pose error of each epoch's map and poses against training time"))
    if noise:
        spectrum = plots / "noise.png"
        plot_noise(spectrum, np.asarray(noise["frequency_per_A"]), noise["sigma"])
        figures.append((spectrum, "Noise σ per shell: the run's noise model and, for simulated data, the drawn one"))
    html = out / REPORT
    notes = ["Resolutions are read where the FSC first falls below the threshold (linear interpolation between "
             "shells): 0.5 against the reference, 0.143 between independent half maps."]
    write_html(html, "cryopose evaluation", _sections(result), figures, notes)
    files = {"fsc_png": png, "fsc_csv": table, "map_views_png": views, "report_html": html}
    if pose_errors is not None:
        files["pose_errors_png"] = errors
    if measured:
        files["training_png"] = training
    if noise:
        files["noise_png"] = spectrum
    return {k: v.relative_to(out).as_posix() for k, v in files.items()}
