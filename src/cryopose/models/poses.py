"""Per-particle pose table for auto-decoding, with a per-particle Adam optimiser.

Each particle ``i`` has a base rotation ``R0_i`` and an axis-angle perturbation ``ω_i``: ``R_i = Exp(ω_i)·R0_i``
(cryoSPIN eq. 9; ``Exp`` is roma's rotation-vector map, stable at ``ω = 0``), plus an in-plane shift in Å.
Only the rows of a batch are updated; every particle keeps its own Adam moments and step count, so rows that
are not in the batch do not move (a dense Adam would keep moving them with stale momentum).
"""

from __future__ import annotations

import roma
import torch
from torch import Tensor, nn


class PoseTable(nn.Module):
    """Poses of ``n`` particles (buffers ``base`` ``(N, 3, 3)``, ``rotvec`` ``(N, 3)``, ``shift`` ``(N, 2)`` Å).

    A step works on a batch only: :meth:`leaves` copies the batch rows into fresh leaf tensors, the loss is
    built with :meth:`compose`, and :class:`RowAdam` writes the update back into those rows — no ``(N, ...)``
    gradient is ever allocated.
    """

    def __init__(self, base_rotations: Tensor, shifts_A: Tensor | None = None):
        super().__init__()
        n = base_rotations.shape[0]
        self.register_buffer("base", base_rotations.detach().clone().float())
        self.register_buffer("rotvec", torch.zeros(n, 3, device=base_rotations.device))
        self.register_buffer("shift", torch.zeros(n, 2, device=base_rotations.device) if shifts_A is None
                             else shifts_A.detach().clone().float())

    def __len__(self) -> int:
        return self.base.shape[0]

    def leaves(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Batch rows ``(ω (B, 3), shift (B, 2))`` as new leaves that require gradients."""
        return (self.rotvec[index].clone().requires_grad_(True), self.shift[index].clone().requires_grad_(True))

    def compose(self, rotvec: Tensor, index: Tensor) -> Tensor:
        """``Exp(ω)·R0`` ``(B, 3, 3)`` for batch rows ``index`` and their perturbations ``rotvec``."""
        return roma.rotvec_to_rotmat(rotvec) @ self.base[index]

    @torch.no_grad()
    def all_rotations(self) -> Tensor:
        """``(N, 3, 3)`` current rotations of every particle."""
        return roma.rotvec_to_rotmat(self.rotvec) @ self.base


class RowAdam:
    """Adam on selected rows of ``(N, ...)`` tensors with per-row moments and per-row step counts.

    ``step(index, grads)`` updates only the rows ``index`` (unique) of each tensor with the batch gradients
    ``grads[k]`` ``(B, ...)`` — rows outside the batch keep both their values and their moments. ``lr``: one
    learning rate, or one per tensor (e.g. radians for rotations, Å for shifts).
    """

    def __init__(self, params: list[Tensor], lr: float | list[float] = 0.05,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps = list(params), betas, eps
        self.lr = list(lr) if isinstance(lr, (list, tuple)) else [lr] * len(self.params)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros(self.params[0].shape[0], dtype=torch.long, device=self.params[0].device)

    @torch.no_grad()
    def step(self, index: Tensor, grads: list[Tensor | None]) -> None:
        b1, b2 = self.betas
        self.steps[index] += 1
        t = self.steps[index].to(self.params[0].dtype)
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        for p, m, v, g, lr in zip(self.params, self.exp_avg, self.exp_avg_sq, grads, self.lr):
            if g is None:
                continue
            shape = (-1,) + (1,) * (g.ndim - 1)
            m_i = m[index].mul_(b1).add_(g, alpha=1 - b1)
            v_i = v[index].mul_(b2).addcmul_(g, g, value=1 - b2)
            m[index], v[index] = m_i, v_i
            denom = (v_i / bc2.view(shape)).sqrt_().add_(self.eps)
            p[index] -= lr * (m_i / bc1.view(shape)) / denom

    @torch.no_grad()
    def reset(self, index: Tensor) -> None:
        """Forget the moments and step counts of rows ``index`` (their parameters were replaced)."""
        for m in self.exp_avg + self.exp_avg_sq:
            m[index] = 0
        self.steps[index] = 0

    def state_dict(self) -> dict:
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": self.steps, "lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        for dst, src in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            dst.copy_(src)
        self.steps.copy_(state["steps"])
        self.lr = state["lr"] if isinstance(state["lr"], list) else [state["lr"]] * len(self.params)
