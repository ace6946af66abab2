"""Every Numba-compiled kernel of charlstm: the LSTM forward/backward pair, the loss, gradient
clipping, Adam and the batch sampling step.

Conventions (shared with the rest of the package):
  B batch, T time, V vocabulary, E embedding, H hidden, L layers, I input width of a layer.
  Gates lie along the 4H axis in the order i, f, g, o (PyTorch's). Sequences are time-major.
Kernels take arrays and plain numbers only (no globals, no function arguments), never check
shapes (the Python wrappers do) and have no fixed signature, so one kernel serves float64
(gradient checks) and float32 (training). Outputs come first, then inputs, then sizes.
Backward kernels *add* into gradient buffers; the caller zeroes them.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from . import spin, tiles


def tanh(x):
    """tanh for scalars inside kernels: exact in float64, a fast vectorisable rational
    approximation in float32 (see the overload below)."""
    return math.tanh(x)


def sigmoid(x):
    """Logistic function for scalars inside kernels, dispatched on precision like tanh."""
    return 1.0 / (1.0 + math.exp(-x))


def exp(x):
    """e**x for scalars inside kernels: libm's in float64, a vectorisable one in float32."""
    return math.exp(x)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 `bits` (a free reinterpretation,
    which LLVM vectorises like any other instruction)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@overload(tanh, inline="always")
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        # libm's tanhf/expf are scalar calls that keep LLVM from vectorising the gate loops
        # and cost more than the recurrent matrix product. This odd rational function
        # x*P(x^2)/Q(x^2), fitted to tanh on [-9, 9] and clamped outside, stays within
        # 4e-7 of tanh (a few float32 ulps) and compiles to straight-line SIMD code.
        def tanh_f32(x):
            lim = np.float32(9.0)
            y = min(max(x, -lim), lim)
            s = y * y
            p = np.float32(-8.290949086263143e-14)
            p = p * s + np.float32(5.192549835857732e-11)
            p = p * s + np.float32(-2.00292632275991e-08)
            p = p * s + np.float32(1.1101750544255102e-05)
            p = p * s + np.float32(0.003098647477408729)
            p = p * s + np.float32(0.13079157580670306)
            p = p * s + np.float32(1.0)
            q = np.float32(0.0002538591132714459)
            q = q * s + np.float32(0.024473734426352402)
            q = q * s + np.float32(0.46412477830066656)
            q = q * s + np.float32(1.0)
            one = np.float32(1.0)
            return min(max(y * p / q, -one), one)

        return tanh_f32

    def tanh_exact(x):
        return math.tanh(x)

    return tanh_exact


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:

        def sigmoid_f32(x):
            half = np.float32(0.5)
            return half * tanh(half * x) + half

        return sigmoid_f32

    def sigmoid_exact(x):
        # Branching keeps exp() from overflowing for large |x|.
        if x >= 0.0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)

    return sigmoid_exact


@overload(exp, inline="always")
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        # libm's expf is a scalar call per element, the bulk of the softmax's time. Instead:
        # e**x = 2**n * e**r with n = round(x / ln 2) and |r| <= ln(2)/2, e**r from its
        # degree-7 Taylor-like minimax polynomial (Cephes' expf coefficients, within 2 ulp),
        # and 2**n put together from its exponent bits. x is clamped to [-87, 88], where 2**n
        # stays a normal float: below, the result is ~1e-38 instead of 0, a difference no
        # softmax sees.
        def exp_f32(x):
            y = min(max(x, np.float32(-87.0)), np.float32(88.0))
            n = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
            r = y - n * np.float32(0.693359375)  # ln 2 in two parts, the first exact in float32
            r = r - n * np.float32(-2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            e_r = p * r * r + r + np.float32(1.0)
            two_n = _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
            return e_r * two_n

        return exp_f32

    def exp_exact(x):
        return math.exp(x)

    return exp_exact


# --------------------------------------------------------------------------------------------
# LSTM layer


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
    Contiguous loops with one activation each, so LLVM can vectorise them."""
    H = c.shape[0]
    for k in range(2 * H):  # i, f
        z[k] = sigmoid(z[k])
    for k in range(2 * H, 3 * H):  # g
        z[k] = tanh(z[k])
    for k in range(3 * H, 4 * H):  # o
        z[k] = sigmoid(z[k])
    for j in range(H):
        cell = z[H + j] * c_prev[j] + z[j] * z[2 * H + j]
        c[j] = cell
        h[j] = z[3 * H + j] * tanh(cell)


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
# The window-wide products are split by rows of their output (matmul_rows) on the same pool;
# BLAS itself runs on one thread (model.loss_and_grad sees to it), else its own pool would spin
# between calls and fight numba's for the cores. U = 1 is the serial path, the same code.


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def to_step_major(act, proj, threads):
    """act (T, R, B)[t, k] = proj (R, T, B)[k, t]: a feature-major sequence, step-major, in
    `threads` bands of rows."""
    R = act.shape[1]
    for p in prange(threads):
        _to_step_major_rows(act, proj, p * R // threads, (p + 1) * R // threads)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def lstm_train_forward(
    h_seq, h_prev_seq, h_prev_rows, act, c_steps, h_steps, Wh_bands, Wh_packed, b, h0, c0, table_T, tokens,
    meeting,
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
    Wh_packed (U, 4Hu/ROWS, H, ROWS): the same rows packed for step_product (pack_into_bands);
               or (U, 0, H, ROWS): BLAS on Wh_bands
    b (4H,); h0 and c0 (H, B): the state carried in (left unchanged); meeting (2,) int64 work.
    table_T (4H, V), tokens (T*B,) t-major: the first layer's input projection comes from a
    lookup, act[t, k, r] = table_T[k, tokens[t*B + r]] (one-hot(x)·Wx is a row of Wx,
    embed(x)·Wx one of embed·Wx), done step by step, so each step's block is still in cache
    when the gates are computed. No tokens (length 0): act holds the projection already.
    """
    T, G, B = act.shape
    U = Wh_bands.shape[0]
    H = G // 4
    Hu = H // U
    z = np.empty((U, 4 * Hu, B), dtype=act.dtype)  # each band's Wh_bands[u] · h_{t-1}
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)  # the bands this thread walks
        for t in range(T):
            for v in range(first, last):
                if tokens.shape[0] > 0:
                    _look_up_band(act, table_T, tokens, t, v * Hu, Hu)
                _forward_band_step(
                    act, c_steps, h_steps, z[v], Wh_bands[v], Wh_packed[v], b, h0, c0, t, v * Hu
                )
            if how == spin.TOGETHER:
                spin.meet(meeting, U, t)
        _to_feature_major(h_seq, h_prev_seq, h_steps, h0, first * Hu, last * Hu)
        if h_prev_rows.shape[0] > 0:
            _to_stream_rows(h_prev_rows, h_steps, h0, first * Hu, last * Hu)


