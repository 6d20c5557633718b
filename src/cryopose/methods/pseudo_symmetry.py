"""Pseudo-symmetry relaxation: each particle takes its pose or its mate under the map's near-symmetry.

A particle made of nearly identical parts (the two chains of 4AKE, the HSP90 dimer) has a map that almost
superposes on itself under a rotation ``S`` (~180°), and an ab initio run settles in a self-consistent blend: about
half of the particles sit at the pose that shows the other part where the true one should be, and the map is the
average of both senses. The data can still tell them apart (on 4AKE 99 % of the particles fit their true pose
better than its mate under the true map), but the blend gives no asymmetric signal to start from.

We detect ``S`` by superposing the map onto itself (:func:`~cryopose.physics.align.near_symmetry`) and, when it
correlates above a threshold, run an expectation-maximisation over {pose, mate} per particle (below for
``n``-folds), in the manner of RELION's ``--relax_sym`` but without a given point group: the even and odd particles
are reconstructed separately, each weighted by the probability of each of its poses, and each is scored against the
map of the *other* half. Without that split a particle's own contribution to the map keeps it where it is and the
blend does not break; with it the asymmetric part of the map grows from the noise, round after round. The halves
take turns (Gauss–Seidel): the even particles are scored against the odd map and their map is rebuilt, then the odd
particles are scored against that. Updating both at once against each other's map of the previous round (Jacobi)
lets regions of views where the halves disagree swap sense every round: with poses a few degrees off, as a run's
are, a quarter of the particles still changed side every round after 40 rounds and the blend persisted. In turns,
the second half meets a map that already follows the first half's sense, and the two settle in one.

Before each scoring both candidate poses (rotation and shift) of a particle take a few Adam steps against the map
they are scored against. A run's poses were refined under the blended map, and scored as they are they hold the
blend: on a 4AKE run with shifts (10,000 images, 64 px, SNR 0.1; 94 % within 10° of the truth or its mate) the EM
settled at 48 % of the truth, whether it started from the run's senses or from an even split, although the true
map picks the true side for 88–90 % of those poses; with each particle put exactly at the truth or its mate, the
same pattern of senses broke to 95 % in 6 rounds. Refined in the EM (3 steps of rotation and shift per candidate
and round, the rate halved every 10 rounds so that the poses settle, scored up to 6 Å) the run's poses reach 82.7 %
of the truth, median 2.05°, 4.06 Å in 31 rounds (13 min on one thread).

An operator of order ``n`` (``n = 360° / angle``: 2 for a two-fold, 3 for a three-fold) gives each particle ``n``
candidates ``R, S R, …, Sⁿ⁻¹ R`` and an ``n``-class EM. A map seen from another sense is the same answer (all
particles turned by one power of ``S``), so in the end the classes are counted from the most chosen one, which moves
the fewest particles; for a two-fold that is "turn everyone when more than half moved", which only holds when
``S² = I``. An exact symmetry (a self-superposition at ``exact_correlation`` or better) is not relaxed: the data
cannot break it, and the group should be imposed instead.

Each half map is weighted shell by shell by the FSC between the two half maps before it scores the other half: the
FSC of independent halves is the share of signal in a shell, so the weighted map is its expected signal (a Wiener
filter) and the noise of its high frequencies does not decide the scoring. On 2CG9 (HSP90; 10,000 images, 64 px,
3 Å/px, SNR 0.1) the unweighted EM still had 1 % of the particles changing side after 50 rounds and left 5.8 % at
their mate (mean error 11.6°); weighted, it settled in 14 rounds with 4.3 % (mean 8.9°, median 1.13°, 6.06 Å).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..io.dataset import ParticleDataset
from ..physics.align import MapAlignment, near_symmetry
from ..progress import progress
from .half_maps import half_map, round_in_turns


@dataclass(frozen=True)
class RelaxConfig:
    """Settings of :func:`relax_pseudo_symmetry`.

    min_correlation: relax only when the map's best self-superposition at least ``exclude_deg`` from the identity
        correlates above this (4AKE's true map 0.91, its blend 0.92) and below ``exact_correlation``, where the
        symmetry is exact (the threshold of :mod:`cryopose.evaluate.symmetry`).
    exclude_deg: rotations closer than this to the identity (degrees) are not symmetries (a smooth map correlates
        well with itself turned a little: 0.77 at 32° for an early 4AKE map).
    rounds: most EM rounds; ``tolerance``: stop when fewer than this share of particles change side in a round.
    refine_steps: Adam steps on both candidate poses (rotation and shift) of every particle, against the map it
        is scored against, before each scoring (0: score the poses as given); ``refine_lr``: their rate in the
        first round (radians; shifts the same at half the box), halved every 10 rounds.
    resolution_A: highest resolution scored and refined (Å; None: Nyquist); the cost of a round scales with the
        number of Fourier pixels inside it.
    batch: images per batch.
    """

    min_correlation: float = 0.8
    exact_correlation: float = 0.97
    exclude_deg: float = 60.0
    rounds: int = 40
    tolerance: float = 0.005
    refine_steps: int = 3
    refine_lr: float = 0.005
    resolution_A: float | None = 6.0
    batch: int = 256


def operator_order(angle_deg: float, largest: int = 6) -> int:
    """The order ``n`` of a turn by ``angle_deg``: the ``n`` (2 to ``largest``) with ``360° / n`` nearest to it."""
    return min(range(2, largest + 1), key=lambda n: abs(360.0 / n - angle_deg))


def relax_pseudo_symmetry(dataset: ParticleDataset, volume: Tensor, rotations: np.ndarray,
                          shifts_A: np.ndarray | None, sigma: float | Tensor, cfg: RelaxConfig = RelaxConfig(),
                          device: torch.device | str = "cpu",
                          keep: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Poses ``(N, 3, 3)`` and origins ``(N, 2)`` (Å) with each particle at the power of the near-symmetry ``S`` of
    ``volume`` ``(D, D, D)`` that the ``n``-class EM prefers, and a record of what was done.

    ``sigma``: noise standard deviation per Fourier coefficient of the images (one number, or a noise model
    ``(D, D)`` of :mod:`cryopose.methods.noise`); ``keep``: boolean ``(N,)``, the particles that enter the half maps
    and the record's figures (default all; junk is left out).
    The poses come back unchanged when the map is not pseudo-symmetric (``min_correlation``) or is exactly
    symmetric (``exact_correlation``; the record's ``exact`` is then true).
    """
    sym: MapAlignment = near_symmetry(volume, voxel_size_A=dataset.pixel_size_A, exclude_deg=cfg.exclude_deg)
    angle = sym.to_dict()["rotation_angle_deg"]
    record = {"symmetry_angle_deg": angle, "symmetry_correlation": sym.correlation,
              "exact": sym.correlation >= cfg.exact_correlation,
              "relaxed": cfg.min_correlation <= sym.correlation < cfg.exact_correlation}
    if not record["relaxed"]:
        return rotations, shifts_A, record
    n = operator_order(angle)
    candidates = [(rotations, shifts_A)]
    for _ in range(n - 1):
        candidates.append(sym.transform_poses(*candidates[-1]))
    poses = [torch.tensor(r, dtype=torch.float32) for r, _ in candidates]  # refined in place
    shifts = None if shifts_A is None else [torch.tensor(s, dtype=torch.float32) for _, s in candidates]
    kept = torch.ones(len(dataset), dtype=torch.bool) if keep is None else torch.as_tensor(keep)
    p = torch.zeros(len(dataset), n)
    p[:, 0] = kept.float()  # start from the run's own poses (a blend is as good as a random split)
    maps = [half_map(dataset, half, poses, shifts, p, cfg.batch, device) for half in (0, 1)]
    bar = progress(range(cfg.rounds), desc="pseudo-symmetry", unit="round")
    for rounds in bar:
        lr = cfg.refine_lr * 0.5 ** (rounds / 10)  # halved every 10 rounds, so that the poses settle
        before = round_in_turns(dataset, maps, poses, shifts, p, sigma, lr, cfg.refine_steps, cfg.resolution_A,
                                cfg.batch, device, keep=kept.float())
        changed = float((p.argmax(1) != before.argmax(1))[kept].double().mean())
        confidence = float(((n * p[kept].amax(1) - 1) / (n - 1)).mean())
        bar.set_postfix(changed=f"{changed:.3f}", confidence=f"{confidence:.2f}")
        if changed < cfg.tolerance:
            break
    chosen = p.argmax(1)
    # the same assignment seen from the sense most particles chose: move the fewest particles
    chosen = (chosen - torch.bincount(chosen[kept], minlength=n).argmax()) % n
    rows = torch.arange(len(dataset))
    rot = torch.stack(poses, 1)[rows, chosen].double().numpy()
    shift = None if shifts is None else torch.stack(shifts, 1)[rows, chosen].double().numpy()
    record.update(order=n, rounds=rounds + 1, last_changed=changed,
                  moved_to_mate=float((chosen != 0)[kept].double().mean()), confidence=confidence)
    return rot, shift, record
