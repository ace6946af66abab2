"""The GRU layer over a window of T steps, batch-major: the forward step loop and its
backward, as PyTorch defines the cell (gates r, z, n along the 3H axis). The window-wide
products (x·Wx, and every weight gradient) are the caller's (charlstm.cells); these kernels
walk the recurrence, one h·Wh product a step.

As for the LSTM (kernels.lstm), the H units are cut into U bands, one per numba thread, for
the whole window: each step a band computes its units' r, z, n from the whole previous h,
h_{t-1} (B, H) · Wh_bands[u] (H, 3Hu), then their h; the threads meet (spin.meet) before the
next step reads h. Backward, a band finds its units' gate gradients, the threads meet, then
the band's share of the gradient passed back, dh_proj (B, 3H) · WhT_bands[u] (3H, Hu), which
only its own units read at the step before: one meeting a step each way.
"""

import numpy as np
from numba import njit, prange

from . import spin
from .activations import sigmoid, tanh


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def gru_forward(h_seq, act, hn_seq, Wh_bands, bh, h0, meeting):
    """One layer over T steps from h0 (B, H), the units in U bands.
    act (T, B, 3H): in, the input projection x·Wx + bx; out, the activated r, z, n.
    hn_seq (T, B, H) out: h_{t-1}·Wh_n + bh_n, the part r scales (the backward needs it).
    h_seq (T, B, H) out: h_t = (1 - z)·n + z·h_{t-1}.
    Wh_bands (U, H, 3Hu): band u's columns of Wh (H, 3H), its r, z, n side by side; bh (3H,).
    meeting (2,) int64: the threads' counters (spin).
    """
    T, B, G = act.shape
    U, H, Gu = Wh_bands.shape
    Hu = H // U
    rec = np.empty((U, B, Gu), dtype=act.dtype)  # each band's h_{t-1}·Wh_bands[u]
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)  # the bands this thread walks
        for t in range(T):
            h_prev = h0 if t == 0 else h_seq[t - 1]
            for v in range(first, last):
                np.dot(h_prev, Wh_bands[v], rec[v])
                _forward_band_step(h_seq[t], act[t], hn_seq[t], rec[v], h_prev, bh, v * Hu)
            if how == spin.TOGETHER:
                spin.meet(meeting, U, t)


@njit(cache=True, error_model="numpy", nogil=True)
def _forward_band_step(h, a, hn, rec, h_prev, bh, lo):
    """Step t of gru_forward for the units lo .. lo+Hu-1: h, hn (B, H), a (B, 3H) the step's
    rows; rec (B, 3Hu) their h_{t-1}·Wh. Contiguous loops with one activation each."""
    B, G = a.shape
    H = G // 3
    Hu = rec.shape[1] // 3
    for b in range(B):
        ab, wb, hb, hnb, hp = a[b], rec[b], h[b], hn[b], h_prev[b]
        for q in range(2):  # r, z
            for j in range(Hu):
                k = q * H + lo + j
                ab[k] = sigmoid(ab[k] + wb[q * Hu + j] + bh[k])
        for j in range(Hu):
            hnb[lo + j] = wb[2 * Hu + j] + bh[2 * H + lo + j]
        for j in range(Hu):  # n
            k = 2 * H + lo + j
            ab[k] = tanh(ab[k] + ab[lo + j] * hnb[lo + j])
        for j in range(Hu):
            z = ab[H + lo + j]
            hb[lo + j] = (1.0 - z) * ab[2 * H + lo + j] + z * hp[lo + j]


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def gru_backward(dx_proj, dh_proj, dh_seq, act, hn_seq, h_seq, h0, WhT_bands, meeting):
    """Backpropagate one layer through its window (truncated: nothing flows into h0), the
    units in U bands as in gru_forward.
    dh_seq (T, B, H): the gradient w.r.t. each h_t from above (the next layer or the head).
    act, hn_seq, h_seq: as left by gru_forward from h0 (B, H).
    WhT_bands (U, 3H, Hu): band u's rows of Wh, transposed (Wh[lo:hi].T), contiguous.
    dx_proj (T, B, 3H) out: w.r.t. the input projection x·Wx + bx, so dWx = x.T·dx_proj.
    dh_proj (T, B, 3H) out: w.r.t. h_{t-1}·Wh + bh, so dWh = h_prev.T·dh_proj.
    """
    T, B, G = act.shape
    U, _, Hu = WhT_bands.shape
    H = G // 3
    dh_next = np.zeros((B, H), dtype=act.dtype)  # dLoss/dh_t through h_t·Wh at t+1 ...
    direct = np.empty((B, H), dtype=act.dtype)  # ... and through z·h_t at t+1
    back = np.empty((U, B, Hu), dtype=act.dtype)  # each band's dh_proj · WhT_bands[u]
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for t in range(T - 1, -1, -1):
            h_prev = h0 if t == 0 else h_seq[t - 1]
            for v in range(first, last):
                _backward_band_step(
                    dx_proj[t], dh_proj[t], direct, dh_next, dh_seq[t], act[t], hn_seq[t], h_prev, v * Hu, Hu
                )
            if how == spin.TOGETHER:
                spin.meet(meeting, U, T - 1 - t)  # every band's dh_proj[t] is written
            for v in range(first, last):
                np.dot(dh_proj[t], WhT_bands[v], back[v])
                lo = v * Hu
                for b in range(B):
                    for j in range(Hu):
                        dh_next[b, lo + j] = back[v, b, j] + direct[b, lo + j]


@njit(cache=True, error_model="numpy", nogil=True)
def _backward_band_step(dxp, dhp, direct, dh_next, up, a, hn, h_prev, lo, Hu):
    """Step t of gru_backward for the units lo .. lo+Hu-1: their gate gradients into dxp,
    dhp (B, 3H), and what reaches h_{t-1} through z into direct (B, H)."""
    B, G = a.shape
    H = G // 3
    for b in range(B):
        ab, hnb, hp, ub, dn_ = a[b], hn[b], h_prev[b], up[b], dh_next[b]
        xb, hb, keep = dxp[b], dhp[b], direct[b]
        for j in range(lo, lo + Hu):
            r, z, n = ab[j], ab[H + j], ab[2 * H + j]
            dh = ub[j] + dn_[j]
            dan = dh * (1.0 - z) * (1.0 - n * n)  # through n = tanh(.)
            dar = dan * hnb[j] * r * (1.0 - r)
            daz = dh * (hp[j] - n) * z * (1.0 - z)
            xb[j] = dar
            xb[H + j] = daz
            xb[2 * H + j] = dan
            hb[j] = dar
            hb[H + j] = daz
            hb[2 * H + j] = dan * r
            keep[j] = dh * z
