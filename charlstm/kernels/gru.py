"""The GRU layer over a window of T steps, batch-major: the forward step loop and its
backward, as PyTorch defines the cell (gates r, z, n along the 3H axis). The window-wide
products (x·Wx, and every weight gradient) are the caller's (charlstm.cells); these kernels
walk the recurrence, one product with Wh a step.

As for the LSTM (kernels.lstm), the H units are cut into U bands, one per numba thread, for
the whole window: each step a band computes its units' r, z, n from the whole previous h,
then their h; the threads meet (spin.meet) before the next step reads h. Backward, a band
finds its units' gate gradients, the threads meet, then the band's share of the gradient
passed back, which only its own units read at the step before: one meeting a step each way.

The step products run feature-major, as the register tiles compute them (step_product: a
band's weight rows times the state's columns, packed once per window, or BLAS when the tiles
do not serve): each band keeps its units' rows of the state, transposed, in a buffer of two
slots that the bands read at step t and write for step t + 1 (numba's own np.dot of the
batch-major (B, H)·(H, 3Hu) ran at 38 GFLOP/s on a Zen 3 core, the tiles at 94).
"""

import numpy as np
from numba import njit, prange

from . import spin
from .activations import sigmoid, tanh
from .layouts import _transpose
from .products import step_product_rows


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def gru_forward(h_seq, act, hn_seq, WhT_bands, Wh_packed, bh, h0, state_T, meeting):
    """One layer over T steps from h0 (B, H), the units in U bands.
    act (T, B, 3H): in, the input projection x·Wx + bx; out, the activated r, z, n.
    hn_seq (T, B, H) out: h_{t-1}·Wh_n + bh_n, the part r scales (the backward needs it).
    h_seq (T, B, H) out: h_t = (1 - z)·n + z·h_{t-1}.
    WhT_bands (U, 3Hu, H): band u's columns of Wh (H, 3H), its r, z, n, transposed; Wh_packed
    (U, P, H, R) the same in register tiles (P = 0: BLAS on WhT_bands); bh (3H,).
    state_T (2, H, B) work: h_{t-1} transposed; meeting (2,) int64: the threads' counters.
    """
    T, B, G = act.shape
    U, Gu, H = WhT_bands.shape
    Hu = H // U
    rec = np.empty((U, B, Gu), dtype=act.dtype)  # each band's h_{t-1}·Wh, batch-major
    work = np.empty((U, Gu, B), dtype=act.dtype)  # and feature-major, as the product leaves it
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for v in range(first, last):  # the state before the window, transposed
            _transpose(state_T[0, v * Hu : (v + 1) * Hu], h0[:, v * Hu : (v + 1) * Hu])
        if how == spin.TOGETHER:
            spin.meet(meeting, U, 0)
        for t in range(T):
            h_prev = h0 if t == 0 else h_seq[t - 1]
            for v in range(first, last):
                lo = v * Hu
                step_product_rows(rec[v], work[v], WhT_bands[v], Wh_packed[v], state_T[t % 2])
                _forward_band_step(h_seq[t], act[t], hn_seq[t], rec[v], h_prev, bh, lo)
                _transpose(state_T[(t + 1) % 2, lo : lo + Hu], h_seq[t, :, lo : lo + Hu])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, t + 1)


