"""Central slices, shifts, rendering, the Hartley volume model and the backprojection accumulator."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import roma
import torch
import torch.nn.functional as F

from cryopose.models.volume import HartleyVolume
from cryopose.physics.backproject import BackprojectionAccumulator
from cryopose.physics.ctf import CTFParams
from cryopose.physics.fourier import fft2_centered, hartley2_centered, hartley3_centered, hartley_to_fourier
from cryopose.physics.fsc import fsc
from cryopose.physics.projection import (
    circular_mask,
    extract_slices,
    half_disc,
    projection_volume,
    render,
    shift_phase,
)

F64 = torch.float64


def _random(shape, seed=0, dtype=F64):
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _signed_permutations() -> list[torch.Tensor]:
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3, dtype=F64)
            m[range(3), perm] = torch.tensor(signs, dtype=F64)
            if torch.det(m) > 0:
                out.append(m)
    return out


def test_grid_aligned_poses_obey_the_central_slice_theorem_exactly():
    """For the 24 axis-aligned rotations the slice equals the Hartley transform of the real-space projection
    ``∫ v(Rᵀ x) dz`` (periodic grid, so Nyquist pixels included)."""
    d = 10
    vol = _random((d, d, d))
    slices = extract_slices(hartley3_centered(vol), torch.stack(_signed_permutations()))
    c = torch.arange(d) - d // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    xyz = torch.stack([x, y, z], -1).to(F64)
    mask = circular_mask(d)
    for rot, sl in zip(_signed_permutations(), slices):
        src = ((xyz @ rot).round().long() + d // 2) % d  # Rᵀ x as a row vector is x @ R
        rotated = vol[src[..., 2], src[..., 1], src[..., 0]]
        expected = hartley2_centered(rotated.sum(0)) * mask
        assert torch.allclose(sl, expected, atol=1e-10)


def test_matches_grid_sample_inside_the_volume():
    d = 16
    hart = hartley3_centered(_random((d, d, d)))
    rot = roma.random_rotmat(6, dtype=F64, device="cpu")
    radius = d / 2 - 2  # keep every corner off the Nyquist planes, where the two differ by design
    k = torch.arange(d, dtype=F64) - d // 2
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    p = torch.stack([kx, ky], -1).reshape(-1, 2) @ rot[:, :2, :]  # Rᵀ q
    grid = (p + d // 2) / (d - 1) * 2 - 1
    ref = F.grid_sample(hart.expand(6, 1, d, d, d), grid[:, None, None], align_corners=True).reshape(6, d, d)
    ours = extract_slices(hart, rot, radius=radius)
    assert torch.allclose(ours, ref * circular_mask(d, radius), atol=1e-10)
    # batch shapes, Fourier output and complex volumes agree
    batched = extract_slices(hart, rot.view(2, 3, 3, 3), radius=radius)
    assert torch.equal(batched.view(6, d, d), ours)
    fourier = extract_slices(hart, rot, radius=radius, output="fourier")
    assert torch.allclose(fourier, hartley_to_fourier(ours), atol=1e-10)
    spec = hartley_to_fourier(hart, ndim=3)
    assert torch.allclose(extract_slices(spec, rot, radius=radius), ours, atol=1e-10)


def test_half_disc_covers_the_disc_once():
    for box, radius in ((8, None), (16, 5.5), (12, 6)):
        disc = half_disc(box, radius)
        mask = circular_mask(box, radius).flatten()
        assert torch.all(disc.full_index[~mask] == 2 * disc.pixel.numel())  # the zero entry
        assert disc.full_index[mask].unique().numel() == mask.sum()  # one source each: q or the mirror of q


@pytest.mark.parametrize("complex_volume", [False, True])
def test_gradcheck_volume_and_rotation(complex_volume):
    hart = _random((6, 6, 6))
    vol = (hartley_to_fourier(hart, ndim=3) if complex_volume else hart).requires_grad_(True)
    rotvec = (_random((2, 3), seed=1) * 0.8).requires_grad_(True)

    def f(v, r):
        return extract_slices(v, roma.rotvec_to_rotmat(r), output="fourier" if complex_volume else "hartley")

    assert torch.autograd.gradcheck(f, (vol, rotvec), atol=1e-7)
    # oversampled volume sliced at a smaller box; raw matrix entries as inputs
    raw = roma.rotvec_to_rotmat(rotvec.detach()).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, r: extract_slices(v, r, box=4, radius=2), (vol, raw), atol=1e-7)


def test_gradcheck_render_shift_and_ctf():
    hart = hartley3_centered(_random((8, 8, 8), seed=2))
    rot = roma.random_rotmat(2, dtype=F64)
    shifts = (_random((2, 2), seed=3) * 3).requires_grad_(True)
    defocus = torch.tensor([9000.0, 15000.0], dtype=F64, requires_grad=True)

    fixed = CTFParams.from_arrays(defocus_u_A=[0.0, 0.0], defocus_angle_rad=[0.2, 1.0], voltage_kV=[300.0, 300.0],
                                  cs_mm=[2.7, 2.7], amplitude_contrast=[0.1, 0.1], defocus_v_A=[0.0, 0.0])

    def f(s, df):
        ctf = dataclasses.replace(fixed, defocus_u_A=df, defocus_v_A=df - 500)
        return render(hart, rot, 2.0, ctf=ctf, shifts_A=s)

    assert torch.autograd.gradcheck(f, (shifts, defocus), atol=1e-7)


def test_shift_moves_the_particle_to_minus_the_origin():
    d, apix = 16, 1.5
    img = _random((d, d), seed=4)
    spec = fft2_centered(img) * circular_mask(d)
    base = torch.fft.ifft2(torch.fft.ifftshift(spec)).real  # band-limited image, origin-free reference
    origin = torch.tensor([2 * apix, -3 * apix], dtype=F64)  # (x, y) in Å = (2, -3) px
    moved = (fft2_centered(img) * circular_mask(d) * shift_phase(origin, d, apix))
    moved = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(moved))).real
    expected = torch.fft.fftshift(torch.roll(base, shifts=(3, -2), dims=(0, 1)))  # centre to (-2, +3) px
    assert torch.allclose(moved, expected, atol=1e-10)


def test_render_broadcasts_candidate_poses():
    hart = projection_volume(_random((8, 8, 8), seed=5), pad=2)
    rot = roma.random_rotmat(6, dtype=F64).view(2, 3, 3, 3)  # B=2 particles x H=3 candidate poses
    shifts = _random((2, 3, 2), seed=6)
    ctf = CTFParams.from_arrays(defocus_u_A=[9000.0, 14000.0], defocus_v_A=[8000.0, 13500.0],
                                defocus_angle_rad=[0.3, 2.0], voltage_kV=[300.0, 300.0], cs_mm=[2.7, 2.7],
                                amplitude_contrast=[0.1, 0.1])
    out = render(hart, rot, 1.2, ctf=ctf, shifts_A=shifts, box=8)
    assert out.shape == (2, 3, 8, 8)
    for b, h in itertools.product(range(2), range(3)):
        one = render(hart, rot[b, h][None], 1.2, ctf=ctf[b : b + 1], shifts_A=shifts[b, h][None], box=8)
        assert torch.allclose(out[b, h], one[0], atol=1e-10)


def test_render_at_selected_pixels_equals_the_whole_spectrum_there():
    """``pixels=`` (a loss mask) gives exactly the whole render's values there, with CTF and shifts."""
    hart = projection_volume(_random((16, 16, 16), seed=7), pad=2)
    rot = roma.random_rotmat(6, dtype=F64).view(2, 3, 3, 3)
    shifts = _random((2, 3, 2), seed=8)
    ctf = CTFParams.from_arrays(defocus_u_A=[9000.0, 14000.0], defocus_v_A=[8000.0, 13500.0],
                                defocus_angle_rad=[0.3, 2.0], voltage_kV=[300.0, 300.0], cs_mm=[2.7, 2.7],
                                amplitude_contrast=[0.1, 0.1])
    for radius in (3.5, 8.0):
        pixels = torch.nonzero(circular_mask(16, radius).flatten()).squeeze(1)
        whole = render(hart, rot, 1.2, ctf=ctf, shifts_A=shifts, box=16, radius=radius, real_space=False)
        part = render(hart, rot, 1.2, ctf=ctf, shifts_A=shifts, box=16, radius=radius, real_space=False,
                      pixels=pixels)
        assert part.shape == (2, 3, len(pixels))
        torch.testing.assert_close(part, whole.flatten(-2)[..., pixels], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="real_space=False"):
        render(hart, rot, 1.2, box=16, pixels=pixels)


