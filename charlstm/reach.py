"""How far back a prediction reaches: the gradient of log p(next character) with respect to
each earlier input, and the product of the keep gates (the LSTM's forget gates f, the GRU's
update gates z; a plain RNN has none) over the same lags.

For a target position t, `sensitivity[t, k]` is ||d log p(x[t+1] | x[..t]) / d input[t-k]||_2,
the input being the embedding row fed at t-k (the one-hot vector when E = 0). It is computed
exactly, by backpropagation through the cells from one loss term per target: the targets are
the B streams of one backward pass, stream b walking back from its target one lag per step
(so the forward activations are the trace's, read at t_b - k). A gradient measures local
sensitivity, not a contribution: a large value says a small change there would move the
prediction, not that the prediction was made from there. No rich, no Typer here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError
from .gates import Trace
from .model import Params

DEFAULT_TARGETS = 400
DEFAULT_LAGS = 100
MAX_TARGETS = 20_000
DOMAIN_LOW_QUANTILE = 0.01  # the log colour scale runs from this quantile of all values to the top
LAG_BANDS = (
    (0, 0),
    (1, 1),
    (2, 4),
    (5, 9),
    (10, 19),
    (20, 49),
    (50, 99),
    (100, 199),
    (200, 499),
    (500, 10**9),
)


@dataclass
class Reach:
    """The sensitivities of R targets over lags 0..K, and what summarises them."""

    targets: np.ndarray  # (R,) positions t, in order; t + 1 is the character predicted
    sensitivity: np.ndarray  # (R, K + 1) float64; NaN where t - k falls before the text
    forget_product: np.ndarray  # (L, K + 1) per layer, median over targets and units of the
    #                             product of the keep gate; (0, K + 1) for a plain RNN
    input_name: str  # "embedding row" or "one-hot vector"
    window: int | None  # the BPTT window (seq_len) the model was trained with, if known
    keep_gate: str | None = "f"  # the cell's keep gate: f (LSTM), z (GRU), None (RNN)

    @property
    def lags(self) -> int:
        return self.sensitivity.shape[1] - 1

    def decay(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(K + 1,) each: the median, first and third quartile of the sensitivity at each lag,
        over the targets that reach that far back."""
        return _quantiles_by_column(self.sensitivity, (0.5, 0.25, 0.75))

    def domain(self) -> tuple[float, float]:
        """The fixed domain of the log colour scale: a low quantile of every positive value,
        and the largest. The same for every target, so shades compare across positions."""
        values = self.sensitivity[np.isfinite(self.sensitivity) & (self.sensitivity > 0)]
        if values.size == 0:
            return 1e-6, 1.0
        lo, hi = float(np.quantile(values, DOMAIN_LOW_QUANTILE)), float(values.max())
        return (lo, hi) if hi > lo else (hi / 10, hi)

    def relative_median(self, lag: int) -> float:
        """Median sensitivity at `lag` over the median at lag 1 (NaN when out of range)."""
        median = self.decay()[0]
        if lag >= median.size or median.size < 2 or not median[1] > 0:
            return math.nan
        return float(median[lag] / median[1])

    def bands(self) -> list[dict]:
        """The decay and the forget-gate products summarised over bands of lags (for tables)."""
        median, q1, q3 = self.decay()
        rows = []
        for lo, hi in LAG_BANDS:
            if lo > self.lags:
                break
            cut = slice(lo, min(hi, self.lags) + 1)
            rows.append(
                {
                    "lags": (lo, min(hi, self.lags)),
                    "median": _nan_mean(median[cut]),
                    "q1": _nan_mean(q1[cut]),
                    "q3": _nan_mean(q3[cut]),
                    "forget_product": [_nan_mean(row[cut]) for row in self.forget_product],
                }
            )
        return rows


