"""Markdown table of finished ``cryopose reconstruct`` runs, from their ``log.jsonl`` (run with ``--ref``).

    python benchmarks/compare_runs.py RUN [RUN ...] [--label NAME ...]

One row per run: method, epochs, wall time of the whole run, mean images/s over the epochs, peak resident
memory, FSC-0.5 resolution vs the reference, gold-standard half-map resolution (``--halves``), and the median
pose error and share within 10° after alignment (with true poses in the input STAR) — of the run's final map and
poses (after the pseudo-symmetry relaxation when there was one), else of its last epoch.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cryopose.train.run_dir import MetricsLog


def row(run: Path) -> dict:
    records = MetricsLog(run / "log.jsonl").records()
    config = json.loads((run / "config.json").read_text())
    epochs = [r for r in records if r.get("kind") == "epoch"]
    done = next((r for r in reversed(records) if r.get("kind") == "done"), {})
    if not epochs:
        raise SystemExit(f"{run}: no finished epoch in log.jsonl")
    last = {**epochs[-1], **{k: v for k, v in done.items() if k.startswith(("resolution_0.5", "pose_"))}}

    def fmt(value, spec):
        return "–" if value is None else format(value, spec)

    return {"run": run.name, "method": config["method"], "epochs": len(epochs),
            "wall (min)": fmt(done.get("seconds", last["time"] - records[0]["time"]) / 60, ".1f"),
            "images/s": fmt(sum(r["images_per_s"] for r in epochs) / len(epochs), ".0f"),
            "peak RSS (GB)": fmt(max(r.get("peak_rss_MB", 0) for r in epochs + [done]) / 1024 or None, ".2f"),
            "FSC-0.5 vs truth (Å)": fmt(last.get("resolution_0.5_A"), ".2f"),
            "half maps 0.143 (Å)": fmt(done.get("resolution_halves_0.143_A"), ".2f"),
            "median pose error (°)": fmt(last.get("pose_error_median_deg"), ".1f"),
            "within 10°": fmt(last.get("pose_within_10deg"), ".1%")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--label", nargs="*", default=None, help="names for the runs, in order")
    args = parser.parse_args()
    rows = [row(run) for run in args.runs]
    for label, r in zip(args.label or [], rows):
        r["run"] = label
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
