"""``cryopose predict-poses``: poses of particles a finished run did not train on, from its encoder and map."""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io.dataset import DataOptions, open_dataset
from ..io.mrc import read_map
from ..io.run_files import CHECKPOINT, CONFIG, MAP
from ..io.star import write_star
from ..methods.predict import PredictConfig, predict_poses
from ..train.run_dir import load_checkpoint, resolve_device
from .reconstruct import METHODS, stored_config


@dataclass(frozen=True)
class PredictOptions:
    """What ``cryopose predict-poses`` runs (see its ``--help``)."""

    search: bool = False
    local_rounds: int = 3
    batch: int = 64
    device: str = "auto"


def predict(run_dir: str | os.PathLike, particles: str | os.PathLike, out: str | os.PathLike,
            options: PredictOptions = PredictOptions(), data: DataOptions = DataOptions()) -> dict:
    """Write the poses of ``particles`` under the run ``run_dir`` (:func:`cryopose.methods.predict.predict_poses`)
    to the STAR file ``out``; returns a summary. The images are read as the run read its own (box, inversion)."""
    run = Path(run_dir)
    for name in (CONFIG, CHECKPOINT, MAP):
        if not (run / name).exists():
            raise InputError(run, f"not a finished cryopose run: no {name}")
    config = json.loads((run / CONFIG).read_text())
    device = resolve_device(options.device)
    table, dataset = open_dataset(particles, replace(data, box=config["box"], invert=config["invert"]))
    if not np.isclose(dataset.pixel_size_A, config["apix_A"], rtol=1e-3):
        raise InputError(particles, f"pixel size {dataset.pixel_size_A:.4g} Å in the run's {config['box']} px box, "
                                    f"the run's is {config['apix_A']:.4g} Å")
    state = load_checkpoint(run / CHECKPOINT, device)["method"]
    kind = METHODS[config["method"]]
    model = kind(stored_config(config), kind.particles_in(state), dataset.box, dataset.pixel_size_A, 1.0, device)
    model.load_state_dict(state)
    density = torch.from_numpy(np.array(read_map(run / MAP).data))
    start = time.time()
    cfg = PredictConfig(search=options.search, local_rounds=options.local_rounds, batch=options.batch)
    rotations, shifts, record = predict_poses(model, dataset, density, cfg, device)
    seconds = time.time() - start
    result = replace(table, rotations=rotations, shifts_A=shifts if shifts is not None else np.zeros((len(table), 2)))
    write_star(out, result, comments=[f"cryopose predict-poses {run}: poses from the run's encoder "
                                      f"{'and a global search ' if options.search else ''}under its map"])
    return {"poses": str(out), "particles": len(dataset), "seconds": round(seconds, 1),
            "images_per_s": round(len(dataset) / seconds, 1), **record}


def run(args: argparse.Namespace) -> None:
    """The job of the parsed ``cryopose predict-poses`` arguments; prints the summary."""
    options = PredictOptions(search=args.search, local_rounds=args.local_rounds, batch=args.batch, device=args.device)
    summary = predict(args.run, args.particles, args.output, options, DataOptions(datadir=args.datadir, apix=args.apix))
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))
