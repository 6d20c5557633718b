"""Central-slice projection, Fourier shifts and rendering (slice → CTF → shift → image).

Geometry (pinned against ``relion_project`` in ``tests/test_physics_relion.py``): the image frequency
``q = (kx, ky)`` (pixels, index − D/2) samples the volume spectrum at ``p = s · Rᵀ (kx, ky, 0)`` in voxels, with
``(x, y, z)`` along volume axes ``(-1, -2, -3)`` and ``s`` = volume box / image box (oversampling). A shift
``t = (rlnOriginXAngst, rlnOriginYAngst)`` puts the particle centre at ``−t`` from the box centre:
``F_img(k) = F(k) · exp(+2πi k·t)``.

Only frequencies ``|q| ≤ radius`` (default ``D/2``, RELION's ``r_max``) are sampled; the rest is zero. Samples
use trilinear interpolation of the volume extended by its Nyquist plane (``+Dv/2 ≡ −Dv/2``, as in the DFT) and
zero beyond, so grid-aligned poses reproduce the central-slice theorem exactly. Half of the disc is enough: one
complex gather from the table ``H(p) + i·H(−p)`` (a Hartley volume and its mirror) gives the values at ``q`` and
``−q``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from .ctf import CTFParams, compute_ctf
from .fourier import frequency_grid_2d, hartley3_centered, ifft2_centered


@dataclass(frozen=True)
class HalfDisc:
    """The half disc ``S`` of a ``box``² centred grid: ``S ∪ −S`` is the disc ``|q| ≤ radius``.

    Attributes:
        k: ``(M, 2)`` frequencies ``(kx, ky)`` of ``S`` in pixels (float64).
        pixel: ``(M,)`` flat image index of each element of ``S``.
        full_index: ``(D*D,)`` index of every image pixel into ``[values at S (M) | values at −S (M) | 0]``.
        multiplicity: ``(M,)`` 1, or 0.5 where ``q = −q`` (the DC term), so that ``S`` and ``−S`` count each
            disc pixel once.
    """

    k: Tensor
    pixel: Tensor
    full_index: Tensor
    multiplicity: Tensor


def half_disc(box: int, radius: float | None = None, device=None) -> HalfDisc:
    """Index tables of :class:`HalfDisc` for ``|q| ≤ radius`` pixels (default ``D/2``; cached)."""
    radius = box / 2 if radius is None else float(radius)
    if not 0 < radius <= box / 2:
        raise ValueError(f"radius {radius} must be in (0, {box / 2}]")
    return _half_disc(box, radius, str(torch.device("cpu") if device is None else torch.device(device)))


@functools.lru_cache(maxsize=64)
def _half_disc(box: int, radius: float, device: str) -> HalfDisc:
    j = torch.arange(box)
    y, x = torch.meshgrid(j, j, indexing="ij")
    ky, kx = y - box // 2, x - box // 2
    in_disc = kx * kx + ky * ky <= radius * radius
    mirror_on_grid = (x > 0) & (y > 0)
    in_s = in_disc & ((ky > 0) | ((ky == 0) & (kx >= 0)) | ~mirror_on_grid)
    pixel = torch.nonzero(in_s.flatten()).squeeze(1)
    m = pixel.numel()
    position = torch.full((box, box), -1, dtype=torch.long)
    position.view(-1)[pixel] = torch.arange(m)
    mirror = position[(box - y) % box, (box - x) % box]  # position of −q in S (valid where the mirror is on grid)
    full = torch.full((box, box), 2 * m, dtype=torch.long)
    from_mirror = in_disc & ~in_s
    full[from_mirror] = m + mirror[from_mirror]
    full[in_s] = position[in_s]
    k = torch.stack([kx.flatten()[pixel], ky.flatten()[pixel]], dim=-1).to(torch.float64)
    multiplicity = torch.where((k == 0).all(-1), 0.5, 1.0).to(torch.float64)
    return HalfDisc(*(t.to(device) for t in (k, pixel, full.flatten(), multiplicity)))


def circular_mask(
    box: int, radius: float | None = None, *, nyquist_fraction: float | None = None, device=None
) -> Tensor:
    """Boolean ``(D, D)`` mask of centred frequencies with ``|q| ≤ radius`` pixels (or ``fraction · D/2``)."""
    if nyquist_fraction is not None:
        radius = nyquist_fraction * box / 2
    radius = box / 2 if radius is None else radius
    k = frequency_grid_2d(box, 1.0 / box, device=device, dtype=torch.float64)  # pixels
    return (k * k).sum(-1) <= radius * radius


# ---------------------------------------------------------------------------------------------- trilinear kernel
@functools.lru_cache(maxsize=16)
def _corner_offsets(size: int, device: str) -> Tensor:
    """Flat offsets ``(8, 1)`` of the corners of a cell, ordered ``(dz, dy, dx)``."""
    d = torch.tensor([0, 1])
    dz, dy, dx = torch.meshgrid(d, d, d, indexing="ij")
    return ((dz * size + dy) * size + dx).reshape(8, 1).to(device)


def _corners(coords: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Flat corner indices ``(B, 8, M)`` and fractional parts ``(3, B, M)`` of coordinates ``(3, B, M)``.

    Corners are grouped per row ``b`` (one slice), so the 8 passes over a slice's cells stay in cache.
    """
    floor = coords.floor()
    i = floor.long()
    base = i[0] + size * (i[1] + size * i[2])
    return base[:, None, :] + _corner_offsets(size, str(coords.device)), coords - floor


