"""Junk in simulated data: which images hold no particle (``simulation.json``), and how many of them a run left out
of its map (``rlnClassNumber`` other than 1 in its ``poses.star``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..io.particles import ParticleTable
from ..io.run_files import KEPT
from .compare import match_particles


def simulated_junk(simulation: Path, n: int) -> np.ndarray | None:
    """Boolean ``(n,)``: the images of a simulated data set of ``n`` images that hold no particle, from its
    ``simulation.json`` (None when there is none, it lists no junk, or it simulated another number of images:
    the true poses given are then not its stack's)."""
    if not simulation.exists():
        return None
    summary = json.loads(simulation.read_text())
    listed = summary.get("junk_indices") or []
    if not listed or summary["config"]["n"] != n:
        return None
    junk = np.zeros(n, dtype=bool)
    junk[listed] = True
    return junk


def junk_found(estimated: ParticleTable, truth: ParticleTable, junk: np.ndarray) -> dict | None:
    """How the particles a run left out (``rlnClassNumber`` ≠ 1 in ``estimated``) match the simulated ``junk``
    (boolean over the rows of ``truth``); None when the run marks no classes."""
    classes = estimated.extra.get("rlnClassNumber")
    if classes is None:
        return None
    i_est, i_true = match_particles(estimated, truth)
    out, bad = np.asarray(classes)[i_est] != KEPT, junk[i_true]
    return {"simulated_junk": int(bad.sum()), "left_out": int(out.sum()),
            "junk_left_out_share": float(out[bad].mean()) if bad.any() else 0.0,
            "particles_left_out_share": float(out[~bad].mean()) if (~bad).any() else 0.0}
