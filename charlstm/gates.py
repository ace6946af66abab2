"""Gate inspection: run a model over a text with B=1 and keep what its LSTM cells did.

`compute_trace` records the gates i, f, g, o, the memory c and the hidden state h of every unit
(full arrays for the displayed span, streamed statistics over the whole text); the functions
below it measure gate saturation, memory half-life, and rank units by variability or by
correlation with a feature of the text, against a circular-shift null. No rich, no Typer here.
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import kernels
from .data import Vocab, encode_known
from .errors import ConfigError
from .model import GATE_NAMES, ModelConfig, Params, zero_state
from .stream import LayerCallback as LayerObserver
from .stream import run_stream

SIGNALS = ("i", "f", "g", "o", "c", "h")  # the four gates, then the cell's memory and output
SIGNAL_ROLES = {  # short labels, from the explainers' "four small networks" picture
    "i": "input/learn",
    "f": "forget",
    "g": "candidate",
    "o": "output/use",
    "c": "memory",
    "h": "hidden",
}
SIGNAL_HELP = {  # one line each, for legends
    "i": "input gate: how much of the candidate is written into memory now (learn)",
    "f": "forget gate: how much of the old memory is kept (1 keeps all, 0 wipes it)",
    "g": "candidate: the new value on offer for the memory, in [-1, 1]",
    "o": "output gate: how much of the memory is shown as h (use)",
    "c": "memory cell c = f*c_prev + i*g, shown as tanh(c) in [-1, 1]",
    "h": "hidden state h = o*tanh(c): what the layer above and the prediction see",
}
SATURATION_GATES = ("i", "f", "o")  # sigmoid gates: the ones that can be shut or wide open
BUILTIN_FEATURES = ("quote", "line-pos", "indent", "depth")
PICKS = ("variance", "integrator")

MAX_CHARS = 20_000  # statistics cover at most this many characters (memory: L*N*H floats x2)
DEFAULT_MAX_CHARS = 2_000
WINDOW = 1024  # characters per forward call; the state (h, c) is carried between windows
N_SHIFTS = 20  # circular shifts making the null distribution of a feature correlation
TOP_GUESSES = 5  # kept for every character; the terminal shows the first SHOWN_GUESSES
SHOWN_GUESSES = 3
FORGET_BINS = 1 << 16  # forget gates binned by the top 16 bits of float32(1 - f)
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
    """One LSTM unit: layer counted from 0 here, shown as L1, L2, ... (`L2:17`)."""

    layer: int
    index: int

    def __str__(self) -> str:
        return f"L{self.layer + 1}:{self.index}"


_UNIT_RE = re.compile(r"\s*[Ll]?(\d+)\s*:\s*(\d+)\s*")


def require_lstm(config: ModelConfig, path) -> None:
    """Refuse a GRU or plain RNN model: the inspector reads the LSTM's gates and cell only
    (the other cells' signals are still to come)."""
    if config.cell != "lstm":
        raise ConfigError(f"{path}: a {config.cell} model; the gate inspector reads LSTM models only so far")


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

    left: np.ndarray  # (L, 3) share of (time, unit) values of i, f, o below thresholds.left
    right: np.ndarray  # (L, 3) ... above thresholds.right
    unit_left: np.ndarray  # (L, 3, H) share of time each unit's i, f, o is left-saturated
    unit_right: np.ndarray  # (L, 3, H)
    mean: np.ndarray  # (L, 4, H) time-mean of each unit's i, f, g, o
    std: np.ndarray  # (L, 4, H) and its standard deviation
    median_forget: np.ndarray  # (L,) median of f over time and units
    half_life: np.ndarray  # (L,) memory half-life in steps at that median (inf: never forgets)
    integrators: np.ndarray  # (L,) units whose forget gate is right-saturated most of the time


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
    gates: np.ndarray  # (L, S, 4H) activated i, f, g, o on the shown span
    c: np.ndarray  # (L, S, H) memory on the shown span
    h: np.ndarray  # (L, S, H)
    bits: np.ndarray  # (N,) surprisal of each character in bits (NaN: first, or unknown)
    guess_ids: np.ndarray  # (G, 5) the model's top guesses for the character after each of the
    guess_probs: np.ndarray  # (G, 5)   first G: the shown span, or every character if asked
    stats: GateStats
    thresholds: Thresholds
    start_c: np.ndarray  # (L, H) the memory before the first character (after the warm-up)
    value_mean: np.ndarray = field(init=False)  # (L, H) time-mean of `values`
    value_std: np.ndarray = field(init=False)  # (L, H)

    def __post_init__(self) -> None:
        self.value_mean, self.value_std = _mean_std(self.values)

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
        H = self.config.hidden
        if name in GATE_NAMES:
            k = GATE_NAMES.index(name)
            return self.gates[unit.layer, :, k * H + unit.index]
        if name == "c":
            return self.c[unit.layer, :, unit.index]
        if name == "h":
            return self.h[unit.layer, :, unit.index]
        raise ConfigError(f"unknown signal {name!r}; choose one of {', '.join(SIGNALS)}")

    def layer_signal(self, layer: int, name: str) -> np.ndarray:
        """(S, H) one signal of every unit of a layer over the shown span."""
        H = self.config.hidden
        if name in GATE_NAMES:
            k = GATE_NAMES.index(name)
            return self.gates[layer, :, k * H : (k + 1) * H]
        return self.c[layer] if name == "c" else self.h[layer]


def check_signal(name: str) -> str:
    if name not in SIGNALS:
        raise ConfigError(f"unknown signal {name!r}; choose one of {', '.join(SIGNALS)}")
    return name


def compute_trace(
    params: Params,
    vocab: Vocab,
    text: str,
    *,
    warmup: str = "",
    show: int = 400,
    signal: str = "c",
    thresholds: Thresholds | None = None,
    window: int = WINDOW,
    observe: LayerObserver | None = None,
    guess_everywhere: bool = False,
) -> Trace:
    """Run the model over `warmup` (not recorded) and then `text` (at most MAX_CHARS), one
    stream, `window` characters at a time, the layers pipelined on threads (stream.py).
    The gates equal model.forward's (evaluation's) up to float rounding.

    Characters missing from the vocabulary are read as a space (or the first character of
    the vocabulary) and left out of the bits per character. `observe(layer, start, stop, g,
    c_seq, h_seq)` sees every window of every layer, on that layer's thread (stream.py). The top
    guesses cover the shown span, or with `guess_everywhere` every character (the explorer's
    tooltips): over 20,000 characters that costs 0.09 s, half a 1x128 trace."""
    config = params.config
    thresholds = (thresholds or Thresholds()).check()
    check_signal(signal)
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
    if len(warm_ids) and known[0]:
        logp = np.empty(1)
        kernels.token_log_probs(logp, last_logits, ids[:1])
        bits[0] = -logp[0] / math.log(2.0)

    values = _populated_empty((L, N, H), np.float32)  # up to 80 MB, written window by window
    gates_shown = np.empty((L, S, 4 * H), dtype=params.dtype)
    c_shown = np.empty((L, S, H), dtype=params.dtype)
    h_shown = np.empty((L, S, H), dtype=params.dtype)
    G = N if guess_everywhere else S
    guess_ids = np.zeros((G, min(TOP_GUESSES, config.vocab_size)), dtype=np.int64)
    guess_probs = np.zeros(guess_ids.shape)
    below = np.zeros((L, 4 * H), dtype=np.int64)  # per gate unit: steps below thresholds.left
    above = np.zeros((L, 4 * H), dtype=np.int64)
    sums = np.zeros((L, 4 * H))
    sumsq = np.zeros((L, 4 * H))
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
        # g (n, 4H), c_seq and h_seq (n, H): this layer's window of the text
        if start < S:
            s_stop = min(stop, S)
            gates_shown[layer, start:s_stop] = g[: s_stop - start]
            c_shown[layer, start:s_stop] = c_seq[: s_stop - start]
            h_shown[layer, start:s_stop] = h_seq[: s_stop - start]
        _store_signal(values[layer, start:stop], signal, g, c_seq, h_seq)
        kernels.gate_stats_add(
            below[layer], above[layer], sums[layer], sumsq[layer], forget_bins[layer],
            g, thresholds.left, thresholds.right,
        )  # fmt: skip
        if observe is not None:
            observe(layer, start, stop, g, c_seq, h_seq)

    run_stream(params, ids, h, c, window, on_layer, on_logits)

    bits[~known] = np.nan
    stats = _gate_stats(below, above, sums, sumsq, forget_bins, N, H, thresholds)
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


def _store_signal(out: np.ndarray, signal: str, g: np.ndarray, c_seq: np.ndarray, h_seq: np.ndarray) -> None:
    """out (n, H) = the chosen signal of a layer's window (tanh(c) for the memory), from its
    gates g (n, 4H), memory c_seq and hidden state h_seq (n, H)."""
    H = h_seq.shape[1]
    if signal in GATE_NAMES:
        k = GATE_NAMES.index(signal)
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


def _mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, H) mean and standard deviation over time of values (L, N, H), in float64."""
    L, N, H = values.shape
    mean = np.zeros((L, H))
    sq = np.zeros((L, H))
    for layer in range(L):
        for start in range(0, N, WINDOW):  # float64 one window at a time: no N-sized copy
            block = values[layer, start : start + WINDOW].astype(np.float64)
            mean[layer] += block.sum(axis=0)
            sq[layer] += np.square(block).sum(axis=0)
    mean /= N
    var = np.maximum(sq / N - mean * mean, 0.0)
    return mean, np.sqrt(var)


def _gate_stats(below, above, sums, sumsq, forget_bins, N: int, H: int, thresholds: Thresholds) -> GateStats:
    L = below.shape[0]
    picks = [GATE_NAMES.index(g) for g in SATURATION_GATES]
    unit_left = np.stack([below[:, k * H : (k + 1) * H] for k in picks], axis=1) / N  # (L, 3, H)
    unit_right = np.stack([above[:, k * H : (k + 1) * H] for k in picks], axis=1) / N
    mean = (sums / N).reshape(L, 4, H)
    std = np.sqrt(np.maximum(sumsq.reshape(L, 4, H) / N - mean * mean, 0.0))
    median_forget = np.array([median_from_bins(forget_bins[layer]) for layer in range(L)])
    f_index = SATURATION_GATES.index("f")
    return GateStats(
        left=unit_left.mean(axis=2),
        right=unit_right.mean(axis=2),
        unit_left=unit_left,
        unit_right=unit_right,
        mean=mean,
        std=std,
        median_forget=median_forget,
        half_life=half_life(median_forget),
        integrators=integrator_count(unit_right[:, f_index], thresholds.mostly),
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
    gates = np.zeros((f.shape[0], 4 * f.shape[1]), dtype=f.dtype)
    gates[:, f.shape[1] : 2 * f.shape[1]] = f
    kernels.gate_stats_add(
        np.zeros(gates.shape[1], np.int64), np.zeros(gates.shape[1], np.int64),
        np.zeros(gates.shape[1]), np.zeros(gates.shape[1]), bins, gates, 0.0, 1.0,
    )  # fmt: skip
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
# Features of the text


def feature_values(text: str, spec: str) -> tuple[np.ndarray, str]:
    """A number per character for a built-in feature or a regular expression, and a short
    description. Built-ins are causal: the value after reading that character.
      quote    1 inside double quotes ("..." or curly), the opening quote included
      line-pos column: characters since the last newline (the newline itself is 0)
      indent   leading spaces and tabs of the current line so far
      depth    bracket depth: ( [ { open, ) ] } close, never below 0
    Anything else (or `re:PATTERN`) is a regular expression: 1 on characters inside a match.
    """
    if not text:
        raise ConfigError("nothing to inspect: the text is empty")
    builtins: dict[str, tuple[Callable[[str], np.ndarray], str]] = {
        "quote": (_quote_feature, "inside double quotes"),
        "line-pos": (_line_pos_feature, "column in the line"),
        "indent": (_indent_feature, "indentation of the line"),
        "depth": (_depth_feature, "bracket depth"),
    }
    if spec in builtins:
        fn, what = builtins[spec]
        return fn(text), what
    pattern = spec[3:] if spec.startswith("re:") else spec
    if not pattern:
        raise ConfigError("--feature: empty regular expression")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"--feature: bad regular expression {pattern!r}: {exc}") from None
    mask = np.zeros(len(text))
    for match in regex.finditer(text):
        mask[match.start() : match.end()] = 1.0
    return mask, f"inside matches of /{pattern}/"


def _quote_feature(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    inside = False
    for t, ch in enumerate(text):
        if ch == '"':
            inside = not inside
        elif ch == "\u201c":  # left double quotation mark
            inside = True
        elif ch == "\u201d":
            inside = False
        out[t] = inside
    return out


def _line_pos_feature(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    col = 0
    for t, ch in enumerate(text):
        col = 0 if ch == "\n" else col + 1
        out[t] = col
    return out


def _indent_feature(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    indent, leading = 0, True
    for t, ch in enumerate(text):
        if ch == "\n":
            indent, leading = 0, True
        elif leading and ch in " \t":
            indent += 1
        else:
            leading = False
        out[t] = indent
    return out


def _depth_feature(text: str) -> np.ndarray:
    out = np.zeros(len(text))
    depth = 0
    for t, ch in enumerate(text):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth = max(0, depth - 1)
        out[t] = depth
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
            return "share of time the forget gate is wide open"
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
        shifts = len(_shifts(len(values), N_SHIFTS))
        return Ranking("feature", trace.signal, scores, feature, desc, values, shifts)
    if pick == "variance":
        table = trace.value_std
    elif pick == "integrator":
        table = trace.stats.unit_right[:, SATURATION_GATES.index("f")]
    else:
        raise ConfigError(f"unknown --pick {pick!r}; choose one of {', '.join(PICKS)}")
    scores = [UnitScore(u, float(table[u.layer, u.index])) for u in units]
    scores.sort(key=lambda s: (-s.score, s.unit))
    return Ranking(pick, trace.signal, scores)


def check_feature(text: str, spec: str) -> tuple[np.ndarray, str]:
    """feature_values, refusing a feature that never changes over the text."""
    values, desc = feature_values(text, spec)
    if values.min() == values.max():
        raise ConfigError(
            f"--feature {spec}: {desc} is the same ({values[0]:g}) for all {len(values):,} characters "
            "of this text; there is nothing to correlate with"
        )
    if len(_shifts(len(values), N_SHIFTS)) < 3:
        raise ConfigError(
            f"--feature: {len(values)} characters are too few to tell a correlation from chance"
        )
    return values, desc


def _shifts(N: int, n_shifts: int) -> list[int]:
    """Evenly spread circular shifts, far from 0 (deterministic, so runs repeat exactly)."""
    return sorted({round(k * N / (n_shifts + 1)) for k in range(1, n_shifts + 1)} - {0, N})


def feature_correlation(
    values: np.ndarray, feature: np.ndarray, std: np.ndarray | None = None, n_shifts: int = N_SHIFTS
) -> tuple[np.ndarray, np.ndarray]:
    """Pearson r of every unit's signal with the feature, and its z-score against a null
    made by circularly shifting the feature (which keeps its runs and autocorrelation but
    breaks its alignment with the text).

    values (L, N, H) or (N, H); feature (N,); std the units' standard deviations (L, H) if
    known. Returns r and z shaped like values without N. A unit that never changes gets r = 0
    and z = 0. Raises ConfigError when the feature is constant or the text too short."""
    squeeze = values.ndim == 2
    if squeeze:
        values = values[None]
        std = None if std is None else std[None]
    L, N, H = values.shape
    feature = np.asarray(feature, dtype=np.float64)
    if feature.shape != (N,):
        raise ConfigError(f"feature has {feature.size} values for {N} characters")
    shifts = _shifts(N, n_shifts)
    if len(shifts) < 3:
        raise ConfigError(f"{N} characters are too few to tell a correlation from chance")
    centred = feature - feature.mean()
    f_std = float(np.sqrt(np.mean(centred * centred)))
    if f_std == 0.0:
        raise ConfigError("the feature does not change over this text: nothing to correlate with")
    F = np.empty((N, 1 + len(shifts)), dtype=values.dtype)  # (N, 1 + shifts): feature, then the null
    F[:, 0] = centred
    for k, s in enumerate(shifts):
        F[:, 1 + k] = np.roll(centred, s)
    if std is None:
        std = _mean_std(values)[1]
    r = np.zeros((L, H))
    z = np.zeros((L, H))
    cov = np.empty((H, F.shape[1]), dtype=values.dtype)  # (H, 1 + shifts)
    for layer in range(L):
        # sum_t x_t * (f_t - mean f) is the covariance times N: no need to centre x.
        kernels.matmul(cov, values[layer].T, F)
        live = std[layer] > 1e-6  # float32 rounding leaves ~1e-8 on a constant unit
        rs = np.zeros((H, F.shape[1]))
        rs[live] = cov[live].astype(np.float64) / (N * std[layer][live, None] * f_std)
        rs = np.clip(rs, -1.0, 1.0)
        r[layer] = rs[:, 0]
        null = rs[:, 1:]
        spread = null.std(axis=1, ddof=1)
        ok = live & (spread > 1e-12)
        z[layer, ok] = (rs[ok, 0] - null[ok].mean(axis=1)) / spread[ok]
    if squeeze:
        return r[0], z[0]
    return r, z


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
    }


def to_json(trace: Trace, ranking: Ranking, units: list[Unit], model: str) -> dict:
    """Everything `inspect-gates` measured, as plain JSON values: statistics for every unit,
    full arrays for the units shown (`shown`: the displayed span, raw c; `signal`: the ranked
    signal over the whole text). None stands for NaN, and for an infinite half-life."""
    cfg, stats, th = trace.config, trace.stats, trace.thresholds
    saturation_rows = []
    memory_rows = []
    for layer in range(cfg.layers):
        for k, gate in enumerate(SATURATION_GATES):
            saturation_rows.append(
                {
                    "layer": layer + 1,
                    "gate": gate,
                    "role": SIGNAL_ROLES[gate],
                    "shut": round(float(stats.left[layer, k]), 6),
                    "open": round(float(stats.right[layer, k]), 6),
                    "units_mostly_shut": int((stats.unit_left[layer, k] > th.mostly).sum()),
                    "units_mostly_open": int((stats.unit_right[layer, k] > th.mostly).sum()),
                }
            )
        memory_rows.append(
            {
                "layer": layer + 1,
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
                    zip(GATE_NAMES, json_numbers(stats.mean[unit.layer, :, unit.index]), strict=True)
                ),
                "std": dict(zip(GATE_NAMES, json_numbers(stats.std[unit.layer, :, unit.index]), strict=True)),
                "shown": {name: json_numbers(trace.series(unit, name)) for name in SIGNALS},
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
