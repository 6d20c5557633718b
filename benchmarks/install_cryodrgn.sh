#!/usr/bin/env bash
# Install cryoDRGN 4.3.1 into its own virtual environment (default peers/cryodrgn), as ../shared/PEERS.md says:
# the local CPU build of torch first, so that pip does not pull a multi-GB CUDA build. Used by benchmarks/suite.py.
set -euo pipefail
venv="${1:-peers/cryodrgn}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet cryodrgn==4.3.1
"$venv/bin/cryodrgn" --version
