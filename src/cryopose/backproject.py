"""``cryopose backproject``: a map from known poses (the oracle every ab initio result is compared with)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import InputError
from .io import read_particles
from .io.dataset import ParticleDataset, make_loader
from .io.mrc import write_map
from .physics.backproject import BackprojectionAccumulator


def backproject_dataset(dataset: ParticleDataset, rotations: np.ndarray, shifts_A: np.ndarray | None, *,
                        snr: float | None = None, halves: bool = False, batch: int = 256,
                        device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Maps ``(D, D, D)`` from the particles of ``dataset`` at the given poses: the full map, then (with
    ``halves``) the maps of the even and odd particles. ``rotations`` ``(N, 3, 3)``, ``shifts_A`` ``(N, 2)``."""
    parts = [BackprojectionAccumulator(dataset.box, snr=snr, device=device) for _ in range(2 if halves else 1)]
    rot = torch.as_tensor(rotations, dtype=torch.float32)
    shifts = None if shifts_A is None else torch.as_tensor(shifts_A, dtype=torch.float32)
    for b in tqdm(make_loader(dataset, batch), desc="backprojecting", unit="batch", leave=False):
        index = b["index"]
        for half, acc in enumerate(parts):
            keep = index % len(parts) == half  # even / odd particles (everything without halves)
            if keep.any():
                acc.add(b["images"][keep], rot[index[keep]], None if shifts is None else shifts[index[keep]],
                        b["ctf"][keep] if "ctf" in b else None, dataset.pixel_size_A)
    if not halves:
        return [parts[0].finalize().cpu()]
    half_maps = [acc.finalize().cpu() for acc in parts]
    parts[0] += parts[1]
    return [parts[0].finalize().cpu()] + half_maps


def backproject(particles: str | os.PathLike, out: str | os.PathLike, *, snr: float | None = None,
                halves: bool = False, box: int | None = None, datadir=None, apix: float | None = None,
                invert: bool = False, batch: int = 256) -> dict:
    """Reconstruct ``out`` (.mrc) from the poses in a STAR/.cs file; half maps go to ``OUT_half1/2.mrc``."""
    start = time.time()
    table = read_particles(particles, datadir=datadir, apix=apix)
    if table.rotations is None:
        raise InputError(particles, "has no poses (rlnAngleRot/Tilt/Psi); backproject needs known poses")
    dataset = ParticleDataset(table, box=box, invert=invert, normalize=False)
    maps = backproject_dataset(dataset, table.rotations, table.shifts_A, snr=snr, halves=halves, batch=batch)
    out = Path(out)
    names = [out] + ([out.with_name(f"{out.stem}_half{i}{out.suffix}") for i in (1, 2)] if halves else [])
    for name, volume in zip(names, maps):
        write_map(name, volume.numpy(), dataset.pixel_size_A)
    return {"maps": [str(n) for n in names], "particles": len(dataset), "seconds": round(time.time() - start, 2),
            "apix_A": dataset.pixel_size_A, "box": dataset.box}
