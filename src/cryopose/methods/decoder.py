"""The explicit Hartley decoder both methods train: volume, its optimiser, the data term and the map."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..models.volume import HartleyVolume
from ..physics.ctf import compute_ctf
from ..physics.fourier import frequency_grid_2d, ihartley3_centered, radius_grid
from ..physics.projection import circular_mask, extract_slices, render, shift_phase
from .losses import shared_slice_loss, slice_loss, target_spectra
from .noise import reference_sigma


class ExplicitDecoder:
    """Hartley volume in whitened units with its Adam optimiser and the per-pose data term.

    Training steps take the field as ``self.field()`` (gradients averaged over the ranks of a distributed
    run); pose searches and evaluation, which do not train it, use ``self.volume.hartley()``.

    Args:
        box, pixel_size_A: the data (after any downsampling).
        noise_sigma: noise standard deviation per Fourier coefficient of the normalised images, one number or a
            noise model ``(D, D)`` (:mod:`cryopose.methods.noise`); spectra are divided by it. The volume lives
            in units of its :func:`~cryopose.methods.noise.reference_sigma` (``self.sigma``), and its slices are
            whitened by the model's shape.
        init_rms: starting RMS of the volume's coefficients (whitened units), a number or a radial profile
            (see :func:`cryopose.methods.losses.signal_shell_rms`).
        radius_px: frequencies beyond it (pixels) are left out of the loss (default: Nyquist).
        resolution_start_A: coarse-to-fine: the loss starts at frequencies up to 1/``resolution_start_A`` and
            its radius grows linearly to ``radius_px`` over the epochs given to :meth:`set_band` (None or 0: the
            whole band from the start). Renders and the map are limited to the same band.
    """

    def __init__(self, box: int, pixel_size_A: float, noise_sigma: float | Tensor, device: torch.device, *,
                 lr: float, mantissa_exponent: bool, init_rms: float | Tensor, loss: str = "nll",
                 radius_px: float | None = None, resolution_start_A: float | None = None):
        self.box, self.apix, self.loss_kind, self.device = box, pixel_size_A, loss, device
        model = noise_sigma if isinstance(noise_sigma, Tensor) else torch.full((box, box), float(noise_sigma))
        self.sigma = reference_sigma(model)
        self.set_noise(model)
        self.radius_end = box / 2 if radius_px is None else min(float(radius_px), box / 2)
        self.radius_start = min(self.radius_end, self.radius_at(resolution_start_A) or self.radius_end)
        self.volume = HartleyVolume(box, mantissa_exponent=mantissa_exponent, init_rms=init_rms).to(device)
        self.field: torch.nn.Module = self.volume  # what training calls; a DDP wrapper after distribute()
        self.opt_volume = torch.optim.Adam(self.volume.parameters(), lr=lr)
        self._limit(self.radius_end)

    def set_noise(self, model: Tensor) -> None:
        """Whiten by the noise model ``model`` ``(D, D)`` from now on (the volume keeps its unit ``self.sigma``)."""
        self.noise = model.float().flatten().to(self.device)  # (D·D,) σ per coefficient
        whiten = (self.sigma / self.noise).view(self.box, self.box)  # a slice in whitened units: its coefficients
        self.whiten = None if bool((whiten == whiten[0, 0]).all()) else whiten  # times this; white: nothing to do

    def target(self, images: Tensor) -> Tensor:
        """Whitened spectra ``(B, M)`` of ``images`` ``(B, D, D)`` over the current band's pixels."""
        return target_spectra(images, self.noise, self.mask_index)

    def _limit(self, radius: float) -> None:
        """Fit, render and return the map for ``|q| ≤ radius`` pixels only."""
        self.radius = radius
        self.mask_index = torch.nonzero(circular_mask(self.box, radius, device=self.device).flatten()).squeeze(1)
        k = frequency_grid_2d(self.box, 1.0 / self.box, device=self.device)  # (D, D, 2) pixels
        self.mask_radius = k.norm(dim=-1).flatten()[self.mask_index]  # (M,)

    def radius_at(self, resolution_A: float | None) -> float | None:
        """Frequency radius (pixels) of ``resolution_A`` on this grid; None for None or 0."""
        return self.box * self.apix / resolution_A if resolution_A else None

    def set_band(self, epoch: int, ramp_epochs: int, hold_epochs: int = 0) -> None:
        """Loss radius for ``epoch``: ``radius_start`` up to epoch ``hold_epochs``, then growing linearly to
        ``radius_end``, reached ``ramp_epochs`` later (pixels; see ``resolution_start_A``)."""
        progress = min(1.0, max(0, epoch - hold_epochs) / ramp_epochs) if ramp_epochs > 0 else 1.0
        self._limit(self.radius_start + progress * (self.radius_end - self.radius_start))

    def distribute(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Train the volume through ``wrap(volume)`` (e.g. a DDP wrapper averaging its gradients over the ranks;
        call :attr:`field` to train it)."""
        self.field = wrap(self.volume)

    def set_lr(self, lr: float) -> None:
        for group in self.opt_volume.param_groups:
            group["lr"] = lr

    def pose_loss(self, rotations: Tensor, shifts: Tensor | None, batch: dict, target: Tensor,
                  volume: Tensor, radius: float | None = None) -> Tensor:
        """Per-image, per-pose loss ``(B, H)`` for rotations ``(B, H, 3, 3)`` and shifts ``(B, H, 2)`` Å, over
        the current band's pixels (``target`` ``(B, M)``), or only those within ``radius`` pixels. More pose axes
        broadcast, e.g. rotations ``(1, K, 1, 3, 3)`` shared by the batch and shifts ``(B, 1, S, 2)`` give
        ``(B, K, S)``."""
        pixels, limit = self.mask_index, self.radius
        if radius is not None and radius < self.radius:
            inside = self.mask_radius <= radius
            pixels, target, limit = pixels[inside], target[:, inside], radius
        spectra = render(volume, rotations, self.apix, ctf=batch["ctf"], shifts_A=shifts, radius=limit,
                         real_space=False, pixels=pixels, weight=self.whiten)
        target = target.reshape(target.shape[:1] + (1,) * (rotations.ndim - 4) + target.shape[1:])
        return slice_loss(spectra, target, self.loss_kind)

    def shared_pose_loss(self, rotations: Tensor, shifts: Tensor | None, batch: dict, target: Tensor,
                         volume: Tensor) -> Tensor:
        """The ``nll`` loss ``(B, C, S)`` of :meth:`pose_loss` for ``C`` rotations ``(C, 3, 3)`` shared by the batch,
        each image at each of its shifts ``(B, S, 2)`` Å (None: unshifted, S = 1), over the current band: each
        rotation sliced once and the images scored by matrix products (:func:`shared_slice_loss`)."""
        slices = extract_slices(volume, rotations, radius=self.radius, output="fourier", pixels=self.mask_index)
        ctf = compute_ctf(batch["ctf"], self.box, self.apix).flatten(-2)[:, self.mask_index]
        if self.whiten is not None:
            ctf = ctf * self.whiten.flatten()[self.mask_index]
        phases = None if shifts is None else shift_phase(shifts, self.box, self.apix).flatten(-2)[..., self.mask_index]
        return shared_slice_loss(slices, ctf, phases, target)

    @torch.no_grad()
    def density(self) -> Tensor:
        """The current map ``(D, D, D)`` (arbitrary units, positive density), limited to the trained band."""
        field = self.volume.hartley().double() * self.sigma
        if self.radius < self.box / 2:
            field = field * (radius_grid(self.box, field.device) <= self.radius)
        return ihartley3_centered(field).float()
