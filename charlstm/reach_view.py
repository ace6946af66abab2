"""The terminal's reach view (`inspect-gates --view reach`): the text before a target shaded by
how sensitive the prediction there is to each earlier input, on a fixed log scale, then the
decay of that sensitivity over bands of lags beside the forget-gate products."""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console
from rich.text import Text

from .gates import Trace
from .gates_view import Look, Row, _column, _table, cell_chars, heat_row, print_blocks, text_row
from .reach import Reach


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.2e}"


def shades(reach: Reach, at_index: int) -> np.ndarray:
    """(K + 1,) where each lag's sensitivity sits on the fixed log domain, 0..1 (NaN: none)."""
    lo, hi = reach.domain()
    values = reach.sensitivity[at_index]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip((np.log(values) - math.log(lo)) / (math.log(hi) - math.log(lo)), 0.0, 1.0)


def draw_reach(console: Console, look: Look, trace: Trace, reach: Reach, at: int | None) -> None:
    at_index = reach.targets.size - 1 if at is None else int(np.searchsorted(reach.targets, at))
    t = int(reach.targets[at_index])
    K = min(reach.lags, t)
    lo, hi = reach.domain()
    following = trace.text[t + 1]
    console.print(
        Text(
            f"Reach at position {t}: how much log p(next character = {following!r}) moves with the "
            f"{reach.input_name} read k characters back, ||d log p / d input||, on a log scale from "
            f"{lo:.1e} to {hi:.1e}, the same for every position (brighter: more sensitive).",
            style="dim",
        )
    )
    console.print(
        Text(
            "A gradient is local sensitivity, not a contribution: it says what a small change there "
            "would do, not what the prediction was made from.",
            style="dim",
        )
    )
    console.print()
    start = t - K
    chars = cell_chars(trace.text[start : t + 1], look)
    shade = shades(reach, at_index)[K::-1]  # position start + j is lag K - j
    rows: list[Row | None] = [text_row("text @{at}", chars, look, shade if look.colour else None, False)]
    if not look.colour:
        rows.append(heat_row("reach", shade, False, look))
    print_blocks(console, rows, len(chars), first_index=start)
    console.print()

    table = _table(look, "Decay with the lag: sensitivity and the direct path through the cell")
    for name, justify in (("lags", "right"), ("median", "right"), ("IQR", "right"), ("vs lag 1", "right")):
        _column(table, name, justify)
    keep = reach.keep_gate
    for layer in range(reach.forget_product.shape[0]):
        _column(table, f"L{layer + 1} median prod {keep}", "right")
    median_one = reach.decay()[0][1] if reach.lags >= 1 else math.nan
    for band in reach.bands():
        a, b = band["lags"]
        rel = band["median"] / median_one if median_one > 0 else math.nan
        window_here = reach.window is not None and a <= reach.window <= b
        table.add_row(
            (f"{a}" if a == b else f"{a}-{b}") + (" (BPTT window)" if window_here else ""),
            _fmt(band["median"]),
            f"{_fmt(band['q1'])} .. {_fmt(band['q3'])}",
            "-" if not math.isfinite(rel) else f"{rel:.3g}",
            *[_fmt(v) for v in band["forget_product"]],
            style="bold" if window_here else None,
        )
    console.print(table)
    window = f" The model was trained on windows of {reach.window} characters (BPTT)." if reach.window else ""
    if keep is None:
        path = (
            "A plain RNN has no gate that keeps its state, so no direct path: every step back "
            "multiplies the gradient by Wh and tanh', which is why it vanishes."
        )
    else:
        gate = "forget gates f" if keep == "f" else f"update gates {keep}"
        path = (
            f"'median prod {keep}': the median over targets and units of the product of the {gate} "
            "over those lags, what the memory written k steps back keeps on the direct path through the cell."
        )
    console.print(
        Text(
            f"Over {reach.targets.size} target positions and lags 0 to {reach.lags}. {path}{window}",
            style="dim",
        )
    )
