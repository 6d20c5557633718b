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
    _polymer_elements(st[0])
    st.setup_entities()  # files without entity records (e.g. CHARMM's PDB) get them from their residues
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


_CHARMM_HISTIDINES = ("HSD", "HSE", "HSP")  # CHARMM's names of histidine's protonation states


def _polymer_elements(model: gemmi.Model) -> None:
    """Set the element of every atom of a standard residue from its name, whose first letter is its element in
    the PDB's naming: files without element columns and with names left-justified (CHARMM writes ``CA  ``, read
    as calcium, ``HG1`` as mercury) would otherwise give a wrong density. CHARMM's histidines become HIS."""
    for chain in model:
        for residue in chain:
            if residue.name in _CHARMM_HISTIDINES:
                residue.name = "HIS"
            info = gemmi.find_tabulated_residue(residue.name)
            if info is None or not info.is_standard():
                continue
            for atom in residue:
                letter = next((c for c in atom.name if c.isalpha()), None)
                if letter is not None:
                    atom.element = gemmi.Element(letter)
