"""The GRU and plain RNN models' passes over a window, beside model.py's LSTM: the
projections and every weight gradient as window-wide products split over numba's threads,
the recurrence in kernels.gru / kernels.rnn with the units in the workspace's bands,
batch-major (T, B, ·) throughout. model.forward and model.loss_and_grad call these for
config.cell "gru" and "rnn", after drawing the masks, on one pool of threads.
"""

from __future__ import annotations

import numpy as np

from . import kernels
from .kernels import tiles


class CellBuffers:
    """A window's work beyond the Workspace's rows (which hold each layer's activated gates,
    in `gates` (L, T, B, G), and h): the GRU's h·Wh_n + bh_n, the bands' weights, and the
    backward's gradients. U bands of Hu = H/U units; q = G/H blocks (3 for the GRU). The step
    products run on the register tiles when they serve (float32, the bands' rows in whole
    tiles, B in whole vectors: charlstm.kernels.tiles), else on BLAS; the other layout is
    left empty."""

    def __init__(self, L: int, T: int, B: int, H: int, G: int, V: int, U: int, dtype: np.dtype):
        self.hn = np.empty((L, T, B, H), dtype=dtype)  # GRU: what r scaled
        self.dlogits = np.empty((T * B, V), dtype=dtype)
        self.dh = np.empty((T, B, H), dtype=dtype)  # w.r.t. a layer's h, from above
        self.dx_proj = np.empty((T, B, G), dtype=dtype)
        self.dh_proj = np.empty((T, B, G), dtype=dtype)
        self.h_prev = np.empty((T, B, H), dtype=dtype)  # h_{t-1} of each step
        R, Gu, Hu = tiles.ROWS, G // U, H // U
        tiled = tiles.serve(tiles.STEP, Gu, B, dtype) and tiles.serve(tiles.STEP, Hu, B, dtype)
        self.WhT_bands = np.empty((U, Gu, H), dtype=dtype)  # each band's columns of Wh, transposed
        self.Wh_packed = np.empty((U, tiles.tiles_of(Gu) if tiled else 0, H, R), dtype=dtype)  # the same
        self.Wh_rows_packed = np.empty((U, tiles.tiles_of(Hu) if tiled else 0, G, R), dtype=dtype)  # rows
        self.state_T = np.empty((2, H, B), dtype=dtype)  # the step kernels' h_{t-1}, transposed
        self.grad_T = np.empty((2, G, B), dtype=dtype)  # and the gradient they pass back
        self.dtable = np.empty((V, G), dtype=dtype)  # w.r.t. the first layer's per-character rows
        # kernels.add_weight_gradient_rows' partial products, the largest a layer's (H, G)
        # or the head's (H, V)
        self.parts = np.empty((U, H * max(G, V)), dtype=dtype)
        self.meeting = np.zeros(2, dtype=np.int64)  # the threads' counters (charlstm.kernels.spin)
        # The dropout masks batch-major, copied once a window from the Workspace's feature-major
        # ones: read through the transposed view, dropout took 4 ns an element (9 ms a 2x256 step)
        self.masks = np.empty((L, T, B, H), dtype=dtype)


def forward(params, h: np.ndarray, ws) -> np.ndarray:
    """Every layer over the window in ws.tokens (masks drawn: model.forward) from h (L, B, H),
    advanced in place; the logits (T*B, V), also left in ws.logits."""
    config = params.config
    cell, L, H, G = config.cell, config.layers, config.hidden, config.projection_width
    T, B, U = ws.steps, ws.batch, ws.bands
    buffers = _buffers(ws)
    if ws.dropout_on:
        for layer in range(L):
            kernels.transpose_into(
                buffers.masks[layer].reshape(T * B, H), ws.masks_fm[layer].reshape(H, T * B), U
            )
    for layer in range(L):
        proj = ws.gates[layer].reshape(T * B, G)  # x·Wx + bx, activated in place by the kernel
        Wx = params[f"{cell}.{layer}.Wx"]
        if layer == 0 and config.embed == 0:
            kernels.gather_rows(proj, Wx, ws.tokens)  # one-hot(x)·Wx is a row lookup
        elif layer == 0:
            kernels.matmul(ws.input_table, params["embed"], Wx)
            kernels.gather_rows(proj, ws.input_table, ws.tokens)
        else:
            kernels.matmul_rows(proj, _output(ws, layer - 1).reshape(T * B, H), Wx, U)
        ws.h0[layer] = h[layer]
        _bands_of_columns(buffers, params[f"{cell}.{layer}.Wh"])
        if cell == "gru":
            kernels.add_row_vector(proj, params[f"gru.{layer}.bx"])
            kernels.gru_forward(
                ws.h_seq[layer], ws.gates[layer], buffers.hn[layer], buffers.WhT_bands, buffers.Wh_packed,
                params[f"gru.{layer}.bh"], ws.h0[layer], buffers.state_T, buffers.meeting,
            )  # fmt: skip
        else:
            kernels.add_row_vector(proj, params[f"rnn.{layer}.b"])
            ws.h_seq[layer] = ws.gates[layer]
            kernels.rnn_forward(
                ws.h_seq[layer], buffers.WhT_bands, buffers.Wh_packed, ws.h0[layer], buffers.state_T,
                buffers.meeting,
            )  # fmt: skip
        if ws.dropout_on:
            kernels.apply_dropout(ws.x_drop[layer], ws.h_seq[layer], buffers.masks[layer], U)
        h[layer] = ws.h_seq[layer, T - 1]
    top = _output(ws, L - 1).reshape(T * B, H)
    kernels.matmul_rows(ws.logits_rows, top, params["head.W"], U)
    kernels.add_row_vector(ws.logits_rows, params["head.b"])
    ws.logits = ws.logits_rows
    return ws.logits


