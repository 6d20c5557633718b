"""Atomic model -> electrostatic-potential map, with electron scattering factors (gemmi's c4322 tables)."""

from __future__ import annotations

import gemmi
import numpy as np
import torch

from .fourier import fourier_resize


def model_to_map(structure: gemmi.Structure, box: int, apix: float, bfactor: float = 0.0,
                 oversample: int = 2) -> np.ndarray:
    """Potential of the first model on a ``(box, box, box)`` grid (``(Z, Y, X)`` float32, ``apix`` Å voxels).

    The model's centre of mass is put at the box centre (voxel ``box // 2``). Atoms are summed as 5-Gaussian
    electron scattering factors with their own B-factors plus ``bfactor`` (Å²) on a grid ``oversample`` times
    finer, then band-limited to the box's Nyquist frequency by Fourier cropping (no aliasing).
    """
    st = structure.clone()
    model = st[0]
    side = box * apix
    centre = model.calculate_center_of_mass()
    offset = gemmi.Position(side / 2 - centre.x, side / 2 - centre.y, side / 2 - centre.z)
    for chain in model:
        for residue in chain:
            for atom in residue:
                atom.pos = atom.pos + offset
    st.cell = gemmi.UnitCell(side, side, side, 90, 90, 90)
    st.spacegroup_hm = "P 1"
    st.setup_cell_images()
    fine = box * oversample
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2 * apix / oversample
    calc.blur = bfactor
    calc.grid.set_unit_cell(st.cell)
    calc.grid.set_size(fine, fine, fine)  # add_ (not put_) keeps this size; put_ would pick its own
    calc.add_model_density_to_grid(model)
    grid = np.ascontiguousarray(np.array(calc.grid, copy=False).transpose(2, 1, 0))  # gemmi is (x, y, z)
    dense = torch.from_numpy(grid).double()
    if oversample == 1:
        return dense.float().numpy()
    return fourier_resize(dense, box, 3).float().numpy()
