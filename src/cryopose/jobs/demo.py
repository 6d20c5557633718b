"""``cryopose demo``: simulate the built-in molecule, reconstruct it ab initio with the default method and from the
true poses (the oracle), evaluate both against the truth and summarise — no download."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..io.run_files import MAP, REPORT
from ..simulation.simulate import SimulationConfig, simulate
from .backproject import backproject
from .evaluate import evaluate_run
from .reconstruct import ReconstructOptions, reconstruct


def demo(out: str | os.PathLike, *, n: int, box: int, apix: float, snr: float, seed: int, force: bool = False) -> dict:
    """Run the demo into ``out``: ``sim/`` (data and truth), ``oracle/`` (the map from the true poses) and ``run/``
    (the default ab initio run, its evaluation and ``report.html``); returns the summary. The demo's settings
    (``n`` particles of ``box`` px at ``apix`` Å/px, ``snr``, ``seed``) have their defaults in ``cryopose demo``."""
    out = Path(out)
    start = time.time()
    sim, oracle, run = out / "sim", out / "oracle", out / "run"
    summary = simulate(SimulationConfig(source="demo", box=box, apix=apix, n=n, snr=snr, seed=seed), sim,
                       force=force)
    truth, particles = sim / "ground_truth.mrc", sim / "particles.star"
    oracle.mkdir(parents=True, exist_ok=True)
    backproject(particles, oracle / MAP, halves=True)
    best = evaluate_run(oracle, truth)["fsc_vs_reference"]["resolution_0.5_A"]
    options = ReconstructOptions(ref=truth, halves=True)
    ab_initio = reconstruct(particles, run, options, force=force)
    result = evaluate_run(run, truth, poses_truth=particles, oracle_A=best)
    resolution = result["fsc_vs_reference"]["resolution_0.5_A"]
    return {
        "particles": n, "box": box, "apix_A": apix, "snr": summary["measured_snr"], "method": options.method,
        "resolution_vs_truth_A": resolution, "oracle_resolution_A": best,
        "resolution_over_oracle": resolution / best if resolution and best else None,
        "pose_error_median_deg": result["poses"]["rotation_median_deg"],
        "pose_within_10deg": result["poses"]["rotation_within_10deg"],
        "reconstruct_seconds": ab_initio["seconds"], "seconds": round(time.time() - start, 1),
        "report": str(run / REPORT),
    }


def run(args: argparse.Namespace) -> None:
    s = demo(args.output, n=args.n, box=args.box, apix=args.apix, snr=args.snr, seed=args.seed, force=args.force)
    print(f"demo: {s['particles']} particles of the built-in molecule, {s['box']} px at {s['apix_A']} Å/px, "
          f"SNR {s['snr']:.3g}")
    print(f"ab initio ({s['method']}, default settings): {s['resolution_vs_truth_A']:.2f} Å vs the truth (FSC 0.5), "
          f"{s['resolution_over_oracle']:.2f}× the true-pose map's {s['oracle_resolution_A']:.2f} Å; median pose "
          f"error {s['pose_error_median_deg']:.2f}°, {100 * s['pose_within_10deg']:.0f} % within 10°")
    print(f"time: {s['seconds']:.0f} s ({s['reconstruct_seconds']:.0f} s reconstructing)")
    print(f"report: {s['report']}")
