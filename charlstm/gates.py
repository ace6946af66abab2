"""Gate inspection: run a model over a text with B=1 and keep what its cells did.

`compute_trace` records every unit's gates (the LSTM's i, f, g, o, the GRU's r, z, n; a plain
RNN has none), the LSTM's memory c and the hidden state h (full arrays for the displayed span,
streamed statistics over the whole text); the functions below it measure gate saturation,
memory half-life, and rank units by variability or by correlation with a feature of the text,
against a circular-shift null (charlstm.features). No rich, no Typer here.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import re
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .data import Vocab, encode_known
from .errors import ConfigError
from .features import (
    N_SHIFTS,
    check_feature,
    feature_correlation,
    mean_std,
    shifts_of,
)
from .model import ModelConfig, Params, zero_state
from .signals import NO_KEEP_GATE, CellSignals, signals_of
from .stream import LayerCallback as LayerObserver
from .stream import run_stream

PICKS = ("variance", "integrator")

MAX_CHARS = 20_000  # statistics cover at most this many characters (memory: L*N*H floats x2)
DEFAULT_MAX_CHARS = 2_000
WINDOW = 1024  # characters per forward call; the state (h, c) is carried between windows
TOP_GUESSES = 5  # kept for every character; the terminal shows the first SHOWN_GUESSES
SHOWN_GUESSES = 3
FORGET_BINS = 1 << 16  # keep gates (f, z) binned by the top 16 bits of float32(1 - f)
POPULATE_BYTES = 4 << 20  # arrays from this size get their pages mapped up front


@dataclass(frozen=True)
class Thresholds:
    """What counts as saturated, as mostly, and as more than chance."""

    left: float = 0.1  # a gate below this is left-saturated (shut)
    right: float = 0.9  # above this it is right-saturated (wide open)
    mostly: float = 0.5  # share of time for "mostly" (integrators: forget gate mostly open)
    z: float = 3.0  # |z| below this against the shift null: a chance correlation

    def check(self) -> Thresholds:
        if not 0.0 <= self.left < self.right <= 1.0:
            raise ConfigError(
                f"saturation thresholds need 0 <= left < right <= 1, got {self.left}, {self.right}"
            )
        if not 0.0 < self.mostly < 1.0:
            raise ConfigError(f"'mostly' must be a share in (0, 1), got {self.mostly}")
        if not self.z > 0.0:
            raise ConfigError(f"the z threshold must be positive, got {self.z}")
        return self


@dataclass(frozen=True, order=True)
class Unit:
    """One unit of a layer: layer counted from 0 here, shown as L1, L2, ... (`L2:17`)."""

    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer + 1}:{self.index}"


_UNIT_RE = re.compile(r"\s*[Ll]?(\d+)\s*:\s*(\d+)\s*")


def parse_units(spec: str, config: ModelConfig) -> list[Unit]:
    """`L2:17,L1:3` -> units (layers from 1, units from 0), checked against the model."""
    units: list[Unit] = []
    for part in spec.split(","):
        if not part.strip():
            continue
        match = _UNIT_RE.fullmatch(part)
        if match is None:
            raise ConfigError(f"--units: {part.strip()!r} is not a unit; write them like L2:17,L1:3")
        layer, index = int(match.group(1)), int(match.group(2))
        if not 1 <= layer <= config.layers:
            raise ConfigError(
                f"--units: no layer {layer} in {part.strip()!r}; the model has layers 1 to {config.layers}"
            )
        if index >= config.hidden:
            raise ConfigError(
                f"--units: no unit {index} in {part.strip()!r}; units go from 0 to {config.hidden - 1}"
            )
        unit = Unit(layer - 1, index)
        if unit not in units:
            units.append(unit)
    if not units:
        raise ConfigError("--units: no unit given; write them like L2:17,L1:3")
    return units


# --------------------------------------------------------------------------------------------
# Running the model


@dataclass
class GateStats:
    """Statistics over every analysed character (not only the displayed ones)."""

    left: np.ndarray  # (L, S) share of (time, unit) values of the S sigmoid gates (LSTM i, f, o;
    right: np.ndarray  # (L, S)   GRU r, z) below thresholds.left / above thresholds.right
    unit_left: np.ndarray  # (L, S, H) share of time each unit's sigmoid gate is left-saturated
    unit_right: np.ndarray  # (L, S, H)
    mean: np.ndarray  # (L, n, H) time-mean of each unit's n gates (LSTM i, f, g, o; GRU r, z, n)
    std: np.ndarray  # (L, n, H) and its standard deviation
    median_forget: np.ndarray  # (L,) median of the keep gate (f, z) over time and units; NaN: none
    half_life: np.ndarray  # (L,) memory half-life in steps at that median (inf: never forgets)
    integrators: np.ndarray  # (L,) units whose keep gate is right-saturated most of the time


@dataclass
class Trace:
    """What the cells did over a text (N characters analysed, the first S of them shown)."""

    config: ModelConfig
    vocab_chars: list[str]  # the model's characters, by id
    text: str  # the analysed text (N characters)
    ids: np.ndarray  # (N,) token ids fed to the model
    known: np.ndarray  # (N,) False where the character is not in the vocabulary
    n_warmup: int
    signal: str  # which signal `values` holds
    values: np.ndarray  # (L, N, H) that signal (tanh(c) for c) over the whole text
    gates: np.ndarray  # (L, S, nH) the cell's activated gates on the shown span (n = 0: RNN)
    c: np.ndarray  # (L, S, H) the LSTM's memory on the shown span; (L, S, 0) for other cells
    h: np.ndarray  # (L, S, H)
    bits: np.ndarray  # (N,) surprisal of each character in bits (NaN: first, or unknown)
    guess_ids: np.ndarray  # (G, 5) the model's top guesses for the character after each of the
    guess_probs: np.ndarray  # (G, 5)   first G: the shown span, or every character if asked
    stats: GateStats
    thresholds: Thresholds
    start_c: np.ndarray  # (L, H) the memory before the first character (after the warm-up)
    start_h: np.ndarray  # (L, H) the hidden state there
    value_mean: np.ndarray = field(init=False)  # (L, H) time-mean of `values`
    value_std: np.ndarray = field(init=False)  # (L, H)

    def __post_init__(self) -> None:
        self.value_mean, self.value_std = mean_std(self.values)

    @property
    def signals(self) -> CellSignals:
        return signals_of(self.config.cell)

    @property
    def n_chars(self) -> int:
        return len(self.text)

    @property
    def shown(self) -> int:
        return self.gates.shape[1]

    @property
    def n_unknown(self) -> int:
        return int((~self.known).sum())

    @property
    def bits_per_char(self) -> float:
        """Mean surprisal over the characters the model predicted (NaN when none)."""
        valid = self.bits[~np.isnan(self.bits)]
        return float(valid.mean()) if valid.size else math.nan

    def first(self, shown: int) -> Trace:
        """The same trace with at most `shown` characters in its shown span."""
        S = max(1, min(shown, self.shown))
        if self.shown == S:
            return self
        return dataclasses.replace(self, gates=self.gates[:, :S], c=self.c[:, :S], h=self.h[:, :S])

    def series(self, unit: Unit, name: str) -> np.ndarray:
        """(S,) one signal of one unit over the shown span; c is the raw memory."""
        return self.layer_signal(unit.layer, name)[:, unit.index]

    def layer_signal(self, layer: int, name: str) -> np.ndarray:
        """(S, H) one signal of every unit of a layer over the shown span."""
        H, signals = self.config.hidden, self.signals
        signals.check(name)
        if name in signals.gates:
            k = signals.gates.index(name)
            return self.gates[layer, :, k * H : (k + 1) * H]
        return self.c[layer] if name == "c" else self.h[layer]


def compute_trace(
    params: Params,
    vocab: Vocab,
    text: str,
    *,
    warmup: str = "",
    show: int = 400,
    signal: str | None = None,
    thresholds: Thresholds | None = None,
    window: int = WINDOW,
    observe: LayerObserver | None = None,
    guess_everywhere: bool = False,
) -> Trace:
    """Run the model over `warmup` (not recorded) and then `text` (at most MAX_CHARS), one
    stream, `window` characters at a time, the layers pipelined on threads (stream.py).
    The gates equal model.forward's (evaluation's) up to float rounding. `signal` (the one kept
    over the whole text) defaults to the cell's: the LSTM's memory c, else h.

    Characters missing from the vocabulary are read as a space (or the first character of
    the vocabulary) and left out of the bits per character. `observe(layer, start, stop, g,
    c_seq, h_seq)` sees every window of every layer, on that layer's thread (stream.py). The top
    guesses cover the shown span, or with `guess_everywhere` every character (the explorer's
    tooltips): over 20,000 characters that costs 0.09 s, half a 1x128 trace."""
    config = params.config
    cell = signals_of(config.cell)
    thresholds = (thresholds or Thresholds()).check()
    signal = cell.check(cell.default if signal is None else signal)
    N = len(text)
    if N == 0:
        raise ConfigError("nothing to inspect: the text is empty")
    if N > MAX_CHARS:
        raise ConfigError(f"at most {MAX_CHARS:,} characters can be inspected, got {N:,}")
    if window < 1:
        raise ConfigError(f"window must be at least 1 character, got {window}")
    L, H = config.layers, config.hidden
    S = max(1, min(show, N))
    stand_in = vocab.chars.index(" ") if " " in vocab.chars else 0
    ids, known = encode_known(text, vocab)
    ids[~known] = stand_in
    warm_ids, warm_known = encode_known(warmup, vocab)
    warm_ids[~warm_known] = stand_in

    h, c = zero_state(config, 1, params.dtype)
    bits = np.full(N, np.nan)
    last_logits = np.empty((1, config.vocab_size), dtype=params.dtype)  # the warm-up's guess

    def keep_last(start: int, stop: int, logits: np.ndarray) -> None:
        if stop == len(warm_ids):
            last_logits[0] = logits[-1]

    run_stream(params, warm_ids, h, c, window, on_logits=keep_last)
    start_c = c[:, 0].copy()
    start_h = h[:, 0].copy()
    if len(warm_ids) and known[0]:
        logp = np.empty(1)
        kernels.token_log_probs(logp, last_logits, ids[:1])
        bits[0] = -logp[0] / math.log(2.0)

    values = _populated_empty((L, N, H), np.float32)  # up to 80 MB, written window by window
    n_gates = len(cell.gates)
    gates_shown = np.empty((L, S, n_gates * H), dtype=params.dtype)
    c_shown = np.empty((L, S, H if "c" in cell.states else 0), dtype=params.dtype)
    h_shown = np.empty((L, S, H), dtype=params.dtype)
    G = N if guess_everywhere else S
    guess_ids = np.zeros((G, min(TOP_GUESSES, config.vocab_size)), dtype=np.int64)
    guess_probs = np.zeros(guess_ids.shape)
    below = np.zeros((L, n_gates * H), dtype=np.int64)  # per gate unit: steps below thresholds.left
    above = np.zeros((L, n_gates * H), dtype=np.int64)
    sums = np.zeros((L, n_gates * H))
    sumsq = np.zeros((L, n_gates * H))
    forget_bins = np.zeros((L, FORGET_BINS), dtype=np.int64)  # see kernels.gate_stats_add

    def on_logits(start: int, stop: int, logits: np.ndarray) -> None:
        # Surprisal of each next character inside the text.
        n_next = min(stop, N - 1) - start
        if n_next > 0:
            logp = np.empty(n_next)
            kernels.token_log_probs(logp, logits[:n_next], ids[start + 1 : start + 1 + n_next])
            bits[start + 1 : start + 1 + n_next] = -logp / math.log(2.0)
        if start < G:
            g_stop = min(stop, G)
            _top_guesses(guess_ids[start:g_stop], guess_probs[start:g_stop], logits[: g_stop - start])

    def on_layer(layer: int, start: int, stop: int, g: np.ndarray, c_seq, h_seq) -> None:
        # g (n, nH), c_seq (n, H or 0) and h_seq (n, H): this layer's window of the text
        if start < S:
            s_stop = min(stop, S)
            gates_shown[layer, start:s_stop] = g[: s_stop - start]
            c_shown[layer, start:s_stop] = c_seq[: s_stop - start]
            h_shown[layer, start:s_stop] = h_seq[: s_stop - start]
        _store_signal(values[layer, start:stop], signal, cell, g, c_seq, h_seq)
        if n_gates:
            kernels.gate_stats_add(
                below[layer], above[layer], sums[layer], sumsq[layer], forget_bins[layer],
                g, H, cell.keep_index, thresholds.left, thresholds.right,
            )  # fmt: skip
        if observe is not None:
            observe(layer, start, stop, g, c_seq, h_seq)

    run_stream(params, ids, h, c, window, on_layer, on_logits)

    bits[~known] = np.nan
    stats = _gate_stats(below, above, sums, sumsq, forget_bins, N, H, cell, thresholds)
    return Trace(
        config=config,
        vocab_chars=list(vocab.chars),
        text=text,
        ids=ids,
        known=known,
        n_warmup=len(warmup),
        signal=signal,
        values=values,
        gates=gates_shown,
        c=c_shown,
        h=h_shown,
        bits=bits,
        guess_ids=guess_ids,
        guess_probs=guess_probs,
        stats=stats,
        thresholds=thresholds,
        start_c=start_c,
        start_h=start_h,
    )


def _populated_empty(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """np.empty(shape, dtype), with its pages mapped at once where the system allows it. A large
    fresh array otherwise faults its pages in one by one as it is first written: for the 80 MB
    of a 2x512 trace of 20,000 characters that took 0.2-0.35 s here, mapping them at once 0.04 s."""
    size = math.prod(shape) * np.dtype(dtype).itemsize
    populate = getattr(mmap, "MAP_POPULATE", None)
    if populate is None or size < POPULATE_BYTES:
        return np.empty(shape, dtype=dtype)
    try:
        buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    except (OSError, ValueError):
        return np.empty(shape, dtype=dtype)
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)  # the array keeps the mapping alive


def _store_signal(
    out: np.ndarray, signal: str, cell: CellSignals, g: np.ndarray, c_seq: np.ndarray, h_seq: np.ndarray
) -> None:
    """out (n, H) = the chosen signal of a layer's window (tanh(c) for the memory), from its
    gates g (n, nH), memory c_seq and hidden state h_seq (n, H)."""
    H = h_seq.shape[1]
    if signal in cell.gates:
        k = cell.gates.index(signal)
        out[...] = g[:, k * H : (k + 1) * H]
    elif signal == "c":
        kernels.tanh_rows(out, c_seq)
    else:
        out[...] = h_seq


def _top_guesses(out_ids: np.ndarray, out_probs: np.ndarray, logits: np.ndarray) -> None:
    """out_ids, out_probs (T, K): the K most likely next characters after each step."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    K = min(out_ids.shape[1], p.shape[1])
    top = np.argsort(-p, axis=1, kind="stable")[:, :K]
    out_ids[:, :K] = top
    out_probs[:, :K] = np.take_along_axis(p, top, axis=1)


