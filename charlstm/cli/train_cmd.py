"""The `charlstm train` command: options, Ctrl-C handling, and the display of a run.

On a terminal a rich progress bar; otherwise plain log lines (a log file or CI stays
readable). Everything goes to stderr. The loop itself lives in charlstm.train.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from ..errors import CharLSTMError
from ..metrics import MetricsError, read_curves
from ..options import CELL_LR, TrainOptions
from ..train import EvalInfo, Hooks, StepInfo, TrainResult, default_out_path, last_path_for, train
from . import ranks
from .app import app
from .common import print_curves, stderr_console

D = TrainOptions()  # the defaults, shown in --help (rich markup would eat "[default: ...]")
_PER_CELL_LR = ", ".join(f"{lr:g} ({cell})" for cell, lr in CELL_LR.items())
LOG_EVERY_SECONDS = 10.0  # plain output: one progress line this often
PREVIEW_CHARS = 100
LOAD_NOTICE_BYTES = 16 << 20  # show corpus-encoding progress from this size (smaller: < 1 s)
LN2 = math.log(2.0)


def _default(text: str, value: object) -> str:
    return f"{text} (default: {value})"


@app.command("train")
def train_command(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="UTF-8 text files to learn from, concatenated in order (optional with --resume).",
            show_default=False,
        ),
    ] = None,
    cell: Annotated[
        str | None, typer.Option(help=_default("The recurrent cell: lstm, gru or rnn (plain tanh).", D.cell))
    ] = None,
    layers: Annotated[int | None, typer.Option(help=_default("Recurrent layers.", D.layers))] = None,
    hidden: Annotated[int | None, typer.Option(help=_default("Units per layer.", D.hidden))] = None,
    embed: Annotated[
        int | None, typer.Option(help=_default("Character embedding width (0: one-hot).", D.embed))
    ] = None,
    dropout: Annotated[
        float | None, typer.Option(help=_default("Dropout between layers and before the output.", D.dropout))
    ] = None,
    seq_len: Annotated[
        int | None, typer.Option(help=_default("Characters per window of backpropagation.", D.seq_len))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_default("Parallel streams per step.", D.batch_size))
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=_default("Peak learning rate (Adam).", _PER_CELL_LR)),
    ] = None,
    min_lr: Annotated[
        float | None,
        typer.Option(help="Learning rate at the end of the cosine decay. (default: --lr / 10)"),
    ] = None,
    warmup: Annotated[
        int | None, typer.Option(help=_default("Steps of linear learning-rate warmup.", D.warmup))
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help=_default("Decoupled weight decay on weight matrices.", D.weight_decay)),
    ] = None,
    clip: Annotated[
        float | None, typer.Option(help=_default("Clip the gradient norm to this (0: off).", D.clip))
    ] = None,
    ema: Annotated[
        float | None,
        typer.Option(
            help=_default(
                "Validate and save a running average of the weights with this decay per step "
                "(0: off; 0.999 averages about the last 1,000 steps).",
                D.ema,
            )
        ),
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Train this many steps in all (counting a resumed run's).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Train this many passes over the text in all.")] = None,
    minutes: Annotated[
        float | None,
        typer.Option(help="Train for this wall-clock time in all. (default when no budget is given: 15)"),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help=_default("Validate and write checkpoints every this many steps.", D.eval_every)),
    ] = None,
    val_frac: Annotated[
        float | None,
        typer.Option(help=_default("Last fraction of the text kept for validation.", D.val_frac)),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Best-validation weights go here, the full state beside it as *.last.npz. "
            "(default: models/<first file's name>.npz)",
            show_default=False,
        ),
    ] = None,
    random_seed: Annotated[
        int | None, typer.Option(help=_default("Seed of the initial weights and dropout.", D.random_seed))
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue exactly from a *.last.npz; other options default to the saved ones."),
    ] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune a trained model (a *.npz, a *.last.npz, or `shipped`): its architecture and "
            "weights, new characters added; --lr 2e-3, --warmup 20, --eval-every 50 and its dropout "
            "unless given.",
            show_default=False,
        ),
    ] = None,
    preview: Annotated[
        bool, typer.Option("--preview", help="Show a short sample after each validation.")
    ] = False,
) -> None:
    """Train a character-level LSTM, GRU or plain RNN on text files (Ctrl-C saves the state;
    --resume continues).

    Under mpiexec, each process trains its share of the batch (data parallel, charlstm[mpi])."""
    given = {
        "cell": cell,
        "layers": layers,
        "hidden": hidden,
        "embed": embed,
        "dropout": dropout,
        "seq_len": seq_len,
        "batch_size": batch_size,
        "lr": lr,
        "min_lr": min_lr,
        "warmup": warmup,
        "weight_decay": weight_decay,
        "clip": clip,
        "ema": ema,
        "steps": steps,
        "epochs": epochs,
        "minutes": minutes,
        "eval_every": eval_every,
        "val_frac": val_frac,
        "random_seed": random_seed,
    }
    console = stderr_console()
    group = ranks.connect()
    display: _Display
    if not group.is_root:  # the other ranks of a data-parallel run print only their errors
        display, stop = _Display(), _StopOnInterrupt(console, quiet=True)
        hooks = Hooks(should_stop=stop)
    else:
        display = _RichDisplay(console) if console.is_terminal else _PlainDisplay(console)
        stop = _StopOnInterrupt(console)
        hooks = Hooks(
            notice=display.notice,
            load_progress=display.load_progress,
            step=display.step,
            evaluation=_with_preview(display.evaluation, console) if preview else display.evaluation,
            should_stop=stop,
        )
    planned_last = _planned_last(files, out, resume)
    try:
        with stop, ranks.ending_together(group, display.close):
            result = train(
                files, given, out=out, resume=resume, init_from=init_from, hooks=hooks, group=group
            )
    except KeyboardInterrupt:
        display.close()
        if planned_last is not None and planned_last.exists():
            kept = f"the last saved state is {planned_last}"
        else:
            kept = "no training state had been saved yet"
        _say(console, f"aborted by a second Ctrl-C: {kept} (writes are atomic: nothing is half-written)")
        raise typer.Exit(130) from None
    finally:
        display.close()
    if not group.is_root:
        if result.interrupted:
            raise typer.Exit(130)
        return
    _print_summary(console, result)
    if console.is_terminal and result.metrics is not None:
        _print_curves(console, result.metrics)
    if result.interrupted:
        if result.last is None:
            _say(console, "interrupted before the first step: nothing to save")
        else:
            _say(console, f"interrupted at step {result.step:,}: state saved to {result.last}")
            _say(console, f"resume with: charlstm train --resume {shlex.quote(str(result.last))}")
        raise typer.Exit(130)


def _print_curves(console: Console, path: Path) -> None:
    """The run's loss curves from its metrics log (a terminal only: a log file gets the table)."""
    try:
        log = read_curves(path)
    except MetricsError as exc:
        _say(console, f"warning: {exc}")
        return
    print_curves(console, str(path), log.steps, log.train_loss, log.val_steps, log.val_loss)


