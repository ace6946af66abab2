"""The explorer page's data: the signals of each kept unit (the LSTM's six, the GRU's four, the
plain RNN's h) quantised to uint8 with fixed scales, the guesses, the reach, the rankings and
the statistics, as one JSON document and named binary blocks (gzip, then base64), each decoded
by the page when first needed.

Scales (documented in the page too): the sigmoid gates (i, f, o; r, z) on [0, 1] as
q = round(255 v), error <= 1/510; g, n, tanh(c) and h on [-1, 1] as q = round(127.5 (v + 1)),
error <= 1/255. Guess probabilities
as uint16 (q / 65535); reach on a log scale over its fixed domain [lo, hi], 0 meaning
"before the text", 1..255 from lo to hi.
"""

from __future__ import annotations

import base64
import gzip
import math
from dataclasses import dataclass, field

import numpy as np

from .. import features, gates
from ..gates import Ranking, Trace, Unit, json_numbers
from ..reach import Reach, significant
from ..signals import BY_CELL, CellSignals

UNIT_SCALE = tuple(dict.fromkeys(g for s in BY_CELL.values() for g in s.sigmoid))  # [0, 1]; others [-1, 1]
ALL_UNITS_BUDGET = 2_000 * 1024  # units x characters that get their full signals (2,000 x 2x512)
TOP_UNITS = 64  # above that budget: full signals for this many units, summaries for the rest
RANKINGS = ("variance", "integrator", *features.BUILTIN_FEATURES)


def quantise(values: np.ndarray, signal: str) -> np.ndarray:
    """uint8 codes of a signal's values (tanh(c) already applied for c)."""
    if signal in UNIT_SCALE:
        scaled = np.asarray(values, dtype=np.float32) * 255.0
    else:
        scaled = (np.asarray(values, dtype=np.float32) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def dequantise(codes: np.ndarray, signal: str) -> np.ndarray:
    """The values the page shows for uint8 codes: the inverse of `quantise`."""
    codes = np.asarray(codes, dtype=np.float64)
    return codes / 255.0 if signal in UNIT_SCALE else codes / 127.5 - 1.0


class SignalRecorder:
    """A compute_trace observer keeping every signal of every unit over the whole text,
    quantised: codes (L, S, N, H) uint8 for the cell's S signals, S bytes per unit and character."""

    def __init__(self, layers: int, n_chars: int, hidden: int, signals: CellSignals):
        self.signals = signals
        self.codes = np.empty((layers, len(signals.names), n_chars, hidden), dtype=np.uint8)

    def __call__(self, layer: int, start: int, stop: int, g, c_seq, h_seq) -> None:
        H = h_seq.shape[1]
        out = self.codes[layer]
        gate_names = self.signals.gates
        for s, name in enumerate(self.signals.names):
            if name in gate_names:
                k = gate_names.index(name)
                values = g[:, k * H : (k + 1) * H]
            else:
                values = np.tanh(c_seq) if name == "c" else h_seq
            out[s, start:stop] = quantise(values, name)


def kept_units(trace: Trace, ranking: Ranking, chosen: list[Unit] | None) -> list[list[int]]:
    """Per layer, the units whose full signals go into the page (ascending): all of them when
    units x characters fit ALL_UNITS_BUDGET, else the TOP_UNITS best of the ranking and the
    units asked for."""
    L, H = trace.config.layers, trace.config.hidden
    if L * H * trace.n_chars <= ALL_UNITS_BUDGET:
        return [list(range(H)) for _ in range(L)]
    picked = {s.unit for s in ranking.scores[:TOP_UNITS]} | set(chosen or ())
    return [sorted(u.index for u in picked if u.layer == layer) for layer in range(L)]


@dataclass
class Payload:
    """The JSON document and the binary blocks (name -> base64 of gzip) of one page."""

    meta: dict
    blocks: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, array: np.ndarray) -> str:
        raw = np.ascontiguousarray(array)
        data = gzip.compress(raw.astype(raw.dtype.newbyteorder("<")).tobytes(), compresslevel=6, mtime=0)
        self.blocks[name] = base64.b64encode(data).decode("ascii")
        return name


def _ranking_rows(ranking: Ranking) -> list[list]:
    rows = []
    for s in ranking.scores:
        row = [s.unit.layer, s.unit.index, round(s.score, 5)]
        if s.r is not None:
            row += [round(s.r, 4), round(s.z, 2), s.is_chance(gates.Thresholds().z)]
        rows.append(row)
    return rows