def compute_reach(
    params: Params, trace: Trace, *, targets: int | None = None, lags: int = DEFAULT_LAGS,
    window: int | None = None,
) -> Reach:  # fmt: skip
    """Sensitivities of the first `targets` positions of the trace's shown span (default: all of
    it, at most DEFAULT_TARGETS) over lags 0..`lags` (never beyond the text), from the trace's
    gates and states, in the model's float type."""
    config = params.config
    if lags < 0:
        raise ConfigError(f"--lags must be at least 0, got {lags}")
    count = target_count(targets, trace.shown)
    if not 1 <= count <= MAX_TARGETS:
        raise ConfigError(f"--reach must be between 1 and {MAX_TARGETS:,}, got {count:,}")
    count = min(count, trace.shown, trace.n_chars - 1)  # a target needs a next character
    if count < 1:
        raise ConfigError("reach needs at least two characters: a position and the one after it")
    positions = np.arange(count)
    K = min(lags, int(positions[-1]))  # lags never reach before the text
    L, H = config.layers, config.hidden
    dtype = params.dtype
    B = count

    top = trace.h[L - 1, positions]  # (B, H)
    logits = top.astype(np.float64) @ params["head.W"] + params["head.b"]  # (B, V)
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(B), trace.ids[positions + 1]] -= 1.0  # softmax - one-hot: d(-log p)/d logits
    dh_top = (-p @ params["head.W"].T).astype(dtype)  # (B, H): d log p / d h at the target

    step_back = {"lstm": _lstm_step_back, "gru": _gru_step_back, "rnn": _rnn_step_back}[config.cell]
    dh_next = [np.zeros((B, H), dtype=dtype) for _ in range(L)]  # through step t-k+1, per layer
    dc_next = [np.zeros((B, H), dtype=dtype) for _ in range(L)]  # the LSTM's, through its memory
    sensitivity = np.full((B, K + 1), np.nan)
    for k in range(K + 1):
        at = positions - k  # (B,) the position each stream is at
        alive = at >= 0
        at_read = np.maximum(at, 0)
        dh_above = dh_top if k == 0 else None
        for layer in range(L - 1, -1, -1):
            dh = dh_next[layer] if dh_above is None else dh_next[layer] + dh_above
            # dx (B, I): into the input at t - k; dh_prev (B, H): into h at t - k - 1
            dx, dh_prev = step_back(params, trace, layer, at_read, dh, dc_next[layer])
            for grad in (dx, dh_prev, dc_next[layer]):
                grad[~alive] = 0.0
            dh_next[layer] = dh_prev
            dh_above = dx
        norms = np.sqrt(np.square(dh_above.astype(np.float64)).sum(axis=1))
        sensitivity[alive, k] = norms[alive]

    keep = trace.signals.keep
    return Reach(
        targets=positions,
        sensitivity=sensitivity,
        forget_product=_forget_products(trace, positions, K) if keep else np.zeros((0, K + 1)),
        input_name="embedding row" if config.embed > 0 else "one-hot vector",
        window=window,
        keep_gate=keep,
    )


def target_count(requested: int | None, shown: int) -> int:
    """How many targets `--reach` asks for: the number given, else the shown characters, at
    most DEFAULT_TARGETS."""
    return min(shown, DEFAULT_TARGETS) if requested is None else requested


def significant(values: np.ndarray, digits: int = 6) -> list:
    """JSON numbers to `digits` significant digits (values spanning many decades), None for NaN."""
    return [None if not math.isfinite(v) else float(f"{v:.{digits}g}") for v in np.ravel(values).tolist()]


