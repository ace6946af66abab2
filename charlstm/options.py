"""A training run's options: their defaults (TrainOptions, a cell's learning rate, fine-tuning's),
their checks, and how the options given meet the saved ones when a run is resumed
(resolve_options). charlstm.train runs with what this module resolves.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .checkpoint import MAX_LAYERS, MAX_WIDTH
from .errors import ConfigError
from .model import CELLS, ModelConfig

DEFAULT_MINUTES = 15.0  # budget when none of steps / epochs / minutes is given
# Options that may change when resuming; any other option given must equal the saved value.
RESUMABLE = ("steps", "epochs", "minutes", "eval_every", "ema")
BUDGETS = ("steps", "epochs", "minutes")
# Defaults of a run started with --init-from, under the options given: measured with
# `bench/quality.py --finetune` (see the README). The dropout defaults to the model's own.
FINETUNE_DEFAULTS = {"lr": 2e-3, "warmup": 20, "eval_every": 50}
# The peak learning rate when --lr is not given, per cell (bench/cells.py, tinyshakespeare,
# 2x256, the default 15-minute budget): at the LSTM's 8e-3 the GRU and the plain RNN diverge
# (validation 1.72 -> 2.05 and 1.83 -> 2.06 mid-run, Zen 3), at 2e-3, char-rnn's rate, they fall
# steadily, to 1.4548 and 1.5071 against the LSTM's 1.4920 at 8e-3 (Zen 4; the README's
# comparison of the cells).
CELL_LR = {"lstm": 8e-3, "gru": 2e-3, "rnn": 2e-3}


@dataclass(frozen=True)
class TrainOptions:
    """Everything that defines a run, saved in its checkpoints. Defaults: see the README."""

    # model
    cell: str = "lstm"  # lstm, gru or rnn (model.CELLS)
    layers: int = 2  # L
    hidden: int = 256  # H: 2x256 runs ~20k chars/s on 2 cores, wide enough for 1.5 nats
    embed: int = 64  # E; 0 for one-hot input
    dropout: float = 0.1  # between layers and before the head
    # data
    seq_len: int = 64  # T: window of truncated BPTT
    batch_size: int = 32  # B: parallel streams
    val_frac: float = 0.1  # the last 10% of the text: nanoGPT's tinyshakespeare split
    # optimiser: Adam with decoupled weight decay on matrices only
    # peak; a new run without --lr takes its cell's from CELL_LR. The LSTM's 8e-3: best of 3e-3,
    # 5e-3, 8e-3 on 2x256 (1.88, 1.82, 1.76 at 557 steps)
    lr: float = CELL_LR["lstm"]
    min_lr: float | None = None  # end of the cosine decay; None = lr / 10
    warmup: int = 100  # steps of linear warmup
    weight_decay: float = 0.01
    clip: float = 5.0  # global gradient-norm limit (0 = none)
    beta1: float = 0.9
    beta2: float = 0.99  # faster second moments than 0.999 suit short runs on small data
    ema: float = 0.0  # decay of a running average of the weights, validated and saved (0: off)
    # budget: at most one of these; none means DEFAULT_MINUTES
    steps: int | None = None
    epochs: float | None = None
    minutes: float | None = None
    eval_every: int = 500  # steps between validations (each also writes checkpoints)
    random_seed: int = 1337  # init and dropout masks

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(vocab_size, self.layers, self.hidden, self.embed, self.dropout, self.cell)

    @property
    def floor_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else self.min_lr

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainOptions:
        """Options from a dict; an unknown key or a value of the wrong type raises ConfigError
        (a typo must not be ignored; a tampered checkpoint must not reach the loop)."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(types))
        if unknown:
            raise ConfigError(f"unknown training option {unknown[0]!r}")
        clean = {}
        for key, value in values.items():
            kind = types[key]
            flag = "--" + key.replace("_", "-")
            if value is None and "None" in kind:
                clean[key] = None
            elif kind.startswith("int") and isinstance(value, int) and not isinstance(value, bool):
                clean[key] = value
            elif kind.startswith("float") and isinstance(value, int | float) and not isinstance(value, bool):
                clean[key] = float(value)
            elif kind == "str" and isinstance(value, str):
                clean[key] = value
            else:
                wanted = {"int": "a whole number", "str": "a name"}.get(kind[:3], "a number")
                raise ConfigError(f"{flag} must be {wanted}, got {value!r}")
        return cls(**clean)

    def validate(self) -> None:
        """Raise ConfigError for an out-of-range, non-finite or inconsistent value."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        checks = [
            (self.cell in CELLS, f"--cell must be one of {', '.join(CELLS)}, got {self.cell[:40]!r}"),
            (1 <= self.layers <= MAX_LAYERS, f"--layers must be in [1, {MAX_LAYERS}]"),
            (1 <= self.hidden <= MAX_WIDTH, f"--hidden must be in [1, {MAX_WIDTH}]"),
            (0 <= self.embed <= MAX_WIDTH, f"--embed must be in [0, {MAX_WIDTH}] (0: one-hot)"),
            (0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)"),
            (self.seq_len >= 1, "--seq-len must be at least 1"),
            (self.batch_size >= 1, "--batch-size must be at least 1"),
            (0.0 <= self.val_frac < 1.0, "--val-frac must be in [0, 1)"),
            (self.lr > 0.0, "--lr must be positive"),
            (0.0 <= self.floor_lr <= self.lr, "--min-lr must be in [0, --lr]"),
            (self.warmup >= 0, "--warmup must be 0 or more"),
            (self.weight_decay >= 0.0, "--weight-decay must be 0 or more"),
            (self.clip >= 0.0, "--clip must be 0 (off) or more"),
            (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0, "Adam betas must be in [0, 1)"),
            (0.0 <= self.ema < 1.0, "--ema must be in [0, 1) (0: off; 0.999 averages ~1000 steps)"),
            (self.eval_every >= 1, "--eval-every must be at least 1"),
            (self.random_seed >= 0, "--random-seed must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        given = [name for name in BUDGETS if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError("give only one of --steps, --epochs and --minutes")
        for name in given:
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive")


def resolve_options(
    given: Mapping[str, Any], saved: TrainOptions | None = None
) -> tuple[TrainOptions, list[str]]:
    """The options of a run: `given` over the defaults, or over `saved` when resuming.

    When resuming, only RESUMABLE options may differ from the saved ones (anything else would
    silently not be the run being resumed): a different value raises ConfigError. A budget
    given on resume replaces the saved budget. Returns the options and notices.
    """
    given = {k: v for k, v in given.items() if v is not None}
    TrainOptions.from_dict(given)  # unknown keys
    notices: list[str] = []
    if saved is None:
        cell = given.get("cell", TrainOptions.cell)  # an unknown one is refused by validate
        options = TrainOptions.from_dict({"lr": CELL_LR.get(cell, TrainOptions.lr), **given})
    else:
        for key, value in given.items():
            old = getattr(saved, key)
            if key not in RESUMABLE and value != old:
                flag = "--" + key.replace("_", "-")
                raise ConfigError(
                    f"cannot resume with {flag} {value}: the run was started with {flag} {old} "
                    "(drop the option, or start a new run)"
                )
        values = saved.to_dict()
        if any(name in given for name in BUDGETS):
            values.update(dict.fromkeys(BUDGETS))
        values.update(given)
        options = TrainOptions.from_dict(values)
    options.validate()
    if all(getattr(options, name) is None for name in BUDGETS):
        options = dataclasses.replace(options, minutes=DEFAULT_MINUTES)
        if saved is None:
            minutes = f"{DEFAULT_MINUTES:g} minutes"
            notices.append(f"no --steps, --epochs or --minutes given: training for {minutes}")
    return options, notices
