"""Explicit voxel decoder: the centred 3D Hartley transform of the map (cryoSPIN §4.3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..physics.fourier import hartley3_centered, ihartley3_centered, shell_index


class HartleyVolume(nn.Module):
    """Centred Hartley coefficients ``H`` ``(D, D, D)`` of a real map, sliced by
    :func:`~cryopose.physics.projection.extract_slices`.

    Storing real Hartley coefficients keeps the model Hermitian by construction: every slice converts to a
    spectrum ``F(k) = (H(k) + H(−k))/2 − i (H(k) − H(−k))/2`` with ``F(−k) = F(k)*``, i.e. of a real image.

    With ``mantissa_exponent=True`` the field is ``H = m · exp(e)`` (cryoSPIN eq. 8, after cryoAI) with ``m``
    and ``e`` both ``(D, D, D)`` parameters. ``e`` starts at the log of the RMS of ``H`` in each frequency shell
    and ``m = H / exp(e)`` is O(1), so with Adam a step changes each coefficient by a fraction of its own
    magnitude — the spectrum spans several decades between low and high frequencies.

    The field starts as white noise scaled by ``init_rms``: a number, or a radial profile ``(D//2 + 1,)`` per
    integer frequency shell (e.g. :func:`cryopose.methods.losses.signal_shell_rms` of the data).
    """

    def __init__(self, box: int, *, mantissa_exponent: bool = False, init_rms: float | Tensor = 1e-2,
                 generator=None):
        super().__init__()
        if box % 2:
            raise ValueError(f"box must be even, got {box}")
        self.box = box
        self.mantissa_exponent = mantissa_exponent
        noise = torch.randn((box,) * 3, generator=generator)
        rms = torch.as_tensor(init_rms, dtype=torch.float32)
        if rms.ndim:
            rms = rms[shell_index(box).clamp(max=len(rms) - 1)]
        scale = torch.log(rms).expand((box,) * 3).clone()
        if mantissa_exponent:
            self.mantissa = nn.Parameter(noise)
            self.exponent = nn.Parameter(scale)
        else:
            self.coefficients = nn.Parameter(noise * scale.exp())

    @classmethod
    def from_map(cls, density: Tensor, *, mantissa_exponent: bool = False) -> "HartleyVolume":
        """Initialise from a real ``(D, D, D)`` map (voxel units)."""
        model = cls(density.shape[-1], mantissa_exponent=mantissa_exponent)
        model.set_hartley(hartley3_centered(density.detach().to(torch.float64)))
        return model

    @torch.no_grad()
    def set_hartley(self, hartley: Tensor) -> None:
        """Overwrite the field with Hartley coefficients ``(D, D, D)``."""
        hartley = hartley.to(torch.float64)
        if not self.mantissa_exponent:
            self.coefficients.copy_(hartley)
            return
        shell = shell_index(self.box, hartley.device)
        rms = torch.sqrt(torch.bincount(shell.flatten(), hartley.flatten() ** 2) / torch.bincount(shell.flatten()))
        rms = rms.clamp(min=1e-12 * float(rms.max()) + 1e-30)[shell]
        self.exponent.copy_(torch.log(rms))
        self.mantissa.copy_(hartley / rms)

    def hartley(self) -> Tensor:
        """The Hartley field ``(D, D, D)``."""
        return self.mantissa * torch.exp(self.exponent) if self.mantissa_exponent else self.coefficients

    def forward(self) -> Tensor:
        """The Hartley field ``(D, D, D)`` (calling the module, e.g. through a DDP wrapper, gives it)."""
        return self.hartley()

    def to_real_space(self) -> Tensor:
        """The real-space map ``(D, D, D)`` (voxel units)."""
        return ihartley3_centered(self.hartley())
