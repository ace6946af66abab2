"""Generation at small batch: one character per stream through every layer and the head, and
drawing the next character (temperature, top-k, top-p).

At batch 1 a generated character reads every weight once and does little arithmetic with it, so
its speed is memory bandwidth: one pass over each layer's weights, all in float32. Layer l reads
M (I+H, 4H) = [Wx; Wh] stacked (a view: they lie side by side in the flat buffer) as x·Wx + h·Wh
= [x; h]·M, adding rows of M scaled by [x; h] into z (4H,), which vectorises along the row.
Layer 0 skips Wx: its input term, embed·Wx (or Wx when one-hot), is a row of a (V, 4H) table.
The GRU and the plain RNN step the same way (G = 3H or H columns instead of 4H; the GRU splits M
between Wx and Wh, as its r scales h·Wh alone). The rows of M are summed in two halves, each
into its own buffer, then added: one thread does both halves, two threads one each
(generate_steps_parallel, each streaming its own contiguous half of M). Every z[j] sums in the
same order whatever the batch, the vector width or the thread count, and nothing uses fastmath,
so a random seed gives the same text on any machine with the same library versions.
"""

import math

from numba import njit, prange

from .activations import sigmoid, tanh
from .lstm import _activate_cell

# The cell a generation kernel steps (its `cell` argument): model.CELLS' order
LSTM, GRU, RNN = 0, 1, 2


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
def _split(cell, layer, K, H):
    """Where layer `layer`'s M (K rows) splits: in two halves, but for a GRU above the first
    layer between Wx and Wh, as r scales h·Wh_n alone."""
    if cell == GRU and layer > 0:
        return H
    return _row_half(K)


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
def _finish_gru_layer(h, z, tokens, table, bias, layer):
    """The GRU's _finish_layer: x·Wx is the table row (layer 0) or z[1], h·Wh is z[1] + z[2]
    (layer 0) or z[2]; bias (L, 6H) holds [bx; bh] per layer. h (L, B, H) advances a step."""
    L, B, H = h.shape
    G = 3 * H
    bx = bias[layer, :G]
    bh = bias[layer, G:]
    for r in range(B):
        hw = z[0, r]  # h·Wh + bh
        p0 = z[1, r]
        p1 = z[2, r]
        if layer == 0:
            x = table[tokens[r]]
            for j in range(G):
                hw[j] = (p0[j] + p1[j]) + bh[j]
        else:
            x = p0
            for j in range(G):
                hw[j] = p1[j] + bh[j]
        for j in range(2 * H):  # r, z
            hw[j] = sigmoid(x[j] + bx[j] + hw[j])
        hr = h[layer, r]
        for j in range(H):
            n = tanh(x[2 * H + j] + bx[2 * H + j] + hw[j] * hw[2 * H + j])
            u = hw[H + j]
            hr[j] = (1.0 - u) * n + u * hr[j]


@njit(cache=True, error_model="numpy", nogil=True)
def _finish_rnn_layer(h, z, tokens, table, bias, layer):
    """The plain RNN's _finish_layer: h = tanh(b + x·Wx + h·Wh), z[0] as work."""
    L, B, H = h.shape
    b = bias[layer]
    for r in range(B):
        zr = z[0, r]
        p0 = z[1, r]
        p1 = z[2, r]
        for j in range(H):
            zr[j] = b[j]
        if layer == 0:
            x = table[tokens[r]]
            for j in range(H):
                zr[j] += x[j]
        for j in range(H):
            zr[j] += p0[j]
        hr = h[layer, r]
        for j in range(H):
            hr[j] = tanh(zr[j] + p1[j])


@njit(cache=True, error_model="numpy", nogil=True)
def _finish(cell, h, c, z, tokens, table, bias, layer):
    """The cell's _finish_layer."""
    if cell == GRU:
        _finish_gru_layer(h, z, tokens, table, bias, layer)
    elif cell == RNN:
        _finish_rnn_layer(h, z, tokens, table, bias, layer)
    else:
        _finish_layer(h, c, z, tokens, table, bias, layer)


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
def model_step(logits, h, c, z, xh, tokens, table, M, bias, head_W, head_b, cell=LSTM):
    """Read one character per stream through every layer and the head; allocates nothing.

    logits (B, V) out: the scores of the next character
    h, c   (L, B, H) the state, advanced in place (c: the LSTM's; other cells leave it)
    z (3, B, G) and xh (B, 2H): work buffers; tokens (B,) the characters read
    table (V, G): layer 0's input term per character; M: tuple of L arrays (I+H, G),
      [Wx; Wh] per layer, with I = 0 for layer 0; bias (L, G), the GRU's (L, 2G) [bx; bh];
      head_W (H, V), head_b (V,); cell: LSTM, GRU or RNN (G = 4H, 3H, H)
    """
    L, _, H = h.shape
    for layer in range(L):
        _load_xh(xh, h, layer)
        Ml = M[layer]
        K = Ml.shape[0]
        mid = _split(cell, layer, K, H)
        _add_rows(z[1], xh, Ml, 0, mid)
        _add_rows(z[2], xh, Ml, mid, K)
        _finish(cell, h, c, z, tokens, table, bias, layer)
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
    head_b, temperature, top_k, top_p, cell,
):  # fmt: skip
    """Read inputs (S,) in every stream (the seed), then write out (N, B): N characters per
    stream, each drawn from `logits` (B, V) and read in turn. On return h, c and logits are as
    after the last character read, ready for the next call. uniforms (N, B) in [0, 1): one per
    character drawn; tokens (B,) work. Other arguments as in model_step and sample_tokens.
    One kernel for both jobs, as each kernel calling model_step adds to the compile time."""
    for t in range(inputs.size):
        for r in range(tokens.size):
            tokens[r] = inputs[t]
        model_step(logits, h, c, z, xh, tokens, table, M, bias, head_W, head_b, cell)
    for t in range(out.shape[0]):
        sample_tokens(out[t], probs, order, logits, uniforms[t], temperature, top_k, top_p)
        model_step(logits, h, c, z, xh, out[t], table, M, bias, head_W, head_b, cell)


@njit(cache=True, error_model="numpy", parallel=True)
def generate_steps_parallel(
    out, logits, h, c, z, xh, probs, order, tokens, inputs, uniforms, table, M, bias, head_W,
    head_b, temperature, top_k, top_p, cell,
):  # fmt: skip
    """generate_steps with the two halves of each layer's rows on two threads (numba's; they
    meet once per layer). The same arguments and, bit for bit, the same results. Worth it for
    wide models when nothing else runs on the cores: a thread the system puts to sleep holds
    the other one up at every layer."""
    L, _, H = h.shape
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
            mid = _split(cell, layer, K, H)
            for half in prange(2):
                if half == 0:
                    _add_rows(z[1], xh, Ml, 0, mid)
                else:
                    _add_rows(z[2], xh, Ml, mid, K)
            _finish(cell, h, c, z, tokens, table, bias, layer)
        _head(logits, h, head_W, head_b)
