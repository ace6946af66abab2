"""The plain (Elman, tanh) RNN layer over a window of T steps, batch-major: the forward step
loop and its backward. As for the GRU (kernels.gru), the window-wide products are the
caller's; these kernels walk the recurrence, one h·Wh product a step.
"""

import numpy as np
from numba import njit

from .activations import tanh


@njit(cache=True, error_model="numpy", nogil=True)
def rnn_forward(h_seq, Wh, h0):
    """One layer over T steps from h0 (B, H): h_seq (T, B, H) holds the input projection
    x·Wx + b on entry and h_t = tanh(x_t·Wx + b + h_{t-1}·Wh) on return. Wh (H, H)."""
    T, B, H = h_seq.shape
    rec = np.empty((B, H), dtype=h_seq.dtype)  # h_{t-1}·Wh
    for t in range(T):
        np.dot(h0 if t == 0 else h_seq[t - 1], Wh, rec)
        for b in range(B):
            h, w = h_seq[t, b], rec[b]
            for j in range(H):
                h[j] = tanh(h[j] + w[j])


@njit(cache=True, error_model="numpy", nogil=True)
def rnn_backward(d_proj, dh_seq, h_seq, Wh_T):
    """Backpropagate one layer through its window (truncated: nothing flows into h0).
    dh_seq (T, B, H): the gradient w.r.t. each h_t from above; h_seq as left by rnn_forward;
    Wh_T (H, H) contiguous. d_proj (T, B, H) out: w.r.t. the pre-activation x·Wx + b +
    h_{t-1}·Wh, so dWx = x.T·d_proj, dWh = h_prev.T·d_proj, db its sum."""
    T, B, H = h_seq.shape
    dh_next = np.zeros((B, H), dtype=h_seq.dtype)  # dLoss/dh_t through h_t·Wh at t+1
    for t in range(T - 1, -1, -1):
        for b in range(B):
            h, up, dn_, dp = h_seq[t, b], dh_seq[t, b], dh_next[b], d_proj[t, b]
            for j in range(H):
                dp[j] = (up[j] + dn_[j]) * (1.0 - h[j] * h[j])
        np.dot(d_proj[t], Wh_T, dh_next)
