"""Benchmark suite: every tool on the same simulated data — time to resolution, pose error, CPU time, memory.

    python benchmarks/suite.py --preset cpu -o benchmarks/results/cpu                 # 4AKE, 2CG9, 6VXX at 64 px
    python benchmarks/suite.py --preset cpu --datasets 4AKE --tools oracle relion
    python benchmarks/suite.py --preset tiny -o /tmp/bench                              # smoke run, minutes
    python benchmarks/suite.py --preset panel-small -o OUT --tools oracle semi-amortized  # the molecule panel

The ``panel`` presets (``benchmarks/panel.py``) run cryopose with its default settings only, on six molecules
unlike each other (asymmetric, pseudo-two-fold, globular, elongated, large maps and the built-in one).

For each dataset of the preset it simulates the particles with ``cryopose simulate`` (kept between runs) and runs
each tool in its own process, measured with ``os.wait4`` (wall, user + system CPU, peak resident memory):

- ``oracle``: ``cryopose backproject`` from the true poses, the bound every method is judged by;
- ``search-supervised`` / ``semi-amortized``: ``cryopose reconstruct`` (its per-epoch maps and images/s);
- ``relion``: RELION 3.1 ``relion_refine --denovo_3dref --sgd`` with the 3D initial-model job's GUI defaults
  (``../shared/PEERS.md``; iterations per preset), skipped when ``relion_refine`` is not on the PATH;
- ``cryodrgn``: ``cryodrgn abinit --zdim 0`` from the virtual environment ``--cryodrgn`` (default
  ``peers/cryodrgn``), skipped when absent.

Every tool gets the same wall-clock budget per dataset (``--budget-min``; 30 min on the ``cpu`` preset): one still
running is stopped, and the maps it wrote are scored. Every intermediate map a tool writes is aligned to the truth
(both hands) and its FSC-0.5 resolution recorded against the seconds since the tool started. Results:
``results.json`` (one record per dataset × tool, appended as each finishes, so a killed suite keeps what it
measured), ``results.md`` (table with the time ratios to RELION and cryoDRGN and the resolution ratio to the
oracle) and ``time_to_resolution.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from cryopose.evaluate.measure import evaluator
from cryopose.evaluate.poses import pose_error
from cryopose.io import read_particles
from cryopose.io.mrc import read_map

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {  # name -> source (under ../shared/data, or the built-in 'demo'), pixel size at 64 px (Å), map's voxel
    "4AKE": ("models/4AKE.pdb", 2.0, None), "2CG9": ("models/2CG9.pdb", 3.0, None),
    "6VXX": ("models/6VXX_biovia_export.pdb", 4.0, None),
    "4AKE-A": ("models/adk_open_4AKE_chainA_charmm.pdb", 2.0, None), "1AKE": ("models/1AKE.pdb", 2.0, None),
    "70S": ("maps/clean70SRibosome_vol_65p.mrc", 5.0, 5.0),  # no voxel size in the header: 65 × 5 Å fits the 70S
    "3J9G": ("maps/3j9g_potential_ps4_4.mrc", 4.4, None), "demo": ("demo", 1.5, None),
}
PANEL = ["4AKE-A", "1AKE", "2CG9", "70S", "3J9G", "demo"]
PRESETS = {  # box, images, SNR, shift std (px) per variant, epochs of cryopose (None: the defaults, as every
    # setting of the panel presets), RELION's SGD iterations
    "tiny": {"box": 32, "n": 1000, "snr": 0.1, "shifts": [0.0], "datasets": ["4AKE"], "apix_scale": 2.0,
             "epochs": 3, "relion_iter": (10, 20, 10)},
    "cpu": {"box": 64, "n": 10000, "snr": 0.1, "shifts": [0.0, 2.0], "datasets": ["4AKE", "2CG9"], "apix_scale": 1.0,
            "epochs": 6, "relion_iter": (50, 200, 50), "budget_min": 30},
    "gpu": {"box": 128, "n": 50000, "snr": 0.1, "shifts": [0.0, 2.0], "datasets": ["4AKE", "2CG9", "6VXX"],
            "apix_scale": 0.5, "epochs": 24, "relion_iter": (50, 200, 50)},
    "panel": {"box": 64, "n": 10000, "snr": 0.1, "shifts": [2.0], "datasets": PANEL, "apix_scale": 1.0,
              "epochs": None, "relion_iter": (50, 200, 50)},
    "panel-small": {"box": 32, "n": 2000, "snr": 0.1, "shifts": [1.0], "datasets": PANEL, "apix_scale": 2.0,
                    "epochs": None, "relion_iter": (50, 200, 50)},
}
TOOLS = ["oracle", "search-supervised", "semi-amortized", "relion", "cryodrgn"]


def measured(cmd: list[str], log: Path, cwd: Path | None = None, budget_s: float | None = None) -> dict:
    """Run ``cmd`` (stdout/stderr to ``log``); wall seconds, user + system CPU seconds and peak RSS (MB). A tool
    still running after ``budget_s`` seconds is stopped (SIGTERM to its process group, SIGKILL 30 s later) and
    the record says so (``stopped_at_budget``); the maps it wrote until then are scored as any others."""
    start, stopped = time.time(), False
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, start_new_session=True)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            elapsed = time.time() - start
            if budget_s is not None and elapsed > budget_s and not stopped:
                os.killpg(proc.pid, signal.SIGTERM)
                stopped = True
            elif stopped and elapsed > budget_s + 30:
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.2)  # polling the child's exit, not a synchronisation
    rc = os.waitstatus_to_exitcode(status)
    return {"command": " ".join(cmd), "returncode": rc, "wall_s": round(time.time() - start, 1),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 1), "peak_rss_MB": round(usage.ru_maxrss / 1024, 1),
            "start": start, "stopped_at_budget": stopped}


def simulate(name: str, preset: dict, shift: float, root: Path) -> Path:
    source, apix, map_apix = DATASETS[name]
    folder = root / "data" / f"{name}_{preset['box']}px{'_shifts' if shift else ''}"
    if not (folder / "particles.star").is_file():
        cmd = ["cryopose", "simulate", source if source == "demo" else str(SHARED / source), "-o", str(folder),
               "--box", str(preset["box"]), "--apix", str(apix * preset["apix_scale"]), "--n", str(preset["n"]),
               "--snr", str(preset["snr"]), "--force"] + (["--shift-std", str(shift)] if shift else []) + \
            (["--map-apix", str(map_apix)] if map_apix else [])
        folder.mkdir(parents=True, exist_ok=True)
        record = measured(cmd, folder.parent / f"{folder.name}.log")
        if record["returncode"]:
            raise SystemExit(f"simulation of {name} failed: see {folder.parent / f'{folder.name}.log'}")
    return folder


def run_oracle(data: Path, out: Path, preset: dict) -> tuple[dict, list[tuple[float, Path]], Path | None]:
    out.mkdir(parents=True, exist_ok=True)
    record = measured(["cryopose", "backproject", str(data / "particles.star"), "-o", str(out / "map.mrc")],
                      out / "tool.log")
    return record, [(record["wall_s"], out / "map.mrc")], data / "particles.star"


def run_cryopose(method: str):
    def run(data: Path, out: Path, preset: dict) -> tuple[dict, list[tuple[float, Path]], Path | None]:
        out.mkdir(parents=True, exist_ok=True)
        epochs = preset["epochs"]
        settings = [] if epochs is None else ["--epochs", str(epochs)] + (
            ["--switch-epoch", str(epochs), "--denoiser-factor", "0"] if method == "search-supervised" else
            ["--switch-epoch", str(epochs // 2), "--search-epochs", "0"])
        cmd = ["cryopose", "reconstruct", str(data / "particles.star"), "-o", str(out / "run"), "--method", method,
               "--force", "--halves"] + settings
        record = measured(cmd, out / "tool.log", budget_s=preset.get("budget_s"))
        log = [json.loads(line) for line in (out / "run" / "log.jsonl").read_text().splitlines()] \
            if (out / "run" / "log.jsonl").is_file() else []
        epochs_done = [r for r in log if r.get("kind") == "epoch"]
        record["images_per_s"] = [round(r["images_per_s"], 1) for r in epochs_done]
        t0 = record["start"]
        maps = [(r["time"] - t0, out / "run" / "maps" / f"epoch_{r['epoch'] + 1:03d}.mrc") for r in epochs_done]
        if (out / "run" / "map.mrc").is_file():
            maps.append((record["wall_s"], out / "run" / "map.mrc"))
        return record, maps, out / "run" / "poses.star"
    return run


def run_relion(data: Path, out: Path, preset: dict) -> tuple[dict, list[tuple[float, Path]], Path | None]:
    if shutil.which("relion_refine") is None:
        return {"skipped": "relion_refine not on the PATH (apt-get install -y relion)"}, [], None
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    table = read_particles(data / "particles.star")
    ini, between, fin = preset["relion_iter"]
    diameter = round(0.8 * preset["box"] * table.apix)
    cmd = ["relion_refine", "--o", str(out / "run"), "--sgd", "--denovo_3dref", "--i", str(data / "particles.star"),
           "--ctf", "--K", "1", "--sym", "C1", "--sgd_ini_iter", str(ini), "--sgd_inbetween_iter", str(between),
           "--sgd_fin_iter", str(fin), "--sgd_write_iter", "10", "--sgd_ini_resol", "35", "--sgd_fin_resol", "15",
           "--sgd_ini_subset", "100", "--sgd_fin_subset", "500", "--flatten_solvent", "--zero_mask",
           "--dont_combine_weights_via_disc", "--pool", "3", "--pad", "2", "--skip_gridding",
           "--particle_diameter", str(diameter), "--oversampling", "1", "--healpix_order", "1",
           "--offset_range", "6", "--offset_step", "4", "--j", str(os.cpu_count() or 1)]
    record = measured(cmd, out / "tool.log", budget_s=preset.get("budget_s"))  # stacks named from the working dir
    maps = sorted(out.glob("run_it*_class001.mrc"))
    timeline = [(p.stat().st_mtime - record["start"], p) for p in maps]
    datas = sorted(out.glob("run_it*_data.star"))
    return record, timeline, datas[-1] if datas else None


def run_cryodrgn(venv: Path):
    def run(data: Path, out: Path, preset: dict) -> tuple[dict, list[tuple[float, Path]], Path | None]:
        exe = venv / "bin" / "cryodrgn"
        if not exe.is_file():
            return {"skipped": f"no cryoDRGN at {exe} (see ../shared/PEERS.md)"}, [], None
        out = out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        star = data / "particles.star"
        prep = measured([str(exe), "parse_ctf_star", str(star), "-o", str(out / "ctf.pkl")], out / "ctf.log")
        if prep["returncode"]:
            return {**prep, "skipped": "parse_ctf_star failed"}, [], None
        record = measured([str(exe), "abinit", str(data / "particles.mrcs"), "--ctf", str(out / "ctf.pkl"),
                           "--zdim", "0", "-o", str(out / "run"), "-n", str(preset["epochs"] or 30),
                           "--max-threads", str(os.cpu_count() or 1), "--checkpoint", "1"], out / "tool.log",
                          budget_s=preset.get("budget_s"))
        maps = sorted((out / "run").glob("**/reconstruct*.mrc"), key=lambda p: p.stat().st_mtime)
        return record, [(p.stat().st_mtime - record["start"], p) for p in maps], None
    return run


def evaluate(data: Path, timeline: list[tuple[float, Path]], poses: Path | None) -> dict:
    """FSC-0.5 resolution of every map vs the truth, and the final poses' error."""
    table = read_particles(data / "particles.star")
    reference = torch.tensor(read_map(data / "ground_truth.mrc").cubic())  # simulated on the particles' grid
    measure = evaluator(table.apix, reference, None)
    curve = [(round(t, 1), measure(torch.tensor(read_map(p).cubic()), None)["resolution_0.5_A"])
             for t, p in timeline if p.is_file()]
    result = {"resolution_over_time": curve, "final_resolution_A": curve[-1][1] if curve else None}
    if poses is not None and poses.is_file() and poses != data / "particles.star":
        err = pose_error(read_particles(poses).rotations, table.rotations)
        result.update(pose_error_median_deg=err.rotation_median_deg, pose_error_mean_deg=err.rotation_mean_deg,
                      pose_within_10deg=err.rotation_within_10deg)
    return result