def _say(console: Console, text: str) -> None:
    """One message line, printed literally and never wrapped (paths stay copyable)."""
    console.print(text, markup=False, soft_wrap=True)


def _planned_last(files: list[Path] | None, out: Path | None, resume: Path | None) -> Path | None:
    """Where the run keeps its state, for the message after an abort."""
    if out is not None:
        return last_path_for(out)
    if resume is not None:
        return resume
    return last_path_for(default_out_path(files)) if files else None


# The signals that stop a run cleanly: Ctrl-C, `kill`, and SIGUSR1 (Open MPI's mpiexec turns
# Ctrl-C into SIGTERM then SIGKILL 0.5 s later: SIGUSR1 is the stop it lets finish).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)


class _StopOnInterrupt:
    """First Ctrl-C (or SIGTERM, SIGUSR1): ask the loop to stop after the current step (it
    then saves and exits 130). A second Ctrl-C: Python's default handler, i.e.
    KeyboardInterrupt at once (a second SIGTERM: the default, death); every write is atomic,
    so that loses at most the steps since the last save and corrupts nothing."""

    def __init__(self, console: Console, quiet: bool = False) -> None:
        self.console = console
        self.requested = False
        self.announced = quiet
        self.previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        elif signum == signal.SIGTERM:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    def __enter__(self) -> _StopOnInterrupt:
        try:
            for signum in STOP_SIGNALS:
                self.previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave the signals as they are
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def __call__(self) -> bool:
        if self.requested and not self.announced:
            self.announced = True
            _say(self.console, "stopping after this step and saving (Ctrl-C again to abort)")
        return self.requested


# ----------------------------------------------------------------------------------- display


