"""The GRU layer over a window of T steps, batch-major: the forward step loop and its
backward, pairs as PyTorch defines the cell (gates r, z, n along the 3H axis). The window-wide
products (x·Wx, and every weight gradient) are the caller's, one BLAS call each
(charlstm.cells); these kernels walk the recurrence, one h·Wh product a step.
"""

import numpy as np
from numba import njit

from .activations import sigmoid, tanh


@njit(cache=True, error_model="numpy", nogil=True)
def gru_forward(h_seq, act, hn_seq, Wh, bh, h0):
    """One layer over T steps from h0 (B, H).
    act (T, B, 3H): in, the input projection x·Wx + bx; out, the activated r, z, n.
    hn_seq (T, B, H) out: h_{t-1}·Wh_n + bh_n, the part r scales (the backward needs it).
    h_seq (T, B, H) out: h_t = (1 - z)·n + z·h_{t-1}. Wh (H, 3H), bh (3H,).
    """
    T, B, G = act.shape
    H = G // 3
    rec = np.empty((B, G), dtype=act.dtype)  # h_{t-1}·Wh
    for t in range(T):
        h_prev = h0 if t == 0 else h_seq[t - 1]
        np.dot(h_prev, Wh, rec)
        for b in range(B):
            a, w, hp = act[t, b], rec[b], h_prev[b]
            for k in range(2 * H):  # r, z
                a[k] = sigmoid(a[k] + w[k] + bh[k])
            hn, h = hn_seq[t, b], h_seq[t, b]
            for j in range(H):
                hn[j] = w[2 * H + j] + bh[2 * H + j]
            for j in range(H):  # n
                a[2 * H + j] = tanh(a[2 * H + j] + a[j] * hn[j])
            for j in range(H):
                z = a[H + j]
                h[j] = (1.0 - z) * a[2 * H + j] + z * hp[j]


@njit(cache=True, error_model="numpy", nogil=True)
def gru_backward(dx_proj, dh_proj, dh_seq, act, hn_seq, h_seq, h0, Wh_T):
    """Backpropagate one layer through its window (truncated: nothing flows into h0).
    dh_seq (T, B, H): the gradient w.r.t. each h_t from above (the next layer or the head).
    act, hn_seq, h_seq: as left by gru_forward from h0 (B, H); Wh_T (3H, H) contiguous.
    dx_proj (T, B, 3H) out: w.r.t. the input projection x·Wx + bx, so dWx = x.T·dx_proj.
    dh_proj (T, B, 3H) out: w.r.t. h_{t-1}·Wh + bh, so dWh = h_prev.T·dh_proj.
    """
    T, B, G = act.shape
    H = G // 3
    dh_next = np.zeros((B, H), dtype=act.dtype)  # dLoss/dh_t through h_t·Wh at t+1
    direct = np.empty((B, H), dtype=act.dtype)  # ... and through z·h_t at t+1
    for t in range(T - 1, -1, -1):
        h_prev = h0 if t == 0 else h_seq[t - 1]
        for b in range(B):
            a, hn, hp, up = act[t, b], hn_seq[t, b], h_prev[b], dh_seq[t, b]
            dxp, dhp, dn_, keep = dx_proj[t, b], dh_proj[t, b], dh_next[b], direct[b]
            for j in range(H):
                r, z, n = a[j], a[H + j], a[2 * H + j]
                dh = up[j] + dn_[j]
                dan = dh * (1.0 - z) * (1.0 - n * n)  # through n = tanh(.)
                dar = dan * hn[j] * r * (1.0 - r)
                daz = dh * (hp[j] - n) * z * (1.0 - z)
                dxp[j] = dar
                dxp[H + j] = daz
                dxp[2 * H + j] = dan
                dhp[j] = dar
                dhp[H + j] = daz
                dhp[2 * H + j] = dan * r
                keep[j] = dh * z
        np.dot(dh_proj[t], Wh_T, dh_next)
        dh_next += direct
