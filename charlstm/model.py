"""The character-level LSTM model: its configuration, its parameters (one flat buffer with
named views) and the forward/backward driver that strings the kernels together.

tokens -> embedding (E, or one-hot when E = 0) -> L stacked LSTM layers of H units -> linear
head to V logits -> softmax cross-entropy (mean over B*T characters, nats). Inverted dropout
between layers and before the head, in training only. Letters as in kernels.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import kernels

GATE_NAMES = ("i", "f", "g", "o")  # order along the 4H axis, as in PyTorch


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int  # V
    layers: int = 2  # L
    hidden: int = 512  # H
    embed: int = 64  # E; 0 feeds one-hot characters straight into the first layer
    dropout: float = 0.0  # inverted dropout between layers and before the head

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
        for layer in range(self.layers):
            shapes.append((f"lstm.{layer}.Wx", (self.input_size(layer), 4 * H)))
            shapes.append((f"lstm.{layer}.Wh", (H, 4 * H)))
            shapes.append((f"lstm.{layer}.b", (4 * H,)))
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
    """PyTorch's default initialisation (uniform ±1/sqrt(H) for the LSTM and the head, N(0, 1)
    for the embedding), with the forget-gate bias set to 1 so memory is kept from the start."""
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
    After a forward pass it holds every layer's gates, cell memory and hidden state, which
    is what backward needs and what the gate inspector shows."""

    def __init__(self, config: ModelConfig, steps: int, batch: int, dtype: type = np.float32):
        T, B, H, L = steps, batch, config.hidden, config.layers
        self.config, self.steps, self.batch, self.dtype = config, T, B, np.dtype(dtype)
        self.gates = np.empty((L, T, B, 4 * H), dtype=dtype)  # activated i, f, g, o
        self.h_seq = np.empty((L, T, B, H), dtype=dtype)
        self.c_seq = np.empty((L, T, B, H), dtype=dtype)
        self.h0 = np.zeros((L, B, H), dtype=dtype)  # state each layer started the window from
        self.c0 = np.zeros((L, B, H), dtype=dtype)
        # The first layer's input projection of every character, embed·Wx (V, 4H), and its
        # gradient: with V << B*T, looking rows up beats multiplying B*T embeddings.
        self.input_table = np.empty((config.vocab_size, 4 * H), dtype=dtype)
        self.dinput_table = np.empty((config.vocab_size, 4 * H), dtype=dtype)
        self.x_drop = np.empty((L, T, B, H), dtype=dtype)  # dropped-out h feeding layer l+1 / head
        self.masks = np.ones((L, T, B, H), dtype=dtype)  # dropout masks (0 or 1/(1-p))
        self.logits = np.empty((T * B, config.vocab_size), dtype=dtype)
        self.dlogits = np.empty((T * B, config.vocab_size), dtype=dtype)
        self.dz = np.empty((T, B, 4 * H), dtype=dtype)
        self.dh = np.empty((T, B, H), dtype=dtype)
        self.tokens = np.empty(T * B, dtype=np.int64)
        self.dropout_on = False

    def fits(self, steps: int, batch: int, dtype: np.dtype) -> bool:
        return self.steps == steps and self.batch == batch and self.dtype == dtype


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
    With dropout_rng and config.dropout > 0, dropout masks are drawn from it (training)."""
    config = params.config
    T, B = inputs.shape
    L, H = config.layers, config.hidden
    ws.tokens[:] = inputs.reshape(T * B)
    p = config.dropout
    ws.dropout_on = dropout_rng is not None and p > 0.0
    if ws.dropout_on:
        keep = dropout_rng.random(ws.masks.shape, dtype=np.float32) >= p
        np.multiply(keep, 1.0 / (1.0 - p), out=ws.masks, dtype=ws.dtype, casting="unsafe")

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
            kernels.apply_dropout(ws.x_drop[layer], ws.h_seq[layer], ws.masks[layer])
        h[layer] = ws.h_seq[layer, T - 1]
        c[layer] = ws.c_seq[layer, T - 1]

    top = _layer_output(ws, L - 1).reshape(T * B, H)
    kernels.matmul(ws.logits, top, params["head.W"])
    kernels.add_row_vector(ws.logits, params["head.b"])
    return ws.logits


def _layer_output(ws: Workspace, layer: int) -> np.ndarray:
    """What layer `layer` passes upward: its hidden states, dropped out when training."""
    return ws.x_drop[layer] if ws.dropout_on else ws.h_seq[layer]


def backward(params: Params, grads: Params, targets: np.ndarray, ws: Workspace) -> float:
    """Loss of the last forward pass against targets (T, B); gradients are *added* to grads.
    Truncated BPTT: nothing flows into the state the window started from."""
    config = params.config
    T, B = targets.shape
    L, H = config.layers, config.hidden
    loss = kernels.softmax_cross_entropy(ws.dlogits, ws.logits, np.ascontiguousarray(targets).reshape(T * B))

    top = _layer_output(ws, L - 1).reshape(T * B, H)
    kernels.matmul_add(grads["head.W"], top.T, ws.dlogits)
    kernels.add_column_sums(grads["head.b"], ws.dlogits)
    dh = ws.dh.reshape(T * B, H)
    kernels.matmul(dh, ws.dlogits, params["head.W"].T)

    for layer in range(L - 1, -1, -1):
        if ws.dropout_on:
            kernels.apply_dropout(ws.dh, ws.dh, ws.masks[layer])
        kernels.lstm_backward(
            ws.dz, grads[f"lstm.{layer}.Wh"], grads[f"lstm.{layer}.b"], ws.dh,
            ws.gates[layer], ws.c_seq[layer], ws.h_seq[layer],
            params[f"lstm.{layer}.Wh"], ws.h0[layer], ws.c0[layer],
        )  # fmt: skip
        dz = ws.dz.reshape(T * B, 4 * H)
        Wx, dWx = params[f"lstm.{layer}.Wx"], grads[f"lstm.{layer}.Wx"]
        if layer == 0 and config.embed == 0:
            kernels.scatter_add_rows(dWx, dz, ws.tokens)
        elif layer == 0:  # through input_table = embed·Wx
            ws.dinput_table[...] = 0.0
            kernels.scatter_add_rows(ws.dinput_table, dz, ws.tokens)
            kernels.matmul_add(dWx, params["embed"].T, ws.dinput_table)
            kernels.matmul_add(grads["embed"], ws.dinput_table, Wx.T)
        else:
            kernels.matmul_add(dWx, _layer_output(ws, layer - 1).reshape(T * B, H).T, dz)
            kernels.matmul(dh, dz, Wx.T)  # gradient w.r.t. the layer below's output
    return loss


def loss_and_grad(
    params: Params,
    grads: Params,
    inputs: np.ndarray,
    targets: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    ws: Workspace,
    dropout_rng: np.random.Generator | None = None,
) -> float:
    """One window of truncated BPTT: zero grads, forward from (h, c) (advanced in place to the
    window's final state), backward. Returns the mean loss in nats per character."""
    grads.flat[:] = 0.0
    forward(params, inputs, h, c, ws, dropout_rng)
    return backward(params, grads, targets, ws)
