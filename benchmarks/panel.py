"""The molecule panel (issue 25): cryopose's default settings on six molecules it was not tuned on.

    python benchmarks/panel.py -o benchmarks/results/DATE-panel            # 64 px, 10,000 images (hours per molecule)
    python benchmarks/panel.py --small -o benchmarks/results/DATE-panel-small     # 32 px, 2,000 images

4AKE chain A (asymmetric), 1AKE (closed, two chains), 2CG9 (pseudo-two-fold), the 70S ribosome map, 3J9G and the
built-in molecule, simulated at SNR 0.1 with shifts (``benchmarks/suite.py``, presets ``panel`` and
``panel-small``); each is reconstructed from the true poses (the oracle) and ab initio by both methods with no
setting given. Other arguments go to ``suite.py`` (e.g. ``--datasets demo 1AKE``, ``--tools oracle
semi-amortized``).
"""

from __future__ import annotations

import sys

from suite import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    preset = "panel-small" if "--small" in argv else "panel"
    argv = [a for a in argv if a != "--small"]
    tools = [] if "--tools" in argv else ["--tools", "oracle", "semi-amortized", "search-supervised"]
    main(["--preset", preset, *tools, *argv])
