"""The LSTM layer's kernels: inference's forward, and training's forward/backward pair over a
window (the units cut into bands, one per thread, meeting at every step).
"""

import numpy as np
from numba import njit, prange

from . import spin, tiles
from .activations import sigmoid, tanh
from .layouts import _to_step_major_rows, _to_step_major_rows_masked, _transpose
from .products import step_product


@njit(cache=True, error_model="numpy", nogil=True)
def lstm_forward(h_seq, c_seq, gates, Wh, b, h0, c0):
    """Run one LSTM layer over a window, keeping what backward needs.

    gates  (T, B, 4H) on entry: the input projection x_t·Wx; on exit: activated i, f, g, o
    h_seq  (T, B, H)  out: hidden state after each step
    c_seq  (T, B, H)  out: cell memory after each step
    Wh (H, 4H), b (4H,), h0 and c0 (B, H): the state carried in from the previous window.
    """
    T, B, G = gates.shape
    z_rec = np.empty((B, G), dtype=gates.dtype)  # h_{t-1}·Wh
    h_prev = h0
    c_prev = c0
    for t in range(T):
        np.dot(h_prev, Wh, z_rec)
        for r in range(B):
            _cell_step(h_seq[t, r], c_seq[t, r], gates[t, r], z_rec[r], b, c_prev[r])
        h_prev = h_seq[t]
        c_prev = c_seq[t]


@njit(cache=True, error_model="numpy", nogil=True)
def _cell_step(h, c, z, rec, b, c_prev):
    """One step of one stream: z (4H,) on entry the input projection, on exit the activated
    gates act(z + rec + b) (rec: h_prev·Wh); then c (H,) = f*c_prev + i*g, h (H,) = o*tanh(c)."""
    for k in range(z.size):
        z[k] = z[k] + rec[k] + b[k]
    _activate_cell(h, c, z, c_prev)


@njit(cache=True, error_model="numpy", nogil=True)
def _activate_cell(h, c, z, c_prev):
    """z (4H,) pre-activations, activated in place (i, f, o sigmoid, g tanh); then
    c (H,) = f*c_prev + i*g and h (H,) = o*tanh(c). c may be c_prev (updated in place).
    Contiguous loops from 0 over slices, with one activation each, so LLVM vectorises them (an
    index like 2*H + j, which numba checks for wrapping below zero, kept it from doing so: 5.4
    against 1.2 ns a unit). h holds the new c while c_prev is read, so that no loop writes an
    array it reads through another name (LLVM's overlap check would take the scalar loop)."""
    H = c.shape[0]
    i_and_f, i, f, g, o = z[: 2 * H], z[:H], z[H : 2 * H], z[2 * H : 3 * H], z[3 * H : 4 * H]
    for k in range(2 * H):
        i_and_f[k] = sigmoid(i_and_f[k])
    for k in range(H):
        g[k] = tanh(g[k])
    for k in range(H):
        o[k] = sigmoid(o[k])
    for j in range(H):
        h[j] = f[j] * c_prev[j] + i[j] * g[j]
    for j in range(H):
        c[j] = h[j]
    for j in range(H):
        h[j] = o[j] * tanh(h[j])


