"""Per-particle pose table and its row-wise Adam (cryoSPIN's auto-decoding stage)."""

from __future__ import annotations

import math

import roma
import torch

from cryopose.models.poses import PoseTable, RowAdam


def test_row_adam_moves_only_the_batch_rows_and_converges():
    torch.manual_seed(0)
    n = 12
    target = roma.special_procrustes(roma.random_rotmat(n).double()).float()
    table = PoseTable(roma.special_procrustes(roma.random_rotmat(n).double()).float(), torch.randn(n, 2))
    adam = RowAdam([table.rotvec, table.shift], lr=0.05)
    batch = torch.tensor([1, 4, 7])
    others = torch.tensor([i for i in range(n) if i not in batch.tolist()])
    before_rot, before_shift = table.all_rotations().clone(), table.shift.clone()
    for _ in range(300):
        rotvec, shift = table.leaves(batch)
        loss = ((table.compose(rotvec, batch) - target[batch]) ** 2).sum() + (shift**2).sum()
        adam.step(batch, list(torch.autograd.grad(loss, [rotvec, shift])))
    err = roma.rotmat_geodesic_distance(table.all_rotations()[batch], target[batch])
    assert math.degrees(float(err.max())) < 0.05
    assert float(table.shift[batch].abs().max()) < 1e-3
    torch.testing.assert_close(table.all_rotations()[others], before_rot[others])
    torch.testing.assert_close(table.shift[others], before_shift[others])
    assert adam.steps[batch].tolist() == [300] * 3 and int(adam.steps[others].sum()) == 0
    assert float(adam.exp_avg[0][others].abs().sum()) == 0.0


def test_rotation_vector_gradient_is_exact_at_zero():
    """d Exp(ω) / dω at ω = 0 is the generator [e_k]×: finite and exact (no 0/0 at the identity)."""
    omega = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    for k in range(3):
        generator = torch.zeros(3, 3, dtype=torch.float64)
        i, j = [(1, 2), (2, 0), (0, 1)][k]
        generator[i, j], generator[j, i] = -1.0, 1.0
        (grad,) = torch.autograd.grad((roma.rotvec_to_rotmat(omega)[0] * generator).sum(), omega)
        expected = torch.zeros(3, dtype=torch.float64)
        expected[k] = 2.0
        torch.testing.assert_close(grad[0], expected)


def test_row_adam_learning_rate_per_tensor_and_reset_of_replaced_rows():
    """Shifts (Å) and rotations (radians) take their own step sizes: Adam's first step moves each entry by its
    tensor's rate. ``reset`` forgets the moments of rows whose pose was replaced."""
    table = PoseTable(torch.eye(3).repeat(4, 1, 1), torch.zeros(4, 2))
    adam = RowAdam([table.rotvec, table.shift], lr=[0.05, 0.6])
    rows = torch.tensor([0, 2])
    adam.step(rows, [torch.ones(2, 3), -torch.ones(2, 2)])
    torch.testing.assert_close(table.rotvec[rows], torch.full((2, 3), -0.05))
    torch.testing.assert_close(table.shift[rows], torch.full((2, 2), 0.6))
    adam.reset(torch.tensor([2]))
    assert adam.steps.tolist() == [1, 0, 0, 0]
    assert float(adam.exp_avg[1][2].abs().sum()) == 0.0 and float(adam.exp_avg_sq[0][2].abs().sum()) == 0.0
    assert float(adam.exp_avg[1][0].abs().sum()) > 0  # the other row keeps its moments