@njit(cache=True, error_model="numpy", nogil=True)
def step_product(out, W, W_packed, x):
    """out (M, B) = W (M, K) · x (K, B), the product of one recurrent step: with the
    register tiles of charlstm.tiles from W_packed (M/ROWS, K, ROWS) when it holds the
    weights (see pack_rows; float32, B a multiple of 16, all C-contiguous), else BLAS on W."""
    if W_packed.shape[0] == 0:
        np.dot(W, x, out)
    else:
        tiles.product(out, W_packed, x)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def pack_rows(out, W, threads):
    """out (P, K, R) = the rows of W (M, K) in tiles of R for step_product (see _pack; zero
    rows pad the last tile when R does not divide M), in `threads` bands of tiles."""
    P, K, R = out.shape
    for part in prange(threads):
        lo, hi = part * P // threads, (part + 1) * P // threads
        _pack(out[lo:hi], W[lo * R : hi * R])


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def pack_into_bands(out, a):
    """out (U, 4Hu/R, I, R): the rows of a.T (a (I, 4H)) that transpose_into_bands stacks for
    band u, packed in tiles of R for step_product; one band per thread. R divides Hu, so no
    tile straddles two gates."""
    U, P, _, R = out.shape
    per_gate = P // 4  # tiles of one gate's rows in a band
    Hu = per_gate * R
    H = Hu * U
    for u in prange(U):
        for q in range(4):
            lo = q * H + u * Hu
            _pack(out[u, q * per_gate : (q + 1) * per_gate], a[:, lo : lo + Hu].T)


@njit(cache=True, error_model="numpy", nogil=True)
def _pack(out, W):
    """out (P, K, R)[p, k, i] = W (M, K)[p*R + i, k], zero past W's last row (P*R >= M);
    W may be a transposed view."""
    P, K, R = out.shape
    M = W.shape[0]
    for p in range(P):
        for k in range(K):
            dst = out[p, k]
            for i in range(R):
                dst[i] = W[p * R + i, k] if p * R + i < M else 0.0


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def tiled_matmul(out, W_packed, x, threads):
    """out (M, N) = W (M, K) · x (K, N) on the register tiles, W packed as for step_product
    (M a whole number of tiles: pad W with zero rows); N a multiple of 16, cut into
    `threads` bands of columns, one per numba thread. For the head's products, where BLAS
    runs at 70-87 GFLOP/s (V = 65 rows, or K = 65) and the tiles at 95-100."""
    vectors = out.shape[1] // tiles.LANES
    for p in prange(threads):
        lo = p * vectors // threads * tiles.LANES
        hi = (p + 1) * vectors // threads * tiles.LANES
        tiles.product(out[:, lo:hi], W_packed, x[:, lo:hi])


@njit(cache=True, error_model="numpy", nogil=True)
def _look_up_band(act, table_T, tokens, t, lo, Hu):
    """act[t, k, r] = table_T[k, tokens[t*B + r]] for the gate rows k of units lo .. lo+Hu-1."""
    T, G, B = act.shape
    H = G // 4
    tok = tokens[t * B : (t + 1) * B]
    for q in range(4):
        for k in range(q * H + lo, q * H + lo + Hu):
            row = table_T[k]
            dst = act[t, k]
            for r in range(B):
                dst[r] = row[tok[r]]