def _lstm_step_back(
    params: Params, trace: Trace, layer: int, at: np.ndarray, dh: np.ndarray, dc_next: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One LSTM step backward for B streams at positions `at` (B,): from dh (B, H), the gradient
    reaching h there, and dc_next (B, H), the gradient reaching c there from the step after
    (overwritten with the gradient reaching the memory before), to the gradients reaching the
    layer's input there (B, I) and h the step before (B, H)."""
    dz = _lstm_gate_gradient(trace, layer, at, dh, dc_next)  # (B, 4H)
    return dz @ params[f"lstm.{layer}.Wx"].T, dz @ params[f"lstm.{layer}.Wh"].T


def _gru_step_back(
    params: Params, trace: Trace, layer: int, at: np.ndarray, dh: np.ndarray, unused: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One GRU step backward, as _lstm_step_back (a GRU has no memory but h): h = (1 - z) n +
    z h_prev, n = tanh(x_n + r (h_prev·Wh_n + bh_n)), r and z sigmoids of x·Wx + h_prev·Wh."""
    H = dh.shape[1]
    gates = trace.gates[layer, at]  # (B, 3H) activated
    r, z, n = (gates[:, k * H : (k + 1) * H] for k in range(3))
    h_prev = _previous(trace.h[layer], trace.start_h[layer], at)
    Wh = params[f"gru.{layer}.Wh"]
    hn = h_prev @ Wh[:, 2 * H :] + params[f"gru.{layer}.bh"][2 * H :]  # (B, H) what r scales
    dn = dh * (1.0 - z) * (1.0 - n * n)  # w.r.t. n's pre-activation
    dx_proj = np.empty_like(gates)  # w.r.t. x·Wx + bx
    dx_proj[:, :H] = dn * hn * r * (1.0 - r)
    dx_proj[:, H : 2 * H] = dh * (h_prev - n) * z * (1.0 - z)
    dx_proj[:, 2 * H :] = dn
    dh_proj = dx_proj.copy()  # w.r.t. h_prev·Wh + bh: r scales the candidate's part
    dh_proj[:, 2 * H :] *= r
    return dx_proj @ params[f"gru.{layer}.Wx"].T, dh * z + dh_proj @ Wh.T


def _rnn_step_back(
    params: Params, trace: Trace, layer: int, at: np.ndarray, dh: np.ndarray, unused: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One plain RNN step backward, as _lstm_step_back: h = tanh(x·Wx + h_prev·Wh + b)."""
    h = trace.h[layer, at]
    da = dh * (1.0 - h * h)  # (B, H) w.r.t. the pre-activation
    return da @ params[f"rnn.{layer}.Wx"].T, da @ params[f"rnn.{layer}.Wh"].T


def _previous(seq: np.ndarray, start: np.ndarray, at: np.ndarray) -> np.ndarray:
    """(B, H) seq (S, H) at positions at - 1, `start` (H,) where at is 0."""
    out = seq[np.maximum(at - 1, 0)]
    out[at == 0] = start
    return out


def _lstm_gate_gradient(
    trace: Trace, layer: int, at: np.ndarray, dh: np.ndarray, dc_next: np.ndarray
) -> np.ndarray:
    """dz (B, 4H) with respect to the pre-activations of i, f, g, o (see _lstm_step_back)."""
    H = dh.shape[1]
    gates = trace.gates[layer, at]  # (B, 4H) activated
    i, f, g, o = (gates[:, k * H : (k + 1) * H] for k in range(4))
    c = trace.c[layer, at]
    c_prev = _previous(trace.c[layer], trace.start_c[layer], at)
    tanh_c = np.tanh(c)
    dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)  # h = o tanh(c)
    dz = np.empty_like(gates)
    dz[:, 0:H] = dc * g * i * (1.0 - i)  # c = f c_prev + i g
    dz[:, H : 2 * H] = dc * c_prev * f * (1.0 - f)
    dz[:, 2 * H : 3 * H] = dc * i * (1.0 - g * g)
    dz[:, 3 * H :] = dh * tanh_c * o * (1.0 - o)
    dc_next[...] = dc * f
    return dz


def _forget_products(trace: Trace, positions: np.ndarray, K: int) -> np.ndarray:
    """(L, K + 1): per layer and lag k, the median over targets t >= k and units of
    prod_{j < k} f[t - j], the factor the memory written at t - k keeps at t when nothing else
    is written (the direct path through the cell); f is the keep gate (the GRU's z)."""
    L, H = trace.config.layers, trace.config.hidden
    keep = trace.signals.keep_index
    out = np.full((L, K + 1), np.nan)
    out[:, 0] = 1.0
    for layer in range(L):
        f = trace.gates[layer, : positions[-1] + 1, keep * H : (keep + 1) * H]
        log_f = np.log(np.maximum(f.astype(np.float64), 1e-300))
        running = np.zeros((positions.size, H))  # (R, H) sum of log f over the last k steps
        for k in range(1, K + 1):
            valid = positions >= k  # positions ascend: the valid targets are a suffix
            first = int(np.argmax(valid))
            running[first:] += log_f[positions[first:] - (k - 1)]
            out[layer, k] = float(np.median(np.exp(running[first:])))
    return out


def _quantiles_by_column(values: np.ndarray, qs: tuple[float, ...]) -> tuple[np.ndarray, ...]:
    out = [np.full(values.shape[1], np.nan) for _ in qs]
    for k in range(values.shape[1]):
        column = values[:, k]
        column = column[np.isfinite(column)]
        if column.size:
            for row, q in zip(out, np.quantile(column, qs), strict=True):
                row[k] = q
    return tuple(out)


def _nan_mean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else math.nan


def to_json(reach: Reach) -> dict:
    """The reach arrays as plain JSON values (None for NaN)."""
    median, q1, q3 = reach.decay()
    lo, hi = reach.domain()

    return {
        "input": reach.input_name,
        "note": "gradient norm: local sensitivity of log p(next character), not a contribution",
        "targets": reach.targets.tolist(),
        "lags": reach.lags,
        "bptt_window": reach.window,
        "domain": [lo, hi],
        "sensitivity": [significant(row) for row in reach.sensitivity],
        "decay": {"median": significant(median), "q1": significant(q1), "q3": significant(q3)},
        "keep_gate": reach.keep_gate,
        "forget_product": [significant(row) for row in reach.forget_product],
    }
