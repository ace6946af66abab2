"""Layouts and copies: step-major copies of feature-major sequences, tiled transposes, the
register tiles' packing of weights, row gathers (the embedding lookup) and masked copies
(dropout).
"""

import numpy as np
from numba import njit, prange

from . import tiles


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def to_step_major(act, proj, threads):
    """act (T, R, B)[t, k] = proj (R, T, B)[k, t]: a feature-major sequence, step-major, in
    `threads` bands of rows."""
    R = act.shape[1]
    for p in prange(threads):
        _to_step_major_rows(act, proj, p * R // threads, (p + 1) * R // threads)


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
def _to_step_major_rows_masked(dst, src, mask, lo, hi):
    """dst (T, R, B)[t, k] = src (R, T, B)[k, t] * mask (R, T, B)[k, t] for the rows lo .. hi-1:
    dropout's backward on the way to the step-major layout."""
    T, R, B = dst.shape
    for k in range(lo, hi):
        for t in range(T):
            d = dst[t, k]
            s = src[k, t]
            m = mask[k, t]
            for r in range(B):
                d[r] = s[r] * m[r]


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
    """out (N, M) = a (M, N).T, or += with add, in blocks of 8 x 8, so that reads and writes
    both stay in a few cache lines at a time. A whole block's loops have a fixed length, which
    LLVM unrolls (1.4-2.2x faster than loops to a computed bound, both builds, on a Zen 4); the
    edges take the plain one."""
    M, N = a.shape
    for i0 in range(0, M, 8):
        for j0 in range(0, N, 8):
            if i0 + 8 <= M and j0 + 8 <= N:
                for j in range(8):
                    row = out[j0 + j, i0 : i0 + 8]
                    for i in range(8):
                        if add:
                            row[i] += a[i0 + i, j0 + j]
                        else:
                            row[i] = a[i0 + i, j0 + j]
            else:
                for j in range(j0, min(j0 + 8, N)):
                    for i in range(i0, min(i0 + 8, M)):
                        if add:
                            out[j, i] += a[i, j]
                        else:
                            out[j, i] = a[i, j]


# The register tiles read W packed (P, K, R): tile p holds rows first_row(p) .. of the
# product in its R slots per k, W_packed[p, k, i] = W[first_row(p) + i, k], so that a tile
# streams its weights from one contiguous run. A product of M rows comes in the tiles of
# tiles.plan(M): full tiles of R = tiles.ROWS rows, then tails of tiles.TAIL_ROWS rows (their
# other slots zero); rows past W's own are zero too (the head pads V up to whole tiles).


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def pack_rows(out, W, rows, threads):
    """out (P, K, R) = the rows of W (M, K) in the tiles of a product of `rows` >= M rows (zero
    past M), in `threads` bands of tiles. W may be a transposed view."""
    P = out.shape[0]
    full, tails = tiles.plan(rows)
    M = W.shape[0]
    for part in prange(threads):
        _pack(out, W, full, part * P // threads, (part + 1) * P // threads, M, 0, 0, M)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def pack_bands(out, W):
    """out (U, P, K, R): rows u*Mb .. (u+1)*Mb - 1 of W (M, K), Mb = M/U, in the tiles of a
    product of Mb rows, for each band u (the backward's Wh, cut by units); one band per
    thread."""
    U, P = out.shape[:2]
    Mb = W.shape[0] // U
    full, tails = tiles.plan(Mb)
    for u in prange(U):
        _pack(out[u], W, full, 0, P, Mb, 0, u * Mb, Mb)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def pack_into_bands(out, a):
    """out (U, P, I, R): the rows of a.T (a (I, 4H)) that transpose_into_bands stacks for band
    u (gates i, f, g, o of its Hu = H/U units), in the tiles of a product of 4Hu rows; one
    band per thread."""
    U, P = out.shape[:2]
    H = a.shape[1] // 4
    Hu = H // U
    full, tails = tiles.plan(4 * Hu)
    for u in prange(U):
        _pack(out[u], a.T, full, 0, P, Hu, H, u * Hu, 4 * Hu)


@njit(cache=True, error_model="numpy", nogil=True)
def _pack(out, W, full, lo, hi, block, stride, offset, M):
    """Tiles lo .. hi-1 of out (P, K, R), `full` of them whole: product row m < M is row
    (m // block) * stride + offset + m % block of W (?, K) (block = M, stride = 0: row
    offset + m); rows past M and a tail's unused slots are zero. W may be a transposed view."""
    P, K, R = out.shape
    source = np.empty(R, dtype=np.int64)  # W's row for each slot of a tile, -1: zero
    for p in range(lo, hi):
        start = tiles.first_row(p, full)
        height = R if p < full else tiles.TAIL_ROWS
        consecutive = p < full and R == tiles.ROWS
        for i in range(R):
            m = start + i
            source[i] = (m // block) * stride + offset + m % block if i < height and m < M else -1
            consecutive = consecutive and source[i] == source[0] + i
        if consecutive:
            # A whole tile of W's rows in a run, the usual case: a loop of fixed length, 1.5-4x
            # faster than gathering through `source` (both builds, on a Zen 3).
            rows = W[source[0] : source[0] + tiles.ROWS]
            for k in range(K):
                dst = out[p, k]
                for i in range(tiles.ROWS):
                    dst[i] = rows[i, k]
            continue
        for k in range(K):
            dst = out[p, k]
            for i in range(R):
                dst[i] = W[source[i], k] if source[i] >= 0 else 0.0


# A weight gradient over a window, dW (I, 4H) = x (I, T*B) · dz (4H, T*B).T, runs on the tiles
# as its transpose dz · x.T (tiles.product_of_panels): dz, the weights of that product, read
# in place from the backward's step-major dz_steps, and x packed in panels of the tile's width
# (pack_panels, from the feature-major x).


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def pack_panels(out, x, threads):
    """out (J, K, width)[j, k, c] = x (I, K)[j*width + c, k]: x.T in panels of `width` columns,
    the last one holding the I - (J-1)*width left (its other columns not written), in
    `threads` bands of panels."""
    J = out.shape[0]
    for part in prange(threads):
        _pack_panels(out, x, part * J // threads, (part + 1) * J // threads)


@njit(cache=True, error_model="numpy", nogil=True)
def _pack_panels(out, x, lo, hi):
    """Panels lo .. hi-1 of pack_panels."""
    width = out.shape[2]
    for j in range(lo, hi):
        n = min(width, x.shape[0] - j * width)
        _transpose(out[j, :, :n], x[j * width : j * width + n])


@njit(cache=True, error_model="numpy", nogil=True)
def scatter_add_rows(out, tokens, rows):
    """out[tokens[n]] += rows[n] for rows (N, D), tokens (N,) int: gather_rows' backward."""
    N, D = rows.shape
    for n in range(N):
        dst = out[tokens[n]]
        src = rows[n]
        for k in range(D):
            dst[k] += src[k]


@njit(cache=True, error_model="numpy", nogil=True)
def gather_rows(out, table, tokens):
    """out (N, D) = table[tokens]; tokens (N,) int. Embedding lookup, or one-hot times Wx."""
    N, D = out.shape
    for n in range(N):
        row = table[tokens[n]]
        for k in range(D):
            out[n, k] = row[k]


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def dropout_masks(out, seed, threshold, scale, threads):
    """out (N,) inverted dropout masks: 0 with probability threshold / 65536, else scale, from
    16 random bits a unit: four to each SplitMix64 hash of (seed, n // 4), a counter-based
    generator whose outputs pass BigCrush, so that every thread draws its own part of one
    window's masks and the masks depend on `seed` alone; in `threads` bands."""
    N = out.size
    quads = N // 4
    for part in prange(threads):
        _mask_quads(out, seed, threshold, scale, part * quads // threads, (part + 1) * quads // threads)
    if N % 4:  # the last few units from the next hash
        tail = np.empty(4, dtype=out.dtype)
        _mask_quads(tail, seed, threshold, scale, quads, quads + 1, -4 * quads)
        out[4 * quads :] = tail[: N % 4]


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def dropout_masks_of_streams(out, seed, threshold, scale, streams, first, threads):
    """out (R, b): the columns first .. first+b-1 of dropout_masks over (R, streams), the
    masks of b of the streams, drawn alone: in data-parallel training each rank draws its
    streams' part, and stream s gets the same masks whatever the number of ranks."""
    R, b = out.shape
    zero, keep = out.dtype.type(0.0), out.dtype.type(scale)
    bound = np.uint64(threshold)
    for part in prange(threads):
        bits = np.uint64(0)
        for r in range(part * R // threads, (part + 1) * R // threads):
            for j in range(b):
                n = r * streams + first + j  # the unit's place in the masks of all streams
                lane = n % 4
                if j == 0 or lane == 0:
                    bits = _quad_bits(seed, n // 4)
                sixteen = (bits >> np.uint64(16 * lane)) & np.uint64(0xFFFF)
                out[r, j] = keep if sixteen >= bound else zero


@njit(cache=True, error_model="numpy", nogil=True)
def _mask_quads(out, seed, threshold, scale, lo, hi, offset=0):
    """out[4q + offset : 4q + offset + 4] for q in lo .. hi-1 from the hash of (seed, q)."""
    zero, keep = out.dtype.type(0.0), out.dtype.type(scale)
    bound = np.uint64(threshold)
    for q in range(lo, hi):
        bits = _quad_bits(seed, q)
        for lane in range(4):
            sixteen = (bits >> np.uint64(16 * lane)) & np.uint64(0xFFFF)
            out[4 * q + offset + lane] = keep if sixteen >= bound else zero


@njit(cache=True, error_model="numpy", nogil=True)
def _quad_bits(seed, q):
    """The 64 random bits of units 4q .. 4q+3: the hash of (seed, q)."""
    return _splitmix64(np.uint64(seed) + np.uint64(q + 1) * np.uint64(0x9E3779B97F4A7C15))


@njit(cache=True, error_model="numpy", nogil=True)
def _splitmix64(z):
    """SplitMix64's output function (Steele, Lea & Flood 2014) of a uint64."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def apply_dropout(out, x, mask, threads):
    """out = x * mask, all (P, Q, R) (mask holds 0 or 1/(1-p): inverted dropout), in `threads`
    bands of P. Any layout: the row-major inference pass and the step-major buffers read the
    feature-major masks through a transposed view."""
    P, Q, R = out.shape
    for part in prange(threads):
        for p in range(part * P // threads, (part + 1) * P // threads):
            for q in range(Q):
                for r in range(R):
                    out[p, q, r] = x[p, q, r] * mask[p, q, r]
