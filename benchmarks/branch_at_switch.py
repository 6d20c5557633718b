"""cryoSPIN Fig. 4: pose error after the switch to per-particle optimisation vs continuing stage 1, from one run.

One semi-amortized run trains its ``--switch`` amortized epochs and stops (its checkpoint is taken at the end of
the last stage-1 epoch); two copies of its run directory then continue for ``--more`` epochs each: ``switched``
as planned (per-particle poses from the best heads), ``amortized`` with the switch moved past the end
(``--resume --switch-epoch``). Both branches share the first run's epochs, data order and random state.

    python benchmarks/branch_at_switch.py DATA/particles.star --ref DATA/ground_truth.mrc -o OUT \\
        --switch 5 --more 5 [--batch 32] [--heads 7] [--option key=value ...]

Writes ``OUT/branches.json`` (the epoch records of both branches and each branch's wall time),
``OUT/branches.md`` and ``OUT/branches.png`` (median pose error and share within 10° against the epoch).
Needs the true poses in the particles' STAR (simulated data) for the pose error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cryopose.jobs.reconstruct import ReconstructOptions, reconstruct
from cryopose.train.run_dir import MetricsLog

BRANCHES = ("switched", "amortized")


def _epochs(run: Path) -> list[dict]:
    return [r for r in MetricsLog(run / "log.jsonl").records() if r.get("kind") == "epoch"]


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def branch(particles: Path, ref: Path, out: Path, switch: int, more: int, batch: int, options: dict) -> dict:
    """Run the trunk and both branches (see module doc); returns ``{branch: {"epochs": [...], "seconds": s}}``."""
    common = ReconstructOptions(method="semi-amortized", batch=batch, ref=ref, relax_symmetry=False)
    trunk = out / "trunk"
    t0 = time.time()
    reconstruct(particles, trunk, replace(common, epochs=switch, method_options={**options, "switch_epoch": switch}),
                force=True)
    result = {"trunk": {"epochs": _epochs(trunk), "seconds": round(time.time() - t0, 1)}}
    for name in BRANCHES:
        run = out / name
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(trunk, run)
        moved = {} if name == "switched" else {"switch_epoch": switch + more}
        t0 = time.time()
        reconstruct(particles, run, replace(common, epochs=switch + more, method_options=moved), resume=True)
        result[name] = {"epochs": _epochs(run)[switch:], "seconds": round(time.time() - t0, 1)}
    return result


def plot(result: dict, switch: int, path: Path) -> None:
    """Median pose error (log scale) and share within 10° per epoch, trunk then both branches."""
    fig = Figure(figsize=(9, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    trunk = result["trunk"]["epochs"]
    for ax, key, label in ((axes[0], "pose_error_median_deg", "median pose error (°)"),
                           (axes[1], "pose_within_10deg", "share within 10°")):
        ax.plot([r["epoch"] + 1 for r in trunk], [r[key] for r in trunk], "k.-", label="stage 1 (shared)")
        for name, colour in zip(BRANCHES, ("#1f5fa8", "#d4631b")):
            records = trunk[-1:] + result[name]["epochs"]
            ax.plot([r["epoch"] + 1 for r in records], [r[key] for r in records], ".-", color=colour,
                    label="after the switch" if name == "switched" else "continuing stage 1")
        ax.axvline(switch + 0.5, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        if key == "pose_error_median_deg":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def table(result: dict) -> str:
    rows = ["| branch | epoch | median pose error (°) | within 10° | FSC-0.5 vs truth (Å) | images/s |",
            "|---|---|---|---|---|---|"]
    for name in ("trunk", *BRANCHES):
        for r in result[name]["epochs"]:
            rows.append(f"| {name} | {r['epoch'] + 1} | {r['pose_error_median_deg']:.1f} | "
                        f"{100 * r['pose_within_10deg']:.1f} % | {r['resolution_0.5_A']:.2f} | "
                        f"{r['images_per_s']:.0f} |")
    rows.append("")
    rows += [f"- {name}: {result[name]['seconds'] / 60:.1f} min wall" for name in ("trunk", *BRANCHES)]
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("particles", type=Path)
    parser.add_argument("--ref", type=Path, required=True, help="the true map (FSC per epoch)")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--switch", type=int, default=5, help="stage-1 epochs of the trunk")
    parser.add_argument("--more", type=int, default=5, help="epochs of each branch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a SemiAmortizedConfig field, e.g. heads=7 encoder=light (repeatable)")
    args = parser.parse_args()
    options = dict(o.split("=", 1) for o in args.option)
    options = {k: _value(v) for k, v in options.items()}
    args.output.mkdir(parents=True, exist_ok=True)
    result = branch(args.particles, args.ref, args.output, args.switch, args.more, args.batch, options)
    (args.output / "branches.json").write_text(json.dumps(result, indent=1))
    (args.output / "branches.md").write_text(table(result))
    plot(result, args.switch, args.output / "branches.png")
    print(table(result))


if __name__ == "__main__":
    main()