# Training feeds BLAS feature-major sequences: the gates' input projection Wx.T·x (4H, T*B),
# h (H, T*B) and dz (4H, T*B), so that the input projection and every weight gradient are
# one large product over the window. The recurrence itself walks step by step, and there a
# step's gates are 4H rows of B values T*B apart: touching them strided costs more than the
# arithmetic. So the step kernels keep what they walk step-major, one contiguous block per
# step, (T, 4H, B) and (T, H, B), and copy to and from the feature-major sequences once per
# window (t innermost, so each copy reads or writes whole rows). The recurrent product is
# Wh.T (4H, H) · h (H, B): BLAS runs that shape about 30% faster than (B, H) · (H, 4H).
# Inference keeps lstm_forward.
#
# On U threads the units are cut into U bands of Hu = H/U, one per thread (numba's), for the
# whole window in one parallel region. Each step a thread computes its band's gates from the
# whole previous h, Wh_bands[u] (4Hu, H) · h (H, B) (the i, f, g, o rows of its units, stacked),
# then its units' c and h; the threads meet (spin.meet) before the next step reads h. Backward
# mirrors it: a band's dz, a meeting, then its rows of Wh · dz. Cutting the units rather than
# the batch keeps every product 32 streams wide and gives each thread half of Wh to keep in
# its cache (measured alone: forward 15-20% and backward 12-20% faster than two halves of
# the batch, each thread walking its own 16 streams with no meeting).
# Layers can also be coupled on the register tiles (tiles.COUPLING, when the target's geometry
# serves it): above the first layer, x_t·Wx and the gradient passed down, Wx·dz_t, become tile
# products inside the steps, on the layer below's step-major h and dh, with no window-wide
# product and no layout copy between the layers. It costs Wx read once a step instead of once
# a window, and no measured CPU has yet gained from it (see tiles.GEOMETRIES). Or windowed
# (tiles.WINDOW): the same products on the same step-major buffers, each one tile product
# over the window between the layers' step kernels (products.tiled_steps_product), which pays
# on AVX-512 and is no slower on AVX2.
# The window-wide products are split by rows of their output (matmul_rows) on the same pool;
# BLAS itself runs on one thread (model.loss_and_grad sees to it), else its own pool would spin
# between calls and fight numba's for the cores. U = 1 is the serial path, the same code.


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def lstm_train_forward(
    h_seq, h_prev_seq, h_prev_rows, act, c_steps, h_steps, Wh_bands, Wh_packed, b, h0, c0, table_T, tokens,
    x_steps, Wx_packed, x_drop, mask, meeting,
):  # fmt: skip
    """lstm_forward for training, keeping what lstm_train_backward needs; the units in U bands,
    one per thread.

    act        (T, 4H, B) in: the input projection Wx.T·x_t (unless looked up); out: activated
               i, f, g, o
    c_steps    (T, H, B)  out: cell memory after each step
    h_steps    (T, H, B)  out: hidden state after each step
    h_seq      (H, T, B)  out: the same, feature-major (for BLAS)
    h_prev_seq (H, T, B)  out: the state each step started from (h0 first), for dWh by BLAS
    h_prev_rows (T, B, H) out: the same a row per stream, for dWh in lstm_train_backward's
               steps; either may be left empty (0, ...) and is then not written
    Wh_bands (U, 4Hu, H): rows i, f, g, o of Wh.T for the units of each band, stacked, for
               BLAS; or, with the register tiles, (U, 0, H)
    Wh_packed (U, P, H, ROWS): the same rows packed for step_product (layouts.pack_into_bands);
               or (U, 0, H, ROWS): BLAS on Wh_bands
    b (4H,); h0 and c0 (H, B): the state carried in (left unchanged); meeting (2,) int64 work.
    table_T (4H, V), tokens (T*B,) t-major: the first layer's input projection comes from a
    lookup, act[t, k, r] = table_T[k, tokens[t*B + r]] (one-hot(x)·Wx is a row of Wx,
    embed(x)·Wx one of embed·Wx), done step by step, so each step's block is still in cache
    when the gates are computed.
    x_steps (T, I, B), Wx_packed (U, P, I, ROWS): above the first layer, with the register tiles
    (P > 0), the input projection is a tile product step by step as well, Wx_packed[u]
    (pack_into_bands of Wx) times x_steps[t] (the layer below's output, step-major), while
    x_steps[t] is in cache (act is then only written). Otherwise (no tokens, P = 0) act holds
    the projection already.
    x_drop (H, T, B) out, mask (H, T, B): with dropout, x_drop = h_seq * mask, and h_steps is
    left masked the same way (the next layer's input, step-major; h_seq, h_prev_seq and
    h_prev_rows keep the state itself), both written while the copies read h_steps; or
    (0, T, B) each, no dropout.
    """
    T, G, B = act.shape
    U = Wh_bands.shape[0]
    H = G // 4
    Hu = H // U
    z = np.empty((U, 4 * Hu, B), dtype=act.dtype)  # each band's Wh_bands[u] · h_{t-1}
    projected = tokens.shape[0] == 0 and Wx_packed.shape[1] > 0
    zx = np.empty((U, 4 * Hu if projected else 0, B), dtype=act.dtype)  # each band's x_t·Wx
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)  # the bands this thread walks
        for t in range(T):
            for v in range(first, last):
                if tokens.shape[0] > 0:
                    _look_up_band(act, table_T, tokens, t, v * Hu, Hu)
                elif projected:
                    tiles.product(zx[v], Wx_packed[v], x_steps[t])
                _forward_band_step(
                    act, c_steps, h_steps, z[v], zx[v], Wh_bands[v], Wh_packed[v], b, h0, c0, t, v * Hu
                )
            if how == spin.TOGETHER:
                spin.meet(meeting, U, t)
        # the team met after the last step: no thread reads another's rows of h_steps now
        if h_prev_rows.shape[0] > 0:  # before the masks touch h_steps
            _to_stream_rows(h_prev_rows, h_steps, h0, first * Hu, last * Hu)
        if mask.shape[0] > 0:
            _to_feature_major_dropped(h_seq, h_prev_seq, h_steps, h0, x_drop, mask, first * Hu, last * Hu)
        else:
            _to_feature_major(h_seq, h_prev_seq, h_steps, h0, first * Hu, last * Hu)


