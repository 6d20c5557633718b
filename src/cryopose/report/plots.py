"""PNG figures for run reports: FSC curves, pose-error histograms, central sections and projections of maps, and
the training curves of a run.

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot, no global backend change).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter

from ..io.atomic import atomic_path

_RESOLUTION_TICKS_A = (50, 30, 20, 15, 10, 8, 6, 5, 4, 3.5, 3, 2.5, 2, 1.8, 1.5, 1.2, 1.0)
_COLOURS = ("#1f5fa8", "#d4631b", "#2e8b57", "#8b3a8b")


@dataclass
class FSCCurve:
    """One FSC curve: ``freq_A`` (Å⁻¹) and ``fsc`` ``(S,)``, and the resolutions (Å) to mark, by threshold."""

    label: str
    freq_A: np.ndarray
    fsc: np.ndarray
    resolutions_A: dict[float, float]


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def plot_fsc(path: str | os.PathLike, curves: Sequence[FSCCurve], title: str = "Fourier shell correlation") -> None:
    """FSC curves against spatial frequency (Å⁻¹, resolution in Å on the top axis), with the 0.5 and 0.143
    thresholds and each curve's crossing marked."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    nyquist = max(float(c.freq_A[-1]) for c in curves)
    for y, name in ((0.5, "0.5"), (0.143, "0.143")):
        ax.axhline(y, color="0.55", lw=0.9, ls="--", zorder=1)
        ax.text(nyquist * 0.995, y + 0.015, f"FSC = {name}", ha="right", va="bottom", fontsize=8, color="0.35")
    ax.axhline(0, color="0.8", lw=0.8, zorder=0)
    for curve, colour in zip(curves, _COLOURS):
        read = ", ".join(f"{res:.2f} Å at {t:g}" if curve.fsc[-1] < t else f"{t:g} not reached (Nyquist {res:.2f} Å)"
                         for t, res in curve.resolutions_A.items())
        ax.plot(curve.freq_A, curve.fsc, color=colour, lw=1.8, zorder=3, label=f"{curve.label} ({read})")
        for threshold, res in curve.resolutions_A.items():
            if np.isfinite(res) and 1 / res < nyquist * 0.999:
                ax.plot([1 / res], [threshold], "o", ms=6, mfc="white", mec=colour, mew=1.6, zorder=4)
                ax.annotate(f"{res:.2f} Å", (1 / res, threshold), xytext=(6, 6), textcoords="offset points",
                            fontsize=9, color=colour, fontweight="bold")
    ax.set_xlim(0, nyquist)
    ax.set_ylim(-0.1, 1.05)
    ax.set_xlabel("spatial frequency (Å⁻¹)")
    ax.set_ylabel("FSC")
    ax.set_title(title)
    ax.legend(loc="lower left", fontsize=9, framealpha=0.95)
    ax.grid(alpha=0.25)
    top = ax.secondary_xaxis("top")
    ticks = [r for r in _RESOLUTION_TICKS_A if 1 / r <= nyquist * 1.0001 and 1 / r >= nyquist * 0.04]
    top.set_xticks([1 / r for r in ticks], labels=[f"{r:g}" for r in ticks])
    top.set_xlabel("resolution (Å)")
    _save(fig, path)


def _histogram(ax, values: np.ndarray, unit: str, log: bool, colour: str) -> None:
    values = np.asarray(values, dtype=np.float64)
    if log:
        low = max(min(float(values.min(initial=180)), 0.1), 1e-3)
        bins = np.geomspace(low, 180, 50)
        ax.hist(np.clip(values, low, 180), bins=bins, color=colour, alpha=0.85)
        ax.set_xscale("log")
        ax.set_xlim(low, 180)
        ticks = [t for t in (0.01, 0.1, 1, 10, 90, 180) if t >= low]
        ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    else:
        ax.hist(values, bins=50, color=colour, alpha=0.85)
        ax.set_xlim(left=0)
    for stat, style in ((np.median(values), "-"), (values.mean(), "--")):
        ax.axvline(stat, color="black", ls=style, lw=1.2)
    ax.legend(handles=ax.lines[-2:], labels=[f"median {np.median(values):.2f}{unit}",
                                             f"mean {values.mean():.2f}{unit}"], fontsize=9, loc="best")


