"""``cryopose symmetry``: a map's point group among C2…Cn, D2…Dn, T, O and I, each candidate's correlation,
and the rotation into RELION's frame for the group found."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..evaluate.compare import read_maps
from ..evaluate.symmetry import SymmetryResult, find_symmetry
from ..io.mrc import write_map


def report_lines(result: SymmetryResult, apix: float) -> list[str]:
    """One line per candidate group (best first), then the group found, its pseudo-symmetries and the transform
    (rotation on ``(x, y, z)``, shift in Å)."""
    lines = [f"{name:<4} {value:.3f}" for name, value in result.correlations.items()]
    pseudo = ", ".join(f"{n} ({result.correlations[n]:.3f})" for n in result.pseudo) or "none"
    lines += [f"group: {result.group}", f"pseudo-symmetry: {pseudo}",
              f"rotation into RELION's frame: {(np.round(result.rotation, 4) + 0.0).tolist()}",
              f"shift (Å): {(np.round(result.shift_px * apix, 2) + 0.0).tolist()}"]
    return lines


def run(args: argparse.Namespace) -> None:
    if args.max_order < 2:
        raise InputError(None, f"--max-order must be at least 2, not {args.max_order}")
    (volume,), apix = read_maps([Path(args.map)], args.apix)
    result = find_symmetry(volume, max_order=args.max_order)
    print("\n".join(report_lines(result, apix)))
    if args.output is not None:
        write_map(args.output, result.alignment(apix).apply(volume).numpy(), apix)
