"""Gate inspection: one stream's forward pass of each cell without BLAS or the GIL, and running
statistics of each window's gates.

charlstm/stream.py runs a text through the model one window at a time (B=1), the layers on
threads of their own; charlstm/gates.py folds each window's gates into running statistics
here, in one pass, instead of keeping every value.
"""

import numpy as np
from numba import njit

from .activations import tanh
from .gru import _forward_band_step as _gru_band_step
from .lstm import _cell_step
from .sampling import _add_rows


@njit(cache=True, error_model="numpy", nogil=True)
def lstm_forward_stream(h_seq, c_seq, gates, Wh, b, h0, c0):
    """lstm_forward for one stream (B=1), with the recurrent product written out instead of
    calling BLAS, and without the GIL: layers of a long text run at once on separate threads
    (charlstm/stream.py), each streaming its own Wh, without sharing BLAS's thread pool.

    gates (T, 4H) on entry: the input projection x_t·Wx; on exit: activated i, f, g, o
    h_seq, c_seq (T, H) out; Wh (H, 4H), b (4H,); h0, c0 (H,) the state carried in (unchanged).
    """
    T, G = gates.shape
    H = G // 4
    rec = np.empty((1, G), dtype=gates.dtype)  # h_{t-1}·Wh, one pass over Wh per step
    h_prev = h0
    c_prev = c0
    for t in range(T):
        _add_rows(rec, h_prev.reshape(1, H), Wh, 0, H)
        _cell_step(h_seq[t], c_seq[t], gates[t], rec[0], b, c_prev)
        h_prev = h_seq[t]
        c_prev = c_seq[t]


@njit(cache=True, error_model="numpy", nogil=True)
def gru_forward_stream(h_seq, gates, Wh, bx, bh, h0):
    """kernels.gru's forward for one stream (B=1), the recurrent product written out, no GIL.
    gates (T, 3H) on entry: the input projection x_t·Wx; on exit: activated r, z, n.
    h_seq (T, H) out; Wh (H, 3H), bx, bh (3H,); h0 (H,) the state carried in (unchanged)."""
    T, G = gates.shape
    H = G // 3
    rec = np.empty((1, G), dtype=gates.dtype)  # h_{t-1}·Wh, one pass over Wh per step
    hn = np.empty((1, H), dtype=gates.dtype)
    h_prev = h0.reshape(1, H)
    for t in range(T):
        a = gates[t : t + 1]
        for k in range(G):
            a[0, k] += bx[k]
        _add_rows(rec, h_prev, Wh, 0, H)
        _gru_band_step(h_seq[t : t + 1], a, hn, rec, h_prev, bh, 0)
        h_prev = h_seq[t : t + 1]


@njit(cache=True, error_model="numpy", nogil=True)
def rnn_forward_stream(h_seq, Wh, b, h0):
    """kernels.rnn's forward for one stream (B=1), the recurrent product written out, no GIL.
    h_seq (T, H): the input projection x_t·Wx on entry, h_t = tanh(x_t·Wx + b + h_{t-1}·Wh) on
    exit; Wh (H, H), b (H,); h0 (H,) the state carried in (unchanged)."""
    T, H = h_seq.shape
    rec = np.empty((1, H), dtype=h_seq.dtype)
    h_prev = h0.reshape(1, H)
    for t in range(T):
        _add_rows(rec, h_prev, Wh, 0, H)
        h = h_seq[t]
        for j in range(H):
            h[j] = tanh((h[j] + b[j]) + rec[0, j])
        h_prev = h_seq[t : t + 1]


@njit(cache=True, error_model="numpy", nogil=True)
def gate_stats_add(below, above, sums, sumsq, keep_bins, gates, hidden, keep, left, right):
    """Add one window of one layer's gates (one stream) to running statistics.

    gates (T, nH): activated gates per step, n of them side by side (the LSTM's i, f, g, o, the
      GRU's r, z, n), `hidden` = H units each
    below, above (nH,) int: steps each gate unit spent below `left` / above `right`
    sums, sumsq (nH,) float64: running sums of the values and of their squares
    keep_bins (65536,) int: the keep gate (number `keep` along the axis: the LSTM's f, the GRU's
      z; -1 for none) counted by the top 16 bits of float32(1 - gate). Bit patterns of
      non-negative floats sort like their values, so these are logarithmic bins (1/128 relative
      width): a median half-life without storing or sorting T*H values.
    """
    T, G = gates.shape
    H = hidden
    d = np.empty(H, dtype=np.float32)
    bits = d.view(np.uint32)
    for t in range(T):
        row = gates[t]
        for k in range(G):
            x = row[k]
            sums[k] += x
            sumsq[k] += x * x
            below[k] += 1 if x < left else 0
            above[k] += 1 if x > right else 0
        if keep >= 0:
            for j in range(H):
                d[j] = 1.0 - row[keep * H + j]
            for j in range(H):
                keep_bins[bits[j] >> 16] += 1


@njit(cache=True, error_model="numpy", nogil=True)
def tanh_rows(out, x):
    """out (T, H) = tanh(x (T, H)) with the forward pass's tanh: the memory as h reads it."""
    T, H = x.shape
    for t in range(T):
        xt = x[t]
        ot = out[t]
        for j in range(H):
            ot[j] = tanh(xt[j])
