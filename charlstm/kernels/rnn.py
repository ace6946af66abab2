"""The plain (Elman, tanh) RNN layer over a window of T steps, batch-major: the forward step
loop and its backward, the units in bands on numba's threads exactly as for the GRU
(kernels.gru): the caller does the window-wide products, these kernels the recurrence.
"""

import numpy as np
from numba import njit, prange

from . import spin
from .activations import tanh


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def rnn_forward(h_seq, Wh_bands, h0, meeting):
    """One layer over T steps from h0 (B, H): h_seq (T, B, H) holds the input projection
    x·Wx + b on entry and h_t = tanh(x_t·Wx + b + h_{t-1}·Wh) on return. Wh_bands (U, H, Hu):
    band u's columns of Wh (H, H); meeting (2,) int64 (spin)."""
    T, B, H = h_seq.shape
    U, _, Hu = Wh_bands.shape
    rec = np.empty((U, B, Hu), dtype=h_seq.dtype)  # each band's h_{t-1}·Wh_bands[u]
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for t in range(T):
            for v in range(first, last):
                np.dot(h0 if t == 0 else h_seq[t - 1], Wh_bands[v], rec[v])
                lo = v * Hu
                for b in range(B):
                    h, w = h_seq[t, b], rec[v, b]
                    for j in range(Hu):
                        h[lo + j] = tanh(h[lo + j] + w[j])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, t)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def rnn_backward(d_proj, dh_seq, h_seq, WhT_bands, meeting):
    """Backpropagate one layer through its window (truncated: nothing flows into h0).
    dh_seq (T, B, H): the gradient w.r.t. each h_t from above; h_seq as left by rnn_forward;
    WhT_bands (U, H, Hu): band u's rows of Wh, transposed. d_proj (T, B, H) out: w.r.t. the
    pre-activation x·Wx + b + h_{t-1}·Wh, so dWx = x.T·d_proj, dWh = h_prev.T·d_proj, db its
    sum."""
    T, B, H = h_seq.shape
    U, _, Hu = WhT_bands.shape
    dh_next = np.zeros((B, H), dtype=h_seq.dtype)  # dLoss/dh_t through h_t·Wh at t+1
    back = np.empty((U, B, Hu), dtype=h_seq.dtype)
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for t in range(T - 1, -1, -1):
            for v in range(first, last):
                lo = v * Hu
                for b in range(B):
                    h, up, dn_, dp = h_seq[t, b], dh_seq[t, b], dh_next[b], d_proj[t, b]
                    for j in range(lo, lo + Hu):
                        dp[j] = (up[j] + dn_[j]) * (1.0 - h[j] * h[j])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, T - 1 - t)
            for v in range(first, last):
                np.dot(d_proj[t], WhT_bands[v], back[v])
                lo = v * Hu
                for b in range(B):
                    for j in range(Hu):
                        dh_next[b, lo + j] = back[v, b, j]