@njit(cache=True, error_model="numpy", nogil=True)
def _forward_band_step(act, c_steps, h_steps, z, Wh_band, Wh_packed, b, h0, c0, t, lo):
    """Step t of lstm_train_forward for the units lo .. lo+Hu-1: z (4Hu, B) work, Wh_band
    (4Hu, H) their stacked rows of Wh.T; writes their gates in act[t], c_steps[t], h_steps[t]."""
    T, G, B = act.shape
    H = G // 4
    Hu = z.shape[0] // 4
    step_product(z, Wh_band, Wh_packed, h0 if t == 0 else h_steps[t - 1])
    at = act[t]
    # Loops over the streams, innermost and contiguous, with one activation each (vectorised).
    for q in range(4):  # i, f, g, o
        for j in range(Hu):
            k = q * H + lo + j
            zk = z[q * Hu + j]
            ak = at[k]
            bk = b[k]
            if q == 2:  # g
                for r in range(B):
                    ak[r] = tanh(ak[r] + zk[r] + bk)
            else:
                for r in range(B):
                    ak[r] = sigmoid(ak[r] + zk[r] + bk)
    for j in range(lo, lo + Hu):
        i = at[j]
        f = at[H + j]
        g = at[2 * H + j]
        o = at[3 * H + j]
        c_before = c0[j] if t == 0 else c_steps[t - 1, j]
        cj = c_steps[t, j]
        hj = h_steps[t, j]
        for r in range(B):
            cj[r] = f[r] * c_before[r] + i[r] * g[r]
        for r in range(B):
            hj[r] = o[r] * tanh(cj[r])


@njit(cache=True, error_model="numpy", nogil=True)
def _to_feature_major(h_seq, h_prev_seq, h_steps, h0, lo, hi):
    """Rows lo .. hi-1 of h_seq and (unless empty) h_prev_seq (H, T, B) from h_steps (T, H, B)
    and h0 (H, B)."""
    T, H, B = h_steps.shape
    with_prev = h_prev_seq.shape[0] > 0
    for j in range(lo, hi):
        for t in range(T):
            src = h_steps[t, j]
            dst = h_seq[j, t]
            for r in range(B):  # explicit loops: numba's slice assignment costs more per row
                dst[r] = src[r]
            if with_prev:
                before = h_steps[t - 1, j] if t > 0 else h0[j]
                prev = h_prev_seq[j, t]
                for r in range(B):
                    prev[r] = before[r]


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
    dz, db, dWh, dWh_T, dh_seq, act, c_steps, Wh, Wh_packed, c0, h_prev_rows, dz_steps, dh_steps, dtable_T,
    tokens, bands, meeting,
):  # fmt: skip
    """Backpropagate one layer through its window (truncated: nothing flows into h0, c0); the
    units in `bands` bands, one per thread, as in lstm_train_forward.

    dz     (4H, T, B) out: gradient of the loss w.r.t. the gate pre-activations, feature-major;
           or (0, T, B), not written
    db     (4H,): accumulated into
    dWh    (H, 4H): accumulated into, step by step, when h_prev_rows (T, B, H) holds the
           state each step started from (lstm_train_forward; float32, whole tiles of ROWS rows
           per band and of 16 columns in H): tiles.add_product in dWh_T (4H, H) work while
           dz_steps[t] is in cache, each thread on its own rows, then added in transposed.
           h_prev_rows empty (0, B, H): dWh is the caller's (one product from dz).
    dh_seq (H, T, B): gradient w.r.t. each h_t from above (the next layer or the head)
    act, c_steps: as left by lstm_train_forward; Wh (H, 4H); c0 (H, B) the carried-in cell.
    Wh_packed (H/ROWS, 4H, ROWS): Wh packed for step_product, or (0, 4H, ROWS): BLAS on Wh.
    dz_steps (T, 4H, B), dh_steps (T, H, B): work, step-major; meeting (2,) int64 work.
    dtable_T (4H, V), tokens (T*B,): for the first layer (tokens not empty), the gradient of
    lstm_train_forward's lookup table is added into dtable_T, step by step while dz_steps[t]
    is in cache (each thread owns its rows of it).
    The other weight and input gradients follow from dz with one large product each (the
    caller).
    """
    T, G, B = act.shape
    H = G // 4
    U = bands
    Hu = H // U
    dh_next = np.zeros((H, B), dtype=dz.dtype)  # dLoss/dh_t through Wh.T·h_t at t+1
    dc = np.zeros((H, B), dtype=dz.dtype)  # dLoss/dc_t, carried backwards through f
    tiles_per_band = Wh_packed.shape[0] // U
    with_dWh = h_prev_rows.shape[0] > 0
    meeting[:] = 0
    for u in prange(U):
        how = spin.join_team(meeting, U, spin.PATIENCE)
        first, last = spin.share(how, u, U)  # the bands this thread walks
        lo, hi = first * Hu, last * Hu  # their units
        _to_step_major_rows(dh_steps, dh_seq, lo, hi)
        if with_dWh:
            for q in range(4):
                dWh_T[q * H + lo : q * H + hi] = 0.0
        for t in range(T - 1, -1, -1):
            _backward_band_step(dz_steps, act, c_steps, dh_steps, dh_next, dc, c0, t, lo, hi)
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
                    packed = Wh_packed[v * tiles_per_band : (v + 1) * tiles_per_band]
                    rows = slice(v * Hu, (v + 1) * Hu)
                    step_product(dh_next[rows], Wh[rows], packed, dz_steps[t])
        _gate_rows_to_feature_major(dz, db, dz_steps, lo, hi)
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
    for q in range(4):
        for k in range(q * H + lo, q * H + hi):
            row = dtable_T[k]
            src = dz_steps[t, k]
            for r in range(B):
                row[tok[r]] += src[r]


