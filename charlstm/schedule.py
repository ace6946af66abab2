"""The learning-rate schedule: linear warmup over the first steps, then cosine decay to a floor.

The decay follows the fraction of the planned run already done, so one schedule serves a
step budget (fraction of steps) and a wall-clock budget (fraction of the time).
"""

from __future__ import annotations

import math


def learning_rate(step: int, progress: float, *, peak: float, floor: float, warmup: int) -> float:
    """LR for optimizer step `step` (1-based) taken when `progress` in [0, 1] of the run is done.

    Warmup multiplies by step / warmup until step reaches `warmup` (Adam's first moments are
    noisy); the cosine runs from `peak` at progress 0 to `floor` at progress 1 and stays there.
    """
    p = min(max(progress, 0.0), 1.0)
    decayed = floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * p))
    if warmup > 0 and step < warmup:
        return decayed * step / warmup
    return decayed
