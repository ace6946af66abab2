"""The `charlstm info` command: what a checkpoint is, how it was trained, what `--resume` would
do with it, and its loss curves. A table on stdout, or one JSON object with --json.
The facts come from charlstm.info; the curves are drawn by charlstm.curves.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..info import describe
from . import ranks
from .app import app
from .common import print_curves, stderr_console

LN2 = math.log(2.0)


@app.command("info")
def info_command(
    model: Annotated[
        str, typer.Argument(help="A checkpoint (*.npz or *.last.npz), or `shipped` for the installed model.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")] = False,
) -> None:
    """Show MODEL: its shape, vocabulary, training, best validation, and loss curves."""
    ranks.alone_only("info")
    info = describe(model)
    for warning in info["warnings"]:
        stderr_console().print(Text(f"warning: {warning}"), soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False))
        return
    console = Console(highlight=False)
    console.print(_table(info))
    series = info["curves"]
    if series["train"] or series["validation"]:
        train, val = series["train"], series["validation"]
        print_curves(
            console, series["source"], [s for s, _ in train], [v for _, v in train],
            [s for s, _ in val], [v for _, v in val],
        )  # fmt: skip
    else:
        console.print(Text("loss curves: none recorded (no metrics log beside it, no validation record)"))


def _table(info: dict[str, Any]) -> Table:
    table = Table(title=info["path"], show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    rows = [
        ("format", f"{info['format']}, {info['kind']}, {info['file_bytes']:,} bytes"),
        ("model", f"{info['cell']} {info['layers']}x{info['hidden']}, embed {info['embed'] or 'one-hot'}, "
                  f"dropout {info['dropout']:g}, {info['parameters']:,} parameters"),
        ("vocabulary", f"{info['vocab_size']} characters: {info['vocab_escaped']}"),
    ]  # fmt: skip
    if info["init_from"]:
        new = "".join(info["init_from"].get("new_chars") or [])
        rows.append(("fine-tuned from", f"{info['init_from'].get('path')} (new characters: {new!r})"))
    if info["corpus"]:
        rows.append(("corpus", ", ".join(info["corpus"])))
    if info["training"]:
        rows.append(("options", _options(info["training"])))
    rows.append(("progress", _progress(info)))
    rows.append(("best validation", _best(info)))
    plan = info["resume"]
    if plan is not None:
        text = f"{plan['command']}: from step {plan['from_step']:,}, {plan['budget']}"
        text += f"; best weights to {plan['best_weights']}"
        if plan["corpus_missing"]:
            text += f"; missing corpus file(s): {', '.join(plan['corpus_missing'])}"
        rows.append(("resume", text))
    for name, value in rows:
        table.add_row(name, Text(value))
    return table


def _options(training: dict[str, Any]) -> str:
    shown = []
    for key, value in training.items():
        if value is None:
            continue
        shown.append(
            f"--{key.replace('_', '-')} {value:g}"
            if isinstance(value, float)
            else f"--{key.replace('_', '-')} {value}"
        )
    return " ".join(shown)


def _progress(info: dict[str, Any]) -> str:
    parts = []
    if info["step"] is not None:
        parts.append(f"{info['step']:,} steps")
    if info["epoch"] is not None:
        parts.append(f"{info['epoch']:.2f} epochs")
    if info["chars_seen"] is not None:
        parts.append(f"{info['chars_seen']:,} characters seen")
    if info["elapsed"] is not None:
        minutes, seconds = divmod(int(round(info["elapsed"])), 60)
        parts.append(f"{minutes}:{seconds:02d} of training")
    return ", ".join(parts) or "-"


def _best(info: dict[str, Any]) -> str:
    best = info["best_val_loss"]
    if best is None:
        return "-"
    text = f"{best:.4f} nats/char ({best / LN2:.4f} bits/char)"
    if info["best_step"] is not None:
        text += f" at step {info['best_step']:,}"
    return text