def _gate_stats(
    below, above, sums, sumsq, forget_bins, N: int, H: int, cell: CellSignals, thresholds: Thresholds
) -> GateStats:
    L, n = below.shape[0], len(cell.gates)
    picks = [cell.gates.index(g) for g in cell.sigmoid]
    unit_left = np.zeros((L, len(picks), H))  # (L, S, H)
    unit_right = np.zeros((L, len(picks), H))
    for s, k in enumerate(picks):
        unit_left[:, s] = below[:, k * H : (k + 1) * H] / N
        unit_right[:, s] = above[:, k * H : (k + 1) * H] / N
    mean = (sums / N).reshape(L, n, H)
    std = np.sqrt(np.maximum(sumsq.reshape(L, n, H) / N - mean * mean, 0.0))
    if cell.keep is None:
        median_forget = np.full(L, np.nan)
        integrators = np.zeros(L, dtype=np.int64)
    else:
        median_forget = np.array([median_from_bins(forget_bins[layer]) for layer in range(L)])
        integrators = integrator_count(unit_right[:, cell.sigmoid.index(cell.keep)], thresholds.mostly)
    return GateStats(
        left=unit_left.mean(axis=2),
        right=unit_right.mean(axis=2),
        unit_left=unit_left,
        unit_right=unit_right,
        mean=mean,
        std=std,
        median_forget=median_forget,
        half_life=half_life(median_forget),
        integrators=integrators,
    )


