"""The training loop: truncated BPTT over a corpus with Adam, a warmup+cosine LR schedule,
periodic validation, best-model and full-state checkpoints, and exact resume.

`train` takes the options the user gave (defaults and checks in charlstm.options, or the saved
ones when resuming) and reports through `Hooks` callbacks; it never prints. Letters as in charlstm.kernels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from . import blas_threads, finetune, kernels
from .checkpoint import MAX_PARAMS, Checkpoint, load_checkpoint, save_checkpoint
from .data import BatchStream, Corpus, Vocab, load_corpus
from .distributed import Alone, Group, GroupError, checksum
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .evaluate import validation_loss, validation_shares, validation_sums
from .metrics import MetricsLog, metrics_path_for
from .model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state
from .options import FINETUNE_DEFAULTS, TrainOptions, resolve_options
from .schedule import learning_rate

STATE_VERSION = 1  # bump when the train-state keys change meaning
SMOOTHING = 0.98  # EMA factor of the displayed training loss (about the last 50 steps)
MAX_RECORD = 2000  # validations kept in a checkpoint's record (the oldest are thinned out)
# A loss this many times a uniform guess (ln V) means the weights blew up even while still
# finite (without weight decay, Adam at lr=1e6 keeps the loss finite near 1e7 nats).
DIVERGED_FACTOR = 10.0

# ------------------------------------------------------------------------------ reporting


@dataclass(frozen=True)
class StepInfo:
    """Reported after every optimizer step."""

    step: int  # steps done, counting earlier sessions of a resumed run
    total_steps: int | None  # planned steps; None with a time budget
    fraction: float  # of the planned run done, 0..1 (of the time with --minutes)
    epoch: float  # passes over the training text, fractional
    loss: float  # this window's training loss (nats/char, with dropout)
    smoothed_loss: float  # its exponential moving average
    grad_norm: float  # global gradient norm before clipping
    lr: float
    chars_per_s: float  # training throughput of this session (evaluations excluded)
    elapsed: float  # seconds of the whole run, evaluations included
    remaining: float | None  # estimated seconds to the end of the budget
    val_loss: float | None  # the latest validation loss
    best_val_loss: float | None
    best_step: int | None


@dataclass(frozen=True)
class EvalInfo:
    """Reported after each validation and the checkpoint writes that follow it."""

    step: int
    val_loss: float | None  # None without a validation split
    best_val_loss: float | None
    best_step: int | None
    improved: bool  # this validation wrote a new best checkpoint
    seconds: float  # time the validation took
    saved: list[Path]
    params: Params  # the current weights, for a preview sample (do not modify)
    vocab: Vocab


@dataclass
class Hooks:
    """Callbacks through which `train` reports; all optional."""

    notice: Callable[[str], None] | None = None  # one-line messages (shrunk batch, resume...)
    load_progress: Callable[[int, int], None] | None = None  # corpus encoding: (bytes, total)
    step: Callable[[StepInfo], None] | None = None
    evaluation: Callable[[EvalInfo], None] | None = None
    should_stop: Callable[[], bool] | None = None  # checked between steps (Ctrl-C)


@dataclass(frozen=True)
class TrainResult:
    options: TrainOptions
    step: int
    epoch: float
    train_loss: float  # smoothed training loss at the end (nats/char)
    val_loss: float | None  # last validation
    best_val_loss: float | None
    best_step: int | None
    chars_seen: int  # training characters processed, earlier sessions included
    elapsed: float  # seconds, whole run
    chars_per_s: float  # over the whole run's training steps
    out: Path | None  # best-validation weights (None if never written)
    last: Path | None  # full training state (None if never written)
    metrics: Path | None  # the metrics log (charlstm.metrics)
    interrupted: bool
    batch_size: int  # as used (may be smaller than asked for a short text)
    seq_len: int
    n_params: int


def last_path_for(out: Path | str) -> Path:
    """`models/x.npz` -> `models/x.last.npz`: where the full state lives beside the best weights."""
    out = Path(out)
    stem = out.name[: -len(".npz")] if out.name.endswith(".npz") else out.name
    return out.with_name(f"{stem}.last.npz")


def best_path_beside(state: Path, config: Mapping[str, Any]) -> Path:
    """The best-weights path of the run whose training state is `state`: beside it, as written."""
    if state.name.endswith(".last.npz"):
        return state.with_name(state.name[: -len(".last.npz")] + ".npz")
    return Path(str(config.get("out", state.with_suffix(".best.npz"))))


def default_out_path(corpus_paths: Sequence[Path | str]) -> Path:
    return Path("models") / f"{Path(corpus_paths[0]).stem}.npz"


# ------------------------------------------------------------------------------------ run


def train(
    corpus: Sequence[Path | str] | None,
    given: Mapping[str, Any] | None = None,
    *,
    out: Path | str | None = None,
    resume: Path | str | None = None,
    init_from: Path | str | None = None,
    hooks: Hooks | None = None,
    group: Alone | Group | None = None,
) -> TrainResult:
    """Train on the UTF-8 files `corpus` (or, when resuming, the saved ones if None).

    `given` holds the options the user set, by TrainOptions field name (None = not set).
    The best-validation weights go to `out` (default models/<first file's stem>.npz) and the
    full state to `last_path_for(out)`, at each validation and when stopped. `resume` is a
    `.last.npz` to continue exactly. `init_from` is a checkpoint (or "shipped") to fine-tune:
    its architecture and weights over the union of both vocabularies (charlstm.finetune),
    FINETUNE_DEFAULTS under `given`, and fresh optimizer moments and schedule. Raises
    CharLSTMError subclasses for bad input and TrainingDivergedError when the loss or gradient
    stops being finite.

    `group` (charlstm.distributed) makes this process one rank of a data-parallel run: it
    trains its share of the B streams, the gradient is summed over the ranks at every step,
    and only rank 0 writes checkpoints and the metrics log, in the single-process layout.
    """
    run = _Run(hooks or Hooks(), group or Alone())
    try:
        run.setup(corpus, dict(given or {}), out, resume, init_from)
        return run.loop()
    finally:
        run.close()


def _columns(window: np.ndarray, streams: slice) -> np.ndarray:
    """A window's (T, B) columns of these streams, contiguous."""
    return (
        window
        if streams.stop - streams.start == window.shape[1]
        else np.ascontiguousarray(window[:, streams])
    )


def _state_str(value: Any) -> np.ndarray:
    """JSON in a 0-d unicode array: how RNG and data positions are stored in a checkpoint."""
    return np.array(json.dumps(value))


def _state_array(ckpt: Checkpoint, key: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of a checkpoint's training state, checked and copied."""
    arr = ckpt.train_state.get(key)
    if arr is None or arr.shape != shape or arr.dtype != np.float32:
        raise CheckpointError(f"{ckpt.path}: training state {key!r} is missing or has the wrong shape")
    if not np.isfinite(arr).all():
        raise CheckpointError(f"{ckpt.path}: training state holds NaN or infinite values")
    return arr.copy()


def _read_state_str(state: Mapping[str, np.ndarray], key: str, path: Path) -> Any:
    try:
        return json.loads(str(state[key][()]))
    except (KeyError, IndexError, ValueError, TypeError):
        raise CheckpointError(f"{path}: training state {key!r} is missing or unreadable") from None


@dataclass
class _Progress:
    """The run's counters: what `.last.npz` must hold besides weights and moments."""

    step: int = 0
    chars_seen: int = 0
    elapsed: float = 0.0  # seconds, all sessions, evaluations included
    train_seconds: float = 0.0  # seconds inside training steps, all sessions
    loss_ema: float = 0.0  # raw EMA accumulator; divide by 1 - SMOOTHING**step to read
    val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    last_eval_step: int = -1
    validations: list[list[float]] = field(default_factory=list)  # [step, loss] each


def _check_writable(out: Path) -> None:
    """Create out's folder and a temporary file in it, or raise CheckpointError naming it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise CheckpointError(f"{out}: cannot write checkpoints there ({exc.strerror or exc})") from None


def _check_size(config: ModelConfig, T: int, B: int) -> None:
    """Refuse a model that cannot be saved or would not fit in memory, before allocating it
    (Linux hands out memory lazily, so a too-large run would be killed later, not refused)."""
    P = config.n_params
    if P > MAX_PARAMS:
        raise ConfigError(f"a model of {P:,} parameters is too large (at most {MAX_PARAMS:,})")
    L, H, V = config.layers, config.hidden, config.vocab_size
    # float32: weights, gradients, two Adam moments; the window's activations (model.Workspace)
    need = 4 * (4 * P + L * T * B * 8 * H + T * B * (2 * V + 6 * H + config.embed))
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.8 * ram:
        raise ConfigError(
            f"a {L}x{H} model with batch {B} x window {T} needs about {need / 2**30:,.1f} GB to train; "
            f"this machine has {ram / 2**30:,.1f} GB (lower --hidden, --layers, --batch-size or --seq-len)"
        )


def _warm_up(config: ModelConfig, shared: bool = False) -> None:
    """Compile every kernel a run uses on a 2-unit copy of the model, so the JIT's seconds are
    not taken from a --minutes budget (Numba compiles per dtype and layout, not per size);
    `shared`: those of a rank of a data-parallel run too."""
    tiny = dataclasses.replace(config, hidden=2, embed=min(config.embed, 2))
    params = init_params(tiny, np.random.default_rng(0), np.float32)
    grads = Params.zeros(tiny, np.float32)
    h, c = zero_state(tiny, 2)
    window = np.zeros((3, 2), dtype=np.int64)  # (T+1, B), sliced as BatchStream does
    ws = Workspace(tiny, 2, 2, first_stream=2 if shared else 0, all_streams=4 if shared else None)
    loss_and_grad(params, grads, window[:-1], window[1:], h, c, ws, np.random.default_rng(0))
    kernels.clip_grad_norm(grads.flat, 1.0)
    m, v = np.zeros_like(grads.flat), np.zeros_like(grads.flat)
    kernels.adam_step(params.flat, m, v, grads.flat, params.decay_mask(), 1, 1e-3, 0.9, 0.99, 1e-8, 0.0)
    validation_loss(params, np.zeros(8, dtype=np.uint8), batch=2, seq_len=2)
    validation_loss(params, np.zeros(8, dtype=np.uint8), batch=2, training=ws)
    if shared:
        validation_sums(
            params, np.zeros(8, dtype=np.uint8), batch=4, seq_len=2, training=ws, streams=slice(2, 4)
        )


class _NoMetrics:
    """The metrics log of a rank other than 0: only rank 0 writes one."""

    path = None

    def step(self, *values: float) -> None: ...
    def validation(self, *values: float) -> None: ...
    def close(self) -> None: ...


class _Run:
    def __init__(self, hooks: Hooks, group: Alone | Group) -> None:
        self.hooks = hooks
        self.group = group
        self.p = _Progress()
        self.last_saved_step = -1  # step of the state in `.last.npz`; -1 before the first write
        self.out_written = False  # `out` holds this run's best weights
        self.metrics: MetricsLog | _NoMetrics | None = None  # opened at the end of setup
        self.clock = 0.0  # seconds of the run at the last step's exchange: rank 0's clock

    def _notice(self, message: str) -> None:
        if self.hooks.notice is not None:
            self.hooks.notice(message)

    # -- setup

    def setup(
        self,
        corpus: Sequence[Path | str] | None,
        given: dict[str, Any],
        out: Path | str | None,
        resume: Path | str | None,
        init_from: Path | str | None = None,
    ) -> None:
        """Everything before the first step. Each rank does it on its own (a bad option or
        file stops every rank together: distributed.Group.together), then takes rank 0's
        weights."""
        if self.group.size > 1:
            self._share_the_cores()
        ckpt, source = self.group.together(lambda: self._choose(corpus, given, out, resume, init_from))
        loaded = self.group.together(self._load_corpus, machine_first=True)
        self.group.together(lambda: self._build(loaded, ckpt, source))
        self.group.broadcast(self.params.flat)
        if self.average is not None:
            self.group.broadcast(self.average.flat)

    def _choose(
        self,
        corpus: Sequence[Path | str] | None,
        given: dict[str, Any],
        out: Path | str | None,
        resume: Path | str | None,
        init_from: Path | str | None,
    ) -> tuple[Checkpoint | None, Checkpoint | None]:
        """The run's options, files and paths; the state resumed and the model fine-tuned."""
        ckpt = source = None
        group = self.group
        if resume is not None and init_from is not None:
            raise ConfigError("give --resume or --init-from, not both (a resumed run keeps its start)")
        if resume is not None:
            ckpt = load_checkpoint(resume, with_train_state=True)
            if not ckpt.train_state:
                name = last_path_for(resume).name
                raise CheckpointError(f"{resume}: holds weights only, no training state (resume from {name})")
            saved, saved_paths = self._saved_run(ckpt)
            options, notices = resolve_options(given, saved)
            if not corpus:
                corpus = saved_paths
            if out is None:
                out = best_path_beside(Path(resume), ckpt.config)
        else:
            if not corpus:
                raise ConfigError("no corpus files given")
            if init_from is not None:
                source = finetune.load_source(init_from)
                given = self._finetune_options(source, given)
            options, notices = resolve_options(given)
            if out is None:
                out = default_out_path(corpus)
        for message in notices:
            self._notice(message)
        group.streams(options.batch_size)  # divides among the ranks, before any work

        self.options = options
        self.out = Path(out)
        if self.out.name.endswith(".last.npz"):
            raise ConfigError(f"--out {self.out}: that name is reserved for the training state")
        self.last = last_path_for(self.out)
        if group.is_root:
            _check_writable(self.out)  # before minutes of encoding and training, not after
        if resume is not None and Path(resume).resolve() == self.out.resolve():
            raise ConfigError("--out must not be the checkpoint being resumed")
        if source is not None and source.path.resolve() in (self.out.resolve(), self.last.resolve()):
            raise ConfigError("--out must not overwrite the model being fine-tuned")
        self.corpus = list(corpus)
        self.corpus_paths = [Path(p).resolve() for p in corpus]
        self.init_from = ckpt.config.get("init_from") if ckpt is not None else None
        return ckpt, source

    def _load_corpus(self) -> Corpus:
        return load_corpus(self.corpus, self.out.parent / ".charlstm-cache", self.hooks.load_progress)

    def _build(self, loaded: Corpus, ckpt: Checkpoint | None, source: Checkpoint | None) -> None:
        """The vocabulary, batches, model, optimizer state and buffers of the run."""
        options, group = self.options, self.group
        seeds = np.random.SeedSequence(options.random_seed).spawn(2)
        start = None
        if source is not None:
            start = finetune.start_from(
                source, loaded.vocab, options.dropout, np.random.default_rng(seeds[0])
            )
            self.init_from = {"path": str(start.source.resolve()), "new_chars": start.new_chars}
            self._notice(start.notice())
        loaded = self._over_run_vocabulary(loaded, start, ckpt)
        self.vocab = loaded.vocab
        train_tokens, self.val_tokens = loaded.split(options.val_frac)
        self.stream = BatchStream(
            train_tokens, options.batch_size, options.seq_len, notice=self.hooks.notice, name=loaded.name
        )
        if len(self.val_tokens) < 2:
            self._notice(f"no validation text: {self.out} will receive the latest weights at each evaluation")

        config = options.model_config(self.vocab.size)
        B, T = self.stream.batch, self.stream.seq_len
        self.mine = group.streams(B)  # this rank's streams (all of them when alone)
        share = self.mine.stop - self.mine.start
        if group.size > 1:
            self._notice(f"data parallel over {group.size} processes: {share} of the {B} streams each")
        _check_size(config, T, share)
        self.dropout_rng = np.random.default_rng(seeds[1])
        try:
            if ckpt is not None:
                self._restore(ckpt, config)
            else:
                if start is not None:
                    self.params = start.params
                else:
                    self.params = init_params(config, np.random.default_rng(seeds[0]), np.float32)
                self.m = np.zeros_like(self.params.flat)  # Adam moments (P,)
                self.v = np.zeros_like(self.params.flat)
                self.h, self.c = zero_state(config, share)  # (L, B, H) carried across windows
            self._start_average(ckpt)
            self.grads = Params(config, group.gradient_buffer(config.n_params))  # summed over ranks
            self.decay_mask = self.params.decay_mask()
            self.ws = Workspace(config, T, share, first_stream=self.mine.start, all_streams=B)
        except MemoryError:
            raise ConfigError(
                f"not enough memory for a {config.layers}x{config.hidden} model with batch {B} x window {T} "
                "(lower --hidden, --layers, --batch-size or --seq-len)"
            ) from None
        self.loss_limit = DIVERGED_FACTOR * max(math.log(self.vocab.size), 2.0)

        o = options
        if o.steps is not None:
            self.total_steps: int | None = o.steps
        elif o.epochs is not None:
            self.total_steps = max(1, round(o.epochs * self.stream.windows_per_epoch))
        else:
            self.total_steps = None
        self.budget_seconds = None if o.minutes is None else o.minutes * 60.0
        # validation: this rank's share of the streams (None: all, as one process does)
        self.val_share = (
            None if group.size == 1 else validation_shares(self.val_tokens, group.size, T)[group.rank]
        )
        _warm_up(config, shared=group.size > 1)
        if not group.is_root:
            self.metrics = _NoMetrics()
        elif ckpt is None:
            self.metrics = MetricsLog(metrics_path_for(self.out))
        else:  # the resumed run's log, carried over when --out moves the run
            self.metrics = MetricsLog(metrics_path_for(self.out), self.p.step, metrics_path_for(ckpt.path))

    def _share_the_cores(self) -> None:
        """Numba's and BLAS's threads: this machine's cores over its ranks (never more)."""
        threads = min(self.group.threads(), numba.config.NUMBA_NUM_THREADS)
        numba.set_num_threads(threads)
        blas_threads.set_to(threads)

    @staticmethod
    def _finetune_options(source: Checkpoint, given: dict[str, Any]) -> dict[str, Any]:
        """The options of a fine-tuning run: the model's architecture and dropout, then
        FINETUNE_DEFAULTS, under what the user gave."""
        model = source.model_config
        finetune.check_architecture(model, given, source.path)
        chosen = {k: v for k, v in given.items() if v is not None}
        return {
            **{name: getattr(model, name) for name in finetune.ARCHITECTURE},
            "dropout": model.dropout,
            **FINETUNE_DEFAULTS,
            **chosen,
        }

    def _over_run_vocabulary(
        self, loaded: Corpus, start: finetune.Start | None, ckpt: Checkpoint | None
    ) -> Corpus:
        """The corpus over the run's vocabulary: its own, or for a fine-tuning run (started now,
        or resumed) the union it was started with, the ids remapped."""
        if start is not None:
            vocab = start.vocab
        elif ckpt is not None and self.init_from is not None:
            vocab = ckpt.vocab
            missing = sorted(set(loaded.vocab.chars) - set(vocab.chars))
            if missing:
                raise ConfigError(
                    f"cannot resume: the corpus now holds {len(missing)} character(s) the run's vocabulary "
                    f"lacks ({', '.join(map(repr, missing[:5]))})"
                )
        else:
            return loaded
        if vocab == loaded.vocab:
            return loaded
        tokens = finetune.remap_tokens(loaded.tokens, loaded.vocab, vocab)
        return dataclasses.replace(loaded, vocab=vocab, tokens=tokens)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def _start_average(self, ckpt: Checkpoint | None) -> None:
        """With --ema: the running average of the weights, from the saved state on a resume
        (or, if that run kept none, from the weights as they are now)."""
        self.average: Params | None = None
        if self.options.ema == 0.0:
            return
        if ckpt is not None and "ema" in ckpt.train_state:
            self.average = Params(self.params.config, _state_array(ckpt, "ema", self.params.flat.shape))
        else:
            if ckpt is not None:
                self._notice(f"the weight average starts here, at step {self.p.step:,}")
            self.average = self.params.copy()

    def _weights(self) -> Params:
        """What is validated and saved as the best: the running average with --ema."""
        return self.params if self.average is None else self.average

    def _saved_run(self, ckpt: Checkpoint) -> tuple[TrainOptions, list[str]]:
        try:
            saved = TrainOptions.from_dict(ckpt.config["training"])
            paths = [str(p) for p in ckpt.config["corpus"]]
            version = int(ckpt.train_state["version"][()])
        except (KeyError, TypeError, ValueError, ConfigError):
            raise CheckpointError(f"{ckpt.path}: not a charlstm training state") from None
        if version != STATE_VERSION:
            raise CheckpointError(f"{ckpt.path}: training state version {version} is not supported")
        return saved, paths

    def _restore(self, ckpt: Checkpoint, config: ModelConfig) -> None:
        """Load weights, moments, carried state, RNG, data position and counters."""
        path, state = ckpt.path, ckpt.train_state
        if ckpt.vocab != self.vocab:
            raise ConfigError(
                f"cannot resume: the corpus has a different vocabulary ({self.vocab.size} characters) "
                f"from the checkpoint's ({ckpt.vocab.size})"
            )
        if ckpt.params.config != config:
            raise CheckpointError(f"{path}: its weights do not match its saved options")
        self.params = ckpt.params
        P = self.params.flat.size
        shape = (config.layers, self.stream.batch, config.hidden)
        self.m, self.v = _state_array(ckpt, "m", (P,)), _state_array(ckpt, "v", (P,))
        # the carried state of this rank's streams, whatever number of ranks wrote it
        self.h = np.ascontiguousarray(_state_array(ckpt, "h", shape)[:, self.mine])
        self.c = np.ascontiguousarray(_state_array(ckpt, "c", shape)[:, self.mine])
        self.stream.restore(_read_state_str(state, "data", path))
        try:
            self.dropout_rng.bit_generator.state = _read_state_str(state, "rng", path)["dropout"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: training state 'rng' is unreadable") from None
        counters = _read_state_str(state, "counters", path)
        try:
            self.p = _Progress(**counters)
        except TypeError:
            raise CheckpointError(f"{path}: training state 'counters' is unreadable") from None
        self.out_written = self.out.exists()
        if not self.out_written:
            # the best weights are not where this run now writes them: start the record afresh
            self.p.best_val_loss, self.p.best_step = None, None
        self.last_saved_step = self.p.step
        self._notice(f"resuming {path} at step {self.p.step:,}")

    # -- the loop

    def loop(self) -> TrainResult:
        o, p = self.options, self.p
        self.session_start = time.perf_counter()
        self.elapsed_before = p.elapsed
        self.session_steps = 0
        self.session_chars = 0
        self.session_train_seconds = 0.0
        self.clock = p.elapsed
        interrupted = False
        if self._budget_spent():
            self._notice(f"already at step {p.step:,}, the end of its budget: nothing to train")
        while not self._budget_spent():
            requested = self.hooks.should_stop is not None and self.hooks.should_stop()
            if requested and self.group.size == 1:  # alone, a stop asked for needs no agreement
                interrupted = True
                break
            # with ranks, the request goes with this step's gradient: all stop after it
            stop = self._step(requested)
            if p.step % o.eval_every == 0:
                self._evaluate()
            if stop:
                interrupted = True
                if not requested and not (self.hooks.should_stop is not None and self.hooks.should_stop()):
                    self._notice(
                        f"another process was asked to stop: stopping after step {p.step:,} and saving"
                    )
                break
        if interrupted:
            if p.step > 0 and p.step != self.last_saved_step:
                if not np.isfinite(self.params.flat).all():
                    self._diverged(p.step, "the weights hold NaN or infinite values")
                self._save(best=False)
        elif p.last_eval_step != p.step:
            self._evaluate()
        return self._result(interrupted)

    def _elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self.session_start)

    def _budget_spent(self) -> bool:
        """Whether the budget is used up; a time budget by the clock of the last step's
        exchange, so that every rank decides alike."""
        if self.total_steps is not None:
            return self.p.step >= self.total_steps
        assert self.budget_seconds is not None
        return self.clock >= self.budget_seconds

    def _fraction(self) -> float:
        if self.total_steps is not None:
            return min(1.0, self.p.step / self.total_steps)
        assert self.budget_seconds is not None
        return min(1.0, self._elapsed() / self.budget_seconds)

    def _step(self, stop_requested: bool = False) -> bool:
        """One optimizer step. Returns whether any rank asked to stop (`stop_requested`)."""
        o, p = self.options, self.p
        started = time.perf_counter()
        k = p.step + 1  # the step being taken, 1-based (Adam's bias correction needs it)
        inputs, targets, reset = self.stream.next_batch()  # (T, B) each
        if reset:  # an epoch starts: the streams jump back to their segment starts
            self.h.fill(0.0)
            self.c.fill(0.0)
        loss_share = loss_and_grad(
            self.params, self.grads, _columns(inputs, self.mine), _columns(targets, self.mine),
            self.h, self.c, self.ws, self.dropout_rng, characters=inputs.size,
        )  # fmt: skip
        # The step's one exchange: the gradient summed over the ranks and, beside it, the loss
        # (each rank's share of the mean), any stop request, and rank 0's clock
        clock = self._elapsed() if self.group.is_root else 0.0
        sent = np.array([loss_share, float(stop_requested), clock])
        loss, stops, self.clock = (float(x) for x in self.group.exchange(self.grads.flat, sent))
        # the schedule's progress is the run's before this step: step 1 runs at the peak of the cosine
        if self.total_steps is not None:
            progress = p.step / self.total_steps
        else:
            assert self.budget_seconds is not None
            progress = self.clock / self.budget_seconds
        lr = learning_rate(k, progress, peak=o.lr, floor=o.floor_lr, warmup=o.warmup)
        norm = kernels.clip_grad_norm(self.grads.flat, o.clip)
        if not (math.isfinite(loss) and math.isfinite(norm)) or loss > self.loss_limit:
            self._diverged(k, f"loss {loss:.4g} nats/char, gradient norm {norm:.4g}")
        kernels.adam_step(
            self.params.flat, self.m, self.v, self.grads.flat, self.decay_mask,
            k, lr, o.beta1, o.beta2, 1e-8, o.weight_decay,
        )  # fmt: skip
        if self.average is not None:
            kernels.average_step(self.average.flat, self.params.flat, o.ema)

        p.step = k
        chars = inputs.size
        p.chars_seen += chars
        p.loss_ema = SMOOTHING * p.loss_ema + (1.0 - SMOOTHING) * loss
        seconds = time.perf_counter() - started
        p.train_seconds += seconds
        self.session_steps += 1
        self.session_chars += chars
        self.session_train_seconds += seconds
        p.elapsed = self._elapsed()
        info = self._step_info(loss, norm, lr)
        self.metrics.step(k, p.elapsed, lr, info.smoothed_loss, norm, info.chars_per_s)
        if self.hooks.step is not None:
            self.hooks.step(info)
        return stops > 0

    def _smoothed(self) -> float:
        if self.p.step == 0:
            return math.nan
        return self.p.loss_ema / (1.0 - SMOOTHING**self.p.step)

    def _step_info(self, loss: float, norm: float, lr: float) -> StepInfo:
        p = self.p
        rate = self.session_chars / self.session_train_seconds if self.session_train_seconds else 0.0
        if self.total_steps is not None:
            per_step = (self._elapsed() - self.elapsed_before) / max(self.session_steps, 1)
            remaining: float | None = max(0, self.total_steps - p.step) * per_step
        else:
            assert self.budget_seconds is not None
            remaining = max(0.0, self.budget_seconds - p.elapsed)
        return StepInfo(
            step=p.step,
            total_steps=self.total_steps,
            fraction=self._fraction(),
            epoch=self.stream.epoch,
            loss=loss,
            smoothed_loss=self._smoothed(),
            grad_norm=norm,
            lr=lr,
            chars_per_s=rate,
            elapsed=p.elapsed,
            remaining=remaining,
            val_loss=p.val_loss,
            best_val_loss=p.best_val_loss,
            best_step=p.best_step,
        )

    def _diverged(self, step: int, what: str) -> None:
        if self.last_saved_step >= 0:
            kept = f"the last good state is {self.last} (step {self.last_saved_step:,}), left untouched"
        else:
            kept = "no checkpoint had been written yet"
        raise TrainingDivergedError(
            f"training diverged at step {step:,}: {what}; "
            f"nothing was saved from it; {kept}; try a lower --lr or --clip"
        )

    def _evaluate(self) -> None:
        p = self.p
        started = time.perf_counter()
        # the last step's update is only seen by the next loss: check it before anything is saved
        if not np.isfinite(self.params.flat).all():
            self._diverged(p.step, "the weights hold NaN or infinite values")
        self._check_replicas()
        val = self._validation_loss()
        seconds = time.perf_counter() - started
        has_val = len(self.val_tokens) >= 2
        if has_val and not math.isfinite(val):
            self._diverged(p.step, f"validation loss {val:.4g} nats/char")
        improved = False
        if has_val:
            p.val_loss = val
            self.metrics.validation(p.step, self._elapsed(), val)
            p.validations.append([p.step, val])
            if len(p.validations) > MAX_RECORD:
                del p.validations[1:-1:2]  # keep the first and the latest, half of the rest
            if p.best_val_loss is None or val < p.best_val_loss:
                p.best_val_loss, p.best_step = val, p.step
                improved = True
        p.last_eval_step = p.step
        p.elapsed = self._elapsed()
        saved = []
        if improved or not has_val:
            saved.append(self._save(best=True))
        saved.append(self._save(best=False))
        p.elapsed = self._elapsed()
        if self.hooks.evaluation is not None:
            info = EvalInfo(
                step=p.step,
                val_loss=p.val_loss,
                best_val_loss=p.best_val_loss,
                best_step=p.best_step,
                improved=improved,
                seconds=seconds,
                saved=saved,
                params=self._weights(),
                vocab=self.vocab,
            )
            self.hooks.evaluation(info)

    def _validation_loss(self) -> float:
        """The validation loss, each rank scoring its share of the streams (alone: all)."""
        if self.val_share is None:
            total, count = validation_sums(self._weights(), self.val_tokens, training=self.ws)
        else:
            total, count = validation_sums(
                self._weights(),
                self.val_tokens,
                seq_len=self.ws.steps,
                training=self.ws,
                streams=self.val_share,
            )
        total, count = self.group.sum([total, count])
        return total / count if count else math.nan

    def _check_replicas(self) -> None:
        """Stop every rank if any holds other weights or optimizer state than rank 0."""
        if self.group.size == 1:
            return
        state = [self.params.flat, self.m, self.v] + ([] if self.average is None else [self.average.flat])
        sums = self.group.all_values(checksum(state))
        differ = [rank for rank, value in enumerate(sums) if value != sums[0]]
        if differ:
            raise GroupError(
                f"at step {self.p.step:,} the weights of rank(s) {', '.join(map(str, differ))} differ "
                f"from rank 0's (checksums {sums[differ[0]]:08x} and {sums[0]:08x}); "
                f"the last state saved is {self.last}"
            )

    # -- checkpoints

    def _config(self) -> dict[str, Any]:
        """The checkpoint's JSON config (the model's own fields are added by save_checkpoint)."""
        p = self.p
        return {
            "training": self.options.to_dict(),
            "corpus": [str(path) for path in self.corpus_paths],
            "out": str(self.out.resolve()),
            "step": p.step,
            "val_loss": p.val_loss,
            "best_val_loss": p.best_val_loss,
            "init_from": self.init_from,
            "record": {
                "best_step": p.best_step,
                "epoch": self.stream.epoch,
                "chars_seen": p.chars_seen,
                "validations": p.validations,  # no clock here: same seed, same bytes
            },
        }

    def _save(self, best: bool) -> Path:
        """Write the best weights (`out`) or the full state (`.last.npz`), atomically; rank 0
        only, the carried state gathered from every rank in stream order."""
        if best:
            if self.group.is_root:
                save_checkpoint(self.out, self._weights(), self.vocab, self._config())
            self.out_written = True
            return self.out
        h, c = self.group.gather_streams(self.h), self.group.gather_streams(self.c)  # (L, B, H)
        if not self.group.is_root:
            self.last_saved_step = self.p.step
            return self.last
        p = self.p
        p.elapsed = self._elapsed()
        state = {
            "version": np.array(STATE_VERSION, dtype=np.int64),
            "m": self.m,
            "v": self.v,
            "h": h,
            "c": c,
            "rng": _state_str({"dropout": self.dropout_rng.bit_generator.state}),
            "data": _state_str(self.stream.state()),
            "counters": _state_str(dataclasses.asdict(p)),
        }
        if self.average is not None:
            state["ema"] = self.average.flat
        path = save_checkpoint(self.last, self.params, self.vocab, self._config(), state)
        self.last_saved_step = p.step
        return path

    def _result(self, interrupted: bool) -> TrainResult:
        p = self.p
        return TrainResult(
            options=self.options,
            step=p.step,
            epoch=self.stream.epoch,
            train_loss=self._smoothed(),
            val_loss=p.val_loss,
            best_val_loss=p.best_val_loss,
            best_step=p.best_step,
            chars_seen=p.chars_seen,
            elapsed=self._elapsed(),
            chars_per_s=p.chars_seen / p.train_seconds if p.train_seconds else 0.0,
            out=self.out if self.out_written else None,
            last=self.last if self.last_saved_step >= 0 else None,
            metrics=self.metrics.path,
            interrupted=interrupted,
            batch_size=self.stream.batch,
            seq_len=self.stream.seq_len,
            n_params=self.params.flat.size,
        )
