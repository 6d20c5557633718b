"""Semi-amortized ab initio reconstruction (cryoSPIN; DESIGN §4).

Stage ``amortized`` (epochs < ``switch_epoch``): a multi-head encoder proposes H poses per image; all B·H are
rendered in one call (slice → CTF → shift) from the explicit Hartley volume and the winner-takes-all loss
``min_h L(y, ŷ_h)`` trains encoder and volume. Stage ``direct``: each particle starts from the pose of its best
head (as last evaluated, in the final amortized epoch) and its axis-angle perturbation and shift are optimised
with a per-particle Adam (``pose_steps`` steps), then the volume takes one step, for every batch.

Stage ``marginal`` (the first ``marginal_epochs`` epochs after the switch; ours, not in the paper): each image is
marginalised over the rotations of grid level ``marginal_level`` instead: every rotation is scored under the current
map within the band (held at ``resolution_start_A`` through them), and the volume steps on the loss weighted by the
posterior of the ``marginal_keep`` most probable ones (RELION's soft assignment, as its initial model does). With
shifts the images are also marginalised over a grid of shifts around each particle's own (from the picked centre at
first), so that a shift can move by a pixel an epoch; a particle's pose is its most probable (rotation, shift).
Hard assignment from a map that knows nothing cannot start where a low-resolution map holds little pose information
(small, globular particles at SNR 0.1; ``docs/methods.md``).

In every stage the images that the current map explains far worse than the rest of the epoch's (junk: empty picks,
ice, carbon) are left out of the volume's step (``outlier_mads``, :mod:`cryopose.methods.outliers`; ours), and the
steps after training leave out the particles left out in the last epoch.

The loss band is held at ``resolution_start_A`` (default 20 Å) through stage 1 and widens to Nyquist over the
``band_ramp_epochs`` epochs after the switch (after the marginal epochs). Not in the paper, whose reference code fits
unwhitened spectra (low frequencies dominate its loss); on whitened spectra every coefficient counts alike, and an
encoder trained on the whole band learns nothing, even under the true map (``docs/methods.md``).

In the epochs listed in ``search_epochs`` (counted from the switch, 0 = the first epoch after it; not in the paper,
and not in marginal epochs) each particle, the first time it is seen in the epoch, is also searched globally on the
Hopf grid under the current map (:func:`cryopose.methods.beam_search.beam_search` without its gradient steps, from
the 576 cells of level 1 scored up to ``search_resolution_A``, shifts searched locally around the particle's own)
and keeps whichever of its current pose and the searched one fits its image better: poses far from the right basin
cannot be repaired by local pose steps. By default 6 marginal epochs follow the switch, then the search runs every
other epoch until 20 epochs after it, with batches of 8: at SNR 0.1 the encoder's poses are random
(``docs/methods.md``), and map and poses bootstrap each other only when the map takes many steps between searches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..geometry.so3_grid import cell_quaternions, quaternion_to_matrix
from ..models.poses import PoseTable, RowAdam
from .autoencoder import EncoderDecoder
from .beam_search import BeamSearchConfig, beam_search, shift_grid
from .config import SemiAmortizedConfig
from .outliers import OutlierFilter, weighted_mean


class SemiAmortized(EncoderDecoder):
    """The cryoSPIN method for :func:`cryopose.train.loop.train` (see module docstring).

    Args:
        cfg: settings.
        n_particles: number of particles; the other arguments as :class:`EncoderDecoder`.
    """

    def __init__(self, cfg: SemiAmortizedConfig, n_particles: int, box: int, pixel_size_A: float,
                 noise_sigma: float | Tensor, device: torch.device, seed: int = 0, init_rms: float | Tensor = 1e-2):
        super().__init__(cfg, cfg.heads, box, pixel_size_A, noise_sigma, device, seed, init_rms)
        self.best_rotations = torch.eye(3, device=device).repeat(n_particles, 1, 1)
        self.best_shifts = torch.zeros(n_particles, 2, device=device)
        self.searched_at = torch.full((n_particles,), -1, dtype=torch.long, device=device)  # epoch, −1: never
        self.epoch = 0
        self.wins = torch.zeros(cfg.heads, dtype=torch.long, device=device)
        self.top_weight = torch.zeros(2, device=device)  # summed posterior of the best rotation, and images
        self.search_counts = torch.zeros(2, device=device)  # particles searched, and those whose pose it replaced
        self.grid = quaternion_to_matrix(cell_quaternions(cfg.marginal_level, device=device)) \
            if cfg.marginal_epochs else None  # (C, 3, 3) rotations marginalised over
        self.table: PoseTable | None = None
        self.opt_pose: RowAdam | None = None
        self.outliers = OutlierFilter(n_particles, cfg.outlier_mads, device)

    # -------------------------------------------------------------------------------------------- loop hooks
    def stage(self, epoch: int) -> str:
        if epoch < self.cfg.switch_epoch:
            return "amortized"
        return "marginal" if epoch < self.cfg.switch_epoch + self.cfg.marginal_epochs else "direct"

    def begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.set_band(epoch, self.cfg.band_ramp_epochs, hold_epochs=self.cfg.switch_epoch + self.cfg.marginal_epochs)
        if self.stage(epoch) != "amortized" and self.table is None:
            self.switch()

    def switch(self) -> None:
        """Start auto-decoding: per-particle poses from the best heads, a new pose optimiser, lower decoder lr.
        Marginal epochs replace the encoder's poses, so its shifts too: they start at the picked centres (zero)."""
        shifts = torch.zeros_like(self.best_shifts) if self.cfg.marginal_epochs else self.best_shifts
        self.table = PoseTable(self.best_rotations, shifts).to(self.device)
        self.opt_pose = RowAdam([self.table.rotvec, self.table.shift],
                                lr=[self.cfg.lr_pose, self.cfg.lr_shift_px * self.apix])
        self.set_lr(self.cfg.lr_decoder_direct)

    def step(self, batch: dict) -> dict[str, float]:
        target = self.target(batch["images"])
        if self.table is None:
            return self._amortized_step(batch, target)
        if self.stage(self.epoch) == "marginal":
            return self._marginal_step(batch, target)
        return self._direct_step(batch, target)

    def _amortized_step(self, batch: dict, target: Tensor) -> dict[str, float]:
        rotations, shifts = self.encode(batch["images"])
        losses = self.pose_loss(rotations, shifts, batch, target, self.field())  # (B, H)
        best, winner = losses.min(dim=1)
        index = batch["index"].to(self.device)
        loss = weighted_mean(best, self.outliers.weights(index, best, target))
        self.opt_encoder.zero_grad(set_to_none=True)
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_encoder.step()
        self.opt_volume.step()
        rows = torch.arange(len(winner), device=self.device)
        with torch.no_grad():
            self.best_rotations[index] = rotations[rows, winner].detach()
            if shifts is not None:
                self.best_shifts[index] = shifts[rows, winner].detach()
            self.wins += torch.bincount(winner, minlength=self.cfg.heads)
        return {"loss": loss.item()}

    def searching(self) -> bool:
        """Whether the current epoch is one of ``search_epochs``."""
        return self.table is not None and self.epoch - self.cfg.switch_epoch in self.cfg.search_epochs

    @torch.no_grad()
    def search(self, batch: dict, target: Tensor, index: Tensor, volume: Tensor) -> None:
        """Global search for the batch (module doc); each particle keeps the better of it and its current pose."""
        own = self.table.shift[index] if self.cfg.shifts else None  # (B, 2) Å: the search starts from them

        def cost(rotations: Tensor, radius: float | None = None, shifts: Tensor | None = None) -> Tensor:
            at = own[:, None] if shifts is None and own is not None else shifts
            return self.pose_loss(rotations, at, batch, target, volume, radius)

        search = BeamSearchConfig(self.cfg.search_width, self.cfg.search_depth, gd_steps=0, start_level=1,
                                  start_radius=self.radius_at(self.cfg.search_resolution_A),
                                  shift_step=self.apix, shift_limit=self.encoder.max_shift_A)
        current = self.table.compose(self.table.rotvec[index], index)
        rotations, found, _ = beam_search(cost, len(index), search, device=self.device, incumbent=current,
                                          shifts=own)
        replaced = (rotations - current).abs().amax((1, 2)) > 1e-6
        if found is not None:
            replaced |= (found != own).any(1)
            self.table.shift[index] = found
        self.table.base[index], self.table.rotvec[index] = rotations, 0.0
        self.opt_pose.reset(index[replaced])  # the moments of a pose the particle left
        self.searched_at[index] = self.epoch
        self.search_counts[0] += len(index)
        self.search_counts[1] += replaced.sum()

    def _marginal_step(self, batch: dict, target: Tensor) -> dict[str, float]:
        """Volume step on the posterior-weighted loss over the grid's rotations and the shifts near each particle's
        own (module doc)."""
        index = batch["index"].to(self.device)
        with torch.no_grad():
            volume = self.volume.hartley()
            candidates = self._marginal_shifts(index)  # (B, S, 2) Å or None
            costs = self.shared_pose_loss(self.grid, candidates, batch, target, volume).flatten(1)  # (B, C · S)
            # the Gaussian loss averages ½|Y − Ŷ|² over the M coefficients of the disc, each independent one twice (Y
            # is Hermitian): the log-likelihood in nats is −M · loss
            top = (-costs * len(self.mask_index)).topk(self.cfg.marginal_keep, dim=1)  # of the (C · S) poses
            weights = torch.softmax(top.values, 1)  # (B, K) posterior over the kept poses
            n_shifts = 1 if candidates is None else candidates.shape[1]
            rotations = self.grid[top.indices // n_shifts]  # (B, K, 3, 3)
            shifts = None if candidates is None else candidates.gather(
                1, (top.indices % n_shifts)[..., None].expand(-1, -1, 2))  # (B, K, 2)
        keep = self.outliers.weights(index, costs.min(1).values, target)  # scored at the most probable pose
        loss = weighted_mean((self.pose_loss(rotations, shifts, batch, target, self.field()) * weights).sum(1), keep)
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_volume.step()
        with torch.no_grad():
            self.table.base[index], self.table.rotvec[index] = rotations[:, 0], 0.0
            if shifts is not None:
                self.table.shift[index] = shifts[:, 0]
            self.opt_pose.reset(index)
            self.top_weight += torch.stack([weights[:, 0].sum(), weights.new_full((), len(index))])
        return {"loss": loss.item()}

    def _marginal_shifts(self, index: Tensor) -> Tensor | None:
        """Shifts ``(B, S, 2)`` Å a marginal step weighs for each particle: a ``(2·span + 1)²`` grid of 1 px steps
        around its own, within the largest shift; None without shift estimation."""
        if not self.cfg.shifts:
            return None
        return shift_grid(self.table.shift[index], self.apix, self.cfg.marginal_shift_span, self.encoder.max_shift_A)

    def _direct_step(self, batch: dict, target: Tensor) -> dict[str, float]:
        index = batch["index"].to(self.device)
        volume = self.volume.hartley().detach()
        if self.searching() and bool((self.searched_at[index] < self.epoch).any()):
            self.search(batch, target, index, volume)
        for _ in range(self.cfg.pose_steps):
            rotvec, shift = self.table.leaves(index)
            rotations = self.table.compose(rotvec, index)[:, None]
            losses = self.pose_loss(rotations, shift[:, None] if self.cfg.shifts else None, batch, target, volume)
            grads = torch.autograd.grad(losses.sum(), [rotvec, shift], allow_unused=True)
            self.opt_pose.step(index, [grads[0], grads[1] if self.cfg.shifts else None])
        with torch.no_grad():
            rotations = self.table.compose(self.table.rotvec[index], index)[:, None]
            shifts = self.table.shift[index][:, None] if self.cfg.shifts else None
        losses = self.pose_loss(rotations, shifts, batch, target, self.field())[:, 0]
        loss = weighted_mean(losses, self.outliers.weights(index, losses, target))
        self.opt_volume.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_volume.step()
        return {"loss": loss.item()}

    def end_epoch(self, epoch: int) -> dict[str, float]:
        left_out = self.outliers.end_epoch()
        if self.stage(epoch) == "marginal":  # how soft the assignment was: 1 is hard
            share = float(self.top_weight[0] / self.top_weight[1].clamp(min=1))
            self.top_weight.zero_()
            return {"top_posterior": round(share, 4), **left_out}
        if self.stage(epoch) != "amortized":  # the share of the particles searched whose pose the search replaced
            searched, replaced = self.search_counts.tolist()
            self.search_counts.zero_()
            return {"search_replaced": round(replaced / searched, 4), **left_out} if searched else left_out
        share = (self.wins.float() / self.wins.sum().clamp(min=1)).tolist()
        self.wins.zero_()  # here, not in begin_epoch: a run resumed mid-epoch keeps the wins counted before
        return {"head_share": [round(s, 4) for s in share], **left_out}

    def kept(self) -> np.ndarray:
        """Boolean ``(N,)``: the particles kept by the outlier filter in the last epoch (the others are junk)."""
        return self.outliers.kept()

    # ---------------------------------------------------------------------------------------------- results
    @torch.no_grad()
    def poses(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Current rotations ``(N, 3, 3)`` and shifts ``(N, 2)`` Å (None without shift estimation)."""
        if self.table is None:
            rotations, shifts = self.best_rotations, self.best_shifts
        else:
            rotations, shifts = self.table.all_rotations(), self.table.shift
        return rotations.cpu().double().numpy(), (shifts.cpu().double().numpy() if self.cfg.shifts else None)

    def particle_state(self) -> list[Tensor]:
        """Every ``(N, ...)`` tensor a step updates by particle (merged across ranks in distributed runs)."""
        rows = [self.best_rotations, self.best_shifts, self.searched_at, self.outliers.scores]
        if self.table is not None:
            rows += [self.table.base, self.table.rotvec, self.table.shift, *self.opt_pose.exp_avg,
                     *self.opt_pose.exp_avg_sq, self.opt_pose.steps]
        return rows

    def counters(self) -> list[Tensor]:
        return [self.wins, self.top_weight, self.search_counts, self.outliers.counts]

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best_rotations": self.best_rotations, "best_shifts": self.best_shifts,
                "wins": self.wins, "top_weight": self.top_weight, "search_counts": self.search_counts,
                "searched_at": self.searched_at, "outliers": self.outliers.state_dict(),
                "table": None if self.table is None else self.table.state_dict(),
                "opt_pose": None if self.opt_pose is None else self.opt_pose.state_dict()}

    @staticmethod
    def particles_in(state: dict) -> int:
        """The number of particles of a run whose :meth:`state_dict` is ``state``."""
        return len(state["best_rotations"])

    def load_state_dict(self, state: dict) -> None:
        self.best_rotations.copy_(state["best_rotations"])
        self.best_shifts.copy_(state["best_shifts"])
        self.searched_at.copy_(state["searched_at"])
        self.wins.copy_(state["wins"])
        self.top_weight.copy_(state.get("top_weight", torch.zeros(2)))  # checkpoints from before marginal epochs
        self.search_counts.copy_(state.get("search_counts", torch.zeros(2)))  # and before this count
        if "outliers" in state:  # and before the outlier filter
            self.outliers.load_state_dict(state["outliers"])
        if state["table"] is not None:
            self.switch()
            self.table.load_state_dict(state["table"])
            self.opt_pose.load_state_dict(state["opt_pose"])
        super().load_state_dict(state)  # after the switch, which resets the decoder's learning rate