@njit(cache=True, error_model="numpy", nogil=True)
def _backward_band_step(dz_steps, act, c_steps, dh_steps, dh_next, dc, c0, t, lo, hi):
    """Step t of lstm_train_backward for the units lo .. hi-1: their rows of dz_steps[t] and
    of dc (H, B), from dh_steps[t] and dh_next (H, B)."""
    T, G, B = act.shape
    H = G // 4
    one = dz_steps.dtype.type(1.0)  # keeps float32 arithmetic in float32
    at = act[t]
    dzt = dz_steps[t]
    for j in range(lo, hi):
        i = at[j]
        f = at[H + j]
        g = at[2 * H + j]
        o = at[3 * H + j]
        cs = c_steps[t, j]
        dhs = dh_steps[t, j]
        dhn = dh_next[j]
        dcj = dc[j]
        di = dzt[j]
        df = dzt[H + j]
        dg = dzt[2 * H + j]
        do = dzt[3 * H + j]
        cp = c_steps[t - 1, j] if t > 0 else c0[j]
        for r in range(B):
            tc = tanh(cs[r])  # the same function as forward, so gradients match it
            dh = dhs[r] + dhn[r]
            dcv = dcj[r] + dh * o[r] * (one - tc * tc)
            do[r] = dh * tc * o[r] * (one - o[r])
            di[r] = dcv * g[r] * i[r] * (one - i[r])
            df[r] = dcv * cp[r] * f[r] * (one - f[r])
            dg[r] = dcv * i[r] * (one - g[r] * g[r])
            dcj[r] = dcv * f[r]  # dLoss/dc_{t-1} through this step


@njit(cache=True, error_model="numpy", nogil=True)
def _to_step_major_rows(dst, src, lo, hi):
    """dst (T, R, B)[t, k] = src (R, T, B)[k, t] for the rows lo .. hi-1."""
    T, R, B = dst.shape
    for k in range(lo, hi):
        for t in range(T):
            d = dst[t, k]
            s = src[k, t]
            for r in range(B):
                d[r] = s[r]


@njit(cache=True, error_model="numpy", nogil=True)
def _gate_rows_to_feature_major(dz, db, dz_steps, lo, hi):
    """dz (4H, T, B) = dz_steps (T, 4H, B) for the gate rows of units lo .. hi-1 (unless dz
    is empty), adding their sums to db (4H,): one running sum per stream, in dz's precision,
    over the T steps (so that the additions vectorise along the row instead of each waiting
    on the last), then the B stream sums added in float64."""
    T, G, B = dz_steps.shape
    H = G // 4
    per_stream = np.empty(B, dtype=dz.dtype)
    copy = dz.shape[0] > 0
    for q in range(4):
        for k in range(q * H + lo, q * H + hi):
            per_stream[:] = 0.0
            for t in range(T):
                src = dz_steps[t, k]
                for r in range(B):
                    per_stream[r] += src[r]
                if copy:
                    dst = dz[k, t]
                    for r in range(B):
                        dst[r] = src[r]
            total = 0.0
            for r in range(B):
                total += per_stream[r]
            db[k] += total


# --------------------------------------------------------------------------------------------
# Large products. All BLAS calls go through numba (SciPy's BLAS): mixing in NumPy's own
# BLAS would start a second thread pool whose spinning threads fight this one for the cores.


@njit(cache=True, error_model="numpy", nogil=True)
def matmul(out, a, b):
    """out (M, N) = a (M, K) · b (K, N); a and b may be transposed views."""
    np.dot(a, b, out)


@njit(cache=True, error_model="numpy", nogil=True)
def matmul_add(out, a, b):
    """out (M, N) += a (M, K) · b (K, N)."""
    out += np.dot(a, b)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def transpose_into(out, a, threads):
    """out (N, M) = a (M, N).T, in `threads` bands of out's rows: the contiguous transposes
    BLAS takes (NumPy's strided copy runs at a fraction of the memory bandwidth)."""
    N = out.shape[0]
    for p in prange(threads):
        lo, hi = p * N // threads, (p + 1) * N // threads
        _transpose(out[lo:hi], a[:, lo:hi])


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def transpose_into_bands(out, a):
    """out (U, 4Hu, I)[u, q*Hu + j] = a (I, 4H)[:, q*H + u*Hu + j]: the rows of a.T for the
    gates q = i, f, g, o of band u's units, stacked (kernels.lstm_train_forward's Wh_bands);
    one band per thread."""
    U, G_band, _ = out.shape
    Hu = G_band // 4
    H = Hu * U
    for u in prange(U):
        for q in range(4):
            lo = q * H + u * Hu
            _transpose(out[u, q * Hu : (q + 1) * Hu], a[:, lo : lo + Hu])


@njit(cache=True, error_model="numpy", nogil=True)
def _transpose(out, a, add=False):
    """out (N, M) = a (M, N).T, or += with add, in tiles of 8 x 8, so that reads and writes
    both stay in a few cache lines at a time."""
    M, N = a.shape
    for i0 in range(0, M, 8):
        i1 = min(i0 + 8, M)
        for j0 in range(0, N, 8):
            for j in range(j0, min(j0 + 8, N)):
                row = out[j]
                if add:
                    for i in range(i0, i1):
                        row[i] += a[i, j]
                else:
                    for i in range(i0, i1):
                        row[i] = a[i, j]


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def matmul_rows(out, a, b, threads):
    """matmul in `threads` bands of out's rows, one per numba thread (BLAS on one thread in
    each). out (M, N) and a (M, K) C-contiguous; b may be a transposed view."""
    M = out.shape[0]
    for p in prange(threads):
        lo, hi = p * M // threads, (p + 1) * M // threads
        np.dot(a[lo:hi], b, out[lo:hi])


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def add_weight_gradient(dW, dz, x, dW_T, threads):
    """dW (I, G) += x (I, N) · dz (G, N).T: a weight gradient over the window. Computed as its
    transpose dW_T (G, I) = dz · x.T, in `threads` bands of G rows, then added in transposed:
    BLAS runs that shape 10-35% faster (the long K = N axis is contiguous in both operands).
    dW_T: work, C-contiguous."""
    G = dz.shape[0]
    for p in prange(threads):
        lo, hi = p * G // threads, (p + 1) * G // threads
        np.dot(dz[lo:hi], x.T, dW_T[lo:hi])
        _transpose(dW[:, lo:hi], dW_T[lo:hi], True)  # added in