def backward(params, grads, targets: np.ndarray, ws, characters: int) -> float:
    """Backpropagate the window forward() left in ws into grads (added; the caller zeroes
    them). Returns the mean loss per character, loss and gradients divided by `characters`."""
    config = params.config
    cell, L, H, G = config.cell, config.layers, config.hidden, config.projection_width
    T, B, U = ws.steps, ws.batch, ws.bands
    buffers = _buffers(ws)
    N = T * B
    dlogits = buffers.dlogits
    loss = kernels.softmax_cross_entropy(dlogits, ws.logits, targets.reshape(N)) * (N / characters)
    dlogits *= N / characters  # the kernel divides by N
    _add_weight_gradient(grads["head.W"], _output(ws, L - 1).reshape(N, H), dlogits, buffers, U)
    grads["head.b"][...] += dlogits.sum(axis=0)
    dh = buffers.dh.reshape(N, H)
    kernels.matmul_rows(dh, dlogits, params["head.W"].T, U)
    for layer in range(L - 1, -1, -1):
        if ws.dropout_on:
            kernels.apply_dropout(buffers.dh, buffers.dh, buffers.masks[layer], U)
        Wh = params[f"{cell}.{layer}.Wh"]
        Wh_rows = Wh.reshape(U, H // U, G)  # each band's rows of Wh
        if buffers.Wh_rows_packed.shape[1] > 0:
            kernels.pack_bands(buffers.Wh_rows_packed, Wh)
        if cell == "gru":
            kernels.gru_backward(
                buffers.dx_proj, buffers.dh_proj, buffers.dh, ws.gates[layer], buffers.hn[layer],
                ws.h_seq[layer], ws.h0[layer], Wh_rows, buffers.Wh_rows_packed, buffers.grad_T,
                buffers.meeting,
            )  # fmt: skip
            dx_proj, dh_proj = buffers.dx_proj.reshape(N, G), buffers.dh_proj.reshape(N, G)
            grads[f"gru.{layer}.bx"][...] += dx_proj.sum(axis=0)
            grads[f"gru.{layer}.bh"][...] += dh_proj.sum(axis=0)
        else:
            kernels.rnn_backward(
                buffers.dx_proj, buffers.dh, ws.h_seq[layer], Wh_rows, buffers.Wh_rows_packed,
                buffers.grad_T, buffers.meeting,
            )  # fmt: skip
            dx_proj = dh_proj = buffers.dx_proj.reshape(N, G)
            grads[f"rnn.{layer}.b"][...] += dx_proj.sum(axis=0)
        buffers.h_prev[0] = ws.h0[layer]
        buffers.h_prev[1:] = ws.h_seq[layer, : T - 1]
        _add_weight_gradient(grads[f"{cell}.{layer}.Wh"], buffers.h_prev.reshape(N, H), dh_proj, buffers, U)
        Wx, dWx = params[f"{cell}.{layer}.Wx"], grads[f"{cell}.{layer}.Wx"]
        if layer > 0:
            _add_weight_gradient(dWx, _output(ws, layer - 1).reshape(N, H), dx_proj, buffers, U)
            kernels.matmul_rows(dh, dx_proj, Wx.T, U)  # w.r.t. the layer below's output
        elif config.embed == 0:
            kernels.scatter_add_rows(dWx, ws.tokens, dx_proj)  # one-hot: rows of Wx
        else:  # through the table embed·Wx the forward looked rows up in
            buffers.dtable[...] = 0.0
            kernels.scatter_add_rows(buffers.dtable, ws.tokens, dx_proj)
            kernels.matmul_add(dWx, params["embed"].T, buffers.dtable)
            kernels.matmul_add(grads["embed"], buffers.dtable, Wx.T)
    return loss


def _add_weight_gradient(dW: np.ndarray, x: np.ndarray, d: np.ndarray, buffers: CellBuffers, U: int) -> None:
    """dW (I, G) += x (N, I).T · d (N, G), on the bands' threads."""
    kernels.add_weight_gradient_rows(dW, x, d, buffers.parts, U)


def _bands_of_columns(buffers: CellBuffers, Wh: np.ndarray) -> None:
    """buffers.WhT_bands (U, q*Hu, H): band u's units' columns of Wh (H, q*H) in each of its q
    blocks, transposed; packed into buffers.Wh_packed when the tiles serve."""
    out = buffers.WhT_bands
    U, _, H = out.shape
    q, Hu = Wh.shape[1] // H, H // U
    out.reshape(U, q, Hu, H)[...] = Wh.reshape(H, q, U, Hu).transpose(2, 1, 3, 0)
    if buffers.Wh_packed.shape[1] > 0:
        kernels.pack_bands(buffers.Wh_packed, out.reshape(U * q * Hu, H))


def _output(ws, layer: int) -> np.ndarray:
    """What layer `layer` passes upward (T, B, H): its h, dropped out if training."""
    return ws.x_drop[layer] if ws.dropout_on else ws.h_seq[layer]


def _buffers(ws) -> CellBuffers:
    if ws._cells is None:
        config = ws.config
        ws._cells = CellBuffers(
            config.layers, ws.steps, ws.batch, config.hidden, config.projection_width,
            config.vocab_size, ws.bands, ws.dtype,
        )  # fmt: skip
    return ws._cells