def _clock(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _loss(value: float | None) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _rate(chars_per_s: float) -> str:
    return f"{chars_per_s / 1000:.1f}k" if chars_per_s >= 1000 else f"{chars_per_s:.0f}"


def _step_text(info: StepInfo) -> str:
    total = f"/{info.total_steps:,}" if info.total_steps is not None else ""
    return f"step {info.step:,}{total}"


def _stats(info: StepInfo) -> str:
    return (
        f"epoch {info.epoch:.2f}  loss {_loss(info.smoothed_loss)}  "
        f"val {_loss(info.val_loss)} (best {_loss(info.best_val_loss)})  "
        f"{_rate(info.chars_per_s)} chars/s  grad {info.grad_norm:.2f}"
    )


def _times(info: StepInfo) -> str:
    return f"{_clock(info.elapsed)} elapsed, {_clock(info.remaining)} left"


def _eval_text(info: EvalInfo) -> str:
    if info.val_loss is None:
        return f"step {info.step:,}: no validation text; saved {', '.join(map(str, info.saved))}"
    best = f"new best, saved {info.saved[0]}" if info.improved else f"best {_loss(info.best_val_loss)}"
    bits = info.val_loss / LN2
    return f"step {info.step:,}: val loss {_loss(info.val_loss)} nats/char ({bits:.3f} bits), {best}"


class _Display:
    def notice(self, message: str) -> None: ...
    def load_progress(self, done: int, total: int) -> None: ...
    def step(self, info: StepInfo) -> None: ...
    def evaluation(self, info: EvalInfo) -> None: ...
    def close(self) -> None: ...


class _PlainDisplay(_Display):
    """Log lines: the first step, one line every LOG_EVERY_SECONDS, every validation."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.last_line = -math.inf
        self.loading = False

    def _print(self, text: str) -> None:
        _say(self.console, text)

    def notice(self, message: str) -> None:
        self._print(message)

    def load_progress(self, done: int, total: int) -> None:
        if not self.loading and total >= 2 * LOAD_NOTICE_BYTES:  # total counts two passes
            self.loading = True
            self._print(f"encoding the corpus ({total // 2:,} bytes) into a token cache")

    def step(self, info: StepInfo) -> None:
        now = time.monotonic()
        if now - self.last_line >= LOG_EVERY_SECONDS:
            self.last_line = now
            self._print(f"{_step_text(info)}  {_stats(info)}  lr {info.lr:.2e}  {_times(info)}")

    def evaluation(self, info: EvalInfo) -> None:
        self._print(_eval_text(info))


class _TwoLineProgress(Progress):
    """A progress bar with the run's statistics on a second line (one would not fit in 80
    columns)."""

    stats = Text()

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        if self.stats:
            yield self.stats


class _RichDisplay(_Display):
    """A live progress bar; notices and validation results scroll above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = _TwoLineProgress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.percentage:>3.0f}%  {task.fields[times]}"),
            console=console,
            transient=False,
        )
        self.started = False
        self.load_task: TaskID | None = None
        self.task: TaskID | None = None

    def _start(self) -> None:
        if not self.started:
            self.progress.start()
            self.started = True

    def notice(self, message: str) -> None:
        self._start()
        self.progress.console.print(Text(message), soft_wrap=True)

    def load_progress(self, done: int, total: int) -> None:
        if total < 2 * LOAD_NOTICE_BYTES:
            return
        self._start()
        if self.load_task is None:
            self.load_task = self.progress.add_task("encoding corpus", total=total, times="")
        self.progress.update(self.load_task, completed=done)

    def step(self, info: StepInfo) -> None:
        self._start()
        if self.task is None:
            self.task = self.progress.add_task("", total=1.0, times="")
        self.progress.stats = Text("  " + _stats(info) + f"  lr {info.lr:.2e}")
        self.progress.update(
            self.task, completed=info.fraction, description=_step_text(info), times=_times(info)
        )

    def evaluation(self, info: EvalInfo) -> None:
        self._start()
        self.progress.console.print(Text(_eval_text(info)), soft_wrap=True)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False


def _with_preview(show: Callable[[EvalInfo], None], console: Console) -> Callable[[EvalInfo], None]:
    """Wrap the evaluation display so a short sample follows each validation line."""
    state = {"broken": False}

    def evaluation(info: EvalInfo) -> None:
        show(info)
        if state["broken"]:
            return
        try:
            from ..sample import generate
        except ImportError:
            state["broken"] = True
            _say(console, "preview unavailable: charlstm.sample is not installed")
            return
        seed = "\n" if "\n" in info.vocab.chars else info.vocab.chars[0]
        # its own seed: a preview never touches the training RNGs
        try:
            text = generate(info.params, info.vocab, seed, PREVIEW_CHARS, random_seed=info.step)[0]
        except CharLSTMError as exc:
            state["broken"] = True
            _say(console, f"preview unavailable: {exc}")
            return
        console.print(Text("  sample: ") + Text(text.replace("\n", " ⏎ ")), soft_wrap=True)

    return evaluation


# ----------------------------------------------------------------------------------- summary


def _nats_bits(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.4f} nats/char  ({value / LN2:.4f} bits/char)"


def _print_summary(console: Console, r: TrainResult) -> None:
    table = Table(title="training summary", show_header=False, title_justify="left")
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")  # paths break across lines rather than lose characters
    best = _nats_bits(r.best_val_loss)
    if r.best_step is not None:
        best += f" at step {r.best_step:,}"
    rows = [
        ("steps", f"{r.step:,} ({r.epoch:.2f} epochs)"),
        ("train loss", _nats_bits(r.train_loss) + " smoothed, with dropout"),
        ("validation loss", _nats_bits(r.val_loss)),
        ("best validation", best),
        ("characters seen", f"{r.chars_seen:,}"),
        ("time", _clock(r.elapsed)),
        ("characters/s", f"{r.chars_per_s:,.0f}"),
        ("model", f"{r.options.cell} {r.options.layers}x{r.options.hidden}, {r.n_params:,} parameters"),
        ("batch x window", f"{r.batch_size} x {r.seq_len}"),
        ("best weights", str(r.out) if r.out else "- (no validation yet)"),
        ("training state", str(r.last) if r.last else "-"),
    ]
    for name, value in rows:
        table.add_row(name, Text(value))
    console.print(table)