@njit(cache=True, error_model="numpy", nogil=True)
def add_row_vector(a, v):
    """a (M, N) += v (N,) on every row (adding a bias)."""
    M, N = a.shape
    for m in range(M):
        for n in range(N):
            a[m, n] += v[n]


@njit(cache=True, error_model="numpy", nogil=True)
def add_column_vector(a, v):
    """a (M, N) += v (M,) on every column (adding a bias, feature-major)."""
    M, N = a.shape
    for m in range(M):
        row = a[m]
        vm = v[m]
        for n in range(N):
            row[n] += vm


# --------------------------------------------------------------------------------------------
# Inputs and outputs of the stack


@njit(cache=True, error_model="numpy", nogil=True)
def gather_rows(out, table, tokens):
    """out (N, D) = table[tokens]; tokens (N,) int. Embedding lookup, or one-hot times Wx."""
    N, D = out.shape
    for n in range(N):
        row = table[tokens[n]]
        for k in range(D):
            out[n, k] = row[k]


@njit(cache=True, error_model="numpy", nogil=True)
def apply_dropout(out, x, mask):
    """out = x * mask, all (P, Q, R) (mask holds 0 or 1/(1-p): inverted dropout). Any layout:
    the row-major inference pass reads the feature-major masks through a transposed view."""
    P, Q, R = out.shape
    for p in range(P):
        for q in range(Q):
            for r in range(R):
                out[p, q, r] = x[p, q, r] * mask[p, q, r]


@njit(cache=True, error_model="numpy", nogil=True)
def softmax_cross_entropy(dlogits, logits, targets):
    """Mean cross-entropy (nats) of logits (N, V) against targets (N,); its gradient goes to
    dlogits (N, V) (already divided by N). Safe for any finite logits (max subtracted)."""
    N, V = logits.shape
    total = 0.0
    for n in range(N):
        row = logits[n]
        m = row[0]
        for k in range(1, V):
            if row[k] > m:
                m = row[k]
        s = 0.0
        for k in range(V):
            e = exp(row[k] - m)
            dlogits[n, k] = e
            s += e
        total += math.log(s) + m - row[targets[n]]
        inv = 1.0 / (s * N)
        for k in range(V):
            dlogits[n, k] *= inv
        dlogits[n, targets[n]] -= 1.0 / N
    return total / N


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def softmax_cross_entropy_columns(dlogits, dbias, logits, targets, threads):
    """softmax_cross_entropy for logits stored (V, N), one column per character: the same
    mean loss and gradient (V, N), with the inner loops running along N (vectorised), in
    `threads` bands of columns, whose sums are added in a fixed order. The gradient's row
    sums, that of the bias added to every column, are added into dbias (V,) on the way."""
    V, N = logits.shape
    sums = np.zeros(threads, dtype=np.float64)
    row_sums = np.zeros((threads, V), dtype=np.float64)
    for p in prange(threads):
        lo, hi = p * N // threads, (p + 1) * N // threads
        sums[p] = _cross_entropy_band(dlogits, row_sums[p], logits, targets, lo, hi)
    for k in range(V):
        total = 0.0
        for p in range(threads):
            total += row_sums[p, k]
        dbias[k] += total
    return sums.sum() / N


@njit(cache=True, error_model="numpy", nogil=True)
def _cross_entropy_band(dlogits, row_sums, logits, targets, lo, hi):
    """The columns lo .. hi-1 of softmax_cross_entropy_columns: their gradient, its row sums
    in row_sums (V,), and their summed (not yet averaged) loss as the return value."""
    V, N = logits.shape
    m = logits[0, lo:hi].copy()  # column maxima
    for k in range(1, V):
        row = logits[k, lo:hi]
        for n in range(hi - lo):
            if row[n] > m[n]:
                m[n] = row[n]
    s = np.zeros(hi - lo, dtype=np.float64)
    for k in range(V):
        row = logits[k, lo:hi]
        drow = dlogits[k, lo:hi]
        for n in range(hi - lo):
            e = exp(row[n] - m[n])
            drow[n] = e
            s[n] += e
    total = 0.0
    for n in range(hi - lo):
        total += math.log(s[n]) + m[n] - logits[targets[lo + n], lo + n]
        s[n] = 1.0 / (s[n] * N)
    lanes = tiles.LANES  # running sums across the row, a vector at a time, that vectorise
    acc = np.empty(lanes, dtype=dlogits.dtype)
    whole = (hi - lo) // lanes * lanes
    for k in range(V):
        drow = dlogits[k, lo:hi]
        acc[:] = 0.0
        for n0 in range(0, whole, lanes):
            for i in range(lanes):
                d = drow[n0 + i] * s[n0 + i]
                drow[n0 + i] = d
                acc[i] += d
        total_k = 0.0
        for n in range(whole, hi - lo):
            drow[n] *= s[n]
            total_k += drow[n]
        for i in range(lanes):
            total_k += acc[i]
        row_sums[k] = total_k
    for n in range(lo, hi):
        dlogits[targets[n], n] -= 1.0 / N
        row_sums[targets[n]] -= 1.0 / N
    return total


