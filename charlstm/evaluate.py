"""How well a model predicts a text: mean loss in nats (and bits) per character.

`validation_loss` scores a token array in B parallel streams (fast, used during training);
`evaluate_text` scores any text as one stream from a zero state (the `eval` command),
counting characters the model has never seen instead of dropping them silently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import kernels
from .data import Vocab, encode_known, val_batches
from .errors import CorpusError
from .model import Params, Workspace, forward, training_forward, zero_state

ProgressFn = Callable[[int, int], None]  # (characters done, characters in all)

# Validation during training: B streams of N/B characters, each from a zero state, which
# costs a little on its first characters. Measured on tinyshakespeare's 111,540 validation
# characters with 2x256 models, over a single stream: B=16 +0.0005 nats, B=32 +0.001,
# B=64 +0.004; B=32 runs 2-3x faster than B=1. T only sets the size of each forward call.
VAL_BATCH = 32
VAL_SEQ_LEN = 128
# `evaluate_text`: one stream, read in windows of this many characters and encoded in
# pieces of TEXT_PIECE so a long text never becomes one huge int64 array.
TEXT_WINDOW = 256
TEXT_PIECE = 1 << 20

LN2 = math.log(2.0)


class _Scorer:
    """Runs the model without dropout over consecutive windows, carrying its state; windows
    of a training Workspace's shape on the training kernels in its buffers."""

    def __init__(self, params: Params, training: Workspace | None = None) -> None:
        self.params = params
        self.training = training
        self.h: np.ndarray | None = None  # (L, B, H), zero at the first window
        self.c: np.ndarray | None = None
        self._workspaces: dict[int, Workspace] = {}  # by T: the last window may be shorter

    def log_probs(self, inputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """(T*B,) float64 log-likelihood of targets (T, B), row t*B + b; advances the state."""
        T, B = inputs.shape
        if self.h is None or self.c is None:
            self.h, self.c = zero_state(self.params.config, B, self.params.dtype)
        if self.training is not None and self.training.fits(T, B, self.params.dtype):
            logits = training_forward(self.params, inputs, self.h, self.c, self.training)
            logits = np.ascontiguousarray(logits)  # (T*B, V) from training's (V, T*B)
        else:
            ws = self._workspaces.get(T)
            if ws is None:
                ws = self._workspaces[T] = Workspace(self.params.config, T, B, self.params.dtype)
            logits = forward(self.params, inputs, self.h, self.c, ws)
        out = np.empty(T * B, dtype=np.float64)
        kernels.token_log_probs(out, logits, np.ascontiguousarray(targets).reshape(T * B))
        return out


def validation_loss(
    params: Params,
    tokens: np.ndarray,
    *,
    batch: int = VAL_BATCH,
    seq_len: int = VAL_SEQ_LEN,
    training: Workspace | None = None,
) -> float:
    """Mean loss (nats/char) over one full pass of `tokens` (N,), cut by `val_batches`.

    Uses its own state, and its own buffers unless `training`, a training run's Workspace of
    `batch` streams, is given: the windows then take its length and run on the training
    kernels in its buffers, which the run rewrites at its next step (model.training_forward:
    the same figure to float rounding, 2x faster). The run's own state is not touched.
    Returns nan when there is nothing to predict (fewer than 2 tokens).
    """
    total, count = validation_sums(params, tokens, batch=batch, seq_len=seq_len, training=training)
    return total / count if count else math.nan


def validation_shares(tokens: np.ndarray, parts: int, seq_len: int, batch: int = VAL_BATCH) -> list[slice]:
    """The streams of val_batches(tokens, batch, seq_len) cut into `parts` contiguous shares,
    as even as its B allows: a data-parallel run scores share r on rank r (validation_sums
    with the same seq_len) and adds up the sums."""
    streams = next((inputs.shape[1] for inputs, _ in val_batches(tokens, batch, seq_len)), 0)
    return [slice(r * streams // parts, (r + 1) * streams // parts) for r in range(parts)]


def validation_sums(
    params: Params,
    tokens: np.ndarray,
    *,
    batch: int = VAL_BATCH,
    seq_len: int = VAL_SEQ_LEN,
    training: Workspace | None = None,
    streams: slice | None = None,
) -> tuple[float, int]:
    """(summed loss in nats, characters scored) of validation_loss, over all its streams or
    over the share `streams` of them cut with this seq_len (validation_shares), where
    `training` serves the windows of its shape."""
    if streams is None and training is not None and training.batch == batch:
        seq_len = training.steps
    scorer = _Scorer(params, training)
    total, count = 0.0, 0
    if streams is not None and streams.stop <= streams.start:
        return total, count
    for inputs, targets in val_batches(tokens, batch, seq_len):
        if streams is not None:
            inputs = np.ascontiguousarray(inputs[:, streams])
            targets = np.ascontiguousarray(targets[:, streams])
        lp = scorer.log_probs(inputs, targets)
        total -= float(lp.sum())
        count += lp.size
    return total, count


@dataclass(frozen=True)
class TextLoss:
    """The result of `evaluate_text`."""

    loss: float  # mean nats per predicted character
    characters: int  # characters in the text
    predicted: int  # characters scored: all but the first, minus unknown ones
    unknown: int  # occurrences of characters outside the vocabulary (never scored)
    unknown_chars: list[str]  # those characters, distinct, sorted by code point

    @property
    def bits_per_char(self) -> float:
        return self.loss / LN2


def evaluate_text(
    params: Params,
    vocab: Vocab,
    text: str,
    *,
    progress: ProgressFn | None = None,
    window: int = TEXT_WINDOW,
) -> TextLoss:
    """Score `text` as one stream from a zero state: each character is predicted from
    everything before it, so the first character is not predicted.

    A character outside the vocabulary cannot be scored: it is counted, skipped as a
    target and fed as input as the vocabulary's first character (there is no better
    stand-in). Raises CorpusError when nothing can be scored.
    """
    n = len(text)
    if n < 2:
        raise CorpusError(f"text too short to evaluate ({n} character(s), need at least 2)")
    scorer = _Scorer(params)
    total, predicted, unknown = 0.0, 0, 0
    prev_id: np.ndarray | None = None  # (1,) last id of the previous piece: the next input
    if progress is not None:
        progress(0, n)
    for start in range(0, n, TEXT_PIECE):
        ids, known = encode_known(text[start : start + TEXT_PIECE], vocab)  # (n_piece,)
        unknown += int((~known).sum())
        if prev_id is None:
            inputs, targets, scored = ids[:-1], ids[1:], known[1:]
        else:
            inputs = np.concatenate([prev_id, ids[:-1]])
            targets, scored = ids, known
        prev_id = ids[-1:]
        for p in range(0, len(inputs), window):
            x = inputs[p : p + window, None]  # (T, 1)
            y = targets[p : p + window, None]
            lp = scorer.log_probs(x, y)
            mask = scored[p : p + window]
            total -= float(lp[mask].sum())
            predicted += int(mask.sum())
            if progress is not None:
                progress(min(start + p + len(x) + 1, n), n)
    if predicted == 0:
        raise CorpusError("no character of the text after the first is in the model's vocabulary")
    return TextLoss(
        loss=total / predicted,
        characters=n,
        predicted=predicted,
        unknown=unknown,
        unknown_chars=vocab.unknown(text),
    )
