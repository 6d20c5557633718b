"""A run's noise model against the spectrum its simulated data were drawn with (``simulation.json``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..methods.noise import shell_profile
from ..simulation.simulate import noise_power

_LABELS = {"shell": "start: outside the particle", "white": "start: one σ",
           "residuals": "after training: residuals"}


def _relative(sigma: np.ndarray) -> np.ndarray:
    """σ per shell scaled to mean 1 over the shells beyond the origin."""
    return sigma / sigma[1:].mean()


def noise_spectra(records: Sequence[dict], box: int, apix_A: float, simulation: Path | None) -> dict | None:
    """The noise models a run logged (``noise`` records of its log) on its shells ``(D//2 + 1,)`` of ``box`` px
    at ``apix_A``, and, when ``simulation`` (a ``simulation.json``) exists, the spectrum the data were drawn with,
    interpolated to the same frequencies; each relative (mean 1 beyond the origin). Returns ``frequency_per_A``,
    ``sigma`` (by label) and ``max_error_vs_simulation`` (by label: largest ``|est / true − 1|`` over those
    shells), or None when the run logged no noise model."""
    found = [r for r in records if r.get("kind") == "noise"]
    if not found:
        return None
    freq = np.arange(box // 2 + 1) / (box * apix_A)
    sigma = {_LABELS.get(r["model"], r["model"]): _relative(np.asarray(r["sigma_per_shell"])) for r in found}
    out = {"frequency_per_A": freq.tolist(), "sigma": sigma}
    if simulation is not None and simulation.exists():
        cfg = json.loads(simulation.read_text())["config"]
        drawn = np.asarray(shell_profile(torch.from_numpy(
            noise_power(cfg.get("noise_spectrum", "white"), cfg["box"], cfg["apix"])).sqrt()))
        true = _relative(np.interp(freq, np.arange(len(drawn)) / (cfg["box"] * cfg["apix"]), drawn))
        out["max_error_vs_simulation"] = {k: float(np.abs(v[1:] / true[1:] - 1).max()) for k, v in sigma.items()}
        sigma[f"simulated ({cfg.get('noise_spectrum', 'white')})"] = true
    out["sigma"] = {k: [round(float(x), 4) for x in v] for k, v in sigma.items()}
    return out
