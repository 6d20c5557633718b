"""Contrast transfer function in RELION's convention (DESIGN §3).

Units: defocus Å (positive = underfocus), angles radians, voltage kV, Cs mm (converted to Å inside the formula),
B-factor Å², frequencies Å⁻¹.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor


@dataclass
class CTFParams:
    """Per-particle CTF parameters, each a tensor of shape ``(B,)``."""

    defocus_u_A: Tensor
    defocus_v_A: Tensor
    defocus_angle_rad: Tensor
    voltage_kV: Tensor
    cs_mm: Tensor
    amplitude_contrast: Tensor
    phase_shift_rad: Tensor
    bfactor_A2: Tensor
    scale: Tensor

    def __len__(self) -> int:
        return self.defocus_u_A.shape[0]

    def __getitem__(self, index) -> "CTFParams":
        return CTFParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def to(self, device=None, dtype=None) -> "CTFParams":
        return CTFParams(**{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)})

    @classmethod
    def from_arrays(cls, **arrays) -> "CTFParams":
        """Build from array-likes; ``bfactor_A2`` defaults to 0, ``scale`` to 1, ``phase_shift_rad`` to 0."""
        n = len(arrays["defocus_u_A"])
        defaults = {"bfactor_A2": 0.0, "scale": 1.0, "phase_shift_rad": 0.0}
        out = {}
        for f in fields(cls):
            value = arrays.get(f.name, defaults.get(f.name))
            if value is None:
                raise KeyError(f.name)
            t = torch.tensor(np.asarray(value), dtype=torch.float64)
            out[f.name] = t.expand(n).clone() if t.ndim == 0 else t
        return cls(**out)

    @classmethod
    def collate(cls, items: list["CTFParams"]) -> "CTFParams":
        return CTFParams(**{f.name: torch.cat([getattr(i, f.name) for i in items]) for f in fields(cls)})