@pytest.mark.parametrize("mantissa_exponent", [False, True])
def test_hartley_volume_model(mantissa_exponent):
    density = _random((8, 8, 8), seed=7).float()
    model = HartleyVolume.from_map(density, mantissa_exponent=mantissa_exponent)
    assert torch.allclose(model.to_real_space(), density, atol=1e-5)
    rot = roma.random_rotmat(4)
    assert torch.allclose(extract_slices(model(), rot), extract_slices(hartley3_centered(density), rot), atol=1e-4)
    extract_slices(model(), rot).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert HartleyVolume(8, mantissa_exponent=mantissa_exponent).to_real_space().abs().max() < 1


def _blobs(d: int, n: int = 24, seed: int = 0) -> torch.Tensor:
    """A band-limited test map: Gaussian blobs (σ = 1 px) within radius d/3 of the centre."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, d / 8, (n, 3)).clip(-d / 3, d / 3)
    c = torch.arange(d, dtype=F64) - d // 2
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    out = torch.zeros(d, d, d, dtype=F64)
    for cx, cy, cz in centres:
        out += torch.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / 2)
    return out


def test_noiseless_backprojection_round_trip():
    """5,000 accurate projections (2x oversampled, gridding-corrected) with CTFs and shifts -> FSC >= 0.99."""
    torch.manual_seed(0)
    d, apix, n = 64, 2.0, 5000
    truth = _blobs(d)
    volume = projection_volume(truth, pad=2).float()
    rng = np.random.default_rng(1)
    du = rng.uniform(8000, 25000, n)
    ctf = CTFParams.from_arrays(defocus_u_A=du, defocus_v_A=du - rng.uniform(0, 1500, n),
                                defocus_angle_rad=rng.uniform(0, np.pi, n), voltage_kV=np.full(n, 300.0),
                                cs_mm=np.full(n, 2.7), amplitude_contrast=np.full(n, 0.1))
    rotations = roma.random_rotmat(n)
    shifts = torch.randn(n, 2) * 4
    halves = [BackprojectionAccumulator(d), BackprojectionAccumulator(d)]
    for i in range(0, n, 1000):
        batch = slice(i, i + 1000)
        images = render(volume, rotations[batch], apix, ctf=ctf[batch], shifts_A=shifts[batch], box=d)
        for h, acc in enumerate(halves):  # even / odd particles: two half maps
            acc.add(images[h::2], rotations[batch][h::2], shifts[batch][h::2], ctf[batch][h::2], apix)
    assert [acc.count for acc in halves] == [n // 2, n // 2]
    full = BackprojectionAccumulator(d)
    full += halves[0]
    full += halves[1]
    for rec in (full.finalize(), halves[0].finalize()):
        _, curve = fsc(rec, truth)
        assert curve[: int(0.8 * d / 2) + 1].min() >= 0.99
    assert float((full.finalize() * truth).sum() / (truth * truth).sum()) == pytest.approx(1.0, abs=0.01)


def test_accumulator_wiener_snr_is_a_per_shell_option():
    d = 16
    truth = _blobs(d, n=4)
    volume = projection_volume(truth, pad=2)
    rot = roma.random_rotmat(300, dtype=F64)
    images = render(volume, rot, 1.0, box=d)
    maps = []
    for snr in (100.0, torch.full((d // 2 + 1,), 100.0)):
        acc = BackprojectionAccumulator(d, snr=snr, dtype=F64)
        acc.add(images, rot)
        maps.append(acc.finalize())
    assert torch.allclose(maps[0], maps[1])
    assert math.isfinite(float(maps[0].sum()))
