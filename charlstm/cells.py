"""The GRU and plain RNN models' passes over a window, beside model.py's LSTM: the
projections and every weight gradient as window-wide BLAS products, the recurrence in
kernels.gru / kernels.rnn, batch-major (T, B, ·) throughout. model.forward and
model.loss_and_grad call these for config.cell "gru" and "rnn", after drawing the masks.
"""

from __future__ import annotations

import numpy as np

from . import kernels


class CellBuffers:
    """A window's work beyond the Workspace's rows (which hold each layer's activated gates,
    in `gates` (L, T, B, G), and h): the GRU's h·Wh_n + bh_n, and the backward's gradients."""

    def __init__(self, L: int, T: int, B: int, H: int, G: int, V: int, dtype: np.dtype):
        self.hn = np.empty((L, T, B, H), dtype=dtype)  # GRU: what r scaled
        self.dlogits = np.empty((T * B, V), dtype=dtype)
        self.dh = np.empty((T, B, H), dtype=dtype)  # w.r.t. a layer's h, from above
        self.dx_proj = np.empty((T, B, G), dtype=dtype)
        self.dh_proj = np.empty((T, B, G), dtype=dtype)
        self.h_prev = np.empty((T, B, H), dtype=dtype)  # h_{t-1} of each step
        self.Wh_T = np.empty((G, H), dtype=dtype)


def forward(params, h: np.ndarray, ws) -> np.ndarray:
    """Every layer over the window in ws.tokens (masks drawn: model.forward) from h (L, B, H),
    advanced in place; the logits (T*B, V), also left in ws.logits."""
    config = params.config
    cell, L, H, G = config.cell, config.layers, config.hidden, config.projection_width
    T, B = ws.steps, ws.batch
    buffers = _buffers(ws)
    for layer in range(L):
        proj = ws.gates[layer].reshape(T * B, G)  # x·Wx + bx, activated in place by the kernel
        Wx = params[f"{cell}.{layer}.Wx"]
        if layer == 0 and config.embed == 0:
            kernels.gather_rows(proj, Wx, ws.tokens)  # one-hot(x)·Wx is a row lookup
        elif layer == 0:
            kernels.matmul(ws.input_table, params["embed"], Wx)
            kernels.gather_rows(proj, ws.input_table, ws.tokens)
        else:
            kernels.matmul(proj, _output(ws, layer - 1).reshape(T * B, H), Wx)
        ws.h0[layer] = h[layer]
        if cell == "gru":
            kernels.add_row_vector(proj, params[f"gru.{layer}.bx"])
            kernels.gru_forward(
                ws.h_seq[layer], ws.gates[layer], buffers.hn[layer], params[f"gru.{layer}.Wh"],
                params[f"gru.{layer}.bh"], ws.h0[layer],
            )  # fmt: skip
        else:
            kernels.add_row_vector(proj, params[f"rnn.{layer}.b"])
            ws.h_seq[layer] = ws.gates[layer]
            kernels.rnn_forward(ws.h_seq[layer], params[f"rnn.{layer}.Wh"], ws.h0[layer])
        if ws.dropout_on:
            kernels.apply_dropout(ws.x_drop[layer], ws.h_seq[layer], ws.masks[layer])
        h[layer] = ws.h_seq[layer, T - 1]
    top = _output(ws, L - 1).reshape(T * B, H)
    kernels.matmul(ws.logits_rows, top, params["head.W"])
    kernels.add_row_vector(ws.logits_rows, params["head.b"])
    ws.logits = ws.logits_rows
    return ws.logits


def backward(params, grads, targets: np.ndarray, ws, characters: int) -> float:
    """Backpropagate the window forward() left in ws into grads (added; the caller zeroes
    them). Returns the mean loss per character, loss and gradients divided by `characters`."""
    config = params.config
    cell, L, H, G = config.cell, config.layers, config.hidden, config.projection_width
    T, B = ws.steps, ws.batch
    buffers = _buffers(ws)
    N = T * B
    dlogits = buffers.dlogits
    loss = kernels.softmax_cross_entropy(dlogits, ws.logits, targets.reshape(N)) * (N / characters)
    dlogits *= N / characters  # the kernel divides by N
    top = _output(ws, L - 1).reshape(N, H)
    kernels.matmul_add(grads["head.W"], top.T, dlogits)
    grads["head.b"][...] += dlogits.sum(axis=0)
    dh = buffers.dh.reshape(N, H)
    kernels.matmul(dh, dlogits, params["head.W"].T)
    for layer in range(L - 1, -1, -1):
        if ws.dropout_on:
            kernels.apply_dropout(buffers.dh, buffers.dh, ws.masks[layer])
        buffers.Wh_T[...] = params[f"{cell}.{layer}.Wh"].T
        buffers.h_prev[0] = ws.h0[layer]
        buffers.h_prev[1:] = ws.h_seq[layer, : T - 1]
        if cell == "gru":
            kernels.gru_backward(
                buffers.dx_proj, buffers.dh_proj, buffers.dh, ws.gates[layer], buffers.hn[layer],
                ws.h_seq[layer], ws.h0[layer], buffers.Wh_T,
            )  # fmt: skip
            dx_proj, dh_proj = buffers.dx_proj.reshape(N, G), buffers.dh_proj.reshape(N, G)
            grads[f"gru.{layer}.bx"][...] += dx_proj.sum(axis=0)
            grads[f"gru.{layer}.bh"][...] += dh_proj.sum(axis=0)
        else:
            kernels.rnn_backward(buffers.dx_proj, buffers.dh, ws.h_seq[layer], buffers.Wh_T)
            dx_proj = dh_proj = buffers.dx_proj.reshape(N, G)
            grads[f"rnn.{layer}.b"][...] += dx_proj.sum(axis=0)
        kernels.matmul_add(grads[f"{cell}.{layer}.Wh"], buffers.h_prev.reshape(N, H).T, dh_proj)
        Wx = params[f"{cell}.{layer}.Wx"]
        if layer > 0:
            kernels.matmul_add(grads[f"{cell}.{layer}.Wx"], _output(ws, layer - 1).reshape(N, H).T, dx_proj)
            kernels.matmul(dh, dx_proj, Wx.T)  # w.r.t. the layer below's output
        elif config.embed == 0:
            np.add.at(grads[f"{cell}.0.Wx"], ws.tokens, dx_proj)  # one-hot rows
        else:
            embedded = params["embed"][ws.tokens]  # (N, E)
            kernels.matmul_add(grads[f"{cell}.0.Wx"], embedded.T, dx_proj)
            d_embedded = dx_proj @ Wx.T  # (N, E)
            np.add.at(grads["embed"], ws.tokens, d_embedded)
    return loss


def _output(ws, layer: int) -> np.ndarray:
    """What layer `layer` passes upward (T, B, H): its h, dropped out if training."""
    return ws.x_drop[layer] if ws.dropout_on else ws.h_seq[layer]


def _buffers(ws) -> CellBuffers:
    if ws._cells is None:
        config = ws.config
        ws._cells = CellBuffers(
            config.layers, ws.steps, ws.batch, config.hidden, config.projection_width,
            config.vocab_size, ws.dtype,
        )  # fmt: skip
    return ws._cells
