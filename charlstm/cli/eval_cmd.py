"""The `charlstm eval` command: a model's loss on a text, in nats and bits per character.

The result goes to stdout (a sentence, or one JSON object with --json); progress for long
texts goes to stderr. The computation lives in charlstm.evaluate.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from ..checkpoint import load_checkpoint
from ..data import read_text
from ..evaluate import TextLoss, evaluate_text
from . import ranks
from .app import app
from .common import stderr_console

LOG_EVERY_SECONDS = 10.0  # without a terminal: one progress line this often
BAR_MIN_CHARS = 200_000  # shorter texts take about a second: no bar


@app.command("eval")
def eval_command(
    model: Annotated[Path, typer.Argument(help="A checkpoint (*.npz) written by `charlstm train`.")],
    file: Annotated[Path, typer.Argument(help="A UTF-8 text file to score.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
) -> None:
    """Loss of MODEL on FILE, read as one stream from a zero state (the first character is
    not predicted). Characters the model has never seen are counted and skipped."""
    ranks.alone_only("eval")
    ckpt = load_checkpoint(model)
    text = read_text(file)
    console = stderr_console()
    if console.is_terminal and len(text) >= BAR_MIN_CHARS:
        columns = (TextColumn("scoring"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
        with Progress(*columns, TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("", total=len(text))
            result = evaluate_text(
                ckpt.params, ckpt.vocab, text, progress=lambda done, _: bar.update(task, completed=done)
            )
    else:
        result = evaluate_text(ckpt.params, ckpt.vocab, text, progress=_log_lines(console))
    if as_json:
        typer.echo(json.dumps(_as_dict(model, file, result), ensure_ascii=False))
    else:
        for line in _sentences(file, result):
            typer.echo(line)


def _log_lines(console: Console) -> Callable[[int, int], None]:
    """A progress callback printing a plain line every LOG_EVERY_SECONDS (none for short texts)."""
    last = [time.monotonic()]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= LOG_EVERY_SECONDS:
            last[0] = now
            console.print(f"scored {done:,} of {total:,} characters ({done / total:.0%})", markup=False)

    return report


def _as_dict(model: Path, file: Path, r: TextLoss) -> dict:
    return {
        "model": str(model),
        "file": str(file),
        "loss_nats": r.loss,
        "bits_per_char": r.bits_per_char,
        "characters": r.characters,
        "predicted": r.predicted,
        "unknown": r.unknown,
        "unknown_chars": r.unknown_chars,
    }


def _sentences(file: Path, r: TextLoss) -> list[str]:
    lines = [
        f"{file}: {r.loss:.4f} nats/char, {r.bits_per_char:.4f} bits/char "
        f"(perplexity {math.exp(r.loss):.2f}) over {r.predicted:,} predicted characters"
    ]
    if r.unknown:
        shown = ", ".join(repr(c) for c in r.unknown_chars[:10])
        more = f" and {len(r.unknown_chars) - 10} more" if len(r.unknown_chars) > 10 else ""
        lines.append(
            f"{r.unknown:,} occurrence(s) of {len(r.unknown_chars)} character(s) the model has never seen "
            f"were not scored: {shown}{more}"
        )
    return lines
