"""Drawing gate traces with rich: the overview (saturation and units tables, strips), the gates,
heatmap and predict views, and their export to SVG, HTML or text.

Every character of the text takes exactly one cell, so the rows drawn under it stay aligned
when long text wraps. Without colour (NO_COLOR, piped output, --ascii) heat becomes glyph
ramps, so nothing vanishes; with `ascii` every byte written is ASCII.
"""

from __future__ import annotations

import io
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich import box
from rich.cells import cell_len
from rich.color import Color
from rich.console import Console
from rich.style import Style
from rich.table import Table
from rich.text import Text

from .errors import CharLSTMError, ConfigError
from .gates import SHOWN_GUESSES, Ranking, Trace, Unit
from .reach import Reach
from .signals import BY_CELL, NO_KEEP_GATE

VIEWS = ("overview", "gates", "heatmap", "predict", "reach")
SAVE_FORMATS = (".svg", ".html", ".htm", ".txt")
PAGE_FORMATS = (".html", ".htm")  # the interactive explorer (charlstm.explorer), not a drawing
SEQUENTIAL = tuple(dict.fromkeys(g for s in BY_CELL.values() for g in s.sigmoid))  # in [0, 1]: shut .. open
LEVELS = 32  # colours are quantised to this many steps, so styles can be shared
MIN_CELLS = 16  # characters per wrapped line below which row labels are shortened

# Colour stops, chosen for dark terminals: quiet near nothing, bright near the extremes.
_SEQ_STOPS = ((22, 22, 32), (36, 110, 140), (250, 222, 80))  # 0 shut .. 1 open
_DIV_STOPS = ((70, 150, 255), (44, 44, 48), (255, 112, 60))  # -1 .. 0 .. +1


@dataclass(frozen=True)
class Look:
    """How to draw: with colour or glyphs, with Unicode or pure ASCII."""

    colour: bool
    ascii: bool

    @property
    def seq_ramp(self) -> str:  # values in [0, 1]
        return " .:-=+*#%@" if self.ascii else " ░▒▓█"

    @property
    def div_ramp(self) -> str:  # values in [-1, 1]: bar heights read as signed
        return " .:-=+*#%@" if self.ascii else "▁▂▃▄▅▆▇█"

    @property
    def spark(self) -> str:
        return "_.:-=+*#%@" if self.ascii else "▁▂▃▄▅▆▇█"

    def sym(self, name: str) -> str:
        """Small symbols, with an ASCII stand-in each."""
        table = {
            "newline": ("⏎", "$"),
            "tab": ("→", ">"),
            "wide": ("▯", "?"),
            "control": ("·", "?"),
            "times": ("×", "x"),
            "dot": ("·", "|"),
            "pm": ("±", "+-"),
            "inf": ("∞", "inf"),
        }
        fancy, plain = table[name]
        return plain if self.ascii else fancy


def choose_look(console: Console, ascii_only: bool) -> Look:
    """Colour when the console can show it and the user did not opt out (NO_COLOR, --ascii)."""
    colour = not ascii_only and console.color_system is not None and not console.no_color
    return Look(colour=colour, ascii=ascii_only)


