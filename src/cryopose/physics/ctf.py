"""Contrast transfer function in RELION's convention (DESIGN §3).

Units: defocus Å (positive = underfocus), angles radians, voltage kV, Cs mm (converted to Å inside the formula),
B-factor Å², frequencies Å⁻¹.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from .fourier import frequency_grid_2d


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
            # tensors keep their graph; arrays are copied (read-only numpy buffers are not shared)
            t = value.to(torch.float64) if torch.is_tensor(value) else torch.tensor(np.asarray(value),
                                                                                    dtype=torch.float64)
            out[f.name] = t.expand(n).clone() if t.ndim == 0 else t
        return cls(**out)


def electron_wavelength_A(voltage_kV: Tensor) -> Tensor:
    """Relativistic electron wavelength (Å) for an acceleration voltage in kV (RELION's constants)."""
    volts = voltage_kV * 1e3
    return 12.2643247 / torch.sqrt(volts * (1.0 + volts * 0.978466e-6))


def compute_ctf(
    params: CTFParams, box: int, pixel_size_A: float | Tensor, *, dtype: torch.dtype = torch.float32
) -> Tensor:
    """CTF on the centred ``box``² FFT grid, RELION's ``CTF::getCTF`` formula and sign.

    ``CTF = scale · sin(π λ Δf(θ) k² − π/2 Cs λ³ k⁴ + φ + atan(w / √(1 − w²))) · exp(−B k² / 4)`` with
    ``Δf(θ) = (dU + dV)/2 + (dU − dV)/2 · cos 2(θ − θ_ast)`` (θ the angle of ``(kx, ky)`` from the x axis), so
    that ``CTF(0) = w·scale > 0``. Parameters of any batch shape ``S`` (e.g. ``(B,)`` or ``(B, 1)``) and a pixel
    size broadcastable to ``S`` give ``S + (D, D)``. Phases are computed in float64 (``Δf k²`` reaches ~10⁴ rad
    at high defocus), the result is cast to ``dtype``; differentiable w.r.t. every parameter.
    """
    f64 = {name: getattr(params, name).to(torch.float64)[..., None, None] for name in _FIELD_NAMES}
    device = f64["defocus_u_A"].device
    apix = torch.as_tensor(pixel_size_A, dtype=torch.float64, device=device)
    apix = apix[..., None, None] if apix.ndim else apix
    k = frequency_grid_2d(box, 1.0, device=device, dtype=torch.float64)  # cycles / pixel
    kx, ky = k[..., 0] / apix, k[..., 1] / apix
    k2 = kx * kx + ky * ky
    # (dU - dV)/2 · cos 2(θ - θa) · k² written without atan2 (smooth at k = 0)
    cos2a, sin2a = torch.cos(2 * f64["defocus_angle_rad"]), torch.sin(2 * f64["defocus_angle_rad"])
    astig = (kx * kx - ky * ky) * cos2a + 2 * kx * ky * sin2a
    du, dv = f64["defocus_u_A"], f64["defocus_v_A"]
    dfk2 = 0.5 * (du + dv) * k2 + 0.5 * (du - dv) * astig
    lam = electron_wavelength_A(f64["voltage_kV"])
    w = f64["amplitude_contrast"]
    gamma = (
        math.pi * lam * dfk2
        - 0.5 * math.pi * f64["cs_mm"] * 1e7 * lam**3 * k2 * k2
        + f64["phase_shift_rad"]
        + torch.atan(w / torch.sqrt(1 - w * w))
    )
    ctf = f64["scale"] * torch.sin(gamma) * torch.exp(-0.25 * f64["bfactor_A2"] * k2)
    return ctf.to(dtype)


_FIELD_NAMES = tuple(f.name for f in fields(CTFParams))
