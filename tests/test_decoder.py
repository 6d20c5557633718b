"""The explicit decoder's coarse-to-fine band: loss radius schedule and band-limited map."""

from __future__ import annotations

import pytest
import torch

from cryopose.methods.decoder import ExplicitDecoder
from cryopose.physics.fourier import hartley3_centered, radius_grid


def test_band_grows_from_the_start_resolution_to_nyquist_and_limits_the_map():
    dec = ExplicitDecoder(32, 4.0, 1.0, torch.device("cpu"), lr=1e-2, mantissa_exponent=False, init_rms=1.0,
                          resolution_start_A=32.0)
    assert dec.radius == 16  # before any epoch: the whole band
    dec.set_band(0, ramp_epochs=4)
    assert dec.radius == pytest.approx(4.0)  # 32 px · 4 Å / 32 Å
    count0 = len(dec.mask_index)
    assert count0 == int((radius_grid(32)[16] <= 4.0).sum())  # the pixels of the disc of radius 4
    field = hartley3_centered(dec.density().double())
    assert field[radius_grid(32) > 4.0].abs().max() < 1e-6 * field.abs().max()
    dec.set_band(2, ramp_epochs=4)
    assert dec.radius == pytest.approx(10.0) and len(dec.mask_index) > count0
    dec.set_band(7, ramp_epochs=4)
    assert dec.radius == 16
    whole = ExplicitDecoder(32, 4.0, 1.0, torch.device("cpu"), lr=1e-2, mantissa_exponent=False, init_rms=1.0)
    whole.set_band(0, ramp_epochs=4)
    assert whole.radius == 16 and len(whole.mask_index) == len(dec.mask_index)


def test_band_held_through_stage_1_then_widened_and_restored_from_a_checkpoint():
    """Semi-amortized holds the start band until the switch (the encoder learns nothing under the whole band) and
    through the marginal epochs, then widens it; a checkpoint carries the band, so a resumed finished run writes
    the same map."""
    from cryopose.methods.semi_amortized import SemiAmortized, SemiAmortizedConfig

    cfg = SemiAmortizedConfig(heads=2, switch_epoch=3, marginal_epochs=2, band_ramp_epochs=2, resolution_start_A=32.0,
                              encoder_box=32)
    method = SemiAmortized(cfg, 10, 32, 4.0, 1.0, torch.device("cpu"))
    radii = []
    for epoch in range(8):
        method.begin_epoch(epoch)
        radii.append(method.radius)
    assert radii == pytest.approx([4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 10.0, 16.0])
    method.begin_epoch(6)
    restored = SemiAmortized(cfg, 10, 32, 4.0, 1.0, torch.device("cpu"), seed=1)
    restored.load_state_dict(method.state_dict())
    assert restored.radius == pytest.approx(10.0)
    assert torch.equal(restored.density(), method.density())


@pytest.mark.parametrize("noise", ["white", "shell"])
def test_shared_rotations_scored_by_matrix_products_match_the_rendered_loss(noise):
    """The marginal epochs score every image at the same grid rotations and a few shifts each by matrix products;
    the losses equal those of rendering every (image, rotation, shift) through ``pose_loss``, under one σ and under
    a noise model per shell alike."""
    import roma

    from cryopose.methods.noise import shell_grid
    from cryopose.physics.ctf import CTFParams

    sigma = 1.0 if noise == "white" else shell_grid(1 / (1 + torch.arange(13.0)), 24)
    dec = ExplicitDecoder(24, 3.0, sigma, torch.device("cpu"), lr=1e-2, mantissa_exponent=False, init_rms=1.0,
                          resolution_start_A=12.0)
    dec.set_band(0, ramp_epochs=4)
    gen = torch.Generator().manual_seed(0)
    b, c, s = 3, 5, 4
    ctf = CTFParams(defocus_u_A=torch.tensor([9000.0, 15000, 22000]), defocus_v_A=torch.tensor([8500.0, 14000, 21000]),
                    defocus_angle_rad=torch.tensor([0.1, 0.7, 2.0]), voltage_kV=torch.full((b,), 300.0),
                    cs_mm=torch.full((b,), 2.7), amplitude_contrast=torch.full((b,), 0.1),
                    phase_shift_rad=torch.zeros(b), bfactor_A2=torch.zeros(b), scale=torch.ones(b))
    batch = {"ctf": ctf}
    target = torch.randn(b, len(dec.mask_index), dtype=torch.complex64, generator=gen)
    volume = dec.volume.hartley().detach()
    rotations = roma.random_rotmat(c, generator=gen)
    shifts = torch.randn(b, s, 2, generator=gen) * 4.0
    fast = dec.shared_pose_loss(rotations, shifts, batch, target, volume)
    rendered = dec.pose_loss(rotations[None, :, None], shifts[:, None], batch, target, volume)
    assert fast.shape == rendered.shape == (b, c, s)
    torch.testing.assert_close(fast, rendered, rtol=1e-4, atol=1e-5)
    unshifted = dec.pose_loss(rotations[None], None, batch, target, volume)
    torch.testing.assert_close(dec.shared_pose_loss(rotations, None, batch, target, volume)[..., 0], unshifted,
                               rtol=1e-4, atol=1e-5)
