"""``cryopose info``: a human-readable summary of a particle file (.star/.cs/.pkl) or an MRC map/stack."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..io import read_particles
from ..io.dataset import check_stacks
from ..io.mrc import read_map, stack_info
from ..io.particles import ParticleTable

_MRC_SUFFIXES = (".mrc", ".mrcs", ".map", ".gz", ".bz2")


def _range(values: np.ndarray, scale: float = 1.0, fmt: str = "{:.4g}") -> str:
    lo, hi = float(values.min()) * scale, float(values.max()) * scale
    return fmt.format(lo) if np.isclose(lo, hi) else f"{fmt.format(lo)} – {fmt.format(hi)}"


def describe_particles(table: ParticleTable) -> str:
    """Summary lines for a particle table (the image stacks are checked separately, see :func:`check_lines`)."""
    lines = [f"file:           {table.source}", f"particles:      {len(table)}",
             f"box:            {table.box or 'unknown (image stack not found)'} px",
             f"pixel size:     {_range(table.pixel_size_A)} Å"]
    groups = np.unique(table.optics_group)
    lines.append(f"optics groups:  {len(groups)}")
    for g in groups:
        sel = table.optics_group == g
        name = table.optics_names[g - 1] if g - 1 < len(table.optics_names) else str(g)
        desc = f"  {g}: {name}, {int(sel.sum())} particles, {_range(table.pixel_size_A[sel])} Å/px"
        if table.ctf is not None:
            desc += (f", {_range(table.ctf['voltage_kV'][sel])} kV, Cs {_range(table.ctf['cs_mm'][sel])} mm, "
                     f"w {_range(table.ctf['amplitude_contrast'][sel])}")
        lines.append(desc)
    if table.ctf is None:
        lines.append("CTF:            none")
    else:
        ctf = table.ctf
        lines.append(f"defocus U/V:    {_range(ctf['defocus_u_A'], 1e-4, '{:.3f}')} / "
                     f"{_range(ctf['defocus_v_A'], 1e-4, '{:.3f}')} µm")
        lines.append(f"astigmatism:    {_range(np.abs(ctf['defocus_u_A'] - ctf['defocus_v_A']), 1, '{:.0f}')} Å")
        if np.any(ctf["phase_shift_rad"] != 0):
            lines.append(f"phase shift:    {_range(np.rad2deg(ctf['phase_shift_rad']))}°")
        if np.any(ctf["bfactor_A2"] != 0):
            lines.append(f"CTF B-factor:   {_range(ctf['bfactor_A2'])} Å²")
    lines.append(f"rotations:      {'yes' if table.rotations is not None else 'no'}")
    if table.shifts_A is not None:
        lines.append(f"shifts:         yes, |shift| up to {np.abs(table.shifts_A).max():.3g} Å")
    else:
        lines.append("shifts:         no")
    return "\n".join(lines)


def check_lines(table: ParticleTable) -> str:
    """The image-stack line of the summary; raises :class:`InputError` for a missing or bad stack."""
    check_stacks(table)
    return f"image stacks:   {len(np.unique(table.image_files.astype(str)))} file(s), all present and complete"


def describe_mrc(path: Path) -> str:
    """Summary lines for an MRC map or image stack."""
    if path.suffix.lower() == ".mrcs":
        info = stack_info(path)
        return "\n".join([f"file:           {path}", f"image stack:    {info.n_images} × {info.box}² px",
                          f"header pixel:   {info.voxel_size_A:.4g} Å (often unset in stacks: use the .star)"])
    m = read_map(path)
    z, y, x = m.data.shape
    sizes = ", ".join(f"{s:.4g}" for s in m.voxel_sizes_A)
    return "\n".join([f"file:           {path}", f"map:            {x} × {y} × {z} voxels (x, y, z)",
                      f"voxel size:     {sizes} Å", f"values:         min {m.data.min():.4g}, "
                      f"max {m.data.max():.4g}, mean {m.data.mean():.4g}, std {m.data.std():.4g}"])


def info(path: str | os.PathLike, datadir: str | os.PathLike | None = None,
         apix: float | None = None) -> tuple[str, ParticleTable | None]:
    """The ``cryopose info`` text for any supported file, and the particle table when it is one."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.name.lower().endswith(_MRC_SUFFIXES):
        return describe_mrc(path), None
    table = read_particles(path, datadir=datadir, apix=apix)
    return describe_particles(table), table


def run(args: argparse.Namespace) -> None:
    text, table = info(args.file, datadir=args.datadir, apix=args.apix)
    print(text, flush=True)  # the summary is shown even when a stack check below fails
    if table is not None and not args.no_check:
        print(check_lines(table))
