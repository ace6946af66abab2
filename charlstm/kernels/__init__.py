"""Every Numba-compiled kernel of charlstm, by topic: activations, lstm (the layer's forward and
backward), gru and rnn (the other cells' layers), layouts (copies, transposes, the tiles'
packing), products (BLAS and the register tiles), loss, optimizer, sampling, inspection; tiles
(the register tiles and their per-ISA geometry) and spin (where threads meet) hold the LLVM
intrinsics they build on.

Conventions (shared with the rest of the package):
  B batch, T time, V vocabulary, E embedding, H hidden, L layers, I input width of a layer.
  Gates lie along the 4H axis in the order i, f, g, o (PyTorch's); the GRU's r, z, n along 3H.
  Sequences are time-major.
Kernels take arrays and plain numbers only (no globals, no function arguments), never check
shapes (the Python wrappers do) and have no fixed signature, so one kernel serves float64
(gradient checks) and float32 (training). Outputs come first, then inputs, then sizes.
Backward kernels *add* into gradient buffers; the caller zeroes them.

The public kernels are imported here, so callers write `kernels.adam_step`. Importing them
drops numba's cached kernels when any source of the package changed (fresh_cache).
"""

from pathlib import Path

from . import fresh_cache
from .activations import exp, sigmoid, tanh
from .gru import gru_backward, gru_forward
from .inspection import gate_stats_add, gru_forward_stream, lstm_forward_stream, rnn_forward_stream, tanh_rows
from .layouts import (
    apply_dropout,
    dropout_masks,
    dropout_masks_of_streams,
    gather_rows,
    pack_bands,
    pack_into_bands,
    pack_panels,
    pack_rows,
    scatter_add_rows,
    to_step_major,
    transpose_into,
    transpose_into_bands,
)
from .loss import softmax_cross_entropy, softmax_cross_entropy_columns, token_log_probs
from .lstm import lstm_forward, lstm_train_backward, lstm_train_forward
from .optimizer import adam_step, average_step, clip_grad_norm, global_norm
from .products import (
    add_column_vector,
    add_row_vector,
    add_tiled_weight_gradient,
    add_weight_gradient,
    add_weight_gradient_rows,
    matmul,
    matmul_add,
    matmul_rows,
    step_product,
    tiled_matmul,
    tiled_steps_product,
)
from .rnn import rnn_backward, rnn_forward
from .sampling import embed_projection, generate_steps, generate_steps_parallel, model_step, sample_tokens

_cache = fresh_cache.cache_directory(lstm_train_forward)
if _cache is not None:
    fresh_cache.drop_if_sources_changed(_cache, fresh_cache.sources_digest(Path(__file__).parent))

__all__ = [
    "adam_step", "add_column_vector", "add_row_vector", "add_tiled_weight_gradient", "add_weight_gradient",
    "add_weight_gradient_rows", "apply_dropout", "average_step", "clip_grad_norm", "dropout_masks",
    "dropout_masks_of_streams", "embed_projection", "exp", "gate_stats_add", "gather_rows",
    "generate_steps", "generate_steps_parallel", "global_norm", "gru_backward", "gru_forward",
    "gru_forward_stream", "lstm_forward", "lstm_forward_stream", "lstm_train_backward",
    "lstm_train_forward", "matmul", "matmul_add", "matmul_rows", "model_step", "pack_bands",
    "pack_into_bands", "pack_panels", "pack_rows", "rnn_backward", "rnn_forward",
    "rnn_forward_stream",
    "sample_tokens", "scatter_add_rows", "sigmoid", "softmax_cross_entropy",
    "softmax_cross_entropy_columns", "step_product", "tanh", "tanh_rows", "tiled_matmul",
    "tiled_steps_product", "to_step_major", "token_log_probs", "transpose_into", "transpose_into_bands",
]  # fmt: skip
