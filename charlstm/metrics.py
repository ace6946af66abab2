"""The metrics log of a run: `<out without .npz>.metrics.csv`, one row per step and one per
validation, with a header, so pandas, a spreadsheet or gnuplot read it as it is.

Rows are flushed as they are written, so a crash leaves a readable log; the reader drops a torn
last line. A resumed run first cuts the log back to the step it resumes from, then appends.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from .data import atomic_file

COLUMNS = ("step", "elapsed", "lr", "train_loss", "grad_norm", "chars_per_s", "val_loss")
# step rows leave val_loss empty; validation rows leave lr .. chars_per_s empty


def metrics_path_for(out: Path | str) -> Path:
    """`models/x.npz` or `models/x.last.npz` -> `models/x.metrics.csv`."""
    out = Path(out)
    stem = out.name
    for suffix in (".last.npz", ".npz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return out.with_name(f"{stem}.metrics.csv")


@dataclass
class Curves:
    """What a log holds, as the curve renderer and `charlstm info` read it."""

    steps: list[int] = field(default_factory=list)  # of the training rows
    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    elapsed: dict[int, float] = field(default_factory=dict)  # step -> seconds of the run then
    rows: int = 0  # rows read, both kinds
    skipped: int = 0  # rows that could not be read (a torn last line, a stray edit)

    def best(self) -> tuple[int, float] | None:
        """(step, loss) of the lowest validation, the earliest if tied."""
        if not self.val_loss:
            return None
        i = min(range(len(self.val_loss)), key=lambda k: (self.val_loss[k], k))
        return self.val_steps[i], self.val_loss[i]


class MetricsError(Exception):
    """The log exists but cannot be read as a metrics log (not a CharLSTMError: a warning)."""


def read_curves(path: Path | str) -> Curves:
    """Read a metrics log. Raises MetricsError when it is not one (wrong header, unreadable)."""
    curves = Curves()
    for _, values in _rows(_data_lines(Path(path))):
        if values is None:
            curves.skipped += 1
            continue
        curves.rows += 1
        step, elapsed, loss, val = values
        if elapsed is not None:
            curves.elapsed[step] = elapsed
        if val is not None:
            curves.val_steps.append(step)
            curves.val_loss.append(val)
        elif loss is not None:
            curves.steps.append(step)
            curves.train_loss.append(loss)
    return curves


def _data_lines(path: Path) -> list[str]:
    """The lines of a log after its header, newlines kept. Raises MetricsError when it cannot
    be read or its header is not ours."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except (OSError, UnicodeDecodeError) as exc:
        raise MetricsError(f"{path}: cannot read the metrics log ({exc})") from None
    if not lines or next(csv.reader([lines[0]])) != list(COLUMNS):
        raise MetricsError(f"{path}: not a charlstm metrics log (its header differs)")
    return lines[1:]


def _rows(lines: list[str]):
    """Each line with its (step, elapsed, train_loss, val_loss), or None for a line that does
    not parse (a last line cut short by a crash has no newline and is dropped as torn)."""
    for i, line in enumerate(lines):
        if i == len(lines) - 1 and not line.endswith("\n"):
            yield line, None
            continue
        cells = next(csv.reader([line]), [])
        if len(cells) != len(COLUMNS):
            yield line, None
            continue
        try:
            values = int(cells[0]), _number(cells[1]), _number(cells[3]), _number(cells[6])
        except ValueError:
            yield line, None
            continue
        yield line, values


def _number(cell: str) -> float | None:
    if cell == "":
        return None
    value = float(cell)
    return value if math.isfinite(value) else None


class MetricsLog:
    """Appends rows to a run's log. A resumed run (`resume_step`) first keeps the rows up to
    that step, from the log it resumes (`earlier`, by default `path`: another one when the
    resumed run writes elsewhere)."""

    def __init__(self, path: Path | str, resume_step: int | None = None, earlier: Path | None = None) -> None:
        self.path = Path(path)
        kept = _kept_lines(earlier or self.path, resume_step) if resume_step is not None else []
        _replace(self.path, [_line(COLUMNS), *kept])
        self.file = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 (lives with the run)

    def step(self, step: int, elapsed: float, lr: float, loss: float, grad_norm: float, rate: float) -> None:
        self._write(
            [step, f"{elapsed:.3f}", f"{lr:.6g}", f"{loss:.6f}", f"{grad_norm:.6g}", f"{rate:.1f}", ""]
        )

    def validation(self, step: int, elapsed: float, loss: float) -> None:
        self._write([step, f"{elapsed:.3f}", "", "", "", "", f"{loss:.6f}"])

    def _write(self, cells: list) -> None:
        self.file.write(_line(cells))
        self.file.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()


def _line(cells) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(cells)
    return buffer.getvalue()


def _kept_lines(path: Path, resume_step: int) -> list[str]:
    """The readable rows of an earlier session's log with step <= resume_step (none when the
    log is missing or not a metrics log: the resumed run starts a new one)."""
    try:
        lines = _data_lines(path)
    except MetricsError:
        return []
    return [line for line, values in _rows(lines) if values is not None and values[0] <= resume_step]


def _replace(path: Path, lines: list[str]) -> None:
    """Write `lines` to `path` atomically (a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as out:
        out.write("".join(lines).encode("utf-8"))