@njit(cache=True, error_model="numpy", nogil=True)
def _look_up_band(act, table_T, tokens, t, lo, Hu):
    """act[t, k, r] = table_T[k, tokens[t*B + r]] for the gate rows k of units lo .. lo+Hu-1."""
    T, G, B = act.shape
    H = G // 4
    tok = tokens[t * B : (t + 1) * B]
    at = act[t]
    for k in range(lo, lo + Hu):  # a unit's four gate rows at once: one token read for four values
        i_row, f_row, g_row, o_row = table_T[k], table_T[H + k], table_T[2 * H + k], table_T[3 * H + k]
        i_dst, f_dst, g_dst, o_dst = at[k], at[H + k], at[2 * H + k], at[3 * H + k]
        for r in range(B):
            v = np.uint64(tok[r])  # unsigned: no wrap-around check (0.92 -> 0.71 ms)
            i_dst[r] = i_row[v]
            f_dst[r] = f_row[v]
            g_dst[r] = g_row[v]
            o_dst[r] = o_row[v]


@njit(cache=True, error_model="numpy", nogil=True)
def _forward_band_step(act, c_steps, h_steps, z, zx, Wh_band, Wh_packed, b, h0, c0, t, lo):
    """Step t of lstm_train_forward for the units lo .. lo+Hu-1: z (4Hu, B) work, Wh_band
    (4Hu, H) their stacked rows of Wh.T; the input projection in their rows of act[t], or in
    zx (4Hu, B) stacked as z when not empty; writes their gates in act[t], c_steps[t],
    h_steps[t]."""
    T, G, B = act.shape
    H = G // 4
    Hu = z.shape[0] // 4
    step_product(z, Wh_band, Wh_packed, h0 if t == 0 else h_steps[t - 1])
    at = act[t]
    # Loops over the streams, innermost and contiguous, with one activation each (vectorised;
    # the two sources of the projection get a loop each: one loop reading either did not).
    for q in range(4):  # i, f, g, o
        for j in range(Hu):
            k = q * H + lo + j
            zk = z[q * Hu + j]
            ak = at[k]
            bk = b[k]
            if zx.shape[0] > 0:
                xk = zx[q * Hu + j]
                if q == 2:  # g
                    for r in range(B):
                        ak[r] = tanh(xk[r] + zk[r] + bk)
                else:
                    for r in range(B):
                        ak[r] = sigmoid(xk[r] + zk[r] + bk)
            elif q == 2:
                for r in range(B):
                    ak[r] = tanh(ak[r] + zk[r] + bk)
            else:
                for r in range(B):
                    ak[r] = sigmoid(ak[r] + zk[r] + bk)
    # The cell's update on the band's units as one run of Hu*B values: a gate's rows of the
    # band lie one after the other, so it is one long loop instead of Hu loops of B (which
    # paid LLVM's overlap checks and setup on every row of 32 values: 1.9 -> 1.5 ms a layer
    # of 64 steps at H=256 on a Zen 4).
    i = _run(at, lo, lo + Hu)
    f = _run(at, H + lo, H + lo + Hu)
    g = _run(at, 2 * H + lo, 2 * H + lo + Hu)
    o = _run(at, 3 * H + lo, 3 * H + lo + Hu)
    c_before = _run(c0, lo, lo + Hu) if t == 0 else _run(c_steps[t - 1], lo, lo + Hu)
    c = _run(c_steps[t], lo, lo + Hu)
    h = _run(h_steps[t], lo, lo + Hu)
    for r in range(c.size):
        c[r] = f[r] * c_before[r] + i[r] * g[r]
    for r in range(c.size):
        h[r] = o[r] * tanh(c[r])


