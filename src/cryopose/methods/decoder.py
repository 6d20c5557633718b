"""The explicit Hartley decoder both methods train: volume, its optimiser, the data term and the map."""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.volume import HartleyVolume
from ..physics.fourier import ihartley3_centered
from ..physics.projection import circular_mask, render
from ..train.distributed import Context
from .losses import slice_loss


class ExplicitDecoder:
    """Hartley volume in whitened units with its Adam optimiser and the per-pose data term.

    Training steps take the field as ``self.field()`` (gradients averaged over the ranks of a distributed
    run); pose searches and evaluation, which do not train it, use ``self.volume.hartley()``.

    Args:
        box, pixel_size_A: the data (after any downsampling).
        noise_sigma: noise standard deviation per Fourier coefficient of the normalised images; spectra are
            divided by it, so the volume lives in whitened units.
        init_rms: starting RMS of the volume's coefficients (whitened units), a number or a radial profile
            (see :func:`cryopose.methods.losses.signal_shell_rms`).
        radius_px: frequencies beyond it (pixels) are left out of the loss (default: Nyquist).
    """

    def __init__(self, box: int, pixel_size_A: float, noise_sigma: float, device: torch.device, *,
                 lr: float, mantissa_exponent: bool, init_rms: float | Tensor, loss: str = "nll",
                 radius_px: float | None = None):
        self.box, self.apix, self.sigma, self.loss_kind = box, pixel_size_A, noise_sigma, loss
        self.volume = HartleyVolume(box, mantissa_exponent=mantissa_exponent, init_rms=init_rms).to(device)
        self.field: torch.nn.Module = self.volume  # what training calls; a DDP wrapper after distribute()
        self.opt_volume = torch.optim.Adam(self.volume.parameters(), lr=lr)
        self.mask_index = torch.nonzero(circular_mask(box, radius_px, device=device).flatten()).squeeze(1)

    def distribute(self, ctx: Context) -> None:
        """Average the volume's gradients over the ranks of ``ctx`` (call :attr:`field` to train it)."""
        self.field = ctx.wrap(self.volume)

    def set_lr(self, lr: float) -> None:
        for group in self.opt_volume.param_groups:
            group["lr"] = lr

    def pose_loss(self, rotations: Tensor, shifts: Tensor | None, batch: dict, target: Tensor,
                  volume: Tensor) -> Tensor:
        """Per-image, per-pose loss ``(B, H)`` for rotations ``(B, H, 3, 3)`` and shifts ``(B, H, 2)`` Å."""
        spectra = render(volume, rotations, self.apix, ctf=batch["ctf"], shifts_A=shifts, real_space=False)
        return slice_loss(spectra.flatten(-2)[..., self.mask_index], target, self.loss_kind)

    @torch.no_grad()
    def density(self) -> Tensor:
        """The current map ``(D, D, D)`` (arbitrary units, positive density)."""
        return ihartley3_centered(self.volume.hartley().double() * self.sigma).float()