def make_console(
    *,
    width: int | None = None,
    ascii_only: bool = False,
    file: io.TextIOBase | None = None,
    record: bool = False,
    colour: bool | None = None,
) -> Console:
    """A console that prints user text literally: no markup, no emoji codes, no highlighting.
    `colour` forces colour on (True, for SVG/HTML) or off (False); None lets rich decide."""
    kwargs: dict = {}
    if ascii_only or colour is False:
        kwargs["color_system"] = None
    elif colour:
        kwargs.update(color_system="truecolor", force_terminal=True)
    return Console(
        file=file, width=width, record=record, markup=False, emoji=False, highlight=False,
        soft_wrap=False, **kwargs,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# One character, one cell


def cell_char(ch: str, look: Look) -> str:
    """What a character of the text shows as: itself when it takes one cell, else a stand-in
    (newline ⏎, tab →, wide or zero-width ▯, control ·; ASCII: $ > ? ?)."""
    if ch == "\n":
        return look.sym("newline")
    if ch == "\t":
        return look.sym("tab")
    if look.ascii:
        return ch if " " <= ch <= "~" else "?"
    if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp"):
        return look.sym("control")
    if cell_len(ch) != 1:
        return look.sym("wide")
    return ch


def cell_chars(text: str, look: Look) -> list[str]:
    return [cell_char(ch, look) for ch in text]


# --------------------------------------------------------------------------------------------
# Colours and glyphs


def _lerp_stops(stops: Sequence[tuple[int, int, int]], u: float) -> tuple[int, int, int]:
    u = min(max(u, 0.0), 1.0) * (len(stops) - 1)
    k = min(int(u), len(stops) - 2)
    a, b, t = stops[k], stops[k + 1], u - k
    return tuple(round(a[n] + (b[n] - a[n]) * t) for n in range(3))  # type: ignore[return-value]


def _unit_interval(value: float, diverging: bool) -> float:
    """Where a value sits on its scale, 0..1 (NaN counts as the middle of nothing: 0)."""
    if math.isnan(value):
        return 0.5 if diverging else 0.0
    return (min(max(value, -1.0), 1.0) + 1.0) / 2.0 if diverging else min(max(value, 0.0), 1.0)


_STYLE_CACHE: dict[tuple[bool, int, bool], Style] = {}


def heat_style(value: float, diverging: bool, with_text: bool = False) -> Style:
    """Background colour for a value in [0, 1] (or [-1, 1] when diverging); with_text adds a
    readable foreground for a character drawn on it."""
    level = round(_unit_interval(value, diverging) * (LEVELS - 1))
    key = (diverging, level, with_text)
    style = _STYLE_CACHE.get(key)
    if style is None:
        rgb = _lerp_stops(_DIV_STOPS if diverging else _SEQ_STOPS, level / (LEVELS - 1))
        fg = None
        if with_text:
            light = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140
            fg = Color.from_rgb(0, 0, 0) if light else Color.from_rgb(235, 235, 235)
        style = _STYLE_CACHE[key] = Style(bgcolor=Color.from_rgb(*rgb), color=fg)
    return style


def glyph(value: float, diverging: bool, ramp: str) -> str:
    """The ramp character for a value: its scale cut into len(ramp) equal steps."""
    u = _unit_interval(value, diverging)
    return ramp[min(int(u * len(ramp)), len(ramp) - 1)]


def sparkline(values: np.ndarray, look: Look, width: int = 24, lo: float = -1.0, hi: float = 1.0) -> str:
    """Means of `width` equal stretches of values, drawn as bar heights between lo and hi."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return ""
    width = min(width, values.size)
    edges = np.linspace(0, values.size, width + 1).astype(int)
    means = [values[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)]
    ramp = look.spark
    span = hi - lo if hi > lo else 1.0
    return "".join(ramp[min(max(int((m - lo) / span * len(ramp)), 0), len(ramp) - 1)] for m in means)


def is_diverging(signal: str) -> bool:
    return signal not in SEQUENTIAL


def display_values(values: np.ndarray, signal: str) -> np.ndarray:
    """What a colour or glyph shows for a signal: tanh(c) for the unbounded memory."""
    return np.tanh(values) if signal == "c" else values


# --------------------------------------------------------------------------------------------
# Rows under the text, wrapped in blocks


class Row:
    """One labelled line of cells, one cell per character of the shown span."""

    def __init__(self, label: str, cells: Callable[[int, int], Text]):
        self.label = label
        self.cells = cells


def text_row(label: str, chars: list[str], look: Look, values: np.ndarray | None = None,
             diverging: bool = True) -> Row:  # fmt: skip
    """The text itself; with values (and colour) each character sits on its heat colour."""

    def cells(a: int, b: int) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for t in range(a, b):
            style = (
                heat_style(float(values[t]), diverging, True) if values is not None and look.colour else None
            )
            out.append(chars[t], style)
        return out

    return Row(label, cells)


def heat_row(label: str, values: np.ndarray, diverging: bool, look: Look) -> Row:
    """A value per character: coloured blanks, or ramp glyphs without colour."""
    ramp = look.div_ramp if diverging else look.seq_ramp

    def cells(a: int, b: int) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for t in range(a, b):
            v = float(values[t])
            if look.colour:
                out.append(" ", heat_style(v, diverging))
            else:
                out.append(glyph(v, diverging, ramp))
        return out

    return Row(label, cells)


def char_row(label: str, chars: list[str], shade: np.ndarray, hits: np.ndarray, look: Look) -> Row:
    """Characters (guesses) shaded by a value in [0, 1] (their probability) when in colour,
    underlined where `hits` (the guess was right)."""
    hit_style = Style(underline=True, bold=True)

    def cells(a: int, b: int) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for t in range(a, b):
            style = heat_style(float(shade[t]), False, True) if look.colour else None
            if hits[t]:
                style = hit_style if style is None else style + hit_style
            out.append(chars[t], style)
        return out

    return Row(label, cells)


def digit_row(label: str, bits: np.ndarray, look: Look) -> Row:
    """Surprisal in bits as one digit per character (9 means 9 or more; blank: unknown)."""

    def cells(a: int, b: int) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        for t in range(a, b):
            v = float(bits[t])
            if math.isnan(v):
                out.append(" ")
                continue
            style = heat_style(min(v / 8.0, 1.0), False, True) if look.colour else None
            out.append(str(min(int(round(v)), 9)), style)
        return out

    return Row(label, cells)


def print_blocks(console: Console, rows: list[Row | None], n: int, first_index: int = 0) -> None:
    """Print rows side by side in blocks as wide as the console allows; None is a blank line
    inside each block. Every row restarts at the same column, so cells stay aligned."""
    labels = [r.label for r in rows if r is not None]
    label_width = max(cell_len(lbl) for lbl in labels) + 1
    if console.width - label_width < MIN_CELLS:  # narrow console: shorten labels, keep cells
        label_width = max(4, console.width - MIN_CELLS)
    per_block = max(1, console.width - label_width)
    for a in range(0, n, per_block):
        b = min(n, a + per_block)
        for row in rows:
            if row is None:
                console.print()
                continue
            label = row.label.replace("{at}", str(first_index + a))
            if len(label) >= label_width and "@" in label:
                label = label[label.index("@") :]  # the position matters more than the word
            line = Text(no_wrap=True, overflow="crop")
            line.append(label[: label_width - 1].ljust(label_width - 1) + " ", style="dim")
            line.append_text(row.cells(a, b))
            console.print(line, no_wrap=True, overflow="crop", crop=True)
        if b < n:
            console.print()


# --------------------------------------------------------------------------------------------
# Shared pieces: header, legend, tables


def _fmt_half_life(steps: float, look: Look) -> str:
    if math.isnan(steps):
        return "-"
    if math.isinf(steps):
        return f"{look.sym('inf')} steps"
    if steps >= 100:
        return f"{steps:,.0f} steps"
    return f"{steps:.1f} steps"


def header(console: Console, trace: Trace, look: Look, model_name: str) -> None:
    cfg = trace.config
    dot, times = look.sym("dot"), look.sym("times")
    inputs = f"embedding {cfg.embed}" if cfg.embed else "one-hot input"
    line1 = (
        f"inspect-gates {dot} {model_name} {dot} {cfg.layers} layer{'s' if cfg.layers > 1 else ''} "
        f"{times} {cfg.hidden} units {dot} {cfg.cell.upper()} {dot} {cfg.vocab_size} characters "
        f"{dot} {inputs}"
    )
    warm = f" (after {trace.n_warmup:,} warm-up)" if trace.n_warmup else ""
    bpc = trace.bits_per_char
    bpc_text = "no prediction to score" if math.isnan(bpc) else f"{bpc:.2f} bits per character on this text"
    line2 = f"read {trace.n_chars:,} characters{warm} {dot} {bpc_text}"
    if trace.n_unknown:
        line2 += f" {dot} {trace.n_unknown} not in the vocabulary (read as a space)"
    console.print(Text(line1, style="bold"))
    console.print(Text(line2))


def legend(console: Console, look: Look, signals: Sequence[str]) -> None:
    """One line per scale used: the gates' 0..1 and the signed -1..+1."""
    seq = [s for s in signals if s in SEQUENTIAL]
    div = [s for s in signals if s not in SEQUENTIAL]
    word = "colours" if look.colour else "glyphs "
    lines = []
    if seq:
        lines.append((", ".join(seq) + " (gates)", False, "0 shut", "1 open"))
    if div:
        names = ", ".join("tanh(c)" if s == "c" else s for s in div)
        lines.append((names, True, "-1", "+1"))
    for k, (names, diverging, lo, hi) in enumerate(lines):
        line = Text(f"{word if k == 0 else ' ' * len(word)}  {names}: {lo} ", style="dim")
        if not look.colour:
            line.append("[")
        steps = 12 if look.colour else len(look.div_ramp if diverging else look.seq_ramp)
        for s in range(steps):
            u = s / (steps - 1)
            v = 2 * u - 1 if diverging else u
            if look.colour:
                line.append(" ", heat_style(v, diverging))
            else:
                line.append(glyph(v, diverging, look.div_ramp if diverging else look.seq_ramp), "bold")
        if not look.colour:
            line.append("]")
        line.append(f" {hi}", style="dim")
        console.print(line)


def _table(look: Look, title: str, caption: str | None = None) -> Table:
    """A compact table: one space between columns, so it fits 80 columns."""
    return Table(
        title=title, caption=caption, box=box.ASCII if look.ascii else box.SIMPLE_HEAD,
        title_justify="left", caption_justify="left", show_edge=False, pad_edge=False,
        padding=(0, 1, 0, 0), title_style="bold", caption_style="dim",
    )  # fmt: skip


def _column(table: Table, name: str, justify: str = "left", no_wrap: bool = False) -> None:
    table.add_column(name, justify=justify, overflow="fold", no_wrap=no_wrap)  # fold: never an ellipsis


def saturation_table(trace: Trace, look: Look) -> Table:
    th, stats, cell = trace.thresholds, trace.stats, trace.signals
    H = trace.config.hidden
    keep = cell.keep
    kept = "the forget gate f" if keep == "f" else f"the update gate {keep}"
    caption = (
        f"shut: share of all (character, unit) values below {th.left:g}; open: above {th.right:g}; "
        f"mostly: units shut or open for more than {th.mostly:.0%} of the characters (of {H}). "
        f"Integrators: units whose {kept} is mostly open; they carry memory across long "
        f"stretches. Half-life: steps until memory that is not refreshed falls to half, "
        f"ln 0.5 / ln {keep}, at the median {keep}."
    )
    table = _table(look, f"Gate saturation over {trace.n_chars:,} characters", caption)
    _column(table, "gate", no_wrap=True)
    for name in ("shut", "open", "mostly\nshut", "mostly\nopen", "half-life", "integrators"):
        _column(table, name, "right")
    for layer in range(trace.config.layers):
        for k, gate in enumerate(cell.sigmoid):
            mostly_shut = int((stats.unit_left[layer, k] > th.mostly).sum())
            mostly_open = int((stats.unit_right[layer, k] > th.mostly).sum())
            memory = ["", ""]
            if gate == keep:
                memory = [
                    _fmt_half_life(float(stats.half_life[layer]), look),
                    str(int(stats.integrators[layer])),
                ]
            table.add_row(
                f"L{layer + 1} {gate} {cell.roles[gate]}", f"{stats.left[layer, k]:.1%}",
                f"{stats.right[layer, k]:.1%}", str(mostly_shut), str(mostly_open), *memory,
            )  # fmt: skip
    return table


def units_table(trace: Trace, ranking: Ranking, units: Sequence[Unit], look: Look, width: int = 100) -> Table:
    pm = look.sym("pm")
    what = "tanh(c)" if trace.signal == "c" else trace.signal
    feature = ranking.method == "feature"
    gates = trace.signals.gates
    caption = f"{what}: its course over all {trace.n_chars:,} characters"
    if gates:
        caption = f"{' '.join(gates)}: mean{pm}standard deviation over the text; " + caption
    if feature:
        caption += (
            f". r: correlation with the feature; z: how far r stands out from the correlations "
            f"with {ranking.n_shifts} circular shifts of the feature (|z| < {trace.thresholds.z:g}: chance)"
        )
    table = _table(look, f"Units by {ranking.describe()}", caption)
    _column(table, "unit", no_wrap=True)
    if feature:
        _column(table, "r", "right", no_wrap=True)
        _column(table, "z", "left", no_wrap=True)
    else:
        _column(table, "score", "right", no_wrap=True)
    for gate in gates:
        _column(table, gate, "right", no_wrap=True)
    _column(table, what, no_wrap=True)
    used = 7 + (6 + 12 if feature else 6) + len(gates) * (10 + len(pm))  # widths of the other columns
    spark_width = max(8, min(32, width - used))
    lo, hi = (0.0, 1.0) if trace.signal in SEQUENTIAL else (-1.0, 1.0)
    stats = trace.stats
    for unit in units:
        score = ranking.score_of(unit)
        cells = [str(unit)]
        if feature:
            chance = " chance" if score.is_chance(trace.thresholds.z) else ""
            cells += [f"{score.r:+.2f}", f"{score.z:+.1f}{chance}"]
        else:
            cells.append(f"{score.score:.3f}")
        for k in range(len(gates)):
            m, s = stats.mean[unit.layer, k, unit.index], stats.std[unit.layer, k, unit.index]
            cells.append(f"{m:.2f}{pm}{s:.2f}".replace(f"{pm}0.", f"{pm}."))
        cells.append(sparkline(trace.values[unit.layer, :, unit.index], look, spark_width, lo, hi))
        table.add_row(*cells)
    return table


def _shown_note(trace: Trace) -> str:
    if trace.shown < trace.n_chars:
        return f"the first {trace.shown:,} of {trace.n_chars:,} characters (--show for more)"
    return f"all {trace.n_chars:,} characters"


# --------------------------------------------------------------------------------------------
# Views


@dataclass
class ViewOptions:
    view: str = "overview"
    units: Sequence[Unit] = ()  # the units to draw, chosen by the caller
    signal: str | None = None  # the heatmap's signal (default: the cell's, see charlstm.signals)
    model_name: str = "model"
    reach: Reach | None = None  # the reach view's sensitivities
    at: int | None = None  # its target position (default: the last target)


def render(console: Console, look: Look, trace: Trace, ranking: Ranking, options: ViewOptions) -> None:
    """Print one view of a trace."""
    if options.view not in VIEWS:
        raise ConfigError(f"unknown view {options.view!r}; choose one of {', '.join(VIEWS)}")
    header(console, trace, look, options.model_name)
    if options.view == "reach":
        from .reach_view import draw_reach  # it draws with this module's pieces

        draw_reach(console, look, trace, options.reach, options.at)
        return
    {"overview": _overview, "gates": _gates, "heatmap": _heatmap, "predict": _predict}[options.view](
        console, look, trace, ranking, options
    )


def _overview(console: Console, look: Look, trace: Trace, ranking: Ranking, options: ViewOptions) -> None:
    cell = trace.signals
    legend(console, look, (*cell.sigmoid, trace.signal))
    console.print()
    if cell.sigmoid:
        console.print(saturation_table(trace, look))
    else:
        console.print(
            Text(
                f"Gate saturation: {NO_KEEP_GATE} (--view reach shows how far back it reaches).", style="dim"
            )
        )
    console.print()
    console.print(units_table(trace, ranking, options.units, look, console.width))
    console.print()
    what = "memory tanh(c)" if trace.signal == "c" else f"{trace.signal} ({cell.roles[trace.signal]})"
    how = "each character sits on its colour" if look.colour else "glyphs under each character"
    title = f"Strips: {what} of each unit after reading each character ({how}), on {_shown_note(trace)}"
    console.print(Text(title, style="bold"))
    chars = cell_chars(trace.text[: trace.shown], look)
    diverging = is_diverging(trace.signal)
    rows: list[Row | None] = []
    if not look.colour:
        rows.append(text_row("text @{at}", chars, look))
    for unit in options.units:
        values = display_values(trace.series(unit, trace.signal), trace.signal)
        if look.colour:
            rows.append(text_row(str(unit), chars, look, values, diverging))
        else:
            rows.append(heat_row(str(unit), values, diverging, look))
    print_blocks(console, rows, trace.shown)


def _gates(console: Console, look: Look, trace: Trace, ranking: Ranking, options: ViewOptions) -> None:
    cell = trace.signals
    legend(console, look, cell.names)
    for name in cell.names:
        console.print(Text(f"  {name}  {cell.help[name]}", style="dim"))
    console.print()
    console.print(
        Text(f"Every gate of {', '.join(map(str, options.units))} on {_shown_note(trace)}", style="bold")
    )
    chars = cell_chars(trace.text[: trace.shown], look)
    rows: list[Row | None] = [text_row("text @{at}", chars, look)]
    for n, unit in enumerate(options.units):
        if n:
            rows += [None, text_row("text @{at}", chars, look)]  # each unit under its own copy
        for k, name in enumerate(cell.names):
            prefix = str(unit) if k == 0 else " " * len(str(unit))
            values = display_values(trace.series(unit, name), name)
            rows.append(heat_row(f"{prefix} {name} {cell.roles[name]}", values, is_diverging(name), look))
    print_blocks(console, rows, trace.shown)


def _heatmap(console: Console, look: Look, trace: Trace, ranking: Ranking, options: ViewOptions) -> None:
    cell = trace.signals
    signal = cell.check(options.signal or cell.default)
    legend(console, look, (signal,))
    what = "tanh(c)" if signal == "c" else signal
    console.print(Text(f"  {signal}  {cell.help[signal]}", style="dim"))
    console.print()
    console.print(
        Text(f"Heatmap: {what} of {len(options.units)} units (rows) on {_shown_note(trace)}", style="bold")
    )
    chars = cell_chars(trace.text[: trace.shown], look)
    rows: list[Row | None] = [text_row("text @{at}", chars, look)]
    for unit in options.units:
        values = display_values(trace.series(unit, signal), signal)
        rows.append(heat_row(str(unit), values, is_diverging(signal), look))
    print_blocks(console, rows, trace.shown)


def _predict(console: Console, look: Look, trace: Trace, ranking: Ranking, options: ViewOptions) -> None:
    S = trace.shown
    console.print(
        Text(
            "Under each character: the model's three best guesses for the character after it "
            + ("(brighter: more probable; " if look.colour else "(p1: how sure the first guess is; ")
            + "underlined: right), and in 'bits' its surprise at the real one "
            + "(0 expected .. 9 for 9 or more).",
            style="dim",
        )
    )
    console.print()
    console.print(Text(f"Predictions on {_shown_note(trace)}", style="bold"))
    vocab_chars = trace.vocab_chars
    chars = cell_chars(trace.text[:S], look)
    rows: list[Row | None] = [text_row("text @{at}", chars, look)]
    n = min(S, trace.n_chars - 1)
    following = np.full(S, -1)  # the character that really came next (-1: none, or unknown)
    following[:n] = np.where(trace.known[1 : n + 1], trace.ids[1 : n + 1], -1)
    guess_ids, guess_probs = trace.guess_ids[:S, :SHOWN_GUESSES], trace.guess_probs[:S]
    for k in range(guess_ids.shape[1]):
        guesses = [cell_char(vocab_chars[i], look) for i in guess_ids[:, k]]
        hits = guess_ids[:, k] == following
        rows.append(char_row(f"guess {k + 1}", guesses, guess_probs[:, k], hits, look))
    if not look.colour:
        rows.append(heat_row("p1", guess_probs[:, 0], False, look))
    next_bits = np.full(S, np.nan)
    next_bits[:n] = trace.bits[1 : n + 1]
    rows.append(digit_row("bits", next_bits, look))
    print_blocks(console, rows, S)


# --------------------------------------------------------------------------------------------
# Saving


def check_save_path(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SAVE_FORMATS:
        raise ConfigError(f"--save: cannot tell the format of {path.name!r}; use .svg, .html or .txt")
    return suffix


def save(path: Path, draw: Callable[[Console, Look], None], width: int, ascii_only: bool) -> None:
    """Draw again into a recording console and export it: SVG in colour, text with glyph ramps
    (a text file cannot hold colour). HTML is the explorer page (charlstm.explorer); a drawing
    exported as HTML is only reached from Python."""
    suffix = check_save_path(path)
    colour = suffix != ".txt" and not ascii_only
    console = make_console(width=width, ascii_only=ascii_only, file=io.StringIO(), record=True, colour=colour)
    draw(console, choose_look(console, ascii_only))
    if suffix == ".svg":
        content = console.export_svg(title="charlstm inspect-gates")
    elif suffix == ".txt":
        content = console.export_text()
    else:
        content = console.export_html()
    try:
        path.write_text(content, encoding="ascii" if ascii_only and suffix == ".txt" else "utf-8")
    except OSError as exc:
        raise CharLSTMError(f"{path}: cannot write ({exc.strerror or exc})") from None
