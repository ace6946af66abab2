"""Text generation: read a seed, then write what the model would write next.

`load_model` gives a `Model` to call `.generate` on (from a notebook, say); `generate` does the
same from bare parameters and a vocabulary. B samples are drawn together, one batched kernel
call per 64 characters (kernels.generate_steps), with temperature, top-k and top-p.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from . import kernels
from .checkpoint import default_model_path, load_checkpoint
from .data import Vocab
from .errors import ConfigError
from .model import CELLS, ModelConfig, Params

TextFn = Callable[[int, str], None]  # (sample index, the next piece of its text)

CHUNK = 64  # characters per kernel call: how often text is streamed and --stop checked


class UnknownCharactersError(ConfigError):
    """The seed holds characters the model has never seen (listed in `chars`)."""

    def __init__(self, chars: list[str]):
        self.chars = chars
        super().__init__(
            f"the seed has {len(chars)} character(s) the model has never seen: {_listing(chars)} "
            "(--skip-unknown, or skip_unknown=True, drops them)"
        )


class UnknownCharactersWarning(UserWarning):
    """Characters dropped from the seed because of skip_unknown=True."""


def _listing(chars: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(ch) for ch in chars[:limit])
    return shown + (f" and {len(chars) - limit} more" if len(chars) > limit else "")


# --------------------------------------------------------------------------------------------
# Checking options and the seed


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float | np.floating)) and math.isfinite(value)


MAX_SAMPLES = 100_000  # samples run as one batch: their states and texts are held together
MAX_THREADS = 256  # accepted; any value above 1 runs the two-thread kernel


def check_options(
    *,
    length: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    num_samples: int = 1,
    stop: str | None = None,
    random_seed: int | None = None,
    threads: int = 1,
) -> None:
    """Raise ConfigError for the first option out of range (before any model is loaded)."""
    if not _is_int(length) or length < 0:
        raise ConfigError(f"length must be a whole number >= 0, got {length!r}")
    if not _is_number(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a number >= 0 (0: most likely), got {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ConfigError(f"top-k must be a whole number >= 1, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ConfigError(f"top-p must be a number in (0, 1], got {top_p!r}")
    if not _is_int(num_samples) or not 1 <= num_samples <= MAX_SAMPLES:
        raise ConfigError(f"num-samples must be a whole number in [1, {MAX_SAMPLES}], got {num_samples!r}")
    if stop is not None and (not isinstance(stop, str) or stop == ""):
        raise ConfigError(f"stop must be a non-empty string, got {stop!r}")
    if random_seed is not None and (not _is_int(random_seed) or random_seed < 0):
        raise ConfigError(f"random seed must be a whole number >= 0, got {random_seed!r}")
    if not _is_int(threads) or not 1 <= threads <= MAX_THREADS:
        raise ConfigError(f"threads must be a whole number in [1, {MAX_THREADS}], got {threads!r}")


def clean_seed(vocab: Vocab, seed: str, skip_unknown: bool = False) -> str:
    """The seed as the model will read it. Characters the model has never seen raise
    UnknownCharactersError, or with skip_unknown are dropped with an UnknownCharactersWarning."""
    if not isinstance(seed, str):
        raise ConfigError(f"the seed must be a string, got {type(seed).__name__}")
    unknown = vocab.unknown(seed)
    if unknown and not skip_unknown:
        raise UnknownCharactersError(unknown)
    if unknown:
        warnings.warn(
            f"dropped {len(unknown)} character(s) the model has never seen from the seed: "
            f"{_listing(unknown)}",
            UnknownCharactersWarning,
            stacklevel=5,  # the line that called generate() or Model.generate()
        )
        dropped = set(unknown)
        seed = "".join(ch for ch in seed if ch not in dropped)
    return seed


def encode_seed(vocab: Vocab, seed: str, skip_unknown: bool = False) -> np.ndarray:
    """(S,) ids of clean_seed(vocab, seed, skip_unknown); an empty seed reads a newline."""
    seed = clean_seed(vocab, seed, skip_unknown)
    if seed == "":
        if vocab.unknown("\n"):
            raise ConfigError("the seed is empty and the model knows no newline to start from")
        seed = "\n"
    return vocab.encode(seed)


# --------------------------------------------------------------------------------------------
# The weights as the generation kernels read them


@dataclass(frozen=True)
class StepLayout:
    """The parameters arranged for kernels.model_step (see the Generation section there)."""

    config: ModelConfig
    table: np.ndarray  # (V, G) layer 0's input term per character: embed·Wx, or Wx (one-hot)
    M: tuple[np.ndarray, ...]  # per layer (I+H, G) = [Wx; Wh]; layer 0 only Wh (I = 0)
    bias: np.ndarray  # (L, G); the GRU's (L, 2G), [bx; bh]
    head_w: np.ndarray  # (H, V) head.W
    head_b: np.ndarray  # (V,)

    @property
    def dtype(self) -> np.dtype:
        return self.table.dtype

    def weights(self) -> tuple:
        return self.table, self.M, self.bias, self.head_w, self.head_b


def step_layout(params: Params) -> StepLayout:
    """Views of `params` where possible; copies only the embedding table (V, G) and biases."""
    config = params.config
    cell = config.cell
    Wx0 = params[f"{cell}.0.Wx"]
    if config.embed > 0:
        table = np.empty((config.vocab_size, config.projection_width), dtype=params.dtype)
        kernels.embed_projection(table, params["embed"], Wx0)
    else:
        table = Wx0
    M = [params[f"{cell}.0.Wh"]]
    for layer in range(1, config.layers):
        M.append(_stacked(params.flat, params[f"{cell}.{layer}.Wx"], params[f"{cell}.{layer}.Wh"]))
    if cell == "gru":
        bias = np.stack(
            [np.concatenate([params[f"gru.{n}.bx"], params[f"gru.{n}.bh"]]) for n in range(config.layers)]
        )
    else:
        bias = np.stack([params[f"{cell}.{layer}.b"] for layer in range(config.layers)])
    return StepLayout(config, table, tuple(M), bias, params["head.W"], params["head.b"])


def _stacked(flat: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """[top; bottom] as one (rows, cols) array: a view of `flat` when they lie back to back."""
    start = (top.ctypes.data - flat.ctypes.data) // flat.itemsize
    if start >= 0 and bottom.ctypes.data == top.ctypes.data + top.nbytes:
        rows = top.shape[0] + bottom.shape[0]
        return flat[start : start + rows * top.shape[1]].reshape(rows, top.shape[1])
    return np.concatenate([top, bottom])


class _State:
    """The state of B streams and the kernels' work buffers, reused by every call."""

    def __init__(self, layout: StepLayout, batch: int, threads: int = 1):
        config, dtype = layout.config, layout.dtype
        self.threads = 2 if threads > 1 and numba.config.NUMBA_NUM_THREADS > 1 else 1
        L, B, H, V = config.layers, batch, config.hidden, config.vocab_size
        self.h = np.zeros((L, B, H), dtype=dtype)
        self.c = np.zeros((L, B, H), dtype=dtype)
        self.z = np.empty((3, B, config.projection_width), dtype=dtype)  # pre-activations, two partial sums
        self.cell = CELLS.index(config.cell)  # kernels.sampling's LSTM, GRU, RNN
        self.xh = np.empty((B, 2 * H), dtype=dtype)
        self.logits = np.empty((B, V), dtype=dtype)
        self.probs = np.empty((B, V), dtype=np.float64)
        self.order = np.empty(V, dtype=np.int64)
        self.tokens = np.empty(B, dtype=np.int64)
        self.out = np.empty((CHUNK, B), dtype=np.int64)
        self.uniforms = np.empty((CHUNK, B), dtype=np.float64)
        self.drawn = np.empty((B, CHUNK), dtype=np.float64)
        self.no_input = np.empty(0, dtype=np.int64)

    def read(self, layout: StepLayout, ids: np.ndarray) -> None:
        """Feed ids (S,) to every stream."""
        self._run(layout, ids, 0, 1.0, 1, 1.0)

    def draw(self, layout: StepLayout, n: int, streams: list, temperature: float, k: int, p: float):
        """(n, B) next characters; stream b's uniforms come from streams[b] alone."""
        for b, rng in enumerate(streams):
            rng.random(n, out=self.drawn[b, :n])
        self.uniforms[:n] = self.drawn[:, :n].T
        return self._run(layout, self.no_input, n, temperature, k, p)

    def _run(self, layout, ids, n, temperature, k, p) -> np.ndarray:
        s = self
        args = (
            s.out[:n], s.logits, s.h, s.c, s.z, s.xh, s.probs, s.order, s.tokens, ids, s.uniforms[:n],
            *layout.weights(), temperature, k, p, s.cell,
        )  # fmt: skip
        if s.threads == 1:
            kernels.generate_steps(*args)
        else:
            numba.set_num_threads(s.threads)
            kernels.generate_steps_parallel(*args)
        return s.out[:n]