@njit(cache=True, error_model="numpy", nogil=True)
def token_log_probs(out, logits, targets):
    """out (N,) = log softmax(logits)[n, targets[n]] in float64: per-character log-likelihood."""
    N, V = logits.shape
    for n in range(N):
        row = logits[n]
        m = row[0]
        for k in range(1, V):
            if row[k] > m:
                m = row[k]
        s = 0.0
        for k in range(V):
            s += math.exp(row[k] - m)
        out[n] = row[targets[n]] - m - math.log(s)


# --------------------------------------------------------------------------------------------
# Optimisation over the flat parameter buffer


@njit(cache=True, error_model="numpy", nogil=True)
def global_norm(grad):
    """L2 norm of the flat gradient buffer, accumulated in float64: in 8 running sums, one
    per position mod 8, so that the additions do not wait on each other, added at the end."""
    sums = np.zeros(8, dtype=np.float64)
    n8 = grad.size - grad.size % 8
    for k in range(0, n8, 8):
        for j in range(8):
            x = np.float64(grad[k + j])  # square in float64 too, not just the sum
            sums[j] += x * x
    for k in range(n8, grad.size):
        x = np.float64(grad[k])
        sums[0] += x * x
    return math.sqrt(sums.sum())


@njit(cache=True, error_model="numpy", nogil=True)
def clip_grad_norm(grad, max_norm):
    """Scale grad in place so its global L2 norm is at most max_norm; return the norm before."""
    norm = global_norm(grad)
    if max_norm > 0.0 and norm > max_norm:
        scale = max_norm / norm
        for k in range(grad.size):
            grad[k] *= scale
    return norm


@njit(cache=True, error_model="numpy", nogil=True)
def adam_step(theta, m, v, grad, decay_mask, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam update with bias correction (Kingma & Ba) and decoupled weight decay
    (Loshchilov & Hutter) on the flat buffers theta, m, v (P,). step counts from 1.
    decay_mask (P,) is 1 where weight decay applies (matrices) and 0 elsewhere (biases).
    The per-weight arithmetic runs in the buffers' precision (as PyTorch's does) and without
    a branch, so that it vectorises; the step's constants are worked out in float64 first."""
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    real = theta.dtype.type
    keep_m, take_m = real(beta1), real(1.0 - beta1)
    keep_v, take_v = real(beta2), real(1.0 - beta2)
    step_size = real(lr / bc1)
    inv_sqrt_bc2 = real(1.0 / math.sqrt(bc2))
    shrink = real(lr * weight_decay)
    tiny = real(eps)
    for k in range(theta.size):
        g = grad[k]
        mk = keep_m * m[k] + take_m * g
        vk = keep_v * v[k] + take_v * g * g
        m[k] = mk
        v[k] = vk
        w = theta[k]
        w -= (shrink * decay_mask[k]) * w  # decay_mask is 0 or 1
        theta[k] = w - step_size * mk / (np.sqrt(vk) * inv_sqrt_bc2 + tiny)


@njit(cache=True, error_model="numpy", nogil=True)
def average_step(average, theta, decay):
    """average (P,) = decay * average + (1 - decay) * theta: the running (exponential) average
    of the weights after each update."""
    keep = average.dtype.type(decay)
    take = average.dtype.type(1.0 - decay)
    for k in range(average.size):
        average[k] = keep * average[k] + take * theta[k]


# --------------------------------------------------------------------------------------------
# Generation
#
# At batch 1 a generated character reads every weight once and does little arithmetic with
# it, so its speed is memory bandwidth: one pass over each layer's weights, all in float32.
# Layer l reads M (I+H, 4H) = [Wx; Wh] stacked (a view: they lie side by side in the flat
# buffer) as x·Wx + h·Wh = [x; h]·M, adding rows of M scaled by [x; h] into z (4H,), which
# vectorises along the row. Layer 0 skips Wx: its input term, embed·Wx (or Wx when one-hot),
# is a row of a (V, 4H) table. The rows of M are summed in two halves, each into its own
# buffer, then added: one thread does both halves, two threads one each (generate_steps_parallel,
# each streaming its own contiguous half of M). Every z[j] sums in the same order whatever the
# batch, the vector width or the thread count, and nothing uses fastmath, so a random seed
# gives the same text on any machine with the same library versions.


@njit(cache=True, error_model="numpy", nogil=True)
def embed_projection(out, embed, Wx):
    """out (V, 4H) = embed (V, E) · Wx (E, 4H): the first layer's input term per character,
    in this section's summation order (and without BLAS, which is slow to load)."""
    V, E = embed.shape
    G = out.shape[1]
    for v in range(V):
        row = out[v]
        for j in range(G):
            row[j] = 0.0
        for e in range(E):
            x = embed[v, e]
            w = Wx[e]
            for j in range(G):
                row[j] += x * w[j]


@njit(cache=True, error_model="numpy", nogil=True)
def _row_half(K):
    """Where the rows of a (K, 4H) M split into the two halves (a multiple of 4)."""
    return K // 2 - (K // 2) % 4


