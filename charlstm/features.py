"""Features of the text and how a unit's signal correlates with one: built-in features (quotes,
column, indentation, bracket depth) or any regular expression, one number per character, and
Pearson r against a null made by circular shifts of the feature. No rich, no Typer here.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from . import kernels
from .errors import ConfigError

BUILTIN_FEATURES = ("quote", "line-pos", "indent", "depth")
N_SHIFTS = 20  # circular shifts making the null distribution of a feature correlation
WINDOW = 1024  # rows of a signal turned into float64 at a time


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


def check_feature(text: str, spec: str) -> tuple[np.ndarray, str]:
    """feature_values, refusing a feature that never changes over the text."""
    values, desc = feature_values(text, spec)
    if values.min() == values.max():
        raise ConfigError(
            f"--feature {spec}: {desc} is the same ({values[0]:g}) for all {len(values):,} characters "
            "of this text; there is nothing to correlate with"
        )
    if len(shifts_of(len(values), N_SHIFTS)) < 3:
        raise ConfigError(
            f"--feature: {len(values)} characters are too few to tell a correlation from chance"
        )
    return values, desc


def shifts_of(N: int, n_shifts: int) -> list[int]:
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
    shifts = shifts_of(N, n_shifts)
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
        std = mean_std(values)[1]
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


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
