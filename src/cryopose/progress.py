"""Progress bars: shown on a terminal, left out of logs (stderr not a terminal), silenced by ``--quiet`` or
``TQDM_DISABLE``."""

from __future__ import annotations

import os
from collections.abc import Iterable

from tqdm.auto import tqdm


def silenced() -> bool:
    """Whether ``TQDM_DISABLE`` (set by ``cryopose --quiet``) asks for no bars."""
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("", "0", "false")


def progress(iterable: Iterable | None = None, *, show: bool = True, **kwargs) -> tqdm:
    """A transient ``tqdm`` bar over ``iterable``; ``show=False`` (e.g. on ranks other than 0) hides it."""
    return tqdm(iterable, disable=True if silenced() or not show else None, leave=False, **kwargs)
