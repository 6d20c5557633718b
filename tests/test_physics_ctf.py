"""CTF (RELION's formula and sign) and the centred FFT / Hartley helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.physics.ctf import CTFParams, compute_ctf, electron_wavelength_A
from cryopose.physics.fourier import (
    fft2_centered,
    fft3_centered,
    hartley2_centered,
    hartley3_centered,
    hartley_to_fourier,
    ihartley2_centered,
    ihartley3_centered,
    mirror_centered,
)

BOX, APIX = 64, 1.5


def _params(n=1, **kw) -> CTFParams:
    base = dict(
        defocus_u_A=15000.0, defocus_v_A=15000.0, defocus_angle_rad=0.0, voltage_kV=300.0, cs_mm=0.0,
        amplitude_contrast=0.0,
    )
    base.update(kw)
    return CTFParams.from_arrays(**{k: np.broadcast_to(np.asarray(v, dtype=float), (n,)) for k, v in base.items()})


def _relion_reference(p: dict, box: int, apix: float) -> np.ndarray:
    """RELION 3.1 CTF::getCTF, written out literally (negative defocus convention, atan2 azimuth)."""
    k = (np.arange(box) - box // 2) / (box * apix)
    ky, kx = np.meshgrid(k, k, indexing="ij")
    volts = p["voltage_kV"] * 1e3
    lam = 12.2643247 / math.sqrt(volts * (1 + volts * 0.978466e-6))
    k1, k2 = math.pi * lam, math.pi / 2 * p["cs_mm"] * 1e7 * lam**3
    k3 = math.atan(p["amplitude_contrast"] / math.sqrt(1 - p["amplitude_contrast"] ** 2))
    avg, dev = -(p["defocus_u_A"] + p["defocus_v_A"]) / 2, -(p["defocus_u_A"] - p["defocus_v_A"]) / 2
    u2 = kx**2 + ky**2
    deltaf = avg + dev * np.cos(2 * (np.arctan2(ky, kx) - p["defocus_angle_rad"]))
    argument = k1 * deltaf * u2 + k2 * u2**2 - p["phase_shift_rad"] - k3
    return -p["scale"] * np.sin(argument) * np.exp(-p["bfactor_A2"] / 4 * u2)


def test_wavelength_300kv():
    lam = electron_wavelength_A(torch.tensor(300.0, dtype=torch.float64))
    assert float(lam) == pytest.approx(0.019687, abs=1e-6)


def test_zeros_of_a_pure_phase_ctf_fall_where_expected():
    """Cs = 0, w = 0: CTF = sin(π λ Δf k²) vanishes at pixel j with λ Δf (j / (D a))² = 1."""
    lam = float(electron_wavelength_A(torch.tensor(300.0, dtype=torch.float64)))
    defocus = (BOX * APIX / 10) ** 2 / lam  # first zero at radius 10 px
    ctf = compute_ctf(_params(defocus_u_A=defocus, defocus_v_A=defocus), BOX, APIX, dtype=torch.float64)[0]
    c = BOX // 2
    assert abs(float(ctf[c, c + 10])) < 1e-9 and abs(float(ctf[c - 10, c])) < 1e-9
    assert float(ctf[c, c + 5]) == pytest.approx(math.sin(math.pi / 4), abs=1e-9)  # λΔf k² = 1/4
    assert float(ctf[c + 6, c + 8]) == pytest.approx(0.0, abs=1e-9)  # radius 10 off-axis


@pytest.mark.parametrize("angle", [0.0, math.pi / 2, math.pi / 4])
def test_astigmatism_direction(angle):
    """Defocus U acts along the azimuth θ_ast (measured from +x towards +y), V perpendicular to it."""
    du, dv = 20000.0, 10000.0
    ctf = compute_ctf(_params(defocus_u_A=du, defocus_v_A=dv, defocus_angle_rad=angle), BOX, APIX,
                      dtype=torch.float64)[0]
    lam = float(electron_wavelength_A(torch.tensor(300.0, dtype=torch.float64)))
    c, j = BOX // 2, 6
    along = (round(j * math.cos(angle)), round(j * math.sin(angle)))  # (x, y) pixel offsets
    across = (-along[1], along[0])
    for (x, y), defocus in ((along, du), (across, dv)):
        k2 = (x * x + y * y) / (BOX * APIX) ** 2
        assert float(ctf[c + y, c + x]) == pytest.approx(math.sin(math.pi * lam * defocus * k2), abs=1e-9)


def test_matches_relion_formula_with_every_term():
    rng = np.random.default_rng(0)
    n = 4
    p = dict(
        defocus_u_A=rng.uniform(8000, 30000, n), defocus_v_A=rng.uniform(5000, 8000, n),
        defocus_angle_rad=rng.uniform(-np.pi, np.pi, n), voltage_kV=np.array([300.0, 200.0, 300.0, 100.0]),
        cs_mm=np.array([2.7, 0.01, 2.0, 1.4]), amplitude_contrast=np.array([0.1, 0.07, 0.0, 0.2]),
        phase_shift_rad=rng.uniform(0, np.pi / 2, n), bfactor_A2=np.array([0.0, 50.0, 100.0, 20.0]),
        scale=np.array([1.0, 0.8, 1.2, 1.0]),
    )
    ours = compute_ctf(CTFParams.from_arrays(**p), BOX, APIX, dtype=torch.float64).numpy()
    for i in range(n):
        reference = _relion_reference({k: v[i] for k, v in p.items()}, BOX, APIX)
        np.testing.assert_allclose(ours[i], reference, atol=1e-10)
    # CTF(0) = scale · sin(asin w + φ) (= +w without phase plate): low-frequency contrast keeps its sign
    assert ours[:, BOX // 2, BOX // 2] == pytest.approx(p["scale"] * np.sin(np.arcsin(p["amplitude_contrast"])
                                                                              + p["phase_shift_rad"]))


def test_float32_precision_at_high_defocus_and_batch_broadcast():
    p = _params(3, defocus_u_A=[50000.0, 40000.0, 30000.0], defocus_v_A=45000.0, defocus_angle_rad=0.3,
                cs_mm=2.7, amplitude_contrast=0.1)
    ref = compute_ctf(p, 256, 1.0, dtype=torch.float64)
    p32 = p.to(dtype=torch.float32)
    assert (compute_ctf(p32, 256, 1.0) - ref).abs().max() < 1e-5
    # (B, 1) parameters broadcast against H candidate poses
    assert torch.equal(compute_ctf(p[:, None], 256, 1.0)[:, 0], compute_ctf(p, 256, 1.0))
    # per-particle pixel sizes
    per_particle = compute_ctf(p, 64, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), dtype=torch.float64)
    assert torch.allclose(per_particle[1], compute_ctf(p[1:2], 64, 2.0, dtype=torch.float64)[0])


def test_fft_and_hartley_round_trips():
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(3, 10, 10, dtype=torch.float64, generator=gen)
    vol = torch.randn(8, 8, 8, dtype=torch.float64, generator=gen)
    assert torch.allclose(ihartley2_centered(hartley2_centered(img)), img)
    assert torch.allclose(ihartley3_centered(hartley3_centered(vol)), vol)
    assert torch.allclose(hartley_to_fourier(hartley2_centered(img)), fft2_centered(img))
    assert torch.allclose(hartley_to_fourier(hartley3_centered(vol), ndim=3), fft3_centered(vol))
    f = fft2_centered(img)
    assert torch.allclose(mirror_centered(f), f.conj())  # Hermitian symmetry on the centred grid
    # DC at index D//2 and the real-space centre at D//2: a centred delta has a flat spectrum
    delta = torch.zeros(10, 10, dtype=torch.float64)
    delta[5, 5] = 1
    assert torch.allclose(fft2_centered(delta), torch.ones(10, 10, dtype=torch.complex128))
