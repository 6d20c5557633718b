"""``python -m cryopose`` (also what ``torchrun -m cryopose`` runs)."""

import sys

from .cli import main

sys.exit(main())
