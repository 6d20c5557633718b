"""Pose encoder: Gaussian pyramid, 6D rotation map, shapes, per-head gradients, a toy training task."""

from __future__ import annotations

import math

import pytest
import roma
import torch

from cryopose.models.encoder import PoseEncoder, gaussian_pyramid, rotation_from_6d


@pytest.fixture(autouse=True)
def _one_thread():
    """Run single-threaded: with the 2 cores shared, OpenMP's spinning threads slow these small ops ~5×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _orthonormal(r: torch.Tensor, tol: float = 1e-5) -> bool:
    eye = torch.eye(3, dtype=r.dtype).expand_as(r)
    return bool(torch.allclose(r.transpose(-1, -2) @ r, eye, atol=tol)
                and torch.allclose(torch.linalg.det(r), torch.ones(r.shape[:-2], dtype=r.dtype), atol=tol))


def test_pyramid_keeps_image_and_whitens_noise():
    torch.manual_seed(0)
    noise = torch.randn(400, 32, 32, dtype=torch.float64)
    pyramid = gaussian_pyramid(noise)
    assert pyramid.shape == (400, 4, 32, 32)
    torch.testing.assert_close(pyramid[:, 0], noise)
    torch.testing.assert_close(pyramid.var(dim=(0, 2, 3)), torch.ones(4, dtype=torch.float64), atol=0.03, rtol=0)


def test_pyramid_blur_has_the_requested_width():
    delta = torch.zeros(1, 64, 64, dtype=torch.float64)
    delta[0, 32, 32] = 1
    blurred = gaussian_pyramid(delta, sigmas=(2,))[0, 0]
    y = torch.arange(64, dtype=torch.float64) - 32
    weight = blurred / blurred.sum()
    assert float((weight.sum(1) * y ** 2).sum()) == pytest.approx(4.0, rel=1e-6)  # variance σ² along y


def test_pyramid_cached_in_inference_mode_still_differentiable():
    with torch.inference_mode():
        gaussian_pyramid(torch.randn(1, 24, 24))  # fills the filter cache for this box
    images = torch.randn(1, 24, 24, requires_grad=True)
    gaussian_pyramid(images).sum().backward()
    assert images.grad is not None


def test_6d_map_is_cryospin_appendix_a_and_s2s2():
    torch.manual_seed(0)
    x = torch.randn(100, 6, dtype=torch.float64)
    r = rotation_from_6d(x)
    assert _orthonormal(r, 1e-10)
    # cryoSPIN Appendix A: normalise both, c = a×b (normalised), a and c are columns 1 and 3, b' = c×a.
    a = torch.nn.functional.normalize(x[:, :3], dim=-1)
    b = torch.nn.functional.normalize(x[:, 3:], dim=-1)
    c = torch.nn.functional.normalize(torch.cross(a, b, dim=-1), dim=-1)
    torch.testing.assert_close(r, torch.stack([a, torch.cross(c, a, dim=-1), c], dim=-1))
    # S2S2 (Cryo2SSNet A.1): project v_y orthogonal to v_x, normalise both, third = cross product.
    vy = x[:, 3:] - (a * x[:, 3:]).sum(-1, keepdim=True) * a
    vy = torch.nn.functional.normalize(vy, dim=-1)
    torch.testing.assert_close(r, torch.stack([a, vy, torch.cross(a, vy, dim=-1)], dim=-1))


def test_6d_map_reaches_a_target_rotation():
    torch.manual_seed(1)
    target = roma.random_rotmat(dtype=torch.float64)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        ((rotation_from_6d(x) - target) ** 2).sum().backward()
        opt.step()
    with torch.no_grad():
        assert math.degrees(float(roma.rotmat_geodesic_distance(rotation_from_6d(x), target))) < 0.1


@pytest.mark.parametrize("backbone", ["light", "paper", "small"])
@pytest.mark.parametrize("heads", [1, 7])
def test_shapes_and_rotations(backbone, heads):
    torch.manual_seed(0)
    encoder = PoseEncoder(16, heads=heads, backbone=backbone, predict_shifts=True, pixel_size_A=2.0)
    rotations, shifts = encoder(torch.randn(2, 16, 16))
    assert rotations.shape == (2, heads, 3, 3) and shifts.shape == (2, heads, 2)
    assert _orthonormal(rotations)
    assert torch.all(shifts == 0)  # shifts start centred
    rotations, shifts = PoseEncoder(16, heads=heads, backbone=backbone)(torch.randn(2, 16, 16))
    assert rotations.shape == (2, heads, 3, 3) and shifts is None


def test_shifts_bounded_and_heads_distinct():
    torch.manual_seed(0)
    encoder = PoseEncoder(32, heads=7, predict_shifts=True, pixel_size_A=2.0)
    assert encoder.max_shift_A == 16.0  # a quarter of the 64 Å box
    with torch.no_grad():
        encoder.head_out.weight.normal_(0, 100)
    rotations, shifts = encoder(torch.randn(4, 32, 32))
    assert shifts.abs().max() <= 16.0 and shifts.abs().max() > 1.0
    angles = roma.rotmat_geodesic_distance(rotations[:, :, None], rotations[:, None, :])
    assert angles[:, ~torch.eye(7, dtype=torch.bool)].min() > 1e-3  # heads start at different rotations


def test_per_image_input_norm_ignores_each_images_offset_and_scale():
    # the cryoSPIN reference code standardises each pyramid channel per image; the data-set norm does not
    torch.manual_seed(0)
    images = torch.randn(4, 32, 32)
    scale, offset = torch.tensor([3.0, 0.5, 1.0, 10.0]), torch.tensor([1.0, -2.0, 0.0, 5.0])
    changed = images * scale[:, None, None] + offset[:, None, None]
    for norm, same in (("image", True), ("dataset", False)):
        torch.manual_seed(1)
        encoder = PoseEncoder(32, heads=2, input_norm=norm).eval()
        with torch.no_grad():
            close = torch.allclose(encoder(images)[0], encoder(changed)[0], atol=1e-4)
        assert close is same, norm


def test_eval_batch_of_one_matches_batch():
    torch.manual_seed(0)
    encoder = PoseEncoder(32, heads=3, predict_shifts=True)
    images = torch.randn(4, 32, 32)
    with torch.no_grad():
        encoder(images)  # update BatchNorm's running statistics
        encoder.eval()
        batch, _ = encoder(images)
        single, _ = encoder(images[2:3])
    torch.testing.assert_close(single[0], batch[2], atol=1e-5, rtol=0)


def test_training_batch_of_one_uses_running_statistics():
    """The heads' BatchNorm cannot take batch statistics from one image (an epoch's last batch may be one)."""
    from cryopose.models.encoder import _HeadNorm

    torch.manual_seed(0)
    norm = _HeadNorm(6)
    norm(torch.randn(8, 6) * 3 + 1)  # training: batch statistics, running statistics updated
    mean, var = norm.running_mean.clone(), norm.running_var.clone()
    x = torch.randn(1, 6)
    torch.testing.assert_close(norm(x), (x - mean) / torch.sqrt(var + norm.eps))
    assert torch.equal(norm.running_mean, mean)  # a batch of one leaves the running statistics alone
    encoder = PoseEncoder(32, heads=3)
    rotations, _ = encoder(torch.randn(1, 32, 32))  # training mode, one image
    rotations.sum().backward()
    assert encoder.head_layers[0].weight.grad.abs().sum() > 0


def _head_grad_norms(encoder: PoseEncoder) -> torch.Tensor:
    """Gradient norm per head ``(H,)`` over all head parameters."""
    layers = [*encoder.head_layers, encoder.head_out]
    return sum(layer.weight.grad.flatten(1).norm(dim=1) + layer.bias.grad.norm(dim=1) for layer in layers)


def test_gradients_reach_all_heads_or_only_winners():
    torch.manual_seed(0)
    encoder = PoseEncoder(32, heads=7, predict_shifts=True)
    images, target = torch.randn(2, 32, 32), roma.random_rotmat(2)
    rotations, shifts = encoder(images)
    losses = ((rotations - target[:, None]) ** 2).sum((-1, -2)) + (shifts ** 2).sum(-1)  # (B, H)
    losses.mean().backward()
    assert torch.all(_head_grad_norms(encoder) > 0)

    encoder.zero_grad()
    rotations, shifts = encoder(images)
    losses = ((rotations - target[:, None]) ** 2).sum((-1, -2)) + (shifts ** 2).sum(-1)
    best, winner = losses.min(dim=1)
    best.mean().backward()
    won = torch.zeros(7, dtype=torch.bool)
    won[winner] = True
    norms = _head_grad_norms(encoder)
    assert torch.all(norms[won] > 0) and torch.all(norms[~won] == 0)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.backbone.parameters())


def _rotated_pattern(angles: torch.Tensor, box: int = 32) -> torch.Tensor:
    """Asymmetric pattern of three Gaussian blobs rotated in-plane by ``angles`` (radians) -> ``(B, D, D)``."""
    centres = torch.tensor([[6.0, 0.0], [-3.0, 4.0], [-3.0, -7.0]])
    amplitudes = torch.tensor([1.0, 0.6, 0.3])
    cos, sin = torch.cos(angles)[:, None], torch.sin(angles)[:, None]
    cx = cos * centres[:, 0] - sin * centres[:, 1]  # (B, 3)
    cy = sin * centres[:, 0] + cos * centres[:, 1]
    grid = torch.arange(box, dtype=torch.float32) - box // 2
    dx = grid[None, None, None, :] - cx[:, :, None, None]
    dy = grid[None, None, :, None] - cy[:, :, None, None]
    return (amplitudes[None, :, None, None] * torch.exp(-(dx ** 2 + dy ** 2) / 8)).sum(1)


def test_encoder_learns_in_plane_angle():
    torch.manual_seed(0)
    encoder = PoseEncoder(32, heads=1, backbone="light")
    optimiser = torch.optim.Adam(encoder.parameters(), lr=1e-3)  # cryoSPIN's 1e-4 is too slow for 80 steps
    axis = torch.tensor([0.0, 0.0, 1.0])

    def error_deg(angles: torch.Tensor) -> float:
        with torch.no_grad():
            predicted, _ = encoder.eval()(_rotated_pattern(angles))
        encoder.train()
        target = roma.rotvec_to_rotmat(angles[:, None] * axis)
        return math.degrees(float(roma.rotmat_geodesic_distance(predicted[:, 0], target).mean()))

    test_angles = torch.rand(64) * 2 * math.pi
    before = error_deg(test_angles)
    for _ in range(60):
        angles = torch.rand(16) * 2 * math.pi
        predicted, _ = encoder(_rotated_pattern(angles))
        target = roma.rotvec_to_rotmat(angles[:, None] * axis)
        loss = ((predicted[:, 0] - target) ** 2).sum((-1, -2)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = error_deg(test_angles)
    assert after < before / 3, (before, after)
