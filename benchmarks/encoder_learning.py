"""Encoder learning ladder (issue 24): how fast does the semi-amortized encoder learn poses?

    python benchmarks/encoder_learning.py base lr1e-3 heads1 ... [--steps 10000] [--out DIR]
    python benchmarks/encoder_learning.py --plot DIR

Each variant trains the method's encoder with its winner-takes-all loss (``SemiAmortized.step``, stage 1) for
``--steps`` optimizer steps on 32 px data of the built-in molecule (3 Å/px, 5,000 images, 20,000 with ``n20k``, no
shifts), against a frozen decoder holding the true map (or a low-passed copy), or jointly with a decoder starting
from noise. ``supervised`` trains on the true poses instead (winner-takes-all on the quaternion distance): how fast
the encoder could learn from a search's poses. Every ``--eval-every`` steps the encoder (eval mode) proposes H poses
for 1,000 held-out images and for 1,000 of the training images (``train_``: what the switch uses); the head whose
render fits best under the current map is taken, and the share of those poses within 10° of the truth (after
alignment, both hands) and their median error are logged. A variant is the base settings with one change
(``VARIANTS``; several joined by '+'). Results: one JSON line per evaluation in ``DIR/ladder.jsonl``; ``--plot``
writes ``ladder.png`` and ``ladder.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cryopose.evaluate.poses import pose_error
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map
from cryopose.methods.losses import noise_sigma, signal_shell_rms, target_spectra
from cryopose.methods.search_supervised import quaternion_loss
from cryopose.methods.semi_amortized import SemiAmortized, SemiAmortizedConfig
from cryopose.physics.fourier import hartley3_centered, radius_grid
from cryopose.simulation.simulate import SimulationConfig, simulate

BOX, APIX, HELD = 32, 3.0, 1000
BASE = dict(n=5000, snr=None, map_A=None, norm="dataset", supervised=False, joint=False, batch=32,
            config=dict(heads=7, lr_encoder=1e-4, encoder="light"))
VARIANTS = {  # name -> changes to BASE (snr None: noiseless; map_A: the frozen map low-passed to this resolution)
    "base": {},
    "snr1": dict(snr=1.0), "snr0.1": dict(snr=0.1),
    "paper": dict(config=dict(encoder="paper")),
    "heads1": dict(config=dict(heads=1)), "heads15": dict(config=dict(heads=15)),
    "lr3e-4": dict(config=dict(lr_encoder=3e-4)), "lr1e-3": dict(config=dict(lr_encoder=1e-3)),
    "batch128": dict(batch=128),
    "band_full": dict(config=dict(resolution_start_A=0)),
    "map20A": dict(map_A=20.0), "map40A": dict(map_A=40.0),
    "joint": dict(joint=True),
    "norm_image": dict(norm="image"),
    "supervised": dict(supervised=True),
    "n20k": dict(n=20000),
}


def settings(name: str) -> dict:
    """BASE with the changes of the variant ``name`` (several joined by '+': 'lr1e-3+snr0.1')."""
    out = {**BASE, "config": dict(BASE["config"])}
    for part in name.split("+"):
        change = VARIANTS[part]
        out.update({k: v for k, v in change.items() if k != "config"})
        out["config"].update(change.get("config", {}))
    return out


def dataset_for(n: int, snr: float | None, root: Path) -> tuple[ParticleDataset, torch.Tensor]:
    folder = root / f"data_n{n}_snr{snr}"
    if not (folder / "particles.star").exists():
        simulate(SimulationConfig(source="demo", box=BOX, apix=APIX, n=n, snr=snr or 1e8, seed=3), folder)
    truth = torch.tensor(np.array(read_map(folder / "ground_truth.mrc").data), dtype=torch.float64)
    return ParticleDataset(read_particles(folder / "particles.star")), truth


def run_variant(name: str, steps: int, eval_every: int, root: Path, log: Path) -> None:
    s = settings(name)
    torch.manual_seed(0)
    n = s["n"]
    dataset, truth = dataset_for(n, s["snr"], root)
    everything = dataset.__getitems__(np.arange(n))
    images, ctf, true_rot = everything["images"], everything["ctf"], everything["rotations"]
    sigma = noise_sigma(images[:1000])
    cfg = replace(SemiAmortizedConfig(), **s["config"])
    method = SemiAmortized(cfg, n, BOX, APIX, sigma, torch.device("cpu"),
                           init_rms=signal_shell_rms(images[:1000], ctf[:1000], APIX, sigma))
    method.encoder.input_norm = s["norm"]
    method.begin_epoch(0)
    if not s["joint"]:
        field = hartley3_centered(truth) / (dataset.std * sigma)
        if s["map_A"]:
            field = field * (radius_grid(BOX) <= BOX * APIX / s["map_A"])
        method.volume.set_hartley(field)
        method.set_lr(0.0)  # frozen
    train_ids, held = np.arange(HELD, n), np.arange(HELD)
    rng = np.random.default_rng(0)
    start, seconds = time.time(), 0.0
    for step in range(steps + 1):
        if step % eval_every == 0:
            seconds += time.time() - start
            seen = train_ids[:HELD]
            record = {"variant": name, "step": step, "seconds": round(seconds, 1),
                      **evaluate(method, images[held], ctf[held], true_rot[held].numpy()),
                      **{f"train_{k}": v for k, v in evaluate(method, images[seen], ctf[seen],
                                                              true_rot[seen].numpy()).items()}}
            print(json.dumps(record), flush=True)
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            start = time.time()
        if step == steps:
            break
        idx = torch.from_numpy(rng.choice(train_ids, size=s["batch"], replace=False))
        if s["supervised"]:  # the true poses as labels (the best a search could give): WTA on the pose distance
            rotations, _ = method.encoder(images[idx])
            loss = quaternion_loss(rotations, true_rot[idx, None]).min(1).values.mean()
            method.opt_encoder.zero_grad(set_to_none=True)
            loss.backward()
            method.opt_encoder.step()
        else:
            method.step({"images": images[idx], "ctf": ctf[idx], "index": idx})


@torch.no_grad()
def evaluate(method: SemiAmortized, images: torch.Tensor, ctf, truth: np.ndarray) -> dict:
    """Best-head poses (eval-mode encoder, the head that fits best under the current map) vs the truth."""
    method.encoder.eval()
    volume = method.volume.hartley()
    best = []
    for i in range(0, len(images), 250):
        batch = {"images": images[i:i + 250], "ctf": ctf[i:i + 250]}
        rotations, shifts = method.encoder(batch["images"])
        losses = method.pose_loss(rotations, shifts, batch, target_spectra(batch["images"], method.sigma,
                                                                           method.mask_index), volume)
        best.append(rotations[torch.arange(len(losses)), losses.argmin(1)])
    method.encoder.train()
    err = pose_error(torch.cat(best).double().numpy(), truth)
    return {"within_10deg": round(err.rotation_within_10deg, 4), "median_deg": round(err.rotation_median_deg, 2)}


def plot(folder: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in open(folder / "ladder.jsonl")]
    names = list(dict.fromkeys(r["variant"] for r in records))
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for i, name in enumerate(names):
        rs = [r for r in records if r["variant"] == name]
        steps, colour = [r["step"] for r in rs], f"C{i}"
        for key, ax, scale in (("within_10deg", axes[0], 100), ("median_deg", axes[1], 1)):
            ax.plot(steps, [scale * r[key] for r in rs], color=colour, label=f"{name} (held-out)")
            if f"train_{key}" in rs[-1]:
                ax.plot(steps, [scale * r[f"train_{key}"] for r in rs], color=colour, ls="--",
                        label=f"{name} (training images)")
    axes[0].set_ylabel("best-head poses within 10° (%)")
    axes[1].set_ylabel("median pose error (°)")
    for ax in axes:
        ax.set_xlabel("optimizer steps")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    rows = ["| variant | steps | s/1k steps | held-out images within 10° at 1k / 3k / 5k / 10k | median at the end (°)"
            " | training images within 10° at 1k / 3k / 5k / 10k | median at the end (°) |",
            "|---|---|---|---|---|---|---|"]
    for name in names:
        rs = [r for r in records if r["variant"] == name]
        at = {r["step"]: r for r in rs}
        shares, train = (" / ".join(f"{100 * at[k][key]:.0f} %" if k in at and key in at[k] else "–"
                                    for k in (1000, 3000, 5000, 10000))
                         for key in ("within_10deg", "train_within_10deg"))
        rate = rs[-1]["seconds"] / max(rs[-1]["step"], 1) * 1000
        train_median = f"{rs[-1]['train_median_deg']:.1f}" if "train_median_deg" in rs[-1] else "–"
        rows.append(f"| {name} | {rs[-1]['step']} | {rate:.0f} | {shares} | {rs[-1]['median_deg']:.1f} | {train} "
                    f"| {train_median} |")
    fig.savefig(folder / "ladder.png", dpi=120, bbox_inches="tight")
    (folder / "ladder.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", help=f"variants: {', '.join(VARIANTS)} (join with '+')")
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("encoder_ladder"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", type=Path, default=None, help="plot the ladder.jsonl in this folder")
    args = parser.parse_args()
    if args.plot:
        return plot(args.plot)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        run_variant(name, args.steps, args.eval_every, args.out, args.out / "ladder.jsonl")


if __name__ == "__main__":
    main()
