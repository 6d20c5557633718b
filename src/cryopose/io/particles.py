"""The particle table every reader returns and every writer takes (plain arrays, units in the names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..physics.ctf import CTFParams

CTF_FIELDS = (
    "defocus_u_A",
    "defocus_v_A",
    "defocus_angle_rad",
    "voltage_kV",
    "cs_mm",
    "amplitude_contrast",
    "phase_shift_rad",
    "bfactor_A2",
    "scale",
)


@dataclass
class ParticleTable:
    """Metadata of N particles.

    Attributes:
        source: the metadata file it was read from.
        image_files: ``(N,)`` absolute paths of the image stacks (str).
        image_indices: ``(N,)`` 0-based index of each image in its stack.
        box: image size in pixels (all particles share it).
        pixel_size_A: ``(N,)`` pixel size in Å.
        ctf: ``{name: (N,) float64}`` with the keys of :data:`CTF_FIELDS`, or None when the file has no CTF.
        rotations: ``(N, 3, 3)`` RELION Euler matrices (see :mod:`cryopose.geometry.rotations`) or None.
        shifts_A: ``(N, 2)`` RELION origins ``(rlnOriginXAngst, rlnOriginYAngst)`` in Å, or None. The particle
            centre sits at ``-shift`` from the box centre (RELION 3.1 convention).
        optics_group: ``(N,)`` 1-based optics group of each particle.
        optics_names: name of each optics group, indexed by group number - 1.
        extra: other per-particle columns kept for round trips, ``{rlnName: (N,) array}``.
        optics_extra: other optics-group columns kept for round trips, ``{rlnName: (G,) array}``.
    """

    source: Path
    image_files: np.ndarray
    image_indices: np.ndarray
    box: int
    pixel_size_A: np.ndarray
    ctf: dict[str, np.ndarray] | None = None
    rotations: np.ndarray | None = None
    shifts_A: np.ndarray | None = None
    optics_group: np.ndarray | None = None
    optics_names: list[str] = field(default_factory=list)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    optics_extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image_indices)

    def __post_init__(self) -> None:
        n = len(self.image_indices)
        if self.optics_group is None:
            self.optics_group = np.ones(n, dtype=np.int64)
        if not self.optics_names:
            self.optics_names = [f"opticsGroup{g}" for g in range(1, int(self.optics_group.max(initial=0)) + 1)]
        if self.ctf is not None:
            for name in CTF_FIELDS:
                values = self.ctf[name]
                if not np.all(np.isfinite(values)):
                    raise InputError(self.source, f"CTF column {name} has NaN or infinite values")
        if n and not np.all(np.isfinite(self.pixel_size_A) & (self.pixel_size_A > 0)):
            raise InputError(self.source, "pixel size is missing, zero or negative")
        for name, arr in (("rotations", self.rotations), ("shifts", self.shifts_A)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise InputError(self.source, f"{name} contain NaN or infinite values")

    @property
    def apix(self) -> float:
        """The single pixel size of the data set (Å); an error if optics groups disagree."""
        values = np.unique(np.round(self.pixel_size_A, 6))
        if len(values) != 1:
            raise InputError(self.source, f"particles have {len(values)} different pixel sizes: {values.tolist()}")
        return float(values[0])

    def require_ctf(self) -> dict[str, np.ndarray]:
        if self.ctf is None:
            raise InputError(self.source, "no CTF parameters (defocus columns) but the CTF is required")
        return self.ctf

    def ctf_params(self, index=slice(None)) -> CTFParams:
        """CTF parameters of the selected particles as tensors (float64)."""
        ctf = self.require_ctf()
        return CTFParams.from_arrays(**{k: v[index] for k, v in ctf.items()})
