"""Fine-tuning: start a run from a trained model on a corpus that may hold new characters.

The vocabulary becomes the union of the model's and the corpus's. Every row or column indexed
by a character (embed, the one-hot Wx, head.W, head.b) follows its character to its new id; a
character new to the model gets the rows a new model would draw, and a head bias well below the
model's rarest character, so that at step 0 the model predicts what it predicted before.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import Checkpoint, load_checkpoint, named_model_path
from .data import Vocab, escape, token_dtype
from .errors import ConfigError
from .model import ModelConfig, Params, init_params

ARCHITECTURE = ("cell", "layers", "hidden", "embed")  # options that come from the model, not the user
# A new character's head bias sits this many nats below the lowest bias the model learned: at
# step 0 its probability is about e^-8 = 3e-4 times that of the model's rarest character, so the
# log p of known text moves by less than float32 rounding, and Adam (about lr a step on each of
# the H weights of its head column) makes it likely within tens of steps once the text uses it.
NEW_CHAR_BIAS_GAP = 8.0


@dataclass(frozen=True)
class Start:
    """The weights and vocabulary a fine-tuning run starts from."""

    params: Params  # float32, over `vocab`
    vocab: Vocab  # the union, sorted as every Vocab is
    new_chars: list[str]  # in the corpus but not in the model, by code point
    source: Path

    def notice(self, shown: int = 40) -> str:
        """The one-line notice of the run's start, listing the new characters."""
        if not self.new_chars:
            return f"fine-tuning {self.source}: the corpus uses no character the model lacks"
        more = f" and {len(self.new_chars) - shown} more" if len(self.new_chars) > shown else ""
        listed = escape("".join(self.new_chars[:shown]))
        count = len(self.new_chars)
        return f"fine-tuning {self.source}: {count} new character(s) get fresh rows: {listed}{more}"


def load_source(spec: Path | str) -> Checkpoint:
    """The model to fine-tune: a path or `shipped`, best weights or `.last.npz` (weights only)."""
    return load_checkpoint(named_model_path(spec))


def check_architecture(source: ModelConfig, given: dict, path: Path) -> None:
    """Refuse an architecture option that contradicts the model being fine-tuned."""
    for name in ARCHITECTURE:
        value = given.get(name)
        if value is not None and value != getattr(source, name):
            flag = "--" + name
            raise ConfigError(
                f"--init-from {path}: the model has {flag} {getattr(source, name)}, not {value} "
                "(the architecture comes from the model: drop the option)"
            )


def union_vocab(model: Vocab, corpus: Vocab) -> tuple[Vocab, list[str]]:
    """The union of both vocabularies, and the corpus's characters the model lacks."""
    new = sorted(set(corpus.chars) - set(model.chars))
    return Vocab(sorted(set(model.chars) | set(new))), new


def id_map(source: Vocab, target: Vocab) -> np.ndarray:
    """(V_source,) int64: the id in `target` of each character of `source`."""
    return target.encode("".join(source.chars))


def start_from(source: Checkpoint, corpus_vocab: Vocab, dropout: float, rng: np.random.Generator) -> Start:
    """The fine-tuning start: `source`'s weights over the union vocabulary (see the module)."""
    vocab, new_chars = union_vocab(source.vocab, corpus_vocab)
    old = source.params
    config = dataclasses.replace(old.config, vocab_size=vocab.size, dropout=dropout)
    params = init_params(config, rng, np.float32)  # new characters' rows, as a new model's
    rows = id_map(source.vocab, vocab)  # (V_source,) where each known character now lives
    for name, view in params.views.items():
        before = old[name]
        if name == "embed" or (name == "lstm.0.Wx" and config.embed == 0):
            view[rows] = before  # (V, E) or (V, 4H): one row a character
        elif name == "head.W":
            view[:, rows] = before  # (H, V): one column a character
        elif name == "head.b":
            view[...] = before.min() - NEW_CHAR_BIAS_GAP
            view[rows] = before
        else:
            view[...] = before
    return Start(params=params, vocab=vocab, new_chars=new_chars, source=source.path)


def remap_tokens(tokens: np.ndarray, source: Vocab, target: Vocab) -> np.ndarray:
    """(N,) corpus ids over `source` -> (N,) ids over `target` (a superset), read-only, in the
    smallest dtype that holds target's ids."""
    remapped = id_map(source, target).astype(token_dtype(target.size))[tokens]
    remapped.flags.writeable = False
    return remapped
