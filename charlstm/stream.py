"""One long stream (B=1) through the model, the layers pipelined on threads.

A text is read in windows. In phase p, layer l reads window p - l: layer 0 can start on the
next window while layer 1 is still on this one, so an L-layer model keeps up to L cores busy
with no lock per character. Each layer's recurrence is kernels.lstm_forward_stream (no GIL, no
BLAS); between phases the main thread does the large products (the next layer's input
projection, the head) with BLAS. Used by gate inspection, where one stream of 20,000
characters through a 2x512 model would otherwise be one core streaming 4 MB of Wh per step.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import kernels
from .model import Params

# on_layer(layer, start, stop, gates (n, 4H), c (n, H), h (n, H)); n = stop - start
LayerCallback = Callable[[int, int, int, np.ndarray, np.ndarray, np.ndarray], None]
# on_logits(start, stop, logits (n, V)): the scores of the character after each one read
LogitsCallback = Callable[[int, int, np.ndarray], None]


class _LayerBuffers:
    """Two windows of one layer: the one being computed and the one being read above."""

    def __init__(self, T: int, H: int, dtype: np.dtype):
        self.gates = np.empty((2, T, 4 * H), dtype=dtype)  # input projection, then i, f, g, o
        self.h_seq = np.empty((2, T, H), dtype=dtype)
        self.c_seq = np.empty((2, T, H), dtype=dtype)


def run_stream(
    params: Params,
    ids: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    window: int,
    on_layer: LayerCallback | None = None,
    on_logits: LogitsCallback | None = None,
) -> None:
    """Read ids (N,) in one stream from the state h, c (L, 1, H), advanced in place to the
    state after the last character; no dropout. Results arrive window by window through the
    callbacks (each window of a layer once, in order of windows; the arrays are reused after
    the call returns). The same numbers as model.forward up to float rounding."""
    config = params.config
    L, H = config.layers, config.hidden
    N = len(ids)
    if N == 0:
        return
    T = min(window, N)
    n_windows = -(-N // T)
    dtype = params.dtype
    buffers = [_LayerBuffers(T, H, dtype) for _ in range(L)]
    state_h = [h[layer, 0].copy() for layer in range(L)]  # (H,) each
    state_c = [c[layer, 0].copy() for layer in range(L)]
    Wx0 = params["lstm.0.Wx"]
    if config.embed == 0:
        input_table = Wx0  # one-hot input: row v of Wx is character v's projection
    else:
        input_table = np.empty((config.vocab_size, 4 * H), dtype=dtype)  # (V, 4H)
        kernels.matmul(input_table, params["embed"], Wx0)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    logits = np.empty((T, config.vocab_size), dtype=dtype)

    def span(w: int) -> tuple[int, int]:
        return w * T, min((w + 1) * T, N)

    def project_input(layer: int, w: int) -> None:
        start, stop = span(w)
        proj = buffers[layer].gates[w % 2, : stop - start]
        if layer == 0:
            kernels.gather_rows(proj, input_table, ids[start:stop])
        else:
            below = buffers[layer - 1].h_seq[w % 2, : stop - start]
            kernels.matmul(proj, below, params[f"lstm.{layer}.Wx"])

    def recur(layer: int, w: int) -> None:
        start, stop = span(w)
        buf, k = buffers[layer], w % 2
        n = stop - start
        kernels.lstm_forward_stream(
            buf.h_seq[k, :n], buf.c_seq[k, :n], buf.gates[k, :n],
            params[f"lstm.{layer}.Wh"], params[f"lstm.{layer}.b"], state_h[layer], state_c[layer],
        )  # fmt: skip
        state_h[layer][...] = buf.h_seq[k, n - 1]
        state_c[layer][...] = buf.c_seq[k, n - 1]

    def deliver(layer: int, w: int) -> None:
        start, stop = span(w)
        buf, k, n = buffers[layer], w % 2, stop - start
        if on_layer is not None:
            on_layer(layer, start, stop, buf.gates[k, :n], buf.c_seq[k, :n], buf.h_seq[k, :n])
        if layer == L - 1 and on_logits is not None:
            kernels.matmul(logits[:n], buf.h_seq[k, :n], params["head.W"])
            kernels.add_row_vector(logits[:n], params["head.b"])
            on_logits(start, stop, logits[:n])

    with ThreadPoolExecutor(max_workers=max(1, L - 1)) as pool:
        for phase in range(n_windows + L - 1):
            stages = [(layer, phase - layer) for layer in range(L) if 0 <= phase - layer < n_windows]
            for layer, w in stages:
                project_input(layer, w)
            # The last stage on this thread, the others on the pool; all join before the next
            # phase reads what they wrote.
            futures = [pool.submit(recur, layer, w) for layer, w in stages[:-1]]
            recur(*stages[-1])
            for future in futures:
                future.result()
            for layer, w in stages:
                deliver(layer, w)

    for layer in range(L):
        h[layer, 0] = state_h[layer]
        c[layer, 0] = state_c[layer]
