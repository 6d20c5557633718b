"""Atomic models (PDB / mmCIF) via gemmi."""

from __future__ import annotations

import os
from pathlib import Path

import gemmi

from ..errors import InputError


def read_structure(path: str | os.PathLike, chains: list[str] | None = None) -> gemmi.Structure:
    """Read the first model of a PDB/mmCIF file without waters, ligands or hydrogens.

    ``chains`` keeps only the named chains. Raises :class:`InputError` for unreadable files or empty models.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError) as err:
        raise InputError(path, f"not a readable PDB/mmCIF file ({err})") from err
    if len(st) == 0:
        raise InputError(path, "the file has no model")
    for i in range(len(st) - 1, 0, -1):
        del st[i]
    st.remove_ligands_and_waters()
    st.remove_hydrogens()
    st.remove_empty_chains()
    if chains:
        absent = sorted(set(chains) - {ch.name for ch in st[0]})
        if absent:
            raise InputError(path, f"chain(s) {', '.join(absent)} not in the model")
        for i in range(len(st[0]) - 1, -1, -1):
            if st[0][i].name not in chains:
                del st[0][i]
    if st[0].count_atom_sites() == 0:
        raise InputError(path, "the model has no protein or nucleic-acid atoms")
    return st
