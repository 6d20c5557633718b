"""Reconstruction from known poses: CTF-weighted direct Fourier inversion, streamed over batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .ctf import CTFParams, compute_ctf
from .fourier import fft2_centered, ifft3_centered, radius_grid, shell_index
from .projection import half_disc, shift_phase, slice_coords, splat, trilinear_apodization


class BackprojectionAccumulator:
    """Accumulates ``Σ CTF·F_i`` and ``Σ CTF²`` on a ``pad·D`` oversampled Fourier grid, batch by batch.

    Each image spectrum (its shift undone) is splatted with trilinear weights at ``p = pad · Rᵀ q`` for
    ``|q| ≤ radius`` — on half the disc; the Friedel mates are added by symmetry in :meth:`finalize`, so every
    disc pixel counts once. :meth:`finalize` returns the map of
    ``V = Σ CTF·F / (Σ CTF² + 1/snr)`` (inverse FFT, crop to ``D``, divided by the trilinear kernel's transform)
    and, like ``relion_reconstruct``, sets the box corners beyond radius ``D/2`` to their mean (3-voxel cosine
    edge) so that their noise does not dilute the FSC. With a point group, ``Σ CTF·F`` and ``Σ CTF²`` are first
    summed over its rotations of the Fourier grid, as ``relion_reconstruct --sym`` does.

    Args:
        box: image box ``D`` (even).
        pad: oversampling of the Fourier grid (RELION's default 2).
        snr: Wiener term: a float, or a tensor ``(D//2 + 1,)`` per shell (image pixels). ``1/snr`` is added to
            ``Σ CTF²`` counted per image pixel. ``None``: no regularisation, but weights are raised to at
            least 1/1000 of their shell average (as ``relion_reconstruct`` without ``--fsc``).
        radius: highest frequency used, in image pixels (default ``D/2``).
        symmetry: rotations ``(G, 3, 3)`` of a point group to impose (:mod:`cryopose.geometry.symmetry`).

    Half maps: one accumulator per half set; ``full += half`` merges accumulators (or all-reduce ``data`` and
    ``weight`` across processes).
    """

    def __init__(
        self,
        box: int,
        *,
        pad: int = 2,
        snr: float | Tensor | None = None,
        radius: float | None = None,
        symmetry: Tensor | None = None,
        device=None,
        dtype: torch.dtype = torch.float32,
    ):
        self.box, self.pad, self.snr, self.radius, self.symmetry = box, pad, snr, radius, symmetry
        self.grid = pad * box
        self.size = self.grid + 3  # zero border as in extract_slices: centre grid/2 + 1, mirror i -> grid + 2 - i
        n = self.size**3
        cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.data = torch.zeros(n, dtype=cdtype, device=device)
        self.weight = torch.zeros(n, dtype=dtype, device=device)
        self.count = 0

    def add(
        self,
        images: Tensor,
        rotations: Tensor,
        shifts_A: Tensor | None = None,
        ctf: CTFParams | None = None,
        pixel_size_A: float | Tensor = 1.0,
        image_weights: Tensor | None = None,
    ) -> None:
        """Insert real images ``(B, D, D)`` at poses ``(B, 3, 3)``, origins ``(B, 2)`` (Å) and CTFs ``(B,)``,
        each counted ``image_weights`` ``(B,)`` times (default once; e.g. the probability of the pose)."""
        device, real = self.weight.device, self.weight.dtype
        images = images.to(device=device, dtype=real)
        disc = half_disc(self.box, self.radius, device)
        spectra = fft2_centered(images)
        if shifts_A is not None:
            spectra = spectra * shift_phase(-shifts_A.to(device=device, dtype=real), self.box, pixel_size_A)
        values = spectra.flatten(-2).index_select(-1, disc.pixel)  # (B, M)
        mult = disc.multiplicity.to(real)
        if ctf is None:
            weights = mult.expand_as(values.real)
        else:
            c = compute_ctf(ctf.to(device=device), self.box, pixel_size_A, dtype=real).flatten(-2)
            c = c.index_select(-1, disc.pixel)
            values, weights = values * c, c * c * mult
        if image_weights is not None:
            w = image_weights.to(device=device, dtype=real)[:, None]
            values, weights = values * w, weights * w
        coords = slice_coords(rotations.to(device=device, dtype=real), disc, self.pad, self.grid // 2 + 1)
        splat((self.data, self.weight), (values * mult, weights), coords, self.size)
        self.count += images.shape[0]

    def __iadd__(self, other: "BackprojectionAccumulator") -> "BackprojectionAccumulator":
        if (other.box, other.pad) != (self.box, self.pad):
            raise ValueError("accumulators differ in box or padding")
        self.data += other.data
        self.weight += other.weight
        self.count += other.count
        return self

    def finalize(self) -> Tensor:
        """The reconstructed real-space map ``(D, D, D)`` (voxel units of the images' line integrals)."""
        g, d = self.grid, self.box
        shape = (self.size,) * 3
        data, weight = self.data.view(shape), self.weight.view(shape)
        data = data + data.flip(0, 1, 2).conj()  # Friedel mates
        weight = weight + weight.flip(0, 1, 2)
        if self.symmetry is not None and len(self.symmetry) > 1:
            # splats reach √3 voxels beyond the inserted radius, and trilinear samples √3 further
            radius = self.pad * (d / 2 if self.radius is None else self.radius) + 4
            summed = _symmetrise(torch.stack([data.real, data.imag, weight]), self.symmetry, g // 2 + 1, radius)
            data, weight = torch.complex(summed[0], summed[1]), summed[2]
        for dim in range(3):  # fold +grid/2 onto -grid/2 (periodic), keep indices 1 .. grid
            data, weight = (_fold_nyquist(x, dim, g) for x in (data, weight))
        snr = None if self.snr is None else torch.as_tensor(self.snr, dtype=weight.dtype, device=weight.device)
        if snr is None or snr.ndim:
            shell = shell_index(g, weight.device, self.pad)
        if snr is None:
            counts = torch.bincount(shell.flatten()).clamp(min=1)
            mean = torch.bincount(shell.flatten(), weight.flatten().double()) / counts
            weight = torch.maximum(weight, (1e-3 * mean[shell]).to(weight.dtype))
        else:
            snr = snr[shell.clamp(max=snr.numel() - 1)] if snr.ndim else snr
            weight = weight + 1.0 / (snr * self.pad**2)  # splat weights per image pixel are ~1/pad²
        spectrum = torch.where(weight > 0, data / weight.clamp(min=torch.finfo(weight.dtype).tiny), 0)
        volume = ifft3_centered(spectrum).real
        start = g // 2 - d // 2
        volume = volume[start : start + d, start : start + d, start : start + d]
        return _mask_corners(volume / trilinear_apodization(d, g, volume.device, volume.dtype))


def _symmetrise(grids: Tensor, group: Tensor, centre: int, radius: float, budget: int = 2**23) -> Tensor:
    """Real grids ``(C, S, S, S)`` summed over the rotations ``group`` ``(K, 3, 3)`` (K ≥ 2, the identity first)
    about the centre index ``c``: ``Σ_g X(c + g·(p − c))`` (trilinear, zero outside the grid), as RELION's
    ``applyPointGroupSymmetry``. Only voxels within ``radius`` of ``c`` get the other terms: the sum is
    exact where the samples beyond are zero. Slabs of z planes of at most ``budget`` samples at a time."""
    channels, size, others = len(grids), grids.shape[-1], len(group) - 1
    j = torch.arange(size, dtype=grids.dtype, device=grids.device) - centre
    turns = group[1:].to(grids).transpose(-1, -2).permute(1, 0, 2).reshape(3, -1)  # p @ turns: (g·p for each g)
    out = grids.clone()
    step = max(1, budget // (size**2 * others))
    for start in range(0, size, step):
        z, y, x = torch.meshgrid(j[start : start + step], j, j, indexing="ij")
        points = torch.stack([x, y, z], -1).reshape(-1, 3)
        inside = (points.square().sum(-1) <= radius**2).nonzero().squeeze(1)
        # grid_sample's coordinates with align_corners: index 0 -> -1, S - 1 -> +1
        source = ((points[inside] @ turns).view(1, 1, -1, others, 3) + centre) * (2.0 / (size - 1)) - 1.0
        samples = F.grid_sample(grids[None], source, align_corners=True)  # (1, C, 1, P, K − 1)
        out.view(channels, -1).index_add_(1, inside + start * size**2, samples.view(channels, -1, others).sum(-1))
    return out


def _mask_corners(volume: Tensor, width: float = 3.0) -> Tensor:
    """RELION's ``softMaskOutsideMap``: beyond radius ``D/2`` blend into the (weighted) mean found there."""
    d = volume.shape[-1]
    t = ((radius_grid(d, volume.device, volume.dtype) - d / 2) / width).clamp(0, 1)
    outside = 0.5 - 0.5 * torch.cos(torch.pi * t)  # 0 inside the sphere, 1 beyond the edge
    background = (volume * outside).sum() / outside.sum()
    return volume + outside * (background - volume)


def _fold_nyquist(x: Tensor, dim: int, grid: int) -> Tensor:
    """Add index ``grid + 1`` (+grid/2) onto index 1 (−grid/2) along ``dim`` and keep indices ``1 .. grid``."""
    out = x.narrow(dim, 1, grid).clone()
    out.narrow(dim, 0, 1).add_(x.narrow(dim, grid + 1, 1))
    return out


