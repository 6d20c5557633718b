"""The built-in demo molecule: a deterministic, chiral, asymmetric helical-bundle protein made by code.

Right-handed α-helices of different lengths (3.6 residues/turn, 1.5 Å rise, Cα radius 2.3 Å) are packed at
irregular positions and tilts and joined by loops, with N, Cα, C, O, Cβ and one side-chain atom per residue
(about protein density). No file or download is needed.
"""

from __future__ import annotations

import gemmi
import numpy as np

_HELIX_LENGTHS = (18, 24, 14, 21, 16, 26, 12, 20)  # residues
# Helix axes cross the xy-plane on a hexagonal patch of 7 sites plus one off to the side (10 Å spacing):
# compact, with no symmetry.
_SITES = ((0.0, 0.0), (10.0, 0.0), (5.0, 8.7), (-5.0, 8.7), (-10.0, 0.0), (-5.0, -8.7), (5.0, -8.7),
          (15.0, 8.7))
# Backbone atoms relative to Cα in the local helix frame (radial, tangential, axial), Å; element.
_ATOMS = (("N", "N", (-0.45, -1.05, -0.55)), ("CA", "C", (0.0, 0.0, 0.0)), ("C", "C", (0.35, 1.2, 0.6)),
          ("O", "O", (0.25, 1.55, 1.75)), ("CB", "C", (1.45, 0.1, -0.4)), ("CG", "C", (2.8, 0.3, -0.9)))


def _helix(start: np.ndarray, axis: np.ndarray, n: int, phase: float) -> list[np.ndarray]:
    """Atom positions ``(6, 3)`` for each residue of a right-handed helix along ``axis`` from ``start``."""
    axis = axis / np.linalg.norm(axis)
    u = np.cross(axis, [0.0, 0.0, 1.0] if abs(axis[2]) < 0.9 else [1.0, 0.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)  # (u, v, axis) is right-handed, so increasing angle turns right-handedly
    residues = []
    for i in range(n):
        t = phase + np.deg2rad(100.0) * i
        radial = np.cos(t) * u + np.sin(t) * v
        tangent = -np.sin(t) * u + np.cos(t) * v
        ca = start + 1.5 * i * axis + 2.3 * radial
        residues.append(np.array([ca + a * radial + b * tangent + c * axis for _, _, (a, b, c) in _ATOMS]))
    return residues


def _loop(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Residues on a bulged path from Cα ``a`` to ``b`` with about 3.8 Å between Cα atoms."""
    n = max(2, int(np.linalg.norm(b - a) / 3.3))
    bulge = rng.normal(size=3) * 2.0
    residues = []
    for i in range(1, n):
        f = i / n
        ca = a + f * (b - a) + np.sin(np.pi * f) * bulge
        offsets = rng.normal(scale=1.2, size=(len(_ATOMS), 3))
        offsets[1] = 0.0
        residues.append(ca + offsets)
    return residues


def demo_structure(seed: int = 7) -> gemmi.Structure:
    """The demo protein as a gemmi Structure (about 210 residues, ~23 kDa, ~55 Å across)."""
    rng = np.random.default_rng(seed)
    residues: list[np.ndarray] = []
    for k, n in enumerate(_HELIX_LENGTHS):
        centre = np.array([*_SITES[k], 3.0 * rng.normal()])
        axis = np.array([0.25 * rng.normal(), 0.25 * rng.normal(), 1.0 if k % 2 == 0 else -1.0])  # up-down
        axis /= np.linalg.norm(axis)
        helix = _helix(centre - 0.75 * n * axis, axis, n, phase=rng.uniform(0, 2 * np.pi))
        if residues:
            residues += _loop(residues[-1][1], helix[0][1], rng)
        residues += helix
    st = gemmi.Structure()
    st.name = "cryopose-demo"
    model = gemmi.Model("1")
    chain = gemmi.Chain("A")
    for i, coords in enumerate(residues):
        res = gemmi.Residue()
        res.name = "ALA"
        res.seqid = gemmi.SeqId(i + 1, " ")
        res.entity_type = gemmi.EntityType.Polymer
        for (name, element, _), xyz in zip(_ATOMS, coords):
            atom = gemmi.Atom()
            atom.name = name
            atom.element = gemmi.Element(element)
            atom.pos = gemmi.Position(*map(float, xyz))
            atom.b_iso = 20.0
            atom.occ = 1.0
            res.add_atom(atom)
        chain.add_residue(res)
    model.add_chain(chain)
    st.add_model(model)
    st.setup_entities()
    return st
