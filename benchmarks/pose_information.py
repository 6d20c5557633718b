"""How much pose information each resolution band holds: the global pose search under the true map.

    python benchmarks/pose_information.py DATA [DATA ...] [--bands 30 20 15 10] [--n 400] [-o OUT.jsonl]

For each simulated data set (a ``cryopose simulate`` folder), the semi-amortized method's global search
(:meth:`SemiAmortized.search`: the Hopf grid from level 1, a beam down to level 4, local shifts around the true
ones) runs for the first ``--n`` particles under the true map (``ground_truth.mrc``) low-passed to each band and
scored within it. The share of poses within 10° of the truth and the median error (after global alignment) say from
which resolution a map determines the poses at that SNR: an ab initio run has to get there from a map that knows
nothing, and a band with no pose information gives it nothing to bootstrap from.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cryopose.evaluate.poses import pose_error
from cryopose.io import read_particles
from cryopose.io.dataset import ParticleDataset
from cryopose.io.mrc import read_map
from cryopose.methods.losses import noise_sigma, target_spectra
from cryopose.methods.semi_amortized import SemiAmortized, SemiAmortizedConfig
from cryopose.physics.fourier import hartley3_centered, radius_grid


def band_information(folder: Path, bands: list[float], n: int) -> list[dict]:
    """One record per band (Å): pose error of the global search under the true map low-passed to it."""
    dataset = ParticleDataset(read_particles(folder / "particles.star"))
    n = min(n, len(dataset))
    batch = dataset.__getitems__(np.arange(n))
    box, apix = dataset.box, dataset.pixel_size_A
    truth = torch.tensor(np.array(read_map(folder / "ground_truth.mrc").data), dtype=torch.float64)
    sigma = noise_sigma(batch["images"])
    shifts = batch.get("shifts_A")
    records = []
    for band in bands:
        cfg = replace(SemiAmortizedConfig(), switch_epoch=0, resolution_start_A=band, band_ramp_epochs=10**6,
                      shifts=shifts is not None and bool(shifts.abs().max() > 0))
        method = SemiAmortized(cfg, n, box, apix, sigma, torch.device("cpu"))
        if cfg.shifts:
            method.best_shifts.copy_(shifts)
        method.begin_epoch(0)  # switches to per-particle poses, band held at `band`
        field = hartley3_centered(truth) / (dataset.std * sigma)  # the decoder's units
        method.volume.set_hartley((field * (radius_grid(box) <= box * apix / band)).float())
        index = torch.arange(n)
        method.search({**batch, "index": index}, target_spectra(batch["images"], sigma, method.mask_index), index,
                      method.volume.hartley().detach())
        err = pose_error(method.table.all_rotations().double().numpy(), batch["rotations"].double().numpy())
        records.append({"data": str(folder), "band_A": band, "n": n,
                        "within_10deg": round(err.rotation_within_10deg, 3),
                        "median_deg": round(err.rotation_median_deg, 1)})
        print(json.dumps(records[-1]), flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+", type=Path, help="cryopose simulate folders")
    parser.add_argument("--bands", nargs="+", type=float, default=[30.0, 20.0, 15.0, 10.0], help="Å")
    parser.add_argument("--n", type=int, default=400, help="particles searched per data set")
    parser.add_argument("-o", "--output", type=Path, help="append the records here (JSON lines)")
    args = parser.parse_args()
    torch.manual_seed(0)
    for folder in args.data:
        for record in band_information(folder, args.bands, args.n):
            if args.output:
                with open(args.output, "a") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
