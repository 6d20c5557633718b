"""The file names of a run directory, defined once for the jobs that write them and those that read them.

::

    RUN/config.json           the resolved configuration
    RUN/log.jsonl             one JSON object per logged step, epoch and stage
    RUN/checkpoint.pt         the latest checkpoint (replaced atomically)
    RUN/maps/epoch_NNN.mrc    the map after each epoch
    RUN/map.mrc, RUN/poses.star, RUN/map_half1.mrc, RUN/map_half2.mrc   final outputs
    RUN/evaluation.json, RUN/map_aligned.mrc, RUN/report.html, RUN/plots/   written by ``cryopose evaluate``
"""

from __future__ import annotations

CONFIG = "config.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint.pt"
EPOCH_MAPS = "maps"
MAP = "map.mrc"
POSES = "poses.star"
HALF_MAPS = ("map_half1.mrc", "map_half2.mrc")
KEPT, LEFT_OUT = 1, 2  # rlnClassNumber in poses.star: in map.mrc, or left out as junk (relion_reconstruct --class 1)
EVALUATION = "evaluation.json"
MAP_ALIGNED = "map_aligned.mrc"
REPORT = "report.html"
PLOTS = "plots"

OWNED = (CONFIG, LOG, CHECKPOINT, EPOCH_MAPS, MAP, POSES, *HALF_MAPS, EVALUATION, MAP_ALIGNED, REPORT, PLOTS)
"""Everything ``--force`` removes: a run's own files, nothing else in its folder."""


def epoch_map(epoch: int) -> str:
    """``maps/epoch_NNN.mrc`` of the 0-based ``epoch`` (numbered from 1)."""
    return f"{EPOCH_MAPS}/epoch_{epoch + 1:03d}.mrc"