@njit(cache=True, error_model="numpy", nogil=True)
def _forward_band_step(h, a, hn, rec, h_prev, bh, lo):
    """Step t of gru_forward for the units lo .. lo+Hu-1: h, hn (B, H), a (B, 3H) the step's
    rows; rec (B, 3Hu) their h_{t-1}·Wh. Each loop runs over slices from 0 with one activation:
    an index like lo + j, which numba must check for wrapping below 0, keeps LLVM from
    vectorising (measured: 7.7 against 1.0 ns an element)."""
    B, G = a.shape
    H = G // 3
    Hu = rec.shape[1] // 3
    for b in range(B):
        r, z, n = a[b, lo : lo + Hu], a[b, H + lo : H + lo + Hu], a[b, 2 * H + lo : 2 * H + lo + Hu]
        rec_r, rec_z, rec_n = rec[b, :Hu], rec[b, Hu : 2 * Hu], rec[b, 2 * Hu :]
        bh_r, bh_z, bh_n = bh[lo : lo + Hu], bh[H + lo : H + lo + Hu], bh[2 * H + lo : 2 * H + lo + Hu]
        hn_b, h_b, h_prev_b = hn[b, lo : lo + Hu], h[b, lo : lo + Hu], h_prev[b, lo : lo + Hu]
        for j in range(Hu):
            r[j] = sigmoid(r[j] + rec_r[j] + bh_r[j])
        for j in range(Hu):
            z[j] = sigmoid(z[j] + rec_z[j] + bh_z[j])
        for j in range(Hu):
            hn_b[j] = rec_n[j] + bh_n[j]
        for j in range(Hu):
            n[j] = tanh(n[j] + r[j] * hn_b[j])
        for j in range(Hu):
            h_b[j] = (1.0 - z[j]) * n[j] + z[j] * h_prev_b[j]


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def gru_backward(dx_proj, dh_proj, dh_seq, act, hn_seq, h_seq, h0, Wh_rows, Wh_rows_packed, grad_T, meeting):
    """Backpropagate one layer through its window (truncated: nothing flows into h0), the
    units in U bands as in gru_forward.
    dh_seq (T, B, H): the gradient w.r.t. each h_t from above (the next layer or the head).
    act, hn_seq, h_seq: as left by gru_forward from h0 (B, H).
    Wh_rows (U, Hu, 3H): band u's rows of Wh (H, 3H) (a view of it); Wh_rows_packed
    (U, P, 3H, R) the same in register tiles (P = 0: BLAS on Wh_rows).
    grad_T (2, 3H, B) work: the step's dh_proj transposed (two slots, as gru_forward's state).
    dx_proj (T, B, 3H) out: w.r.t. the input projection x·Wx + bx, so dWx = x.T·dx_proj.
    dh_proj (T, B, 3H) out: w.r.t. h_{t-1}·Wh + bh, so dWh = h_prev.T·dh_proj.
    """
    T, B, G = act.shape
    U, Hu, _ = Wh_rows.shape
    H = G // 3
    dh_next = np.zeros((B, H), dtype=act.dtype)  # dLoss/dh_t through h_t·Wh at t+1 ...
    direct = np.empty((B, H), dtype=act.dtype)  # ... and through z·h_t at t+1
    back = np.empty((U, B, Hu), dtype=act.dtype)  # each band's dh_proj · Wh_rows[u].T
    work = np.empty((U, Hu, B), dtype=act.dtype)
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)
        for t in range(T - 1, -1, -1):
            h_prev = h0 if t == 0 else h_seq[t - 1]
            for v in range(first, last):
                lo = v * Hu
                _backward_band_step(
                    dx_proj[t], dh_proj[t], direct, dh_next, dh_seq[t], act[t], hn_seq[t], h_prev, lo, Hu
                )
                for q in range(3):  # the band's columns of dh_proj, transposed
                    k = q * H + lo
                    _transpose(grad_T[t % 2, k : k + Hu], dh_proj[t, :, k : k + Hu])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, T - 1 - t)  # every band's dh_proj[t] is written
            for v in range(first, last):
                step_product_rows(back[v], work[v], Wh_rows[v], Wh_rows_packed[v], grad_T[t % 2])
                lo = v * Hu
                for b in range(B):
                    out, through_h, through_z = dh_next[b, lo : lo + Hu], back[v, b], direct[b, lo : lo + Hu]
                    for j in range(Hu):
                        out[j] = through_h[j] + through_z[j]


@njit(cache=True, error_model="numpy", nogil=True)
def _backward_band_step(dxp, dhp, direct, dh_next, up, a, hn, h_prev, lo, Hu):
    """Step t of gru_backward for the units lo .. lo+Hu-1: their gate gradients into dxp,
    dhp (B, 3H), and what reaches h_{t-1} through z into direct (B, H). Loops over slices from
    0, as in _forward_band_step."""
    B, G = a.shape
    H = G // 3
    for b in range(B):
        r, z, n = a[b, lo : lo + Hu], a[b, H + lo : H + lo + Hu], a[b, 2 * H + lo : 2 * H + lo + Hu]
        hn_b, h_prev_b, up_b, next_b = (
            hn[b, lo : lo + Hu],
            h_prev[b, lo : lo + Hu],
            up[b, lo : lo + Hu],
            dh_next[b, lo : lo + Hu],
        )
        dx_r, dx_z, dx_n = (
            dxp[b, lo : lo + Hu],
            dxp[b, H + lo : H + lo + Hu],
            dxp[b, 2 * H + lo : 2 * H + lo + Hu],
        )
        dh_r, dh_z, dh_n = (
            dhp[b, lo : lo + Hu],
            dhp[b, H + lo : H + lo + Hu],
            dhp[b, 2 * H + lo : 2 * H + lo + Hu],
        )
        keep = direct[b, lo : lo + Hu]
        for j in range(Hu):
            dh = up_b[j] + next_b[j]
            dan = dh * (1.0 - z[j]) * (1.0 - n[j] * n[j])  # through n = tanh(.)
            dar = dan * hn_b[j] * r[j] * (1.0 - r[j])
            daz = dh * (h_prev_b[j] - n[j]) * z[j] * (1.0 - z[j])
            dx_r[j] = dar
            dx_z[j] = daz
            dx_n[j] = dan
            dh_r[j] = dar
            dh_z[j] = daz
            dh_n[j] = dan * r[j]
            keep[j] = dh * z[j]