@njit(cache=True, error_model="numpy", nogil=True)
def _add_rows(zp, xh, Ml, k0, k1):
    """zp (B, 4H) = xh[:, k0:k1] · Ml[k0:k1]: rows of Ml (K, 4H) scaled by xh (B, >=K), added
    four at a time, always grouped the same way. Loops run over slices from 0, so that LLVM
    sees unit strides and vectorises them."""
    B, G = zp.shape
    for r in range(B):
        zr = zp[r]
        for j in range(G):
            zr[j] = 0.0
    k4 = k1 - (k1 - k0) % 4
    for k in range(k0, k4, 4):
        w0, w1, w2, w3 = Ml[k], Ml[k + 1], Ml[k + 2], Ml[k + 3]
        for r in range(B):
            zr = zp[r]
            x0, x1, x2, x3 = xh[r, k], xh[r, k + 1], xh[r, k + 2], xh[r, k + 3]
            for j in range(G):
                zr[j] += (x0 * w0[j] + x1 * w1[j]) + (x2 * w2[j] + x3 * w3[j])
    for k in range(k4, k1):
        w0 = Ml[k]
        for r in range(B):
            zr = zp[r]
            x0 = xh[r, k]
            for j in range(G):
                zr[j] += x0 * w0[j]


@njit(cache=True, error_model="numpy", nogil=True)
def _finish_layer(h, c, z, tokens, table, bias, layer):
    """z[0] (B, 4H) = bias (+ the input table row, layer 0) + z[1] + z[2] (the two halves of
    [x; h]·M), activated; then the layer's h, c (in h, c (L, B, H)) advance one step."""
    L, B, H = h.shape
    G = 4 * H
    b = bias[layer]
    for r in range(B):
        zr = z[0, r]
        p0 = z[1, r]
        p1 = z[2, r]
        for j in range(G):
            zr[j] = b[j]
        if layer == 0:
            x = table[tokens[r]]
            for j in range(G):
                zr[j] += x[j]
        for j in range(G):
            zr[j] += p0[j]
        for j in range(G):
            zr[j] += p1[j]
        _activate_cell(h[layer, r], c[layer, r], zr, c[layer, r])


@njit(cache=True, error_model="numpy", nogil=True)
def _load_xh(xh, h, layer):
    """xh (B, >=K) = [the layer below's h; this layer's h] (layer 0: its h alone)."""
    L, B, H = h.shape
    below = 0 if layer == 0 else H  # width of the input part of xh
    for r in range(B):
        if layer > 0:
            for k in range(H):
                xh[r, k] = h[layer - 1, r, k]
        for k in range(H):
            xh[r, below + k] = h[layer, r, k]


@njit(cache=True, error_model="numpy", nogil=True)
def _head(logits, h, head_W, head_b):
    """logits (B, V) = h[L-1] (B, H) · head_W (H, V) + head_b."""
    L, B, H = h.shape
    V = logits.shape[1]
    for r in range(B):
        out = logits[r]
        top = h[L - 1, r]
        for v in range(V):
            out[v] = head_b[v]
        for k in range(H):
            hk = top[k]
            w = head_W[k]
            for v in range(V):
                out[v] += hk * w[v]


@njit(cache=True, error_model="numpy", nogil=True)
def lstm_step(logits, h, c, z, xh, tokens, table, M, bias, head_W, head_b):
    """Read one character per stream through every layer and the head; allocates nothing.

    logits (B, V) out: the scores of the next character
    h, c   (L, B, H) the state, advanced in place
    z (3, B, 4H) and xh (B, 2H): work buffers; tokens (B,) the characters read
    table (V, 4H): layer 0's input term per character; M: tuple of L arrays (I+H, 4H),
      [Wx; Wh] per layer, with I = 0 for layer 0; bias (L, 4H); head_W (H, V), head_b (V,)
    """
    L = h.shape[0]
    for layer in range(L):
        _load_xh(xh, h, layer)
        Ml = M[layer]
        K = Ml.shape[0]
        mid = _row_half(K)
        _add_rows(z[1], xh, Ml, 0, mid)
        _add_rows(z[2], xh, Ml, mid, K)
        _finish_layer(h, c, z, tokens, table, bias, layer)
    _head(logits, h, head_W, head_b)


@njit(cache=True, error_model="numpy", nogil=True)
def _ranks_later(p, a, b):
    """Whether token a ranks after token b: lower probability, or equal and a higher id."""
    return p[a] < p[b] or (p[a] == p[b] and a > b)


@njit(cache=True, error_model="numpy", nogil=True)
def _sift_down(order, p, root, end):
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and _ranks_later(p, order[child + 1], order[child]):
            child += 1
        if not _ranks_later(p, order[child], order[root]):
            return
        order[root], order[child] = order[child], order[root]
        root = child


