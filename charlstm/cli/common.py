"""What the commands share: consoles that print text literally (never as rich markup), and the
loss curves as `train` and `info` draw them."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

from .. import curves

CURVES_MAX_WIDTH = 100


def one_line(message: str) -> str:
    """An error message as the one line the CLI prints: its first line, spaces collapsed."""
    return " ".join(message.strip().split("\n")[0].split()) or "unknown error"


def stderr_console() -> Console:
    """For notices, progress and tables; stdout stays clean for generated text."""
    return Console(stderr=True, highlight=False)


def print_curves(
    console: Console,
    source: str,
    steps: Sequence[int],
    train_loss: Sequence[float],
    val_steps: Sequence[int],
    val_loss: Sequence[float],
) -> None:
    """Loss curves under a title naming where they come from: in colour on a colour terminal,
    in glyphs alone with NO_COLOR or a pipe."""
    console.print(Text(f"loss curves ({source})", style="bold"))
    color = console.color_system is not None and not console.no_color
    width = min(console.width, CURVES_MAX_WIDTH)
    console.print(curves.render(steps, train_loss, val_steps, val_loss, width=width, color=color))
