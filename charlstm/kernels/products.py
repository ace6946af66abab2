"""Matrix products: BLAS's (through numba: mixing in NumPy's own BLAS would start a second
thread pool whose spinning threads fight this one for the cores), split into bands of rows
or columns for numba's threads, and the register tiles' (charlstm.kernels.tiles).
"""

import numpy as np
from numba import njit, prange

from . import tiles
from .layouts import _transpose


@njit(cache=True, error_model="numpy", nogil=True)
def matmul(out, a, b):
    """out (M, N) = a (M, K) · b (K, N); a and b may be transposed views."""
    np.dot(a, b, out)


@njit(cache=True, error_model="numpy", nogil=True)
def matmul_add(out, a, b):
    """out (M, N) += a (M, K) · b (K, N)."""
    out += np.dot(a, b)


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


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def add_weight_gradient_rows(dW, x, d, parts, threads):
    """dW (I, G) += x (N, I).T · d (N, G): a weight gradient over a batch-major window
    (charlstm.cells), in `threads` bands of the N rows, each its own partial product in
    parts (>= threads, >= I*G) work, then added up in band order (the same bits for the
    same thread count). x and d C-contiguous."""
    N = x.shape[0]
    rows, G = dW.shape
    for p in prange(threads):
        lo, hi = p * N // threads, (p + 1) * N // threads
        np.dot(x[lo:hi].T, d[lo:hi], parts[p, : rows * G].reshape((rows, G)))
    for i in prange(rows):
        out = dW[i]
        for p in range(threads):
            part = parts[p, i * G : (i + 1) * G]
            for g in range(G):
                out[g] += part[g]


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


@njit(cache=True, error_model="numpy", nogil=True)
def step_product(out, W, W_packed, x):
    """out (M, B) = W (M, K) · x (K, B), the product of one recurrent step: on the register
    tiles (charlstm.kernels.tiles) from W_packed (P, K, ROWS) when it holds the weights (see
    layouts.pack_*; float32, M in whole tiles, B in whole vectors, all C-contiguous), else
    BLAS on W."""
    if W_packed.shape[0] == 0:
        np.dot(W, x, out)
    else:
        tiles.product(out, W_packed, x)


@njit(cache=True, error_model="numpy", nogil=True)
def step_product_rows(out, work, W, W_packed, x_T):
    """out (B, M) = (W (M, K) · x_T (K, B)).T: step_product, feature-major as the tiles
    compute it, into work (M, B), then turned batch-major for the GRU's and RNN's gate loops."""
    step_product(work, W, W_packed, x_T)
    _transpose(out, work)


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def tiled_matmul(out, W_packed, x, threads):
    """out (M, N) = W (M, K) · x (K, N) on the register tiles, W packed as for step_product
    (M in whole tiles: pad W with zero rows); N in whole vectors, cut into `threads` bands of
    columns, one per numba thread. For the head's products, where BLAS runs at 70-87 GFLOP/s
    on AVX-512 (V = 65 rows, or K = 65) and the tiles at 95-100."""
    vectors = out.shape[1] // tiles.LANES
    for p in prange(threads):
        lo = p * vectors // threads * tiles.LANES
        hi = (p + 1) * vectors // threads * tiles.LANES
        tiles.product(out[:, lo:hi], W_packed, x[:, lo:hi])


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def tiled_steps_product(out, W_packed, x, threads):
    """out (T, M, B)[t] = W (M, K) · x (T, K, B)[t] for every step t: a window-wide product in
    the step kernels' step-major layout, on the register tiles from W packed as for
    step_product (pack_rows). Each x[t] is one contiguous block, in cache while every tile
    of a band reads it (feature-major, rows T*B apart, it does not stay there). In `threads`
    bands of whole tiles (_band_of_tiles), one per numba thread."""
    T, M, _ = out.shape
    for p in prange(threads):
        first, last, lo, hi = _band_of_tiles(p, threads, M)
        for t in range(T):
            tiles.product(out[t, lo:hi], W_packed[first:last], x[t])


@njit(cache=True, error_model="numpy", nogil=True, parallel=True)
def add_tiled_weight_gradient(dW, dz_steps, x_panels, dW_T, threads):
    """dW (I, G) += x (I, K) · dz (G, K).T: a weight gradient over a window (K = T*B) on the
    register tiles, as its transpose dW_T (G, I) = dz · x.T (tiles.product_of_panels), then
    added in transposed. dz step-major, dz_steps (T, G, B) as the backward leaves it (read in
    place), x in panels (J, K, tiles.COLUMNS) (layouts.pack_panels). In `threads` bands of
    whole tiles of G rows, one per numba thread. dW_T: work (G, I)."""
    G = dW_T.shape[0]
    for p in prange(threads):
        first, last, lo, hi = _band_of_tiles(p, threads, G)
        tiles.product_of_panels(dW_T, dz_steps, x_panels, first, last)
        _transpose(dW[:, lo:hi], dW_T[lo:hi], True)


@njit(cache=True, error_model="numpy", nogil=True)
def _band_of_tiles(p, threads, M):
    """Band p of `threads` over the tiles of a product of M rows (tiles.plan): (first, last)
    its tiles, (lo, hi) its rows; whole tiles split evenly, the tail tiles in the last band."""
    full, tails = tiles.plan(M)
    first, last = p * full // threads, (p + 1) * full // threads
    if p < threads - 1:
        return first, last, first * tiles.ROWS, last * tiles.ROWS
    return first, full + tails, first * tiles.ROWS, M