class _Texts:
    """The continuations as they grow: each is cut just after its first `stop`, and every new
    piece goes to on_text."""

    def __init__(self, count: int, stop: str | None, on_text: TextFn | None):
        self.stop, self.on_text = stop, on_text
        self.parts: list[list[str]] = [[] for _ in range(count)]
        self.tails = [""] * count  # the last len(stop) - 1 characters: a stop may span chunks
        self.open = [True] * count

    def add(self, index: int, piece: str) -> None:
        if not self.open[index]:
            return
        if self.stop is not None:
            tail = self.tails[index]
            window = tail + piece
            at = window.find(self.stop)
            if at >= 0:
                piece = piece[: at + len(self.stop) - len(tail)]
                self.open[index] = False
            else:
                keep = len(self.stop) - 1
                self.tails[index] = window[len(window) - keep :] if keep else ""
        self.parts[index].append(piece)
        if self.on_text is not None and piece:
            self.on_text(index, piece)

    @property
    def finished(self) -> bool:
        return not any(self.open)

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self.parts]


def _generate(
    layout: StepLayout,
    vocab: Vocab,
    seed: str,
    length: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    random_seed: int | None = None,
    num_samples: int = 1,
    stop: str | None = None,
    on_text: TextFn | None = None,
    skip_unknown: bool = False,
    threads: int = 1,
) -> list[str]:
    check_options(
        length=length, temperature=temperature, top_k=top_k, top_p=top_p,
        num_samples=num_samples, stop=stop, random_seed=random_seed, threads=threads,
    )  # fmt: skip
    if vocab.size != layout.config.vocab_size:
        raise ConfigError(f"the vocabulary has {vocab.size} characters, the model {layout.config.vocab_size}")
    ids = encode_seed(vocab, seed, skip_unknown)
    texts = _Texts(num_samples, stop, on_text)
    if length == 0:
        return texts.texts()
    V = vocab.size
    k = V if top_k is None else min(int(top_k), V)
    p = 1.0 if top_p is None else float(top_p)
    # One generator per sample, so sample b is the same text whatever num_samples is.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(random_seed).spawn(num_samples)]
    state = _State(layout, num_samples, threads)
    state.read(layout, ids)
    done = 0
    while done < length and not texts.finished:
        n = min(CHUNK, length - done)
        out = state.draw(layout, n, streams, float(temperature), k, p)  # (n, B)
        for b in range(num_samples):
            texts.add(b, vocab.decode(out[:, b]))
        done += n
    return texts.texts()


