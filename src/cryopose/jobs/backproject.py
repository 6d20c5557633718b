"""``cryopose backproject``: a map from known poses (the oracle every ab initio result is compared with)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import InputError
from ..geometry.symmetry import point_group
from ..io.dataset import DataOptions, open_dataset
from ..io.mrc import write_map
from ..methods.backprojection import backproject_dataset


def backproject(particles: str | os.PathLike, out: str | os.PathLike, *, snr: float | None = None,
                halves: bool = False, data: DataOptions = DataOptions(), batch: int = 256,
                symmetry: str = "C1") -> dict:
    """Reconstruct ``out`` (.mrc) from the poses in a particle file; half maps go to ``OUT_half1/2.mrc``.

    ``symmetry``: a point group (:func:`~cryopose.geometry.symmetry.point_group`) imposed as
    ``relion_reconstruct --sym`` does.
    """
    start = time.time()
    group = point_group(symmetry)
    table, dataset = open_dataset(particles, data, normalize=False)
    if table.rotations is None:
        raise InputError(particles, "has no poses (rlnAngleRot/Tilt/Psi); backproject needs known poses")
    maps = backproject_dataset(dataset, table.rotations, table.shifts_A, snr=snr, halves=halves, batch=batch,
                               symmetry=group)
    out = Path(out)
    names = [out] + ([out.with_name(f"{out.stem}_half{i}{out.suffix}") for i in (1, 2)] if halves else [])
    for name, volume in zip(names, maps):
        write_map(name, volume.numpy(), dataset.pixel_size_A)
    return {"maps": [str(n) for n in names], "particles": len(dataset), "seconds": round(time.time() - start, 2),
            "apix_A": dataset.pixel_size_A, "box": dataset.box, "symmetry": symmetry}


def run(args: argparse.Namespace) -> None:
    data = DataOptions(datadir=args.datadir, apix=args.apix, box=args.box, invert=args.invert)
    result = backproject(args.particles, args.output, snr=args.snr, halves=args.halves, data=data,
                         symmetry=args.symmetry)
    print(f"backprojected {result['particles']} particles in {result['seconds']:.1f} s -> "
          f"{', '.join(result['maps'])}")
