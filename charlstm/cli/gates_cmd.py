"""The `charlstm inspect-gates` command: watch the gates of the cells (LSTM, GRU, plain RNN)
respond to a text.

Reads the text (--text, --file, stdin or --sample N), runs the model over it with the
training kernels (charlstm.gates), ranks units and draws the chosen view (charlstm.gates_view)
on stdout; notices go to stderr; --save and --json write files.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer

from .. import explorer, features, gates, gates_view, reach
from ..checkpoint import Checkpoint, default_model_path, load_checkpoint
from ..data import read_text
from ..errors import CharLSTMError, ConfigError
from ..signals import BY_CELL, NO_KEEP_GATE, signals_of
from . import ranks
from .app import app
from .common import stderr_console

DEFAULT_SHOW = 400  # characters drawn under the text
DEFAULT_TOP = 8
HEATMAP_TOP = 16


@app.command("inspect-gates")
def inspect_gates_command(
    text: Annotated[str | None, typer.Option("--text", "-t", help="The text to read.")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Read the text from this file.")] = None,
    sample: Annotated[
        int | None, typer.Option("--sample", help="Let the model write N characters and read those.")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(help="Checkpoint to use (default: the newest in ./models/, else the shipped one)."),
    ] = None,
    view: Annotated[str, typer.Option(help="overview, gates, heatmap, predict or reach.")] = "overview",
    units: Annotated[
        str | None, typer.Option(help="Units to show, e.g. L2:17,L1:3 (layers from 1, units from 0).")
    ] = None,
    feature: Annotated[
        str | None,
        typer.Option(help="Rank units by correlation with quote, line-pos, indent, depth or a REGEX."),
    ] = None,
    pick: Annotated[
        str,
        typer.Option(
            help="Without --feature, rank by: variance or integrator (keep gate open: LSTM f, GRU z)."
        ),
    ] = "variance",
    signal: Annotated[
        str | None,
        typer.Option(
            help="Signal to rank, strip and heatmap: LSTM i, f, g, o, c (as tanh c) or h; GRU r, z, n or h; "
            "RNN h. (default: c for an LSTM, else h)"
        ),
    ] = None,
    top: Annotated[
        int | None, typer.Option(help="How many top units to show (default: 8; heatmap: 16).")
    ] = None,
    layer: Annotated[
        int | None,
        typer.Option(help="Take the top units from this layer only (default: all; heatmap: the last)."),
    ] = None,
    warmup: Annotated[
        str, typer.Option(help="Text read first and not shown (the seed, with --sample).")
    ] = "",
    max_chars: Annotated[
        int, typer.Option(help=f"Characters read for the statistics (at most {gates.MAX_CHARS:,}).")
    ] = gates.DEFAULT_MAX_CHARS,
    show: Annotated[int, typer.Option(help="Characters drawn under the text.")] = DEFAULT_SHOW,
    left: Annotated[float, typer.Option(help="A gate below this is shut (left-saturated).")] = 0.1,
    right: Annotated[float, typer.Option(help="A gate above this is wide open (right-saturated).")] = 0.9,
    ascii_only: Annotated[
        bool, typer.Option("--ascii", help="Pure ASCII output: glyph ramps, no colour.")
    ] = False,
    width: Annotated[int | None, typer.Option(help="Columns to draw in (default: the terminal's).")] = None,
    save: Annotated[
        Path | None, typer.Option(help="Also write what is shown to a .svg, .html or .txt file.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write arrays, thresholds and unit scores here.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="With --sample: randomness of the writing.")] = 0.8,
    random_seed: Annotated[
        int | None, typer.Option(help="With --sample: the same seed, the same text.")
    ] = None,
    reach_targets: Annotated[
        int | None,
        typer.Option(
            "--reach",
            help=f"Reach: target positions (default: the shown ones, at most {reach.DEFAULT_TARGETS}).",
        ),
    ] = None,
    lags: Annotated[int, typer.Option(help="Reach: lags back from each target.")] = reach.DEFAULT_LAGS,
    at: Annotated[
        int | None, typer.Option(help="--view reach: the target position (default: the last).")
    ] = None,
) -> None:
    """Show how the gates of each unit (LSTM, GRU or plain RNN) respond to each character of a text."""
    ranks.alone_only("inspect-gates")
    _check_options(view, signal, pick, top, max_chars, show, width, sample, save)
    _check_reach_options(reach_targets, lags, at)
    thresholds = gates.Thresholds(left=left, right=right).check()
    notices = stderr_console()
    path = model if model is not None else default_model_path()
    checkpoint = load_checkpoint(path)
    config = checkpoint.model_config
    _check_cell_options(config.cell, signal, pick, feature)
    chosen = gates.parse_units(units, config) if units is not None else None
    if layer is not None and not 1 <= layer <= config.layers:
        raise ConfigError(f"--layer must be between 1 and {config.layers}, got {layer}")

    source = _read_source(text, file, sample, checkpoint, warmup, max_chars, temperature, random_seed)
    if not source:
        raise ConfigError("nothing to inspect: the text is empty")
    total = len(source)
    source = source[:max_chars]
    if feature is not None:
        features.check_feature(source, feature)  # a bad feature fails before any output
    page_wanted = save is not None and gates_view.check_save_path(save) in gates_view.PAGE_FORMATS
    reach_wanted = view == "reach" or json_out is not None or page_wanted
    targets = reach.target_count(reach_targets, len(source))
    if at is not None and not 0 <= at < min(targets, len(source) - 1):
        raise ConfigError(
            f"--at must be a reach target, between 0 and {min(targets, len(source) - 1) - 1}, got {at}"
        )
    # Every check has passed: from here on, notices and output.
    notices.print(f"model: {path}", markup=False)
    if sample is not None:
        notices.print(f"sampled {total:,} characters at temperature {temperature:g}", markup=False)
    if total > max_chars:
        notices.print(f"reading the first {max_chars:,} characters of the text (--max-chars)", markup=False)
    unknown = checkpoint.vocab.unknown(source + warmup)
    if unknown:
        shown = " ".join(repr(ch) for ch in unknown[:8]) + (" ..." if len(unknown) > 8 else "")
        notices.print(f"not in the model's vocabulary, read as a space: {shown}", markup=False)

    recorder = None
    if page_wanted:
        recorder = explorer.SignalRecorder(config.layers, len(source), config.hidden, signals_of(config.cell))
    trace = gates.compute_trace(
        checkpoint.params, checkpoint.vocab, source, warmup=warmup,
        show=max(show, targets) if reach_wanted else show, signal=signal, thresholds=thresholds,
        observe=recorder, guess_everywhere=page_wanted,
    )  # fmt: skip
    ranking = gates.rank_units(trace, pick, feature)
    reached = None
    if reach_wanted:
        reached = reach.compute_reach(
            checkpoint.params, trace, targets=targets, lags=lags, window=explorer.training_window(checkpoint)
        )
    page_trace, trace = trace, trace.first(show)  # the views and --json show --show characters
    if chosen is None:
        only = None if layer is None else layer - 1
        if view == "heatmap":
            only = config.layers - 1 if only is None else only  # a heatmap shows one layer
            chosen = [s.unit for s in ranking.top(top or HEATMAP_TOP, only)]
        else:
            chosen = [s.unit for s in ranking.top(2 if view == "gates" else top or DEFAULT_TOP, only)]
            if view == "gates":
                notices.print(
                    f"no --units given: showing the top 2, {', '.join(map(str, chosen))}", markup=False
                )

    options = gates_view.ViewOptions(
        view=view, units=chosen, signal=signal, model_name=path.name, reach=reached, at=at
    )
    console = gates_view.make_console(width=width, ascii_only=ascii_only)

    def draw(target, look) -> None:
        gates_view.render(target, look, trace, ranking, options)

    draw(console, gates_view.choose_look(console, ascii_only))
    if page_wanted:
        page = explorer.build_page(
            page_trace, recorder, ranking, reached, model_name=path.name, feature=feature,
            chosen=chosen, curves=explorer.curves_of(path),
        )  # fmt: skip
        page.save(save)
        notices.print(f"saved: {save} (the explorer page, {len(page) / 1e6:.1f} MB)", markup=False)
    elif save is not None:
        gates_view.save(save, draw, console.width, ascii_only)
        notices.print(f"saved: {save}", markup=False)
    if json_out is not None:
        document = gates.to_json(trace, ranking, chosen, str(path))
        document["reach"] = reach.to_json(reached)
        try:
            json_out.write_text(json.dumps(document, ensure_ascii=ascii_only), encoding="utf-8")
        except OSError as exc:
            raise CharLSTMError(f"{json_out}: cannot write ({exc.strerror or exc})") from None
        notices.print(f"saved: {json_out}", markup=False)


def _check_options(view, signal, pick, top, max_chars, show, width, sample, save) -> None:
    """Fail on a bad option before any model is loaded."""
    if view not in gates_view.VIEWS:
        raise ConfigError(f"--view must be one of {', '.join(gates_view.VIEWS)}, got {view!r}")
    if signal is not None and not any(signal in s.names for s in BY_CELL.values()):
        names = ", ".join(dict.fromkeys(n for s in BY_CELL.values() for n in s.names))
        raise ConfigError(f"unknown signal {signal!r}; choose one of {names}")
    if pick not in gates.PICKS:
        raise ConfigError(f"--pick must be one of {', '.join(gates.PICKS)}, got {pick!r}")
    if top is not None and top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if not 1 <= max_chars <= gates.MAX_CHARS:
        raise ConfigError(f"--max-chars must be between 1 and {gates.MAX_CHARS:,}, got {max_chars:,}")
    if show < 1:
        raise ConfigError(f"--show must be at least 1, got {show}")
    if width is not None and width < 20:
        raise ConfigError(f"--width must be at least 20 columns, got {width}")
    if sample is not None and not 1 <= sample <= max_chars:
        raise ConfigError(f"--sample must be between 1 and --max-chars ({max_chars:,}), got {sample:,}")
    if save is not None:
        gates_view.check_save_path(save)


def _check_cell_options(cell: str, signal: str | None, pick: str, feature: str | None) -> None:
    """Fail on an option the model's cell has no meaning for, before any output."""
    signals = signals_of(cell)
    if signal is not None:
        signals.check(signal)
    if pick == "integrator" and feature is None and signals.keep is None:
        raise ConfigError(f"--pick integrator: {NO_KEEP_GATE}; rank by variance or a --feature")