def generate(
    params: Params,
    vocab: Vocab,
    seed: str,
    length: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    random_seed: int | None = None,
    num_samples: int = 1,
    stop: str | None = None,
    on_text: TextFn | None = None,
    skip_unknown: bool = False,
    threads: int = 1,
) -> list[str]:
    """Read `seed` (empty: a newline), then write `length` characters, num_samples times.

    Returns the continuations, without the seed: each exactly `length` characters, or shorter
    when it ends with `stop` (looked for in the generated text only). temperature 0 always
    takes the most likely character; top_k keeps the k most likely, top_p the fewest whose
    probability adds up to p. The same random_seed (>= 0) and options give the same texts,
    and sample b does not depend on num_samples. on_text(b, piece) receives each sample's
    text as it is written. Bad values raise ConfigError; unknown seed characters raise
    UnknownCharactersError, or with skip_unknown are dropped with an UnknownCharactersWarning
    (a `warnings` warning: notebooks show it, the CLI prints it as one line). threads 2 (or
    more) splits each layer's weights between two cores: faster for wide models on otherwise
    idle cores, and the same text.
    """
    return _generate(
        step_layout(params), vocab, seed, length,
        temperature=temperature, top_k=top_k, top_p=top_p, random_seed=random_seed,
        num_samples=num_samples, stop=stop, on_text=on_text, skip_unknown=skip_unknown,
        threads=threads,
    )  # fmt: skip


class Model:
    """A trained model ready to sample from: `load_model("models/x.npz").generate("ROMEO:")`."""

    def __init__(self, params: Params, vocab: Vocab, path: Path | None = None):
        if vocab.size != params.config.vocab_size:
            raise ConfigError(
                f"the vocabulary has {vocab.size} characters, the model {params.config.vocab_size}"
            )
        self.params, self.vocab, self.path = params, vocab, path
        self._layout: StepLayout | None = None

    @property
    def config(self) -> ModelConfig:
        return self.params.config

    @property
    def layout(self) -> StepLayout:
        if self._layout is None:
            self._layout = step_layout(self.params)
        return self._layout

    def generate(self, seed: str = "", length: int = 500, **options: Any) -> list[str]:
        """`generate(params, vocab, seed, length, **options)` for this model."""
        return _generate(self.layout, self.vocab, seed, length, **options)

    def warm_up(self, num_samples: int = 1, threads: int = 1) -> None:
        """Compile the generation kernels for this model's shapes, or load them from numba's
        cache (what the first generate call would do, without generating anything)."""
        _State(self.layout, num_samples, threads).read(self.layout, np.empty(0, dtype=np.int64))

    def __repr__(self) -> str:
        c = self.config
        where = f"{self.path}, " if self.path is not None else ""
        return f"Model({where}{c.cell} {c.layers}x{c.hidden}, embed {c.embed}, {c.vocab_size} characters)"


def load_model(path: Path | str | None = None) -> Model:
    """A checkpoint as a Model; without a path, checkpoint.default_model_path() (the best
    checkpoint most recently written in ./models/, else the shipped model)."""
    checkpoint = load_checkpoint(default_model_path() if path is None else path)
    return Model(checkpoint.params, checkpoint.vocab, checkpoint.path)
