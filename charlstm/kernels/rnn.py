"""The plain (Elman, tanh) RNN layer over a window of T steps, batch-major: the forward step
loop and its backward, the units in bands on numba's threads and the step products
feature-major on the register tiles exactly as for the GRU (kernels.gru): the caller does the
window-wide products, these kernels the recurrence.
"""

import numpy as np
from numba import njit, prange

from . import spin
from .activations import tanh
from .layouts import _transpose
from .products import step_product_rows


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def rnn_forward(h_seq, WhT_bands, Wh_packed, h0, state_T, meeting):
    """One layer over T steps from h0 (B, H): h_seq (T, B, H) holds the input projection
    x·Wx + b on entry and h_t = tanh(x_t·Wx + b + h_{t-1}·Wh) on return. WhT_bands (U, Hu, H):
    band u's columns of Wh (H, H), transposed; Wh_packed (U, P, H, R) the same in register
    tiles (P = 0: BLAS); state_T (2, H, B) work: h_{t-1} transposed; meeting (2,) int64."""
    T, B, H = h_seq.shape
    U, Hu, _ = WhT_bands.shape
    rec = np.empty((U, B, Hu), dtype=h_seq.dtype)  # each band's h_{t-1}·Wh, batch-major
    work = np.empty((U, Hu, B), dtype=h_seq.dtype)
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for v in range(first, last):
            _transpose(state_T[0, v * Hu : (v + 1) * Hu], h0[:, v * Hu : (v + 1) * Hu])
        if how == spin.TOGETHER:
            spin.meet(meeting, U, 0)
        for t in range(T):
            for v in range(first, last):
                lo = v * Hu
                step_product_rows(rec[v], work[v], WhT_bands[v], Wh_packed[v], state_T[t % 2])
                for b in range(B):  # slices from 0: see kernels.gru._forward_band_step
                    h, w = h_seq[t, b, lo : lo + Hu], rec[v, b]
                    for j in range(Hu):
                        h[j] = tanh(h[j] + w[j])
                _transpose(state_T[(t + 1) % 2, lo : lo + Hu], h_seq[t, :, lo : lo + Hu])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, t + 1)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def rnn_backward(d_proj, dh_seq, h_seq, Wh_rows, Wh_rows_packed, grad_T, meeting):
    """Backpropagate one layer through its window (truncated: nothing flows into h0).
    dh_seq (T, B, H): the gradient w.r.t. each h_t from above; h_seq as left by rnn_forward;
    Wh_rows (U, Hu, H): band u's rows of Wh (a view of it), Wh_rows_packed (U, P, H, R) the same
    in register tiles (P = 0: BLAS); grad_T (2, H, B) work: the step's d_proj transposed.
    d_proj (T, B, H) out: w.r.t. the pre-activation x·Wx + b + h_{t-1}·Wh, so dWx = x.T·d_proj,
    dWh = h_prev.T·d_proj, db its sum."""
    T, B, H = h_seq.shape
    U, Hu, _ = Wh_rows.shape
    dh_next = np.zeros((B, H), dtype=h_seq.dtype)  # dLoss/dh_t through h_t·Wh at t+1
    back = np.empty((U, B, Hu), dtype=h_seq.dtype)
    work = np.empty((U, Hu, B), dtype=h_seq.dtype)
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for t in range(T - 1, -1, -1):
            for v in range(first, last):
                lo = v * Hu
                for b in range(B):  # slices from 0: see kernels.gru._forward_band_step
                    units = slice(lo, lo + Hu)
                    h, up, dn_, dp = (
                        h_seq[t, b, units],
                        dh_seq[t, b, units],
                        dh_next[b, units],
                        d_proj[t, b, units],
                    )
                    for j in range(Hu):
                        dp[j] = (up[j] + dn_[j]) * (1.0 - h[j] * h[j])
                _transpose(grad_T[t % 2, lo : lo + Hu], d_proj[t, :, lo : lo + Hu])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, T - 1 - t)
            for v in range(first, last):
                step_product_rows(back[v], work[v], Wh_rows[v], Wh_rows_packed[v], grad_T[t % 2])
                lo = v * Hu
                for b in range(B):
                    dh_next[b, lo : lo + Hu] = back[v, b]
