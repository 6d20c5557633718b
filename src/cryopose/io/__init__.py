"""File I/O: MRC maps and stacks, RELION STAR, cryoSPARC .cs, cryoDRGN .pkl, and the particle dataset."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .particles import ParticleTable


def read_particles(path: str | os.PathLike, datadir: str | os.PathLike | None = None,
                   apix: float | None = None) -> ParticleTable:
    """Read particle metadata from a RELION ``.star``, cryoSPARC ``.cs`` or cryoDRGN CTF ``.pkl`` file.

    ``datadir`` says where the image stacks are (default: see each reader); ``apix`` (Å) overrides the pixel
    size of the file. A ``.pkl`` is read with the one ``.mrcs`` stack in ``datadir`` or beside it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    suffix = path.suffix.lower()
    if suffix == ".star":
        from .star import read_star

        return read_star(path, datadir=datadir, apix=apix)
    if suffix == ".cs":
        from .cryosparc import read_cryosparc

        table = read_cryosparc(path, datadir=datadir)
        if apix is not None:
            if table.shifts_A is not None:  # .cs shifts are in pixels of the file's pixel size
                table.shifts_A *= apix / table.pixel_size_A[:, None]
            table.pixel_size_A[:] = apix
        return table
    if suffix == ".pkl":
        from .cryodrgn import read_cryodrgn

        return read_cryodrgn(path, datadir=datadir, apix=apix)
    raise InputError(path, "unknown particle file type (expected .star, .cs or .pkl)")