# --------------------------------------------------------------------------------------------
# Saturation and memory


def saturation(values: np.ndarray, left: float = 0.1, right: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, the share of time a gate is left-saturated (< left) and right-saturated
    (> right); values (T, H) -> two (H,) arrays. Karpathy, Johnson & Fei-Fei (2015)."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ConfigError("saturation needs a (T, H) array with T > 0")
    return (values < left).mean(axis=0), (values > right).mean(axis=0)


def forget_bins_of(f: np.ndarray) -> np.ndarray:
    """(FORGET_BINS,) counts of forget-gate values f (T, H) in the kernel's logarithmic bins."""
    f = np.ascontiguousarray(f)
    bins = np.zeros(FORGET_BINS, dtype=np.int64)
    H = f.shape[1]
    kernels.gate_stats_add(
        np.zeros(H, np.int64), np.zeros(H, np.int64), np.zeros(H), np.zeros(H), bins, f, H, 0, 0.0, 1.0
    )
    return bins


def median_from_bins(bins: np.ndarray) -> float:
    """The median forget gate from its bins (within 1% in 1 - f, so in half-life too)."""
    total = int(bins.sum())
    if total == 0:
        return math.nan
    b = int(np.searchsorted(np.cumsum(bins), (total + 1) // 2))  # the median's bin (of 1 - f)
    if b == 0:
        return 1.0  # 1 - f is zero (or denormal): a gate that never forgets
    edges = np.array([b << 16, (b + 1) << 16], dtype=np.uint64).astype(np.uint32).view(np.float32)
    d = math.sqrt(float(edges[0]) * float(edges[1]))  # geometric centre of a log-width bin
    return 1.0 - d


def integrator_count(unit_right_forget: np.ndarray, mostly: float = 0.5) -> np.ndarray:
    """Units whose forget gate is right-saturated more than `mostly` of the time: they keep
    their memory for long stretches (counters, open quotes). (..., H) -> (...,) counts."""
    return (np.asarray(unit_right_forget) > mostly).sum(axis=-1)


def unit_half_lives(trace: Trace) -> np.ndarray:
    """(L, H) each unit's memory half-life in steps: half_life at the median of its keep gate
    (the LSTM's f, the GRU's z) over the trace's shown span; NaN for a cell without one."""
    cell, H = trace.signals, trace.config.hidden
    if cell.keep is None:
        return np.full((trace.config.layers, H), np.nan)
    k = cell.keep_index
    keep = trace.gates[:, :, k * H : (k + 1) * H].astype(np.float64)  # (L, S, H)
    return half_life(np.median(keep, axis=1))


def half_life(f: np.ndarray | float) -> np.ndarray:
    """Steps until a memory kept by forget gate f (with nothing written) falls to half:
    ln(0.5) / ln(f). f >= 1 never forgets (inf); f <= 0 forgets at once (0)."""
    f = np.asarray(f, dtype=np.float64)
    out = np.empty_like(f)
    never = f >= 1.0
    at_once = f <= 0.0
    mid = ~(never | at_once)
    out[never] = np.inf
    out[at_once] = 0.0
    out[mid] = math.log(0.5) / np.log(f[mid])
    return out


# --------------------------------------------------------------------------------------------
# Ranking units


@dataclass(frozen=True)
class UnitScore:
    unit: Unit
    score: float  # what the ranking sorts by (higher first)
    r: float | None = None  # correlation with the feature
    z: float | None = None  # against the circular-shift null

    def is_chance(self, z_threshold: float) -> bool:
        return self.z is not None and not abs(self.z) >= z_threshold


@dataclass
class Ranking:
    method: str  # "variance", "integrator" or "feature"
    signal: str
    scores: list[UnitScore]  # every unit, best first
    feature: str | None = None  # the --feature given
    feature_desc: str | None = None
    feature_values: np.ndarray | None = None  # (N,)
    n_shifts: int = 0
    keep: str | None = "f"  # the cell's keep gate (the LSTM's f, the GRU's z)

    def top(self, k: int, layer: int | None = None) -> list[UnitScore]:
        chosen = [s for s in self.scores if layer is None or s.unit.layer == layer]
        return chosen[:k]

    def score_of(self, unit: Unit) -> UnitScore:
        for s in self.scores:
            if s.unit == unit:
                return s
        raise ConfigError(f"no unit {unit}")

    def describe(self) -> str:
        what = "tanh(c)" if self.signal == "c" else self.signal
        if self.method == "feature":
            return f"|correlation| of {what} with {self.feature_desc}"
        if self.method == "integrator":
            gate = "forget gate" if self.keep == "f" else f"update gate {self.keep}"
            return f"share of time the {gate} is wide open"
        return f"variability (standard deviation) of {what}"


def rank_units(trace: Trace, pick: str = "variance", feature: str | None = None) -> Ranking:
    """Every unit of every layer, best first: by the standard deviation over time of the
    trace's signal (`variance`), by how often its forget gate is right-saturated
    (`integrator`), or, with a feature, by |Pearson r| between signal and feature."""
    L, H = trace.config.layers, trace.config.hidden
    units = [Unit(layer, j) for layer in range(L) for j in range(H)]
    if feature is not None:
        values, desc = check_feature(trace.text, feature)
        r, z = feature_correlation(trace.values, values, trace.value_std)
        scores = [
            UnitScore(
                u, float(abs(r[u.layer, u.index])), float(r[u.layer, u.index]), float(z[u.layer, u.index])
            )
            for u in units
        ]
        scores.sort(key=lambda s: (-s.score, s.unit))
        shifts = len(shifts_of(len(values), N_SHIFTS))
        return Ranking("feature", trace.signal, scores, feature, desc, values, shifts, trace.signals.keep)
    if pick == "variance":
        table = trace.value_std
    elif pick == "integrator":
        cell = trace.signals
        if cell.keep is None:
            raise ConfigError(f"--pick integrator: {NO_KEEP_GATE}; rank by variance or a --feature")
        table = trace.stats.unit_right[:, cell.sigmoid.index(cell.keep)]
    else:
        raise ConfigError(f"unknown --pick {pick!r}; choose one of {', '.join(PICKS)}")
    scores = [UnitScore(u, float(table[u.layer, u.index])) for u in units]
    scores.sort(key=lambda s: (-s.score, s.unit))
    return Ranking(pick, trace.signal, scores, keep=trace.signals.keep)


# --------------------------------------------------------------------------------------------
# Export


def json_numbers(values: np.ndarray, digits: int = 6) -> list:
    """A JSON-ready list: rounded floats, None for NaN and infinities."""
    rounded = np.round(np.asarray(values, dtype=np.float64), digits)
    ok = np.isfinite(rounded)
    return [v if k else None for v, k in zip(rounded.tolist(), ok.tolist(), strict=True)]


def model_shape(config: ModelConfig) -> dict:
    """The model's shape as exports show it."""
    return {
        "layers": config.layers,
        "hidden": config.hidden,
        "embed": config.embed,
        "vocab_size": config.vocab_size,
        "cell": config.cell,
    }


def to_json(trace: Trace, ranking: Ranking, units: list[Unit], model: str) -> dict:
    """Everything `inspect-gates` measured, as plain JSON values: statistics for every unit,
    full arrays for the units shown (`shown`: the displayed span, raw c; `signal`: the ranked
    signal over the whole text). None stands for NaN, and for an infinite half-life."""
    cfg, stats, th, cell = trace.config, trace.stats, trace.thresholds, trace.signals
    saturation_rows = []
    memory_rows = []
    for layer in range(cfg.layers):
        for k, gate in enumerate(cell.sigmoid):
            saturation_rows.append(
                {
                    "layer": layer + 1,
                    "gate": gate,
                    "role": cell.roles[gate],
                    "shut": round(float(stats.left[layer, k]), 6),
                    "open": round(float(stats.right[layer, k]), 6),
                    "units_mostly_shut": int((stats.unit_left[layer, k] > th.mostly).sum()),
                    "units_mostly_open": int((stats.unit_right[layer, k] > th.mostly).sum()),
                }
            )
        memory_rows.append(
            {
                "layer": layer + 1,
                "keep_gate": cell.keep,
                "median_forget": json_numbers(stats.median_forget[layer : layer + 1], 8)[0],
                "half_life_steps": json_numbers(stats.half_life[layer : layer + 1], 3)[0],
                "integrators": int(stats.integrators[layer]),
            }
        )
    ranked = []
    for s in ranking.scores:
        entry = {
            "unit": str(s.unit),
            "layer": s.unit.layer + 1,
            "index": s.unit.index,
            "score": round(s.score, 6),
        }
        if s.r is not None:
            entry.update(r=round(s.r, 6), z=round(s.z, 3), chance=s.is_chance(th.z))
        ranked.append(entry)
    chosen = []
    for unit in units:
        chosen.append(
            {
                "unit": str(unit),
                "layer": unit.layer + 1,
                "index": unit.index,
                "mean": dict(
                    zip(cell.gates, json_numbers(stats.mean[unit.layer, :, unit.index]), strict=True)
                ),
                "std": dict(zip(cell.gates, json_numbers(stats.std[unit.layer, :, unit.index]), strict=True)),
                "shown": {name: json_numbers(trace.series(unit, name)) for name in cell.names},
                "signal": json_numbers(trace.values[unit.layer, :, unit.index]),
            }
        )
    S, shown_guesses = trace.shown, min(SHOWN_GUESSES, trace.guess_ids.shape[1])
    guesses = [[trace.vocab_chars[i] for i in row[:shown_guesses]] for row in trace.guess_ids[:S].tolist()]
    return {
        "format": "charlstm-gates/1",
        "model": model,
        "config": model_shape(cfg),
        "text": trace.text,
        "n_chars": trace.n_chars,
        "warmup_chars": trace.n_warmup,
        "shown_chars": trace.shown,
        "unknown_chars": trace.n_unknown,
        "bits_per_char": json_numbers(np.array([trace.bits_per_char]))[0],
        "signal": trace.signal,
        "signal_note": "tanh(c) for c" if trace.signal == "c" else "as computed",
        "thresholds": {"left": th.left, "right": th.right, "mostly": th.mostly, "z": th.z},
        "saturation": saturation_rows,
        "memory": memory_rows,
        "ranking": {
            "method": ranking.method,
            "description": ranking.describe(),
            "feature": ranking.feature,
            "n_shifts": ranking.n_shifts,
            "units": ranked,
        },
        "feature": None if ranking.feature_values is None else json_numbers(ranking.feature_values),
        "units": chosen,
        "surprisal_bits": json_numbers(trace.bits, 4),
        "guesses": {"chars": guesses, "probs": json_numbers(trace.guess_probs[:S, :shown_guesses], 5)},
    }