def _check_reach_options(targets: int | None, lags: int, at: int | None) -> None:
    if targets is not None and not 1 <= targets <= reach.MAX_TARGETS:
        raise ConfigError(f"--reach must be between 1 and {reach.MAX_TARGETS:,}, got {targets:,}")
    if lags < 0:
        raise ConfigError(f"--lags must be at least 0, got {lags}")
    if at is not None and at < 0:
        raise ConfigError(f"--at must be at least 0, got {at}")


def _read_source(
    text: str | None,
    file: Path | None,
    sample: int | None,
    checkpoint: Checkpoint,
    warmup: str,
    max_chars: int,
    temperature: float,
    random_seed: int | None,
) -> str:
    given = [
        name
        for name, value in (("--text", text), ("--file", file), ("--sample", sample))
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigError(f"give one text, not {' and '.join(given)}")
    if text is not None:
        return text
    if file is not None:
        return read_text(file)
    if sample is not None:
        from .. import sample as sampling  # only this path needs the sampler

        with warnings.catch_warnings():  # unknown seed characters are reported by the caller
            warnings.simplefilter("ignore", sampling.UnknownCharactersWarning)
            return sampling.generate(
                checkpoint.params, checkpoint.vocab, warmup, sample,
                temperature=temperature, random_seed=random_seed, skip_unknown=True,
            )[0]  # fmt: skip
    if sys.stdin is None or sys.stdin.isatty():
        raise ConfigError("no text: give --text, --file or --sample N, or pipe text in")
    try:
        return sys.stdin.read(max_chars + 1)
    except UnicodeDecodeError:
        raise ConfigError("the text on stdin is not valid UTF-8") from None