def time_to(curve: list, resolution: float) -> float | None:
    """Seconds at which ``curve`` [(s, Å)] first reaches ``resolution`` (Å), or None."""
    return next((t for t, r in curve if r is not None and r <= resolution + 1e-6), None)


def table(records: list[dict]) -> str:
    """Markdown: one row per dataset × tool, with the ratios the issue asks for."""
    lines = ["| dataset | tool | wall (min) | CPU (min) | peak RSS (GB) | images/s | final FSC-0.5 (Å) | "
             "÷ oracle | median pose error (°) | time to RELION's final ÷ RELION | time to cryoDRGN's final "
             "÷ cryoDRGN |", "|" + "---|" * 11]
    by_data: dict[str, dict[str, dict]] = {}
    for r in records:
        by_data.setdefault(r["dataset"], {})[r["tool"]] = r
    for name, tools in by_data.items():
        oracle = tools.get("oracle", {}).get("final_resolution_A")

        def ratio(r: dict, peer: str) -> str:
            p = tools.get(peer, {})
            if not p.get("final_resolution_A") or not r.get("resolution_over_time") or r["tool"] in (peer, "oracle"):
                return "–"
            t = time_to(r["resolution_over_time"], p["final_resolution_A"])
            return "not reached" if t is None else f"{t / p['wall_s']:.2f}"

        for tool, r in tools.items():
            if "skipped" in r:
                lines.append(f"| {name} | {tool} | skipped: {r['skipped']} |" + " |" * 8)
                continue
            fmt = (lambda v, s: "–" if v is None else format(v, s))
            ips = r.get("images_per_s")
            lines.append(" | ".join([
                f"| {name}", tool, fmt(r["wall_s"] / 60, ".1f") + (" (stopped at the budget)"
                                                                   if r.get("stopped_at_budget") else ""),
                fmt(r["cpu_s"] / 60, ".1f"),
                fmt(r["peak_rss_MB"] / 1024, ".2f"), fmt(sum(ips) / len(ips) if ips else None, ".0f"),
                fmt(r.get("final_resolution_A"), ".2f"),
                fmt(r["final_resolution_A"] / oracle if oracle and r.get("final_resolution_A") else None, ".2f"),
                fmt(r.get("pose_error_median_deg"), ".1f"), ratio(r, "relion"), ratio(r, "cryodrgn") + " |"]))
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["dataset"] for r in records})
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        for r in records:
            if r["dataset"] == name and r.get("resolution_over_time"):
                t, res = zip(*r["resolution_over_time"])
                ax.plot(np.array(t) / 60, res, "o-", label=r["tool"])
        ax.set(title=name, xlabel="wall time (min)", ylabel="FSC-0.5 vs truth (Å)")
        ax.invert_yaxis()
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("-o", "--output", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=None)
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=TOOLS)
    parser.add_argument("--shifts", nargs="+", type=float, default=None, help="shift std (px) of each variant")
    parser.add_argument("--cryodrgn", type=Path, default=Path("peers/cryodrgn"), help="cryoDRGN's venv")
    parser.add_argument("--budget-min", type=float, default=None,
                        help="wall-clock budget of every tool per dataset (min): a tool still running is stopped "
                             "and its last map scored (default: the preset's, 30 for cpu; none for the others)")
    args = parser.parse_args(argv)
    preset = dict(PRESETS[args.preset])
    budget = preset.get("budget_min") if args.budget_min is None else args.budget_min
    preset["budget_s"] = None if budget is None else 60 * budget
    runners = {"oracle": run_oracle, "search-supervised": run_cryopose("search-supervised"),
               "semi-amortized": run_cryopose("semi-amortized"), "relion": run_relion,
               "cryodrgn": run_cryodrgn(args.cryodrgn)}
    args.output.mkdir(parents=True, exist_ok=True)
    results = args.output / "results.json"
    records = json.loads(results.read_text()) if results.is_file() else []
    machine = f"{platform.node()}: {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or None
    for name in args.datasets or preset["datasets"]:
        for shift in preset["shifts"] if args.shifts is None else args.shifts:
            label = f"{name}{' shifts' if shift else ''}"
            data = simulate(name, preset, shift, args.output)
            for tool in args.tools:
                print(f"{label}: {tool} ...", flush=True)
                record, timeline, poses = runners[tool](data, args.output / "runs" / data.name / tool, preset)
                if "skipped" not in record:
                    record.update(evaluate(data, timeline, poses))
                record.update(dataset=label, tool=tool, preset=args.preset, date=str(date.today()), machine=machine,
                              commit=commit, python=sys.version.split()[0], torch=torch.__version__)
                records = [r for r in records if (r["dataset"], r["tool"]) != (label, tool)] + [record]
                results.write_text(json.dumps(records, indent=1))
                print(f"  {json.dumps({k: record.get(k) for k in ('wall_s', 'final_resolution_A', 'skipped')})}",
                      flush=True)
    (args.output / "results.md").write_text(table(records) + "\n")
    plot(records, args.output / "time_to_resolution.png")
    print(table(records))


if __name__ == "__main__":
    main()
