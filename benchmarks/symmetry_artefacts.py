"""Does a map hold the asymmetric part of a pseudo-symmetric truth, or is it a symmetric blend?

    python benchmarks/symmetry_artefacts.py TRUTH.mrc MAP.mrc [MAP.mrc ...]

``S`` is the truth's near-symmetry (:func:`cryopose.physics.align.near_symmetry`, e.g. the 180° turn that swaps
the two protomers of HSP90). Each map is aligned onto the truth (hand included, and of the alignment and its
composition with ``S`` the one that correlates better with the truth) and its asymmetric part
``map − S·map`` is compared with the truth's ``truth − S·truth`` by an FSC. A map averaged over both senses of the
particles has no asymmetric part (its FSC stays near 0 at every shell); a map from the right senses follows the
true-pose backprojection. One line per map: the correlation with the truth, that of the asymmetric parts, the FSC-0.5
resolution of the asymmetric parts and their mean FSC, both from shell 2 on (shell 1 is a few voxels).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from cryopose.io.mrc import read_map
from cryopose.physics.align import align_maps, near_symmetry
from cryopose.physics.fsc import fsc, fsc_resolution


def _correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("truth", help="the true map (pseudo-symmetric)")
    parser.add_argument("maps", nargs="+", help="maps to test, same box and voxel size as the truth")
    args = parser.parse_args()
    reference = read_map(args.truth)
    apix = reference.voxel_size_A
    truth = torch.tensor(reference.cubic())
    sym = near_symmetry(truth, voxel_size_A=apix)
    truth_asym = truth - sym.apply(truth)
    print(f"{args.truth}: superposes on itself turned {sym.to_dict()['rotation_angle_deg']:.1f}° with correlation "
          f"{sym.correlation:.3f}; the asymmetric part holds {float(truth_asym.var() / truth.var()):.1%} "
          "of the variance")
    for path in args.maps:
        volume, _ = align_maps(torch.tensor(np.array(read_map(path).cubic())), truth, voxel_size_A=apix)
        # the coarse search cannot tell the map's two senses apart (both fit the symmetric part): keep the better
        volume = max((volume, sym.apply(volume)), key=lambda v: _correlation(v, truth))
        asym = volume - sym.apply(volume)
        freq, curve = fsc(asym, truth_asym, apix)
        freq, curve = freq[1:], curve[1:]  # from shell 2: shell 1 is a few voxels, set by the maps' centring
        reached = "none" if curve[1] < 0.5 else f"{fsc_resolution(freq, curve, 0.5):.2f} Å"
        print(f"{path}: correlation with the truth {_correlation(volume, truth):.3f}, asymmetric parts "
              f"{_correlation(asym, truth_asym):.3f}, their FSC-0.5 {reached}, mean FSC over shells 2 to Nyquist "
              f"{float(curve[1:].mean()):.2f}")


if __name__ == "__main__":
    main()