@njit(cache=True, error_model="numpy", nogil=True)
def _run(block, lo, hi):
    """Rows lo .. hi-1 of block (M, B), C-contiguous, as one run of (hi-lo)*B values (a view)."""
    return block[lo:hi].reshape((hi - lo) * block.shape[1])


@njit(cache=True, error_model="numpy", nogil=True)
def _to_feature_major(h_seq, h_prev_seq, h_steps, h0, lo, hi):
    """Rows lo .. hi-1 of h_seq and (unless empty) h_prev_seq (H, T, B) from h_steps (T, H, B)
    and h0 (H, B)."""
    T, H, B = h_steps.shape
    with_prev = h_prev_seq.shape[0] > 0
    for j in range(lo, hi):
        for t in range(T):
            _copy_row(h_seq[j, t], h_steps[t, j])
            if with_prev:
                _copy_row(h_prev_seq[j, t], h_steps[t - 1, j] if t > 0 else h0[j])


@njit(cache=True, error_model="numpy", nogil=True)
def _to_feature_major_dropped(h_seq, h_prev_seq, h_steps, h0, x_drop, mask, lo, hi):
    """_to_feature_major, and x_drop (H, T, B) = h_seq * mask (H, T, B), with h_steps left
    masked the same way: inverted dropout in the pass that reads h_steps anyway. h_prev_seq
    reads the state from h_seq, written unmasked just before. A function of its own: a mask
    branch inside _to_feature_major's loop cost the forward without dropout 0.3-0.7 ms a
    layer (H=256, Zen 4), and masking a unit in a second pass cost about 1 ms a step more."""
    T, H, B = h_steps.shape
    with_prev = h_prev_seq.shape[0] > 0
    for j in range(lo, hi):
        for t in range(T):
            src = h_steps[t, j]
            dst = h_seq[j, t]
            keep = mask[j, t]
            dropped = x_drop[j, t]
            for r in range(B):
                value = src[r]
                dst[r] = value
                value *= keep[r]
                dropped[r] = value
                src[r] = value
            if with_prev:
                _copy_row(h_prev_seq[j, t], h_seq[j, t - 1] if t > 0 else h0[j])


@njit(cache=True, error_model="numpy", nogil=True)
def _copy_row(dst, src):
    """dst (B,) = src (B,): an explicit loop, as numba's slice assignment costs more per row."""
    for r in range(dst.shape[0]):
        dst[r] = src[r]