@njit(cache=True, error_model="numpy", nogil=True)
def _rank_tokens(order, p):
    """order (V,) = token ids from most to least probable under p (V,) (ties: lower id
    first). Heapsort: in place, O(V log V), no allocation."""
    V = p.size
    for v in range(V):
        order[v] = v
    for root in range(V // 2 - 1, -1, -1):
        _sift_down(order, p, root, V)
    for end in range(V - 1, 0, -1):
        order[0], order[end] = order[end], order[0]
        _sift_down(order, p, 0, end)


@njit(cache=True, error_model="numpy", nogil=True)
def sample_tokens(out, probs, order, logits, uniforms, temperature, top_k, top_p):
    """out (B,) = one character per row of logits (B, V), drawn with uniforms (B,) in [0, 1).

    temperature 0 (or top_k 1) takes the most likely character (the lowest id on ties).
    Otherwise p ~ exp((logit - max) / temperature), computed in float64 with the maximum
    subtracted first so that no temperature overflows (every term is in [0, 1], the largest
    is 1); top_k (1..V; V = off) keeps the k most likely characters, then top_p (0 < p <= 1;
    1 = off) the fewest of those whose probability adds up to top_p of theirs.
    probs (B, V) float64 and order (V,) int are work buffers.
    """
    B, V = logits.shape
    for r in range(B):
        row = logits[r]
        best = 0
        for v in range(1, V):
            if row[v] > row[best]:
                best = v
        if temperature == 0.0 or top_k == 1:
            out[r] = best
            continue
        p = probs[r]
        m = float(row[best])
        for v in range(V):
            p[v] = math.exp((float(row[v]) - m) / temperature)  # division: T may be tiny
        if top_k < V or top_p < 1.0:
            _rank_tokens(order, p)
            keep = min(top_k, V)
            if top_p < 1.0:
                total = 0.0
                for n in range(keep):
                    total += p[order[n]]
                cum = 0.0
                for n in range(keep):
                    cum += p[order[n]]
                    if cum >= top_p * total:
                        keep = n + 1
                        break
            for n in range(keep, V):
                p[order[n]] = 0.0
        total = 0.0
        for v in range(V):
            total += p[v]
        target = uniforms[r] * total
        cum = 0.0
        pick = best  # only if rounding put target at the very end
        for v in range(V):
            cum += p[v]
            if target < cum:
                pick = v
                break
        out[r] = pick


@njit(cache=True, error_model="numpy", nogil=True)
def generate_steps(
    out, logits, h, c, z, xh, probs, order, tokens, inputs, uniforms, table, M, bias, head_W,
    head_b, temperature, top_k, top_p,
):  # fmt: skip
    """Read inputs (S,) in every stream (the seed), then write out (N, B): N characters per
    stream, each drawn from `logits` (B, V) and read in turn. On return h, c and logits are as
    after the last character read, ready for the next call. uniforms (N, B) in [0, 1): one per
    character drawn; tokens (B,) work. Other arguments as in lstm_step and sample_tokens.
    One kernel for both jobs, as each kernel calling lstm_step adds to the compile time."""
    for t in range(inputs.size):
        for r in range(tokens.size):
            tokens[r] = inputs[t]
        lstm_step(logits, h, c, z, xh, tokens, table, M, bias, head_W, head_b)
    for t in range(out.shape[0]):
        sample_tokens(out[t], probs, order, logits, uniforms[t], temperature, top_k, top_p)
        lstm_step(logits, h, c, z, xh, out[t], table, M, bias, head_W, head_b)


@njit(cache=True, error_model="numpy", parallel=True)
def generate_steps_parallel(
    out, logits, h, c, z, xh, probs, order, tokens, inputs, uniforms, table, M, bias, head_W,
    head_b, temperature, top_k, top_p,
):  # fmt: skip
    """generate_steps with the two halves of each layer's rows on two threads (numba's; they
    meet once per layer). The same arguments and, bit for bit, the same results. Worth it for
    wide models when nothing else runs on the cores: a thread the system puts to sleep holds
    the other one up at every layer."""
    L = h.shape[0]
    S = inputs.size
    for t in range(S + out.shape[0]):
        if t < S:
            for r in range(tokens.size):
                tokens[r] = inputs[t]
        else:
            sample_tokens(out[t - S], probs, order, logits, uniforms[t - S], temperature, top_k, top_p)
            for r in range(tokens.size):
                tokens[r] = out[t - S, r]
        for layer in range(L):
            _load_xh(xh, h, layer)
            Ml = M[layer]
            K = Ml.shape[0]
            mid = _row_half(K)
            for half in prange(2):
                if half == 0:
                    _add_rows(z[1], xh, Ml, 0, mid)
                else:
                    _add_rows(z[2], xh, Ml, mid, K)
            _finish_layer(h, c, z, tokens, table, bias, layer)
        _head(logits, h, head_W, head_b)


# --------------------------------------------------------------------------------------------
# Gate inspection
#
# charlstm/stream.py runs a text through the model one window at a time (B=1), the layers on
# threads of their own; charlstm/gates.py folds each window's gates into running statistics
# here, in one pass, instead of keeping every value.


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
def gate_stats_add(below, above, sums, sumsq, forget_bins, gates, left, right):
    """Add one window of one layer's gates (one stream) to running statistics.

    gates (T, 4H): activated i, f, g, o per step, as model.forward leaves them
    below, above (4H,) int: steps each gate unit spent below `left` / above `right`
    sums, sumsq (4H,) float64: running sums of the values and of their squares
    forget_bins (65536,) int: forget gates counted by the top 16 bits of float32(1 - f). Bit
      patterns of non-negative floats sort like their values, so these are logarithmic bins
      (1/128 relative width): a median half-life without storing or sorting T*H values.
    """
    T, G = gates.shape
    H = G // 4
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
        for j in range(H):
            d[j] = 1.0 - row[H + j]
        for j in range(H):
            forget_bins[bits[j] >> 16] += 1


@njit(cache=True, error_model="numpy", nogil=True)
def tanh_rows(out, x):
    """out (T, H) = tanh(x (T, H)) with the forward pass's tanh: the memory as h reads it."""
    T, H = x.shape
    for t in range(T):
        xt = x[t]
        ot = out[t]
        for j in range(H):
            ot[j] = tanh(xt[j])
