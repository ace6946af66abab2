"""The character-level LSTM model: its configuration, its parameters (one flat buffer with
named views) and the forward/backward driver that strings the kernels together.

tokens -> embedding (E, or one-hot when E = 0) -> L stacked LSTM layers of H units (or GRU,
or plain RNN: charlstm.cells) -> linear
head to V logits -> softmax cross-entropy (mean over B*T characters, nats). Inverted dropout
between layers and before the head, in training only. Letters as in charlstm.kernels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numba
import numpy as np

from . import blas_threads, cells, kernels
from .buffers import aligned_empty
from .kernels import tiles

GATE_NAMES = ("i", "f", "g", "o")  # order along the LSTM's 4H axis, as in PyTorch
# Each cell's gates along its G = len(gates)*H axis, PyTorch's order: the LSTM's; the GRU's
# reset, update and candidate; none for the plain RNN, whose projection is its h's (G = H)
CELL_GATES = {"lstm": GATE_NAMES, "gru": ("r", "z", "n"), "rnn": ()}
CELLS = tuple(CELL_GATES)


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V
    layers: int = 2  # L
    hidden: int = 512  # H
    embed: int = 64  # E; 0 feeds one-hot characters straight into the first layer
    dropout: float = 0.0  # inverted dropout between layers and before the head
    cell: str = "lstm"  # one of CELLS

    @property
    def projection_width(self) -> int:
        """G, the width of a layer's projections x·Wx and h·Wh: 4H (LSTM), 3H (GRU), H (RNN)."""
        return max(len(CELL_GATES[self.cell]), 1) * self.hidden

    def input_size(self, layer: int) -> int:
        """Width I of what layer `layer` reads: E (or V when one-hot) for the first, H above."""
        if layer > 0:
            return self.hidden
        return self.embed if self.embed > 0 else self.vocab_size

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every parameter in buffer order, with the checkpoint's key names."""
        V, H, E = self.vocab_size, self.hidden, self.embed
        shapes: list[tuple[str, tuple[int, ...]]] = []
        if E > 0:
            shapes.append(("embed", (V, E)))
        G, cell = self.projection_width, self.cell
        for layer in range(self.layers):
            shapes.append((f"{cell}.{layer}.Wx", (self.input_size(layer), G)))
            shapes.append((f"{cell}.{layer}.Wh", (H, G)))
            if cell == "gru":  # two biases, as r scales h·Wh_n + bh_n
                shapes.append((f"gru.{layer}.bx", (G,)))
                shapes.append((f"gru.{layer}.bh", (G,)))
            else:
                shapes.append((f"{cell}.{layer}.b", (G,)))
        shapes.append(("head.W", (H, V)))
        shapes.append(("head.b", (V,)))
        return shapes

    @property
    def n_params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.param_shapes())

    def to_dict(self) -> dict:
        return asdict(self)


class Params:
    """All parameters (or all gradients, or an optimizer moment) of a model in one flat
    buffer (P,), with a named, shaped view per tensor, so that clipping and Adam are single
    loops over `flat` while the model code reads `params["lstm.0.Wh"]`."""

    def __init__(self, config: ModelConfig, flat: np.ndarray):
        if flat.ndim != 1 or flat.size != config.n_params:
            raise ValueError(f"flat buffer has {flat.size} values, the model needs {config.n_params}")
        self.config = config
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        offset = 0
        for name, shape in config.param_shapes():
            size = math.prod(shape)
            self.views[name] = flat[offset : offset + size].reshape(shape)
            offset += size

    @classmethod
    def zeros(cls, config: ModelConfig, dtype: type = np.float32) -> Params:
        return cls(config, np.zeros(config.n_params, dtype=dtype))

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def names(self) -> list[str]:
        return list(self.views)

    @property
    def dtype(self) -> np.dtype:
        return self.flat.dtype

    def astype(self, dtype: type) -> Params:
        return Params(self.config, self.flat.astype(dtype))

    def copy(self) -> Params:
        return Params(self.config, self.flat.copy())

    def decay_mask(self) -> np.ndarray:
        """(P,) uint8: 1 on weight matrices, 0 on biases and the embedding (no weight decay)."""
        mask = np.zeros(self.flat.size, dtype=np.uint8)
        for name, view in self.views.items():
            if name.endswith((".Wx", ".Wh", ".W")):
                start = _offset_in(self.flat, view)
                mask[start : start + view.size] = 1
        return mask