def plot_pose_errors(path: str | os.PathLike, rotation_deg: np.ndarray, viewing_deg: np.ndarray,
                     shift_A: np.ndarray | None = None, title: str = "Pose errors after global alignment") -> None:
    """Histograms of per-particle rotation and viewing-direction errors (degrees, log axis) and, when given,
    shift errors (Å)."""
    panels = [("rotation error (°)", rotation_deg, "°", True),
              ("viewing-direction error (°)", viewing_deg, "°", True)]
    if shift_A is not None:
        panels.append(("shift error (Å)", shift_A, " Å", False))
    fig = Figure(figsize=(4.3 * len(panels), 3.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, values, unit, log), colour in zip(axes, panels, _COLOURS):
        _histogram(ax, values, unit, log, colour)
        ax.set_xlabel(label)
        ax.set_ylabel("particles")
    fig.suptitle(f"{title} (N = {len(rotation_deg)})")
    _save(fig, path)


_VIEWS = (  # (title, reduce: "section"/"projection", axis reduced, (vertical, horizontal) axis names)
    ("XY section (z = 0)", "section", 0, ("y", "x")),
    ("XZ section (y = 0)", "section", 1, ("z", "x")),
    ("YZ section (x = 0)", "section", 2, ("z", "y")),
    ("projection along Z", "projection", 0, ("y", "x")),
    ("projection along Y", "projection", 1, ("z", "x")),
    ("projection along X", "projection", 2, ("z", "y")),
)


def plot_map_views(path: str | os.PathLike, maps: dict[str, np.ndarray], apix: float,
                   title: str = "Central sections and projections") -> None:
    """One row per ``(D, D, D)`` map (``(z, y, x)``): central XY/XZ/YZ sections through voxel ``D//2`` and
    projections along Z/Y/X, axes in Å from the box centre, density white; each panel is scaled to its own
    0.5–99.8 percentiles."""
    width, height = 2.3 * len(_VIEWS) + 0.8, 2.45 * len(maps) + 0.6
    fig = Figure(figsize=(width, height))
    axes = fig.subplots(len(maps), len(_VIEWS), squeeze=False)
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.1 / width, bottom=0.45 / height, top=1 - 0.6 / height,
                        wspace=0.42, hspace=0.3)
    for row, (name, volume) in enumerate(maps.items()):
        volume = np.asarray(volume, dtype=np.float64)
        box = volume.shape[-1]
        c = box // 2
        extent = [-c * apix, (box - 1 - c) * apix, -c * apix, (box - 1 - c) * apix]
        for col, (view, kind, axis, (vertical, horizontal)) in enumerate(_VIEWS):
            image = np.take(volume, c, axis=axis) if kind == "section" else volume.sum(axis=axis)
            low, high = np.percentile(image, [0.5, 99.8])
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", origin="lower", extent=extent, vmin=low, vmax=high if high > low else None,
                      interpolation="nearest")
            ax.set_xlabel(f"{horizontal} (Å)", fontsize=8, labelpad=1)
            ax.set_ylabel(f"{vertical} (Å)", fontsize=8, labelpad=1)
            ax.tick_params(labelsize=7)
            if row == 0:
                ax.set_title(view, fontsize=9)
        panel = axes[row, 0].get_position()
        fig.text(0.2 / width, (panel.y0 + panel.y1) / 2, name, rotation=90, ha="center", va="center", fontsize=11,
                 fontweight="bold")
    fig.suptitle(title)
    _save(fig, path)


def plot_training(path: str | os.PathLike, epochs: Sequence[dict], oracle_A: float | None = None) -> None:
    """Resolution against the truth (FSC 0.5, Å) and median pose error (°) of each epoch's map and poses against
    training time (minutes), from a run's ``epoch`` log records (``train_seconds``, ``resolution_0.5_A``,
    ``pose_error_median_deg``, ``stage``); ``oracle_A``: the true-pose map's resolution, drawn as a line."""
    fig = Figure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2)
    fig.subplots_adjust(wspace=0.35, bottom=0.16)
    minutes = np.array([r["train_seconds"] / 60 for r in epochs])
    for ax, key, label in ((axes[0], "resolution_0.5_A", "resolution vs truth, FSC 0.5 (Å)"),
                           (axes[1], "pose_error_median_deg", "median pose error (°)")):
        values = np.array([r.get(key, np.nan) for r in epochs], dtype=float)
        for stage, colour in zip(dict.fromkeys(r["stage"] for r in epochs), _COLOURS):
            keep = np.array([r["stage"] == stage for r in epochs])
            ax.plot(minutes[keep], values[keep], "o-", color=colour, label=stage, ms=4)
        if key.startswith("resolution"):
            if oracle_A is not None:
                ax.axhline(oracle_A, color="0.4", ls="--", lw=1, label="true poses (oracle)")
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
        else:
            ax.set_ylim(0, 180)
        ax.set_xlabel("training time (min)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Training curves (each epoch's map and poses)")
    _save(fig, path)


def plot_noise(path: str | os.PathLike, freq_A: np.ndarray, spectra: dict[str, np.ndarray]) -> None:
    """Noise σ per resolution shell against frequency ``freq_A`` ``(S,)`` (Å⁻¹), one line per spectrum ``(S,)``
    (relative units: each has mean 1 over the shells beyond the origin), e.g. a run's estimates and the
    simulation's."""
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.subplots()
    fig.subplots_adjust(bottom=0.15)
    for (label, sigma), colour in zip(spectra.items(), _COLOURS + ("0.3",) * len(spectra)):
        ax.plot(freq_A[1:], np.asarray(sigma)[1:], "o-" if "simulat" not in label else "--", color=colour,
                label=label, ms=3)
    ax.set_xlabel("spatial frequency (Å⁻¹)")
    ax.set_ylabel("noise σ per shell (relative)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("Noise spectrum of the images")
    _save(fig, path)