@njit(cache=True, error_model="numpy", nogil=True)
def _to_stream_rows(h_prev_rows, h_steps, h0, lo, hi):
    """Columns lo .. hi-1 of h_prev_rows (T, B, H)[t] = h_{t-1}.T: h0 (H, B) first, then
    h_steps (T, H, B)."""
    T = h_steps.shape[0]
    for t in range(T):
        before = h_steps[t - 1] if t > 0 else h0
        _transpose(h_prev_rows[t, :, lo:hi], before[lo:hi])


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def lstm_train_backward(
    dz, db, dWh, dWh_T, dh_seq, dh_mask, act, c_steps, Wh, Wh_packed, c0, h_prev_rows, dz_steps, dh_steps,
    dtable_T, tokens, dx_steps, Wx_rows_packed, bands, meeting,
):  # fmt: skip
    """Backpropagate one layer through its window (truncated: nothing flows into h0, c0); the
    units in `bands` bands, one per thread, as in lstm_train_forward.

    dz     (4H, T, B) out: gradient of the loss w.r.t. the gate pre-activations, feature-major;
           or (0, T, B), not written
    db     (4H,): accumulated into
    dWh    (H, 4H): accumulated into, step by step, when h_prev_rows (T, B, H) holds the
           state each step started from (lstm_train_forward; float32, a band's rows of a gate
           in whole tiles, H in whole vectors): tiles.add_product in dWh_T (4H, H) work while
           dz_steps[t] is in cache, each thread on its own rows, then added in transposed.
           h_prev_rows empty (0, B, H): dWh is the caller's (one product from dz).
    dh_seq (H, T, B): gradient w.r.t. each h_t from above (the next layer or the head); or
           (0, T, B): dh_steps holds it already (the layer above's dx_steps)
    dh_mask (H, T, B): with dropout, the layer's mask, applied to dh_seq as it is copied
           step-major; or (0, T, B)
    act, c_steps: as left by lstm_train_forward; Wh (H, 4H); c0 (H, B) the carried-in cell.
    Wh_packed (U, P, 4H, ROWS): Wh's rows of each band's units packed for step_product
           (layouts.pack_bands), or (U, 0, 4H, ROWS): BLAS on Wh.
    dz_steps (T, 4H, B), dh_steps (T, H, B): work, step-major; meeting (2,) int64 work.
    dtable_T (4H, V), tokens (T*B,): for the first layer (tokens not empty), the gradient of
    lstm_train_forward's lookup table is added into dtable_T, step by step while dz_steps[t]
    is in cache (each thread owns its rows of it).
    dx_steps (T, I, B), Wx_rows_packed (U, P, 4H, ROWS): above the first layer, with the
    register tiles (P > 0), the gradient w.r.t. the layer's input, dx_steps[t] = Wx · dz_steps[t],
    step by step while dz_steps[t] is in cache, each band its I/U rows (Wx_rows_packed:
    pack_bands of Wx); else (P = 0) not written.
    The other weight and input gradients follow from dz with one large product each (the
    caller).
    """
    T, G, B = act.shape
    H = G // 4
    U = bands
    Hu = H // U
    dh_next = np.zeros((H, B), dtype=dz.dtype)  # dLoss/dh_t through Wh.T·h_t at t+1
    dc = np.zeros((H, B), dtype=dz.dtype)  # dLoss/dc_t, carried backwards through f
    dz_sums = np.zeros((G, B), dtype=dz.dtype)  # each stream's dz summed over the steps, for db
    with_dWh = h_prev_rows.shape[0] > 0
    with_dx = Wx_rows_packed.shape[1] > 0
    Iu = dx_steps.shape[1] // U  # a band's rows of dx_steps
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)  # the bands this thread walks
        lo, hi = first * Hu, last * Hu  # their units
        if dh_seq.shape[0] > 0 and dh_mask.shape[0] > 0:
            _to_step_major_rows_masked(dh_steps, dh_seq, dh_mask, lo, hi)
        elif dh_seq.shape[0] > 0:
            _to_step_major_rows(dh_steps, dh_seq, lo, hi)
        if with_dWh:
            for q in range(4):
                dWh_T[q * H + lo : q * H + hi] = 0.0
        for t in range(T - 1, -1, -1):
            _backward_band_step(dz_steps, act, c_steps, dh_steps, dh_next, dc, c0, t, lo, hi)
            _add_gate_rows(dz_sums, dz_steps[t], lo, hi)
            if tokens.shape[0] > 0:
                _scatter_band(dtable_T, dz_steps, tokens, t, lo, hi)
            if with_dWh:
                for q in range(4):
                    rows = slice(q * H + lo, q * H + hi)
                    tiles.add_product(dWh_T[rows], dz_steps[t, rows], h_prev_rows[t])
            if how == spin.TOGETHER:
                spin.meet(meeting, U, T - 1 - t)  # all of dz_steps[t] is written
            if t > 0:
                for v in range(first, last):  # band by band, the same products either way
                    rows = slice(v * Hu, (v + 1) * Hu)
                    step_product(dh_next[rows], Wh[rows], Wh_packed[v], dz_steps[t])
            if with_dx:
                for v in range(first, last):
                    tiles.product(dx_steps[t, v * Iu : (v + 1) * Iu], Wx_rows_packed[v], dz_steps[t])
        _add_stream_sums(db, dz_sums, lo, hi)
        if dz.shape[0] > 0:
            _gate_rows_to_feature_major(dz, dz_steps, lo, hi)
        if with_dWh:
            for q in range(4):
                _transpose(dWh[:, q * H + lo : q * H + hi], dWh_T[q * H + lo : q * H + hi], True)


@njit(cache=True, error_model="numpy", nogil=True)
def _scatter_band(dtable_T, dz_steps, tokens, t, lo, hi):
    """dtable_T[k, tokens[t*B + r]] += dz_steps[t, k, r] for the gate rows k of units lo .. hi-1:
    the backward of _look_up_band."""
    T, G, B = dz_steps.shape
    H = G // 4
    tok = tokens[t * B : (t + 1) * B]
    dzt = dz_steps[t]
    for k in range(lo, hi):  # a unit's four gate rows at once, as in _look_up_band
        i_row, f_row, g_row, o_row = dtable_T[k], dtable_T[H + k], dtable_T[2 * H + k], dtable_T[3 * H + k]
        i_src, f_src, g_src, o_src = dzt[k], dzt[H + k], dzt[2 * H + k], dzt[3 * H + k]
        for r in range(B):
            v = np.uint64(tok[r])  # unsigned, as in _look_up_band (1.55 -> 1.31 ms)
            i_row[v] += i_src[r]
            f_row[v] += f_src[r]
            g_row[v] += g_src[r]
            o_row[v] += o_src[r]


