"""The loss: softmax cross-entropy and its gradient (row-major, and column-major for
training's feature-major logits), and per-character log-probabilities for evaluation.
"""

import math

import numpy as np
from numba import njit, prange

from .activations import exp


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
def softmax_cross_entropy_columns(dlogits, dbias, logits, targets, count, threads):
    """softmax_cross_entropy for logits stored (V, N), one column per character: the summed
    loss and its gradient (V, N) divided by `count` (N, or in data-parallel training the B·T
    of all ranks, whose shares then add up to the mean), with the inner loops running along
    N (vectorised), in `threads` bands of columns, whose sums are added in a fixed order. The
    gradient's row sums, that of the bias added to every column, are added into dbias (V,)."""
    V, N = logits.shape
    sums = np.zeros(threads, dtype=np.float64)
    row_sums = np.zeros((threads, V), dtype=np.float64)
    for p in prange(threads):
        lo, hi = p * N // threads, (p + 1) * N // threads
        sums[p] = _cross_entropy_band(dlogits, row_sums[p], logits, targets, lo, hi, count)
    for k in range(V):
        total = 0.0
        for p in range(threads):
            total += row_sums[p, k]
        dbias[k] += total
    return sums.sum() / count


@njit(cache=True, error_model="numpy", nogil=True)
def _cross_entropy_band(dlogits, row_sums, logits, targets, lo, hi, count):
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
        s[n] = 1.0 / (s[n] * count)
    lanes = 16  # running sums across the row that vectorise; 16 on every ISA: the same sums
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
        dlogits[targets[n], n] -= 1.0 / count
        row_sums[targets[n]] -= 1.0 / count
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
