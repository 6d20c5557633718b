"""Junk among the picks (empty ice, carbon, aggregates): images the current map explains far worse than the rest of
the data are left out of the volume's steps.

An image's score is the share of its whitened power, within the band, that the projection at its best pose
explains: ``1 − L / L₀`` with ``L`` its Gaussian loss there and ``L₀`` the loss of predicting nothing. An image of
ice or carbon is explained by no projection, and an empty pick scores below zero (a projection only adds power).
Scores are compared with those of the images scored so far in the same epoch (the map, the band and the stage change
between epochs): an image more than ``k`` robust standard deviations (1.4826 × the median absolute deviation) below
their median is left out; until enough images of the epoch are scored, the last epoch's cut applies. Ours, not in
either paper: junk in the first epochs shapes the map the poses are then found in (``docs/methods.md``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def explained_share(loss: Tensor, target: Tensor) -> Tensor:
    """Share ``(B,)`` of each image's power that a prediction explains, from its loss ``(B,)`` (``½ mean |Y − Ŷ|²``
    over the band) and the image's whitened spectrum ``target`` ``(B, M)``."""
    return 1 - loss / (0.5 * target.abs().square().mean(-1)).clamp(min=1e-12)


def weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """Mean of ``losses`` ``(B,)`` over the images kept (``weights`` ``(B,)``, 0 or 1); 0 if none is."""
    return (losses * weights).sum() / weights.sum().clamp(min=1)


class OutlierFilter:
    """The per-particle scores of one epoch and the cut (module doc).

    Args:
        n_particles: particles in the data set.
        mads: images scoring more than this many robust standard deviations below the epoch's median are left out
            (0: none is).
        min_scored: images of the epoch scored before its own cut replaces the last epoch's.
    """

    def __init__(self, n_particles: int, mads: float, device: torch.device, min_scored: int = 256):
        self.mads, self.min_scored = mads, min_scored
        self.scores = torch.full((n_particles,), float("nan"), device=device)  # this epoch's; NaN: not yet scored
        self.last = self.scores.clone()  # the last finished epoch's
        self.cut = torch.tensor(float("-inf"), device=device)
        self.counts = torch.zeros(2, device=device)  # images left out, and scored, this epoch
        self._scored = 0  # images scored in this epoch by this process
        self._cut_at = 0  # ... when the cut was last computed

    def weights(self, index: Tensor, loss: Tensor, target: Tensor) -> Tensor:
        """Weights ``(B,)`` (1: kept, 0: left out) of the images ``index`` ``(B,)`` whose loss at their best pose is
        ``loss`` ``(B,)``, for whitened spectra ``target`` ``(B, M)``; records their scores."""
        score = explained_share(loss.detach(), target)
        self.scores[index] = score
        self._scored += len(index)
        if self.mads > 0 and self._scored >= max(self.min_scored, 1.05 * self._cut_at):  # not every step: O(N)
            scored = self.scores[~torch.isnan(self.scores)]
            median = scored.median()
            self.cut = median - self.mads * 1.4826 * (scored - median).abs().median()
            self._cut_at = self._scored
        keep = (score >= self.cut).to(loss.dtype)
        self.counts += torch.stack([(1 - keep).sum(), keep.new_tensor(float(len(keep)))])
        return keep

    def end_epoch(self) -> dict[str, float]:
        """Close the epoch (after its rows and counts are merged across ranks); returns the share of its images
        that were left out."""
        share = round(float(self.counts[0] / self.counts[1].clamp(min=1)), 4)
        self.last.copy_(self.scores)
        self.scores.fill_(float("nan"))
        self.counts.zero_()
        self._scored = self._cut_at = 0
        return {"left_out": share}

    def kept(self) -> np.ndarray:
        """Boolean ``(N,)``: the particles at or above the cut by their score in the last finished epoch (unscored
        ones are kept)."""
        return (~(self.last < self.cut)).cpu().numpy()

    def state_dict(self) -> dict:
        return {"scores": self.scores, "last": self.last, "cut": self.cut, "counts": self.counts,
                "scored": self._scored, "cut_at": self._cut_at}

    def load_state_dict(self, state: dict) -> None:
        for name in ("scores", "last", "cut", "counts"):
            getattr(self, name).copy_(state[name])
        self._scored, self._cut_at = state["scored"], state["cut_at"]
