"""Loss curves drawn in the terminal: training and validation loss against the step, on one
grid of characters with labelled axes and the best validation marked.

`render` returns a rich Text. With colour each series has its own colour and mark; without
(NO_COLOR, a pipe) the marks alone tell them apart: `.` training, `o` validation, `*` best.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

TRAIN_MARK, VAL_MARK, BEST_MARK = ".", "o", "*"  # drawn in this order: later marks win a cell
STYLES = {TRAIN_MARK: "cyan", VAL_MARK: "magenta", BEST_MARK: "bold yellow"}
MIN_WIDTH, MIN_HEIGHT = 20, 4


def render(
    train_steps: Sequence[int],
    train_loss: Sequence[float],
    val_steps: Sequence[int] = (),
    val_loss: Sequence[float] = (),
    *,
    width: int = 72,
    height: int = 12,
    color: bool = True,
) -> Text:
    """The curves in `width` columns (axis labels included) and `height` rows of plot.

    Non-finite points are left out. A series with one point is a single mark; a flat series is
    drawn on the middle row. Several training points falling in one column are averaged, so a
    long run keeps its shape at any width.
    """
    train = _finite(train_steps, train_loss)
    val = _finite(val_steps, val_loss)
    if not train and not val:
        return Text("no loss recorded yet", style="dim" if color else "")
    points = train + val
    x_low = min(s for s, _ in points)
    x_high = max(s for s, _ in points)
    y_low = min(v for _, v in points)
    y_high = max(v for _, v in points)
    if y_high - y_low < 1e-9:  # flat: centre it
        y_low, y_high = y_low - 0.5, y_high + 0.5

    labels = [_label(y_high), _label((y_high + y_low) / 2), _label(y_low)]
    margin = max(len(label) for label in labels) + 1
    columns = max(MIN_WIDTH, width - margin - 1)
    rows = max(MIN_HEIGHT, height)
    grid = [[" "] * columns for _ in range(rows)]

    def cell(step: float, value: float) -> tuple[int, int]:
        x = 0 if x_high == x_low else round((step - x_low) / (x_high - x_low) * (columns - 1))
        y = round((y_high - value) / (y_high - y_low) * (rows - 1))
        return min(max(y, 0), rows - 1), min(max(x, 0), columns - 1)

    for step, value in _column_means(train, x_low, x_high, columns):
        row, col = cell(step, value)
        grid[row][col] = TRAIN_MARK
    for step, value in val:
        row, col = cell(step, value)
        grid[row][col] = VAL_MARK
    if val:
        best = min(val, key=lambda p: p[1])
        row, col = cell(*best)
        grid[row][col] = BEST_MARK

    text = Text()
    label_rows = {0: labels[0], (rows - 1) // 2: labels[1], rows - 1: labels[2]}
    for r, line in enumerate(grid):
        text.append(label_rows.get(r, "").rjust(margin - 1) + " │")
        for mark in line:
            text.append(mark, style=STYLES.get(mark, "") if color else "")
        text.append("\n")
    text.append(" " * (margin - 1) + " └" + "─" * columns + "\n")
    left, right = f"{x_low:,}", f"step {x_high:,}"
    text.append(" " * (margin + 1) + left + right.rjust(columns - len(left)) + "\n")
    text.append(_legend(train, val, color))
    return text


def _finite(steps: Sequence[int], values: Sequence[float]) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, v in zip(steps, values, strict=False) if math.isfinite(v)]


def _column_means(points: list[tuple[int, float]], x_low: int, x_high: int, columns: int):
    """One (step, mean loss) per plot column that holds training points."""
    if not points:
        return []
    sums: dict[int, list[float]] = {}
    for step, value in points:
        col = 0 if x_high == x_low else round((step - x_low) / (x_high - x_low) * (columns - 1))
        entry = sums.setdefault(col, [0.0, 0.0, 0.0])
        entry[0] += step
        entry[1] += value
        entry[2] += 1
    return [(s / n, v / n) for s, v, n in sums.values()]


def _label(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.3g}"


def _legend(train: list, val: list, color: bool) -> Text:
    legend = Text("  nats/char:  ")
    parts = []
    if train:
        parts.append((TRAIN_MARK, "training (smoothed)"))
    if val:
        best_step, best_loss = min(val, key=lambda p: p[1])
        parts.append((VAL_MARK, "validation"))
        parts.append((BEST_MARK, f"best {best_loss:.4f} at step {best_step:,}"))
    for i, (mark, name) in enumerate(parts):
        if i:
            legend.append("  ")
        legend.append(mark, style=STYLES[mark] if color else "")
        legend.append(f" {name}")
    return legend