def _offset_in(flat: np.ndarray, view: np.ndarray) -> int:
    return (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // flat.itemsize


def init_params(config: ModelConfig, rng: np.random.Generator, dtype: type = np.float32) -> Params:
    """PyTorch's default initialisation (uniform ±1/sqrt(H) for the cells and the head, N(0, 1)
    for the embedding), with the LSTM's forget-gate bias set to 1 so memory is kept from the
    start."""
    params = Params.zeros(config, dtype)
    H = config.hidden
    bound = 1.0 / math.sqrt(H)
    for name, view in params.views.items():
        # Drawn in float64 one tensor at a time, so float32 and float64 models start alike.
        if name == "embed":
            view[...] = rng.standard_normal(view.shape)
        else:
            view[...] = rng.uniform(-bound, bound, view.shape)
        if name.endswith(".b") and name.startswith("lstm."):
            view[H : 2 * H] = 1.0
    return params


def zero_state(config: ModelConfig, batch: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(h, c), each (L, B, H) zeros: the state at the start of a text."""
    shape = (config.layers, batch, config.hidden)
    return np.zeros(shape, dtype=dtype), np.zeros(shape, dtype=dtype)


class Workspace:
    """Buffers for one window of T steps over B streams, reused from window to window.

    `forward` (inference: evaluation, gate inspection) fills row-major buffers and leaves every
    layer's gates, cell memory and hidden state in `gates` (L, T, B, 4H), `c_seq` and `h_seq`
    (L, T, B, H). `loss_and_grad` (training) works in the feature-major layout of
    kernels.lstm_train_forward in buffers of its own, allocated on first use, with the H units
    cut into `bands`, one per numba thread (default: one per thread when H divides evenly into
    bands of at least MIN_BAND units; else 1, serial).
    Dropout masks are drawn in one order, (L, H, T, B), by both passes, so the same generator
    gives both the same masks; `masks` shows them as (L, T, B, H).
    """

    def __init__(
        self,
        config: ModelConfig,
        steps: int,
        batch: int,
        dtype: type = np.float32,
        bands: int | None = None,
        first_stream: int = 0,
        all_streams: int | None = None,
    ):
        T, B, H, L = steps, batch, config.hidden, config.layers
        self.config, self.steps, self.batch, self.dtype = config, T, B, np.dtype(dtype)
        # These B streams are first_stream .. first_stream+B-1 of the run's all_streams, for
        # their dropout masks (data-parallel training: charlstm.distributed)
        self.first_stream = first_stream
        self.all_streams = B if all_streams is None else all_streams
        if not 0 <= first_stream <= self.all_streams - B:
            raise ValueError(
                f"streams {first_stream}..{first_stream + B - 1} are not among {self.all_streams}"
            )
        self.bands = default_bands(H) if bands is None else bands
        if self.bands < 1 or H % self.bands:
            raise ValueError(f"{H} hidden units cannot be cut into {self.bands} equal bands")
        self.tokens = np.empty(T * B, dtype=np.int64)  # the window's inputs, t-major
        self.masks_fm = np.ones((L, H, T, B), dtype=dtype)  # dropout masks (0 or 1/(1-p))
        self.masks = self.masks_fm.transpose(0, 2, 3, 1)  # (L, T, B, H) view of the same
        self.dropout_on = False
        self.logits: np.ndarray | None = None  # (T*B, V) of the last pass, row t*B + b
        self._rows_ready = False
        self._train: _TrainBuffers | None = None
        self._cells: cells.CellBuffers | None = None  # the GRU's and RNN's backward work
        self._rows()

    def fits(self, steps: int, batch: int, dtype: np.dtype) -> bool:
        return self.steps == steps and self.batch == batch and self.dtype == dtype

    def _rows(self) -> Workspace:
        if not self._rows_ready:
            T, B, config = self.steps, self.batch, self.config
            H, L, V, G = config.hidden, config.layers, config.vocab_size, config.projection_width
            self.gates = np.empty((L, T, B, G), dtype=self.dtype)  # the cell's activated gates
            self.h_seq = np.empty((L, T, B, H), dtype=self.dtype)
            self.c_seq = np.empty((L, T, B, H), dtype=self.dtype)
            self.h0 = np.zeros((L, B, H), dtype=self.dtype)  # state each layer started from
            self.c0 = np.zeros((L, B, H), dtype=self.dtype)
            # The first layer's input projection of every character, embed·Wx (V, G): with
            # V << B*T, looking rows up beats multiplying B*T embeddings.
            self.input_table = np.empty((V, G), dtype=self.dtype)
            self.x_drop = np.empty((L, T, B, H), dtype=self.dtype)  # dropped-out h passed up
            self.logits_rows = np.empty((T * B, V), dtype=self.dtype)
            self._rows_ready = True
        return self

    def _training(self) -> _TrainBuffers:
        if self._train is None:
            self._train = _TrainBuffers(self.config, self.steps, self.batch, self.bands, self.dtype)
        return self._train


MIN_BAND = 32  # units: fewer per thread and the per-step products get too thin to pay


def default_bands(hidden: int) -> int:
    """How many bands of units to train side by side: one per numba thread, if the H units
    divide evenly into bands of at least MIN_BAND; else 1 (serial)."""
    threads = numba.get_num_threads()
    if threads > 1 and hidden % threads == 0 and hidden // threads >= MIN_BAND:
        return threads
    return 1


class _TrainBuffers:
    """The buffers of one training window: feature-major sequences for BLAS, step-major ones
    for the step kernels (see kernels.lstm_train_forward), U bands of Hu = H/U units; each
    starts on a cache line (buffers.aligned_empty)."""

    def __init__(self, config: ModelConfig, T: int, B: int, U: int, dtype: np.dtype):
        H, L, V = config.hidden, config.layers, config.vocab_size
        self.act = aligned_empty((L, T, 4 * H, B), dtype=dtype)  # activated i, f, g, o
        self.c_steps = aligned_empty((L, T, H, B), dtype=dtype)  # cell memory
        self.h_seq = aligned_empty((L, H, T, B), dtype=dtype)
        # The state before each step, for dWh: a row per stream for the backward's steps when
        # the register tiles serve there (see _step_gradients_serve), else feature-major for
        # one product over the window (tiled or BLAS, below); the other left empty
        in_steps = self.dWh_in_steps = _step_gradients_serve(H, U, dtype)
        self.h_prev = aligned_empty((L, 0 if in_steps else H, T, B), dtype=dtype)
        self.h_prev_rows = aligned_empty((L, T if in_steps else 0, B, H), dtype=dtype)
        # The weight gradients dWh and dWx: on the register tiles over the window when they
        # serve (kernels.add_tiled_weight_gradient: the backward's dz_steps read in place, x
        # packed in panels), else one BLAS product each from the feature-major dz; x is h_prev
        # or the layer below's output, feature-major, either way
        gradients_tiled = not in_steps and tiles.serve(tiles.WINDOW_GRADIENT, 4 * H, H, dtype)
        self.gradients_tiled = gradients_tiled
        panels = -(-H // tiles.COLUMNS) if gradients_tiled else 0
        self.x_panels = aligned_empty((panels, T * B, tiles.COLUMNS), dtype=dtype)
        self.x_drop = aligned_empty((L, H, T, B), dtype=dtype)  # dropped-out h passed up
        self.h0 = aligned_empty((L, H, B), dtype=dtype)
        self.c0 = aligned_empty((L, H, B), dtype=dtype)
        # The weights as the products read them. Wh for the step products: in the register
        # tiles of kernels.step_product when they serve (a band's 4Hu gate rows for the
        # forward, its Hu rows of Wh for the backward), else transposed into bands for BLAS
        # (the backward's BLAS reads Wh itself). The other layout is left empty.
        R, Hu = tiles.ROWS, H // U
        tiled = tiles.serve(tiles.STEP, 4 * Hu, B, dtype) and tiles.serve(tiles.STEP, Hu, B, dtype)
        self.Wh_bands = aligned_empty((U, 0 if tiled else 4 * Hu, H), dtype=dtype)
        self.Wh_packed = aligned_empty((U, tiles.tiles_of(4 * Hu) if tiled else 0, H, R), dtype=dtype)
        self.Wh_rows_packed = aligned_empty((U, tiles.tiles_of(Hu) if tiled else 0, 4 * H, R), dtype=dtype)
        # Wx above the first layer. Coupled (the compile target's tiles serve tiles.COUPLING; no
        # measured CPU's do today, see tiles.GEOMETRIES):
        # packed like Wh, for the step kernels' own tile products x_t·Wx and Wx·dz_t, where the
        # layer below's output and the gradient passed down stay step-major (`steps`, two
        # alternating buffers). Windowed (tiles.WINDOW, x86): packed in tiles of rows
        # (Wx.T, and Wx), for one product over the window each way on the same step-major
        # buffers (kernels.tiled_steps_product: the gates' act, the layer below's h and dh,
        # the backward's dz_steps). Otherwise transposed for BLAS: one window-wide product each
        # way, through the feature-major `proj` and `dh` (the tiles on feature-major x
        # measured no faster: its rows, T*B apart, do not stay in cache). The head's
        # W: in tiles of rows for kernels.tiled_matmul when they serve (head.W.T, padded with
        # zero rows to whole tiles, for the logits; head.W for dh), else transposed for BLAS
        # (whose backward reads head.W itself). Whether the tiles serve the head (and dWh in the
        # steps) is the compile target's measured choice: tiles.GEOMETRIES.
        self.coupled = L > 1 and tiled and tiles.serve(tiles.COUPLING, 4 * Hu, B, dtype)
        coupled = self.coupled
        self.windowed = (
            L > 1 and not coupled and all(tiles.serve(tiles.WINDOW, M, B, dtype) for M in (4 * H, H))
        )
        windowed = self.windowed
        self.Wx_window = aligned_empty((tiles.tiles_of(4 * H) if windowed else 0, H, R), dtype=dtype)
        self.Wx_rows_window = aligned_empty((tiles.tiles_of(H) if windowed else 0, 4 * H, R), dtype=dtype)
        self.Wx_packed = aligned_empty((U, tiles.tiles_of(4 * Hu) if coupled else 0, H, R), dtype=dtype)
        self.Wx_rows_packed = aligned_empty((U, tiles.tiles_of(Hu) if coupled else 0, 4 * H, R), dtype=dtype)
        self.Wx_T = aligned_empty((0 if coupled or windowed else 4 * H, H), dtype=dtype)
        # Wx.T·x, for BLAS
        self.proj = aligned_empty((0 if coupled or windowed else 4 * H, T, B), dtype=dtype)
        head_tiled = tiles.serve(tiles.HEAD, H, B, dtype)
        self.head_T = aligned_empty((0 if head_tiled else V, H), dtype=dtype)
        self.head_packed = aligned_empty((-(-V // R) if head_tiled else 0, H, R), dtype=dtype)  # whole tiles
        self.head_rows_packed = aligned_empty((tiles.tiles_of(H) if head_tiled else 0, V, R), dtype=dtype)
        V_rows = self.head_packed.shape[0] * R if head_tiled else V  # logit rows, padding included
        self.table_T = aligned_empty((4 * H, V), dtype=dtype)  # first layer: (embed·Wx).T
        self.dtable_T = aligned_empty((4 * H, V), dtype=dtype)
        self.dW_T = aligned_empty(max(4 * H, V) * H, dtype=dtype)  # a weight gradient, transposed
        self.logits_padded = aligned_empty((V_rows, T * B), dtype=dtype)
        self.logits_T = self.logits_padded[:V]
        self.dlogits_T = aligned_empty((V, T * B), dtype=dtype)
        # dz feature-major, for the products on BLAS that read it (see _wants_dz)
        dz_read = not self.gradients_tiled or (L > 1 and not coupled and not windowed)
        self.dz = aligned_empty((4 * H if dz_read else 0, T, B), dtype=dtype)
        self.dh = aligned_empty((H, T, B), dtype=dtype)
        self.dz_steps = aligned_empty((T, 4 * H, B), dtype=dtype)  # step-major work of the kernels
        # Step-major h of a layer (forward), dh of a layer (backward): with the layers coupled
        # on the tiles, layer l's in steps[l % 2], read by the layer next to it as its input
        self.steps = aligned_empty((2 if coupled else 1, T, H, B), dtype=dtype)
        self.meeting = aligned_empty(2, np.int64)  # the threads' counters (charlstm.kernels.spin)
        self.meeting[:] = 0


def _draw_masks(ws: Workspace, dropout_rng: np.random.Generator | None) -> None:
    p = ws.config.dropout
    ws.dropout_on = dropout_rng is not None and p > 0.0
    if ws.dropout_on:
        # 16 random bits a unit: a drop where they fall below p in 65536ths (p rounded to the
        # nearest 1/65536), the kept scaled by 1/(1-p); from one seed drawn per window, hashed
        # by a parallel kernel: 0.2 ms a window at 2x256, where NumPy's floats took 2.5 ms, 7%
        # of a step on two threads. The masks follow the generator's state, so resuming is exact.
        threshold = min(round(p * 65536), 65535)
        seed = int(dropout_rng.integers(0, 1 << 63))
        scale = 1.0 / (1.0 - p)
        if ws.all_streams == ws.batch:
            kernels.dropout_masks(ws.masks_fm.reshape(-1), seed, threshold, scale, ws.bands)
        else:  # this rank's streams of a data-parallel run: their part of every rank's masks
            masks = ws.masks_fm.reshape(-1, ws.batch)  # (L*H*T, B)
            kernels.dropout_masks_of_streams(
                masks, seed, threshold, scale, ws.all_streams, ws.first_stream, ws.bands
            )


def forward(
    params: Params,
    inputs: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    ws: Workspace,
    dropout_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Run the model over inputs (T, B) token ids from state h, c (L, B, H), which are
    overwritten with the state after the last step. Returns the logits (T*B, V), row t*B + b.
    With dropout_rng and config.dropout > 0, dropout masks are drawn from it."""
    config = params.config
    T, B = inputs.shape
    L, H = config.layers, config.hidden
    ws._rows()
    ws.tokens[:] = inputs.reshape(T * B)
    _draw_masks(ws, dropout_rng)
    if config.cell != "lstm":
        with _one_pool_of_threads(ws.bands):
            return cells.forward(params, h, ws)

    for layer in range(L):
        Wx = params[f"lstm.{layer}.Wx"]
        proj = ws.gates[layer].reshape(T * B, 4 * H)  # (T*B, 4H) = x·Wx, activated in place below
        if layer == 0 and config.embed == 0:
            kernels.gather_rows(proj, Wx, ws.tokens)  # one-hot(x)·Wx is a row lookup
        elif layer == 0:
            kernels.matmul(ws.input_table, params["embed"], Wx)
            kernels.gather_rows(proj, ws.input_table, ws.tokens)
        else:
            kernels.matmul(proj, _layer_output(ws, layer - 1).reshape(T * B, H), Wx)
        ws.h0[layer] = h[layer]
        ws.c0[layer] = c[layer]
        kernels.lstm_forward(
            ws.h_seq[layer], ws.c_seq[layer], ws.gates[layer],
            params[f"lstm.{layer}.Wh"], params[f"lstm.{layer}.b"], ws.h0[layer], ws.c0[layer],
        )  # fmt: skip
        if ws.dropout_on:
            kernels.apply_dropout(ws.x_drop[layer], ws.h_seq[layer], ws.masks[layer], 1)
        h[layer] = ws.h_seq[layer, T - 1]
        c[layer] = ws.c_seq[layer, T - 1]

    top = _layer_output(ws, L - 1).reshape(T * B, H)
    kernels.matmul(ws.logits_rows, top, params["head.W"])
    kernels.add_row_vector(ws.logits_rows, params["head.b"])
    ws.logits = ws.logits_rows
    return ws.logits


def _layer_output(ws: Workspace, layer: int) -> np.ndarray:
    """What layer `layer` passes upward (T, B, H): its hidden states, dropped out if training."""
    return ws.x_drop[layer] if ws.dropout_on else ws.h_seq[layer]


def _train_output(ws: Workspace, tb: _TrainBuffers, layer: int) -> np.ndarray:
    """The same in the feature-major layout, (H, T*B)."""
    out = tb.x_drop[layer] if ws.dropout_on else tb.h_seq[layer]
    return out.reshape(out.shape[0], -1)


def _train_forward(
    params: Params, inputs: np.ndarray, h: np.ndarray, c: np.ndarray, ws: Workspace, dropout_rng
) -> None:
    """`forward` in the feature-major layout, keeping what _train_backward needs."""
    config = params.config
    T, B = inputs.shape
    L, H = config.layers, config.hidden
    tb = ws._training()
    ws.tokens[:] = inputs.reshape(T * B)
    _draw_masks(ws, dropout_rng)

    U = ws.bands
    for layer in range(L):
        Wx = params[f"lstm.{layer}.Wx"]
        if layer == 0:
            if config.embed == 0:
                kernels.transpose_into(tb.table_T, Wx, U)  # one-hot: column v of Wx.T is character v's
            else:
                kernels.matmul(tb.table_T, Wx.T, params["embed"].T)  # (4H, E)·(E, V)
        elif tb.coupled:  # x_t·Wx inside the steps, from the layer below's step-major output
            kernels.pack_into_bands(tb.Wx_packed, Wx)  # (that output left dropped out by its kernel)
        elif tb.windowed:  # x·Wx on the tiles over the window, from the same step-major output
            kernels.pack_rows(tb.Wx_window, Wx.T, 4 * H, U)
            kernels.tiled_steps_product(tb.act[layer], tb.Wx_window, _steps_of(tb, layer - 1), U)
        else:
            kernels.transpose_into(tb.Wx_T, Wx, U)
            proj = tb.proj.reshape(4 * H, T * B)  # Wx.T·x
            kernels.matmul_rows(proj, tb.Wx_T, _train_output(ws, tb, layer - 1), U)
            kernels.to_step_major(tb.act[layer], tb.proj, U)
        _prepare_forward_weights(tb, params[f"lstm.{layer}.Wh"])
        tb.h0[layer] = h[layer].T
        tb.c0[layer] = c[layer].T
        x_steps, Wx_packed = _coupling_of(tb, layer, tb.Wx_packed)
        # with dropout, the kernel leaves x_drop and the step-major output (the next layer's
        # input) dropped out
        x_drop, mask = _dropout_of(ws, tb, layer)
        kernels.lstm_train_forward(
            tb.h_seq[layer], tb.h_prev[layer], tb.h_prev_rows[layer], tb.act[layer], tb.c_steps[layer],
            _steps_of(tb, layer), tb.Wh_bands, tb.Wh_packed, params[f"lstm.{layer}.b"], tb.h0[layer],
            tb.c0[layer], tb.table_T, _tokens_of(ws, layer), x_steps, Wx_packed, x_drop, mask, tb.meeting,
        )  # fmt: skip
        h[layer] = tb.h_seq[layer, :, T - 1].T
        c[layer] = tb.c_steps[layer, T - 1].T

    top = _train_output(ws, tb, L - 1)  # (H, T*B)
    _window_product(tb.logits_padded, params["head.W"].T, top, tb.head_packed, U, tb.head_T)
    kernels.add_column_vector(tb.logits_T, params["head.b"])
    ws.logits = tb.logits_T.T


def _train_backward(
    params: Params, grads: Params, targets: np.ndarray, ws: Workspace, characters: int
) -> float:
    """Loss of the last _train_forward against targets (T, B), summed and divided by
    `characters`; gradients are *added* to grads. Truncated BPTT: nothing flows into the state
    the window started from."""
    config = params.config
    T, B = targets.shape
    L, H, V = config.layers, config.hidden, config.vocab_size
    tb = ws._training()
    flat_targets = np.ascontiguousarray(targets).reshape(T * B)
    U = ws.bands
    loss = kernels.softmax_cross_entropy_columns(
        tb.dlogits_T, grads["head.b"], tb.logits_T, flat_targets, characters, U
    )
    top = _train_output(ws, tb, L - 1)  # (H, T*B)
    kernels.add_weight_gradient(grads["head.W"], tb.dlogits_T, top, _transposed_gradient(tb, V, H), U)
    dh = tb.dh.reshape(H, T * B)
    _window_product(dh, params["head.W"], tb.dlogits_T, tb.head_rows_packed, U)

    for layer in range(L - 1, -1, -1):
        # dh from above: feature-major from the head or BLAS, or step-major in the layer's
        # steps from the layer above's backward (coupled)
        from_steps = (tb.coupled or tb.windowed) and layer < L - 1
        dh_steps = _steps_of(tb, layer)
        # dropout's backward: here when dh is step-major already, else in the kernel's copy
        dh_mask = tb.dh[:0]  # (0, T, B): none
        if ws.dropout_on and from_steps:
            kernels.apply_dropout(dh_steps, dh_steps, ws.masks_fm[layer].transpose(1, 0, 2), U)
        elif ws.dropout_on:
            dh_mask = ws.masks_fm[layer]
        Wx, dWx = params[f"lstm.{layer}.Wx"], grads[f"lstm.{layer}.Wx"]
        if layer == 0:
            tb.dtable_T[...] = 0.0
        if tb.Wh_rows_packed.shape[1] > 0:  # the backward's step products on tiles of Wh's rows
            kernels.pack_bands(tb.Wh_rows_packed, params[f"lstm.{layer}.Wh"])
        work = _transposed_gradient(tb, 4 * H, H)
        dz_wanted = tb.dz if _wants_dz(tb, layer) else tb.dz[:0]
        h_prev_rows = tb.h_prev_rows[layer] if tb.dWh_in_steps else tb.h_prev_rows[layer, :0]
        if tb.coupled and layer > 0:
            kernels.pack_bands(tb.Wx_rows_packed, Wx)
        dx_steps, Wx_rows_packed = _coupling_of(tb, layer, tb.Wx_rows_packed)
        kernels.lstm_train_backward(
            dz_wanted, grads[f"lstm.{layer}.b"], grads[f"lstm.{layer}.Wh"], work,
            tb.dh[:0] if from_steps else tb.dh, dh_mask, tb.act[layer], tb.c_steps[layer],
            params[f"lstm.{layer}.Wh"], tb.Wh_rows_packed, tb.c0[layer], h_prev_rows, tb.dz_steps, dh_steps,
            tb.dtable_T, _tokens_of(ws, layer), dx_steps, Wx_rows_packed, U, tb.meeting,
        )  # fmt: skip
        dz = tb.dz.reshape(-1, T * B)
        h_prev = tb.h_prev[layer].reshape(-1, T * B)  # (H, T*B), unless dWh was added up in the steps
        if tb.gradients_tiled:  # from dz_steps in place, for dWh and dWx
            kernels.pack_panels(tb.x_panels, h_prev, U)
            kernels.add_tiled_weight_gradient(grads[f"lstm.{layer}.Wh"], tb.dz_steps, tb.x_panels, work, U)
        elif not tb.dWh_in_steps:
            kernels.add_weight_gradient(grads[f"lstm.{layer}.Wh"], dz, h_prev, work, U)
        if layer == 0:  # through table_T = (embed·Wx).T, or Wx.T when one-hot
            if config.embed == 0:
                dWx += tb.dtable_T.T
            else:
                kernels.matmul_add(dWx, params["embed"].T, tb.dtable_T.T)
                kernels.matmul_add(grads["embed"], tb.dtable_T.T, Wx.T)
        elif tb.gradients_tiled:
            kernels.pack_panels(tb.x_panels, _train_output(ws, tb, layer - 1), U)
            kernels.add_tiled_weight_gradient(dWx, tb.dz_steps, tb.x_panels, work, U)
        else:
            kernels.add_weight_gradient(dWx, dz, _train_output(ws, tb, layer - 1), work, U)
        if layer > 0:
            if tb.windowed:  # the gradient w.r.t. the layer below's output, step-major
                kernels.pack_rows(tb.Wx_rows_window, Wx, H, U)
                kernels.tiled_steps_product(_steps_of(tb, layer - 1), tb.Wx_rows_window, tb.dz_steps, U)
            elif not tb.coupled:  # else lstm_train_backward passed it down step-major
                kernels.matmul_rows(dh, Wx, dz, U)  # gradient w.r.t. the layer below's output
    return loss


def _dropout_of(ws: Workspace, tb: _TrainBuffers, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """(x_drop, mask), each (H, T, B), of the layer's output when dropout is on; else both
    empty (0, T, B), which tells the step kernels there is none."""
    if ws.dropout_on:
        return tb.x_drop[layer], ws.masks_fm[layer]
    return tb.h_seq[layer, :0], tb.h_seq[layer, :0]


def _wants_dz(tb: _TrainBuffers, layer: int) -> bool:
    """Whether a product after the layer's backward reads dz feature-major: dWh and dWx on BLAS
    (dWh unless added up in the steps; dWx above the first layer), and the gradient passed
    down on BLAS (neither windowed nor coupled)."""
    gradients = not tb.gradients_tiled and (layer > 0 or not tb.dWh_in_steps)
    return gradients or (layer > 0 and not tb.coupled and not tb.windowed)


STEP_GRADIENT_BYTES = 512 * 1024  # most of a thread's rows of dWh_T one core's L2 cache keeps


def _step_gradients_serve(H: int, bands: int, dtype: np.dtype) -> bool:
    """Whether lstm_train_backward should add up dWh step by step on the register tiles: they
    can (each band's gate rows in whole tiles, H in whole vectors), and each thread's rows of
    dWh_T (4H/bands, H) stay in its cache from step to step (in a full step on a Zen 4 against
    OpenBLAS's Haswell kernels: 3% faster at 1x128, neutral at 256 units on one thread (1 MiB),
    3-6% slower at 512 (4 MiB)), and the compile target's geometry serves it (tiles.GEOMETRIES:
    against OpenBLAS's own kernels it does not pay)."""
    fits = 4 * (H // bands) * H * np.dtype(dtype).itemsize <= STEP_GRADIENT_BYTES
    return fits and tiles.serve(tiles.STEP_GRADIENT, H // bands, H, dtype)


def _window_product(
    out: np.ndarray, W: np.ndarray, x: np.ndarray, packed: np.ndarray, U: int, W_T: np.ndarray | None = None
) -> None:
    """out (M, N) = W (M, K) · x (K, N) over a window: on the register tiles from W packed into
    `packed` when it has room (out then has M rounded up to whole tiles of rows), else BLAS
    on W, or on W_T, a contiguous copy of it, when W is a transposed view."""
    if packed.shape[0] > 0:
        kernels.pack_rows(packed, W, out.shape[0], U)
        kernels.tiled_matmul(out, packed, x, U)
        return
    if not W.flags.c_contiguous:
        kernels.transpose_into(W_T, W.T, U)
        W = W_T
    kernels.matmul_rows(out, W, x, U)


def _prepare_forward_weights(tb: _TrainBuffers, Wh: np.ndarray) -> None:
    """Wh (H, 4H) laid out by bands for the forward's step products: in tiles or for BLAS."""
    if tb.Wh_packed.shape[1] > 0:
        kernels.pack_into_bands(tb.Wh_packed, Wh)
    else:
        kernels.transpose_into_bands(tb.Wh_bands, Wh)


def _steps_of(tb: _TrainBuffers, layer: int) -> np.ndarray:
    """The layer's step-major buffer (T, H, B): its h in the forward, its dh in the backward."""
    return tb.steps[layer % tb.steps.shape[0]]


def _coupling_of(tb: _TrainBuffers, layer: int, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the step kernels of `layer` couple to the layer below on the tiles: the layer
    below's step-major buffer and Wx `packed` (forward or backward), or empty ones (the first
    layer, or not coupled)."""
    if tb.coupled and layer > 0:
        return _steps_of(tb, layer - 1), packed
    return tb.steps[0, :0], packed[:, :0]


def _tokens_of(ws: Workspace, layer: int) -> np.ndarray:
    """The tokens whose table rows are the layer's input projection: the window's inputs for
    the first layer, none (the projection is a product) above."""
    return ws.tokens if layer == 0 else ws.tokens[:0]


def _transposed_gradient(tb: _TrainBuffers, rows: int, cols: int) -> np.ndarray:
    """The work buffer of kernels.add_weight_gradient, shaped (rows, cols)."""
    return tb.dW_T[: rows * cols].reshape(rows, cols)


def loss_and_grad(
    params: Params,
    grads: Params,
    inputs: np.ndarray,
    targets: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    ws: Workspace,
    dropout_rng: np.random.Generator | None = None,
    characters: int | None = None,
) -> float:
    """One window of truncated BPTT: zero grads, forward from (h, c) (advanced in place to the
    window's final state), backward. Returns the mean loss in nats per character; the logits
    are left in ws.logits (T*B, V). With `characters`, loss and gradients are divided by it
    instead of T*B: a data-parallel rank's share of the mean over every rank's streams."""
    grads.flat[:] = 0.0
    count = inputs.size if characters is None else characters
    if params.config.cell != "lstm":
        forward(params, inputs, h, c, ws, dropout_rng)
        with _one_pool_of_threads(ws.bands):
            return cells.backward(params, grads, targets, ws, count)
    with _one_pool_of_threads(ws.bands):
        _train_forward(params, inputs, h, c, ws, dropout_rng)
        return _train_backward(params, grads, targets, ws, count)


def training_forward(
    params: Params, inputs: np.ndarray, h: np.ndarray, c: np.ndarray, ws: Workspace
) -> np.ndarray:
    """`forward` without dropout on training's kernels and in its buffers (the units in bands
    on numba's threads, the step products on the register tiles): the logits (T*B, V), a
    view into ws, equal to forward's to float rounding. For validation during training, where
    it runs 2x faster than forward's per-step BLAS calls; the buffers are training's work,
    rewritten by its next step."""
    if params.config.cell != "lstm":
        return forward(params, inputs, h, c, ws)
    with _one_pool_of_threads(ws.bands):
        _train_forward(params, inputs, h, c, ws, None)
    return ws.logits


@contextlib.contextmanager
def _one_pool_of_threads(bands: int) -> Iterator[None]:
    """Training work on one pool of threads only: two pools spin between their calls and fight
    each other for the cores. With the units in bands, numba's pool does everything, one
    thread per band (as many as numba has, if fewer), and BLAS runs on the calling thread;
    with one band, BLAS's pool runs the products and numba's kernels stay on the calling
    thread."""
    before = numba.get_num_threads()
    numba.set_num_threads(min(bands, numba.config.NUMBA_NUM_THREADS))
    try:
        if bands > 1:
            with blas_threads.limited_to(1):
                yield
        else:
            yield
    finally:
        numba.set_num_threads(before)
