"""``cryopose fsc``: the FSC curve and resolution of two maps (e.g. half maps), without alignment."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..evaluate.compare import finite, fsc_curve, read_maps
from ..evaluate.report import write_fsc_files


def fsc_maps(a: str | os.PathLike, b: str | os.PathLike, apix: float | None = None,
             mask: str | os.PathLike | None = None, out_dir: str | os.PathLike | None = None) -> dict:
    """FSC of two maps (``cryopose fsc A B``): writes ``fsc_<A>_<B>.png`` and ``.csv`` into ``out_dir``
    (default: A's folder) and returns the resolutions at 0.143 and 0.5 (Å) and the file paths.

    ``apix`` overrides the headers' voxel size; ``mask`` is an MRC mask (same box) applied to both maps.
    """
    a, b = Path(a), Path(b)
    (map_a, map_b), size = read_maps([a, b], apix)
    weights = None
    if mask is not None:
        (weights,), _ = read_maps([Path(mask)], expect=(map_a.shape, size))
    curve = fsc_curve(f"{a.stem} vs {b.stem}", map_a, map_b, size, weights, (0.143, 0.5))
    out = Path(out_dir) if out_dir is not None else a.parent
    png, table = write_fsc_files(out / f"fsc_{a.stem}_{b.stem}", [curve], f"FSC: {a.name} vs {b.name}")
    return {"map_a": str(a), "map_b": str(b), "apix_A": size, "box": map_a.shape[0], "nyquist_A": 2 * size,
            **{f"resolution_{t:g}_A": finite(r) for t, r in curve.resolutions_A.items()},
            "png": str(png), "csv": str(table)}


def run(args: argparse.Namespace) -> None:
    result = fsc_maps(args.map_a, args.map_b, apix=args.apix, mask=args.mask, out_dir=args.output)
    print(f"FSC 0.143: {result['resolution_0.143_A']} Å, FSC 0.5: {result['resolution_0.5_A']} Å "
          f"-> {result['png']}, {result['csv']}")