def _corner_weights(frac: Tensor, values: Tensor | None = None) -> Tensor:
    """Trilinear weights ``(B, 8, M)`` (corners ``(dz, dy, dx)``) of fractions ``(3, B, M)``, times ``values``."""
    w = torch.stack([1 - frac, frac], 2)  # (xyz, B, 0/1, M)
    wz = w[2] if values is None else w[2] * values[:, None, :]
    wzy = (wz[:, :, None, :] * w[1][:, None, :, :]).flatten(1, 2)
    return (wzy[:, :, None, :] * w[0][:, None, :, :]).flatten(1, 2)


def _chunks(coords: Tensor, samples: int = 1 << 17) -> tuple[Tensor, ...]:
    """Coordinates ``(3, B, M)`` split along ``B`` into chunks of about ``samples`` points: the ``8×`` corner
    tensors of a chunk stay in cache instead of streaming ``8·B·M`` values through memory."""
    return coords.split(max(1, samples // max(coords.shape[-1], 1)), dim=1)


def splat(grids: tuple[Tensor, ...], values: tuple[Tensor, ...], coords: Tensor, size: int) -> None:
    """Scatter-add each ``values[i]`` ``(B, M)`` with trilinear weights at coordinates ``(3, B, M)`` into the
    flat ``size``³ ``grids[i]`` (in place; the adjoint of trilinear sampling)."""
    start = 0
    for chunk in _chunks(coords):
        idx, frac = _corners(chunk, size)
        idx, rows = idx.reshape(-1), slice(start, start + chunk.shape[1])
        for grid, vals in zip(grids, values):
            grid.scatter_add_(0, idx, _corner_weights(frac.to(vals.dtype), vals[rows]).reshape(-1))
        start += chunk.shape[1]


class _TrilinearGather(torch.autograd.Function):
    """Trilinear samples ``(B, M)`` of a flat ``size``³ table (real or complex) at coordinates ``(3, B, M)``.

    All 8 corners must lie inside the table. Corner-major rows (every op runs on contiguous length-M rows),
    processed in cache-sized chunks of slices; backward recomputes the corners (nothing ``8·B·M`` is kept),
    scatters into the table and differentiates the weights w.r.t. the coordinates.
    """

    @staticmethod
    def _sample(table: Tensor, coords: Tensor, size: int, derivatives: bool) -> tuple[Tensor, Tensor | None]:
        idx, frac = _corners(coords, size)
        v = torch.take(table, idx)  # (B, 8, M), corners (dz, dy, dx)
        fx, fy, fz = frac.to(table.dtype)
        fx, fy = fx[:, None], fy[:, None]
        d = v[:, 1::2] - v[:, 0::2]
        vx = torch.addcmul(v[:, 0::2], fx, d)  # (B, 4, M): (dz, dy)
        e = vx[:, 1::2] - vx[:, 0::2]
        vy = torch.addcmul(vx[:, 0::2], fy, e)  # (B, 2, M): dz
        dz = vy[:, 1] - vy[:, 0]
        out = torch.addcmul(vy[:, 0], fz, dz)
        if not derivatives:
            return out, None
        dxy = torch.addcmul(d[:, 0::2], fy, d[:, 1::2] - d[:, 0::2])
        dx = torch.addcmul(dxy[:, 0], fz, dxy[:, 1] - dxy[:, 0])
        dy = torch.addcmul(e[:, 0], fz, e[:, 1] - e[:, 0])
        return out, torch.stack([dx, dy, dz])  # d out / d (x, y, z)

    @staticmethod
    def forward(ctx, table: Tensor, coords: Tensor, size: int) -> Tensor:
        coords = coords.detach()
        derivatives = ctx.needs_input_grad[1]
        parts = [_TrilinearGather._sample(table, c, size, derivatives) for c in _chunks(coords)]
        out = torch.cat([o for o, _ in parts])
        derivs = torch.cat([g for _, g in parts], dim=1) if derivatives else None
        ctx.save_for_backward(coords, derivs)
        ctx.size, ctx.table_numel, ctx.table_dtype = size, table.numel(), table.dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        coords, derivs = ctx.saved_tensors
        grad_table = grad_coords = None
        if ctx.needs_input_grad[0]:
            grad_table = grad.new_zeros(ctx.table_numel, dtype=ctx.table_dtype)
            splat((grad_table,), (grad.to(ctx.table_dtype),), coords, ctx.size)
        if ctx.needs_input_grad[1]:
            grad_coords = derivs.conj() * grad  # Re(g · conj(d out / d c)) for complex tables
            grad_coords = grad_coords.real if grad_coords.is_complex() else grad_coords
        return grad_table, grad_coords, None


# ------------------------------------------------------------------------------------------------ central slices
def slice_coords(rotations: Tensor, disc: HalfDisc, scale: float, centre: float) -> Tensor:
    """Grid coordinates ``(3, B, M)`` (x, y, z) of ``p = scale · Rᵀ q + centre`` for the ``M`` frequencies
    ``q ∈ S`` and the ``B`` rotations ``(..., 3, 3)`` (batch dimensions flattened)."""
    r = rotations[..., :2, :].movedim(-1, 0).reshape(-1, 2)  # (3·B, 2): one GEMM instead of B tiny ones
    return (r @ (disc.k.to(rotations.dtype).T * scale)).view(3, -1, disc.k.shape[0]) + centre


def extract_slices(
    volume: Tensor,
    rotations: Tensor,
    *,
    box: int | None = None,
    radius: float | None = None,
    output: str = "hartley",
    pixels: Tensor | None = None,
) -> Tensor:
    """Central slices ``(..., D, D)`` of a centred volume spectrum for rotations ``(..., 3, 3)``.

    Args:
        volume: ``(Dv, Dv, Dv)`` real Hartley coefficients, or complex (Hermitian) Fourier coefficients.
        rotations: RELION pose matrices of any batch shape, e.g. ``(B, H, 3, 3)``.
        box: image box ``D`` (default ``Dv``); ``Dv / D`` is the oversampling of the volume.
        radius: frequencies with ``|q| > radius`` pixels are zero (default ``D/2``, at most ``D/2``).
        output: ``"hartley"`` (real slices) or ``"fourier"`` (complex centred spectra).
        pixels: flat indices ``(P,)`` of the image pixels to return, giving ``(..., P)`` instead of the whole
            image (e.g. the pixels of a loss mask; only those within ``radius`` are sampled).

    Differentiable w.r.t. ``volume`` and ``rotations`` (through the sample coordinates).
    """
    if output not in ("hartley", "fourier"):
        raise ValueError(f"output must be 'hartley' or 'fourier', not {output!r}")
    dv = volume.shape[-1]
    box = dv if box is None else box
    disc = half_disc(box, radius, volume.device)
    table = volume
    for dim in (-3, -2, -1):  # the Nyquist plane -Dv/2 is also +Dv/2 (periodic DFT)
        table = torch.cat([table, table.narrow(dim, 0, 1)], dim)
    table = F.pad(table, (1, 1) * 3)  # zero border; the mirror of index i is Dv + 2 - i
    if not volume.is_complex():
        table = torch.complex(table, table.flip(-3, -2, -1))  # H(p) + i H(-p)
    coords = slice_coords(rotations, disc, dv / box, dv // 2 + 1)
    z = _TrilinearGather.apply(table.reshape(-1), coords, dv + 3).view(rotations.shape[:-2] + disc.pixel.shape)
    if output == "hartley":
        if volume.is_complex():
            z = z * (1 + 1j)  # F -> H(p) + i H(-p)
        values = torch.cat([z.real, z.imag], dim=-1)
    else:
        if not volume.is_complex():
            z = z * (0.5 - 0.5j)  # H(p) + i H(-p) -> F(p)
        values = torch.cat([z, z.conj()], dim=-1)
    values = F.pad(values, (0, 1))
    if pixels is not None:
        return values.index_select(-1, disc.full_index[pixels])
    return values.index_select(-1, disc.full_index).unflatten(-1, (box, box))


def trilinear_apodization(box: int, grid: int, device=None, dtype=torch.float64) -> Tensor:
    """Real-space ``(D, D, D)`` transform of the trilinear kernel on a ``grid``³ Fourier grid (∏ sinc²(x/grid))."""
    x = torch.sinc((torch.arange(box, device=device, dtype=dtype) - box // 2) / grid) ** 2
    return x[:, None, None] * x[None, :, None] * x[None, None, :]


def projection_volume(density: Tensor, pad: int = 2) -> Tensor:
    """Hartley volume ``(pad·D)³`` of a real ``(D, D, D)`` map for accurate slicing with ``box=D``.

    The map is divided by :func:`trilinear_apodization` (gridding correction) and zero-padded — RELION's
    projector. Use it to simulate data; models slice their own unpadded volume.
    """
    d = density.shape[-1]
    grid = pad * d
    corrected = density / trilinear_apodization(d, grid, density.device, density.dtype)
    return hartley3_centered(F.pad(corrected, ((grid - d) // 2,) * 6))


# ------------------------------------------------------------------------------------------- shifts and rendering
def shift_phase(shifts_A: Tensor, box: int, pixel_size_A: float | Tensor) -> Tensor:
    """Phase ramps ``exp(+2πi k·t)`` ``(..., D, D)`` for RELION origins ``t`` ``(..., 2)`` in Å.

    Multiplying a centred spectrum by it moves the particle centre to ``−t``; ``pixel_size_A`` is a float or a
    tensor broadcastable to the batch shape of ``shifts_A``. Differentiable w.r.t. ``shifts_A``.
    """
    apix = torch.as_tensor(pixel_size_A, dtype=shifts_A.dtype, device=shifts_A.device)
    t = shifts_A / (apix[..., None] if apix.ndim else apix)  # pixels
    k = frequency_grid_2d(box, 1.0, device=shifts_A.device, dtype=shifts_A.dtype)  # cycles / pixel
    phase = 2 * torch.pi * (k[..., 0] * t[..., None, None, 0] + k[..., 1] * t[..., None, None, 1])
    return torch.complex(torch.cos(phase), torch.sin(phase))


def _leading(x: Tensor, ndim: int) -> Tensor:
    """Append singleton axes after the batch axes of ``(*S, D, D)`` so that ``S`` prefixes ``ndim`` batch axes."""
    return x.reshape(x.shape[:-2] + (1,) * (ndim - x.ndim + 2) + x.shape[-2:])


def render(
    volume: Tensor,
    rotations: Tensor,
    pixel_size_A: float | Tensor,
    *,
    ctf: CTFParams | None = None,
    shifts_A: Tensor | None = None,
    box: int | None = None,
    radius: float | None = None,
    real_space: bool = True,
    pixels: Tensor | None = None,
    weight: Tensor | None = None,
) -> Tensor:
    """Slice → CTF → shift: images ``(..., D, D)`` (or centred complex spectra if ``real_space=False``).

    Args:
        volume: Hartley or complex volume, see :func:`extract_slices` (``projection_volume`` for accuracy).
        rotations: ``(B, ..., 3, 3)``, e.g. ``(B, H, 3, 3)`` for H candidate poses per particle.
        pixel_size_A: image pixel size (float, or a tensor broadcastable to the CTF / shift batch shape).
        ctf: per-particle parameters of batch shape ``(B,)`` (or any prefix of the rotation batch shape).
        shifts_A: RELION origins ``(B, ..., 2)`` in Å (any prefix of the rotation batch shape, or broadcast
            against it: rotations ``(B, 1, 3, 3)`` with shifts ``(B, K, 2)`` render one slice, K shifts).
        pixels: flat indices ``(P,)`` of spectrum pixels: returns those values ``(..., P)`` of the centred
            spectra only (with ``real_space=False``), computing slices, CTF products and shifts for them alone.
        weight: a real factor ``(D, D)`` on the centred spectrum applied with the CTF (e.g. a whitening filter),
            at no extra cost per slice.

    Images are line integrals in voxel units (sum over z for the identity pose). Differentiable w.r.t. the
    volume, rotations, shifts and CTF parameters.
    """
    if pixels is not None and real_space:
        raise ValueError("pixels= gives spectrum values: use real_space=False")
    box = volume.shape[-1] if box is None else box
    spectra = extract_slices(volume, rotations, box=box, radius=radius, output="fourier", pixels=pixels)
    if pixels is None:
        def select(x: Tensor) -> Tensor:
            return x
    else:  # (..., D, D) factors at the selected pixels, (..., 1, P) so that _leading broadcasts them alike
        def select(x: Tensor) -> Tensor:
            return x.flatten(-2)[..., pixels].unsqueeze(-2)
        spectra = spectra.unsqueeze(-2)
    nbatch = spectra.ndim - 2
    if ctf is not None or weight is not None:
        factor = 1 if ctf is None else compute_ctf(ctf, box, pixel_size_A, dtype=spectra.real.dtype)
        factor = factor if weight is None else factor * weight.to(spectra.real.dtype)
        spectra = spectra * _leading(select(factor), nbatch)
    if shifts_A is not None:
        phase = shift_phase(shifts_A.to(spectra.real.dtype), box, pixel_size_A)
        spectra = spectra * _leading(select(phase), nbatch)
    if pixels is not None:
        return spectra.squeeze(-2)
    return ifft2_centered(spectra).real if real_space else spectra