def rankings_of(trace: Trace, ranking: Ranking, feature: str | None) -> dict[str, dict]:
    """Every ranking the unit table offers: variance, integrator, each preset feature and the
    --feature given; a feature with nothing to correlate on this text says why."""
    out: dict[str, dict] = {}
    names = list(RANKINGS) + ([feature] if feature is not None and feature not in RANKINGS else [])
    for name in names:
        entry: dict = {"name": name}
        try:
            if name in (ranking.method, ranking.feature):  # the ranking already made
                ranked = ranking
            elif name in gates.PICKS:
                ranked = gates.rank_units(trace, name)
            else:
                ranked = gates.rank_units(trace, feature=name)
        except gates.ConfigError as exc:
            entry.update(available=False, reason=str(exc))
        else:
            entry.update(
                available=True, method=ranked.method, description=ranked.describe(),
                rows=_ranking_rows(ranked), custom=name == feature and name not in RANKINGS,
            )  # fmt: skip
        out[name] = entry
    return out


def build_payload(
    trace: Trace,
    recorder: SignalRecorder,
    ranking: Ranking,
    reach: Reach,
    *,
    model_name: str,
    feature: str | None,
    chosen: list[Unit] | None,
    curves: dict | None,
) -> Payload:
    cfg, stats, cell = trace.config, trace.stats, trace.signals
    kept = kept_units(trace, ranking, chosen)
    payload = Payload(meta={})
    blocks: dict[str, str] = {}
    for layer, units in enumerate(kept):
        for s, name in enumerate(cell.names):
            codes = recorder.codes[layer, s][:, units].T  # (kept, N): a unit's row is contiguous
            blocks[f"L{layer + 1}.{name}"] = payload.add(f"sig-L{layer + 1}-{name}", codes)
    guess_dtype = np.uint8 if cfg.vocab_size <= 256 else np.uint16
    payload.add("guess-ids", trace.guess_ids.astype(guess_dtype))
    payload.add("guess-probs", np.rint(trace.guess_probs * 65535).astype(np.uint16))

    lo, hi = reach.domain()
    with np.errstate(divide="ignore", invalid="ignore"):
        position = (np.log(reach.sensitivity) - math.log(lo)) / (math.log(hi) - math.log(lo))
    codes = np.where(np.isfinite(position), 1 + np.rint(254 * np.clip(position, 0, 1)), 0).astype(np.uint8)
    payload.add("reach", codes)
    median, q1, q3 = reach.decay()

    payload.meta = {
        "format": "charlstm-explorer/1",
        "model": model_name,
        "config": gates.model_shape(cfg),
        "text": trace.text,
        "n_chars": trace.n_chars,
        "warmup_chars": trace.n_warmup,
        "unknown": trace.n_unknown,
        "vocab": trace.vocab_chars,
        "bits_per_char": None if math.isnan(trace.bits_per_char) else round(trace.bits_per_char, 4),
        "bits": json_numbers(trace.bits, 3),
        "signals": list(cell.names),
        "signal_help": cell.help,
        "signal_roles": cell.roles,
        "unit_scale": list(UNIT_SCALE),
        "kept": kept,
        "blocks": blocks,
        "guesses": {
            "ids": "guess-ids",
            "probs": "guess-probs",
            "top": int(trace.guess_ids.shape[1]),
            "wide": guess_dtype == np.uint16,
        },  # fmt: skip
        "rankings": rankings_of(trace, ranking, feature),
        "default_ranking": ranking.feature if ranking.method == "feature" else ranking.method,
        "ranked_signal": trace.signal,
        "thresholds": {"left": trace.thresholds.left, "right": trace.thresholds.right},
        "saturation": {
            "gates": list(cell.sigmoid),
            "left": [[json_numbers(row, 4) for row in stats.unit_left[layer]] for layer in range(cfg.layers)],
            "right": [
                [json_numbers(row, 4) for row in stats.unit_right[layer]] for layer in range(cfg.layers)
            ],
        },
        "memory": {
            "keep_gate": cell.keep,
            "median_forget": json_numbers(stats.median_forget, 6),
            "half_life": json_numbers(stats.half_life, 2),
            "integrators": stats.integrators.tolist(),
        },
        "reach": {
            "block": "reach",
            "targets": int(reach.targets.size),
            "lags": reach.lags,
            "domain": [lo, hi],
            "input": reach.input_name,
            "window": reach.window,
            "median": significant(median, 5),
            "q1": significant(q1, 5),
            "q3": significant(q3, 5),
            "keep_gate": reach.keep_gate,
            "forget_product": [significant(row, 5) for row in reach.forget_product],
        },
        "curves": curves,
    }
    return payload