@njit(cache=True, error_model="numpy", nogil=True)
def _backward_band_step(dz_steps, act, c_steps, dh_steps, dh_next, dc, c0, t, lo, hi):
    """Step t of lstm_train_backward for the units lo .. hi-1: their rows of dz_steps[t] and
    of dc (H, B), from dh_steps[t] and dh_next (H, B)."""
    H = act.shape[1] // 4
    one = dz_steps.dtype.type(1.0)  # keeps float32 arithmetic in float32
    at = act[t]
    dzt = dz_steps[t]
    # One run of (hi-lo)*B values per array, as in _forward_band_step's cell update (row by
    # row, 13 arrays of 32 values each, LLVM's overlap checks cost more than the arithmetic:
    # 1.4-1.6 -> 0.64 ms a layer of 64 steps at H=256 on a Zen 4).
    i = _run(at, lo, hi)
    f = _run(at, H + lo, H + hi)
    g = _run(at, 2 * H + lo, 2 * H + hi)
    o = _run(at, 3 * H + lo, 3 * H + hi)
    di = _run(dzt, lo, hi)
    df = _run(dzt, H + lo, H + hi)
    dg = _run(dzt, 2 * H + lo, 2 * H + hi)
    do = _run(dzt, 3 * H + lo, 3 * H + hi)
    cs = _run(c_steps[t], lo, hi)
    cp = _run(c_steps[t - 1], lo, hi) if t > 0 else _run(c0, lo, hi)
    dhs = _run(dh_steps[t], lo, hi)
    dhn = _run(dh_next, lo, hi)
    dcs = _run(dc, lo, hi)
    for r in range(cs.size):
        tc = tanh(cs[r])  # the same function as forward, so gradients match it
        dh = dhs[r] + dhn[r]
        dcv = dcs[r] + dh * o[r] * (one - tc * tc)
        do[r] = dh * tc * o[r] * (one - o[r])
        di[r] = dcv * g[r] * i[r] * (one - i[r])
        df[r] = dcv * cp[r] * f[r] * (one - f[r])
        dg[r] = dcv * i[r] * (one - g[r] * g[r])
        dcs[r] = dcv * f[r]  # dLoss/dc_{t-1} through this step


@njit(cache=True, error_model="numpy", nogil=True)
def _add_gate_rows(sums, dzt, lo, hi):
    """sums (4H, B) += dzt (4H, B) on the gate rows of units lo .. hi-1: a running sum per
    stream over the steps, added while the step's dz is in cache (it vectorises along the row
    instead of each addition waiting on the last)."""
    H = sums.shape[0] // 4
    for q in range(4):  # a gate's rows of the band as one run
        acc = _run(sums, q * H + lo, q * H + hi)
        src = _run(dzt, q * H + lo, q * H + hi)
        for r in range(acc.size):
            acc[r] += src[r]


@njit(cache=True, error_model="numpy", nogil=True)
def _add_stream_sums(db, sums, lo, hi):
    """db (4H,) += the B stream sums of sums (4H, B), added in float64, for the gate rows of
    units lo .. hi-1."""
    H = sums.shape[0] // 4
    for q in range(4):
        for k in range(q * H + lo, q * H + hi):
            total = 0.0
            for r in range(sums.shape[1]):
                total += sums[k, r]
            db[k] += total


@njit(cache=True, error_model="numpy", nogil=True)
def _gate_rows_to_feature_major(dz, dz_steps, lo, hi):
    """dz (4H, T, B) = dz_steps (T, 4H, B) for the gate rows of units lo .. hi-1."""
    T, G, B = dz_steps.shape
    H = G // 4
    for q in range(4):
        for k in range(q * H + lo, q * H + hi):
            for t in range(T):
                src = dz_steps[t, k]
                dst = dz[k, t]
                for r in range(B):
                    dst[r] = src[r]
