"""One long stream (B=1) through the model, the layers pipelined on threads.

A text is read in windows. In phase p, layer l reads window p - l: layer 0 can start on the
next window while layer 1 is still on this one, so an L-layer model keeps up to L cores busy
with no lock per character. Each layer's recurrence is its cell's stream kernel
(kernels.lstm_forward_stream, gru_forward_stream, rnn_forward_stream: no GIL, no BLAS),
followed on the same thread by what the caller does with that window. Between phases the next
layers' input projections, large products, are split by rows over the same threads,
BLAS running on one thread each. Used by gate inspection, where one stream of 20,000
characters through a 2x512 model would otherwise be one core streaming 4 MB of Wh per step.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import blas_threads, kernels
from .model import CELL_GATES, Params

# on_layer(layer, start, stop, gates (n, nH), c (n, H), h (n, H)); n = stop - start, the gates
# are the cell's (LSTM i, f, g, o; GRU r, z, n; none for a plain RNN), c is (n, 0) but for an LSTM
LayerCallback = Callable[[int, int, int, np.ndarray, np.ndarray, np.ndarray], None]
# on_logits(start, stop, logits (n, V)): the scores of the character after each one read
LogitsCallback = Callable[[int, int, np.ndarray], None]


class _LayerBuffers:
    """Two windows of one layer: the one being computed and the one being read above."""

    def __init__(self, T: int, H: int, n_gates: int, has_memory: bool, dtype: np.dtype):
        self.gates = np.empty((2, T, n_gates * H), dtype=dtype)  # input projection, then the gates
        self.h_seq = np.empty((2, T, H), dtype=dtype)  # the RNN's input projection, then h
        self.c_seq = np.empty((2, T, H if has_memory else 0), dtype=dtype)


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
    state after the last character (c stays as it is but for an LSTM); no dropout. The same
    numbers as model.forward up to float rounding.

    Results arrive window by window through the callbacks: each layer's windows in order, but
    different layers at once, on different threads (so a callback touches only what belongs to
    its layer); on_logits on the top layer's thread after its on_layer. The arrays are reused
    once the call returns."""
    config = params.config
    L, H = config.layers, config.hidden
    N = len(ids)
    if N == 0:
        return
    T = min(window, N)
    n_windows = -(-N // T)
    dtype = params.dtype
    cell = config.cell
    lstm = cell == "lstm"
    n_gates = len(CELL_GATES[cell])
    buffers = [_LayerBuffers(T, H, n_gates, lstm, dtype) for _ in range(L)]
    state_h = [h[layer, 0].copy() for layer in range(L)]  # (H,) each
    state_c = [c[layer, 0].copy() for layer in range(L)]
    Wx0 = params[f"{cell}.0.Wx"]
    if config.embed == 0:
        input_table = Wx0  # one-hot input: row v of Wx is character v's projection
    else:
        input_table = np.empty((config.vocab_size, Wx0.shape[1]), dtype=dtype)  # (V, G)
        kernels.matmul(input_table, params["embed"], Wx0)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    logits = np.empty((T, config.vocab_size), dtype=dtype)

    def span(w: int) -> tuple[int, int]:
        return w * T, min((w + 1) * T, N)

    def project_rows(layer: int, w: int, a: int, b: int) -> None:
        """Rows a..b-1 of the input projection of layer `layer` (>= 1) for window w."""
        k = w % 2
        below = buffers[layer - 1].h_seq[k, a:b]
        kernels.matmul(projection(buffers[layer], k)[a:b], below, params[f"{cell}.{layer}.Wx"])

    def projection(buf: _LayerBuffers, k: int) -> np.ndarray:
        """Where window slot k's input projection goes: the gates, or h for a plain RNN."""
        return buf.h_seq[k] if n_gates == 0 else buf.gates[k]

    def stage(layer: int, w: int) -> None:
        start, stop = span(w)
        buf, k, n = buffers[layer], w % 2, stop - start
        if layer == 0:
            kernels.gather_rows(projection(buf, k)[:n], input_table, ids[start:stop])
        name = f"{cell}.{layer}"
        if lstm:
            kernels.lstm_forward_stream(
                buf.h_seq[k, :n], buf.c_seq[k, :n], buf.gates[k, :n],
                params[f"{name}.Wh"], params[f"{name}.b"], state_h[layer], state_c[layer],
            )  # fmt: skip
            state_c[layer][...] = buf.c_seq[k, n - 1]
        elif cell == "gru":
            kernels.gru_forward_stream(
                buf.h_seq[k, :n], buf.gates[k, :n], params[f"{name}.Wh"],
                params[f"{name}.bx"], params[f"{name}.bh"], state_h[layer],
            )  # fmt: skip
        else:
            kernels.rnn_forward_stream(
                buf.h_seq[k, :n], params[f"{name}.Wh"], params[f"{name}.b"], state_h[layer]
            )
        state_h[layer][...] = buf.h_seq[k, n - 1]
        if on_layer is not None:
            on_layer(layer, start, stop, buf.gates[k, :n], buf.c_seq[k, :n], buf.h_seq[k, :n])
        if layer == L - 1 and on_logits is not None:
            kernels.matmul(logits[:n], buf.h_seq[k, :n], params["head.W"])
            kernels.add_row_vector(logits[:n], params["head.b"])
            on_logits(start, stop, logits[:n])

    def run_all(pool: ThreadPoolExecutor, calls: list[tuple]) -> None:
        """Each call on its own thread (the last on this one); wait for all, raise the first error."""
        futures = [pool.submit(*call) for call in calls[:-1]]
        error = None
        try:
            calls[-1][0](*calls[-1][1:])
        except BaseException as exc:  # still join the others before raising
            error = exc
        for future in futures:
            try:
                future.result()
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    workers = max(1, L - 1)
    with blas_threads.limited_to(1), ThreadPoolExecutor(max_workers=workers) as pool:
        for phase in range(n_windows + L - 1):
            stages = [(layer, phase - layer) for layer in range(L) if 0 <= phase - layer < n_windows]
            run_all(pool, [(stage, layer, w) for layer, w in stages])
            # The windows the layers above read next phase: split by rows over the threads.
            projections = []
            for layer in range(1, L):
                w = phase + 1 - layer
                if 0 <= w < n_windows:
                    start, stop = span(w)
                    cuts = np.linspace(0, stop - start, workers + 2).astype(int)
                    pieces = zip(cuts[:-1], cuts[1:], strict=True)
                    projections += [(project_rows, layer, w, a, b) for a, b in pieces if b > a]
            if projections:
                run_all(pool, projections)

    for layer in range(L):
        h[layer, 0] = state_h[layer]
        c[layer, 0] = state_c[layer]
