"""Tests for the engine (charlstm.model driving charlstm.kernels).

The model is checked against the plain NumPy reference in tests/reference.py (forward, stored
gates and state, gradients), against central finite differences on tiny shapes, and against
itself split into windows with carried state. The loss, clipping and Adam kernels are checked
against their textbook formulas written out here. float64 comparisons are tight; float32 goes
through a rational tanh/sigmoid approximation (error ~4e-7) and a polynomial exp (2 ulps), so
its tolerances are looser.
"""

import contextlib
import dataclasses
from types import SimpleNamespace

import numba
import numpy as np
import pytest
import reference

from charlstm import kernels, model
from charlstm.kernels import tiles
from charlstm.model import ModelConfig, Params, Workspace, forward, init_params, loss_and_grad

# Small shapes for reference comparisons; tiny ones for element-by-element finite differences.
SMALL = {
    "L1-onehot": ModelConfig(vocab_size=7, layers=1, hidden=5, embed=0),
    "L1-embed": ModelConfig(vocab_size=7, layers=1, hidden=5, embed=4),
    "L2-onehot": ModelConfig(vocab_size=7, layers=2, hidden=5, embed=0),
    "L2-embed": ModelConfig(vocab_size=7, layers=2, hidden=5, embed=4),
    "L2-embed-dropout": ModelConfig(vocab_size=7, layers=2, hidden=5, embed=4, dropout=0.3),
}
TINY = {
    "onehot": ModelConfig(vocab_size=5, layers=2, hidden=3, embed=0),
    "embed": ModelConfig(vocab_size=5, layers=2, hidden=3, embed=3),
    "onehot-dropout": ModelConfig(vocab_size=5, layers=2, hidden=3, embed=0, dropout=0.5),
    "embed-dropout": ModelConfig(vocab_size=5, layers=2, hidden=3, embed=3, dropout=0.5),
}
DROPOUT_SEED = 1234  # a fresh np.random.default_rng(DROPOUT_SEED) per call fixes the masks


def make_case(config, T, B, seed):
    """float64 parameters, random inputs and targets (T, B), a random non-zero state (L, B, H)."""
    rng = np.random.default_rng(seed)
    params = init_params(config, rng, np.float64)
    inputs = rng.integers(0, config.vocab_size, (T, B))
    targets = rng.integers(0, config.vocab_size, (T, B))
    shape = (config.layers, B, config.hidden)
    h0 = rng.uniform(-0.9, 0.9, shape)  # h lies in (-1, 1)
    c0 = rng.normal(0.0, 1.0, shape)
    return params, inputs, targets, h0, c0


def as_weights(params):
    """The engine's parameters as the reference's float64 dict (copies)."""
    return {name: params[name].astype(np.float64) for name in params.names()}


def dropout_rng(config):
    return np.random.default_rng(DROPOUT_SEED) if config.dropout > 0 else None


def run_forward(params, inputs, h0, c0):
    """Engine forward from copies of h0, c0. Returns logits (T*B, V), final h, c and the
    workspace (its dropout masks are drawn from a fresh generator seeded DROPOUT_SEED)."""
    T, B = inputs.shape
    ws = Workspace(params.config, T, B, params.dtype)
    h = h0.astype(params.dtype)
    c = c0.astype(params.dtype)
    logits = forward(params, inputs, h, c, ws, dropout_rng(params.config)).copy()
    return logits, h, c, ws


def run_loss_and_grad(params, inputs, targets, h0, c0, bands=1):
    """Engine loss and gradients (a new Params) from copies of h0, c0; masks as run_forward.
    bands: how many bands of units the training kernels run side by side."""
    T, B = inputs.shape
    ws = Workspace(params.config, T, B, params.dtype, bands=bands)
    grads = Params.zeros(params.config, params.dtype)
    h = h0.astype(params.dtype)
    c = c0.astype(params.dtype)
    loss = loss_and_grad(params, grads, inputs, targets, h, c, ws, dropout_rng(params.config))
    return loss, grads, ws


def reference_masks(ws):
    """The dropout masks the engine drew, for the reference (None without dropout)."""
    return ws.masks.astype(np.float64) if ws.dropout_on else None


def relative_error(numeric, analytic):
    """max |num - ana| / max(|num| + |ana|) over one tensor (0 when both are all zero)."""
    scale = np.max(np.abs(numeric) + np.abs(analytic))
    return np.max(np.abs(numeric - analytic)) / scale if scale > 0 else 0.0


def numeric_gradient(loss_fn, flat, eps=1e-5):
    """Central differences of loss_fn() w.r.t. every element of flat (perturbed in place)."""
    grad = np.zeros_like(flat)
    for k in range(flat.size):
        saved = flat[k]
        flat[k] = saved + eps
        up = loss_fn()
        flat[k] = saved - eps
        down = loss_fn()
        flat[k] = saved
        grad[k] = (up - down) / (2 * eps)
    return grad


# --------------------------------------------------------------------------------------------
# Forward against the reference


@pytest.mark.parametrize("config", SMALL.values(), ids=SMALL.keys())
def test_forward_matches_reference(config):
    T, B, L = 6, 3, config.layers
    params, inputs, _, h0, c0 = make_case(config, T, B, seed=1)
    logits, h, c, ws = run_forward(params, inputs, h0, c0)
    ref = reference.forward(as_weights(params), inputs, h0, c0, reference_masks(ws))

    V = config.vocab_size
    np.testing.assert_allclose(logits, ref["logits"].reshape(T * B, V), rtol=0, atol=1e-10)
    np.testing.assert_allclose(h, ref["h"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(c, ref["c"], rtol=0, atol=1e-10)
    for layer in range(L):
        rec = ref["layers"][layer]
        gates = np.concatenate([rec["i"], rec["f"], rec["g"], rec["o"]], axis=-1)  # (T, B, 4H)
        np.testing.assert_allclose(ws.gates[layer], gates, rtol=0, atol=1e-10)
        np.testing.assert_allclose(ws.c_seq[layer], rec["c"], rtol=0, atol=1e-10)
        np.testing.assert_allclose(ws.h_seq[layer], rec["h"], rtol=0, atol=1e-10)


def test_dropout_masks_are_inverted_dropout():
    config = SMALL["L2-embed-dropout"]
    params, inputs, _, h0, c0 = make_case(config, 6, 3, seed=2)
    _, _, _, ws = run_forward(params, inputs, h0, c0)
    assert ws.dropout_on
    p = config.dropout
    values = np.unique(ws.masks)
    np.testing.assert_allclose(values, [0.0, 1.0 / (1.0 - p)], rtol=1e-12)
    assert abs(np.mean(ws.masks == 0) - p) < 0.15  # 180 draws
    # Same generator state, same masks: what the finite-difference checks rely on.
    _, _, _, ws_again = run_forward(params, inputs, h0, c0)
    assert np.array_equal(ws.masks, ws_again.masks)
    # Without a generator (evaluation) there is no dropout at all.
    logits_eval = forward(params, inputs, h0.copy(), c0.copy(), Workspace(config, 6, 3, np.float64))
    ref = reference.forward(as_weights(params), inputs, h0, c0)
    np.testing.assert_allclose(logits_eval, ref["logits"].reshape(18, -1), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Gradients


@pytest.mark.parametrize("config", SMALL.values(), ids=SMALL.keys())
def test_gradients_match_reference(config):
    T, B = 6, 3
    params, inputs, targets, h0, c0 = make_case(config, T, B, seed=3)
    loss, grads, ws = run_loss_and_grad(params, inputs, targets, h0, c0)
    ref_loss, ref_grads = reference.loss_and_grad(
        as_weights(params), inputs, targets, h0, c0, reference_masks(ws)
    )
    assert abs(loss - ref_loss) <= 1e-12
    assert set(grads.names()) == set(ref_grads)
    for name in grads.names():
        assert np.any(ref_grads[name] != 0), name
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0, atol=1e-10, err_msg=name)


BANDED = {
    "onehot": ModelConfig(vocab_size=7, layers=2, hidden=6, embed=0),
    "embed-dropout": ModelConfig(vocab_size=7, layers=2, hidden=6, embed=4, dropout=0.3),
}


def train_once(config, bands, seed=14):
    """loss_and_grad on a 6x4 window: (loss, grads, h, c, ws) and the reference's
    (loss, grads, forward record) for the same weights, state and dropout masks."""
    T, B = 6, 4
    params, inputs, targets, h0, c0 = make_case(config, T, B, seed=seed)
    ws = Workspace(config, T, B, np.float64, bands=bands)
    grads = Params.zeros(config, np.float64)
    h, c = h0.copy(), c0.copy()
    loss = loss_and_grad(params, grads, inputs, targets, h, c, ws, dropout_rng(config))
    masks = reference_masks(ws)
    ref_loss, ref_grads = reference.loss_and_grad(as_weights(params), inputs, targets, h0, c0, masks)
    ref = reference.forward(as_weights(params), inputs, h0, c0, masks)
    return (loss, grads, h, c, ws), (ref_loss, ref_grads, ref)


@pytest.mark.parametrize("bands", [2, 3, 6])
@pytest.mark.parametrize("config", BANDED.values(), ids=BANDED.keys())
def test_units_in_bands_train_like_the_reference(config, bands):
    """The units cut into bands (one per thread when training): the same loss, every gradient,
    the logits and the state carried out as the reference. More bands than threads (3, 6 on
    two) make the kernels fall back to one thread doing every band."""
    (loss, grads, h, c, ws), (ref_loss, ref_grads, ref) = train_once(config, bands)
    T, B = ws.steps, ws.batch
    assert abs(loss - ref_loss) <= 1e-12
    for name in grads.names():
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0, atol=1e-10, err_msg=name)
    np.testing.assert_allclose(ws.logits, ref["logits"].reshape(T * B, -1), rtol=0, atol=1e-10)
    np.testing.assert_allclose(h, ref["h"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(c, ref["c"], rtol=0, atol=1e-10)


@contextlib.contextmanager
def numba_threads(threads):
    """numba's parallel kernels on `threads` threads inside the block."""
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(before)


def run_band_kernels(threads, tiled=False, seed=21, bands=2, coupled=False, dropout=None):
    """lstm_train_forward then lstm_train_backward on random inputs, with numba on `threads`
    threads: (every output, how the forward's team met, how the backward's did); the latter is
    meeting[0]: the number of members that joined, or negative if one member claimed all the
    work (spin.join_team). float64 through BLAS, or (tiled) float32 on the register tiles.
    The input projection is looked up, as for a first layer; or (coupled, tiled) a layer above
    the first's: x_t·Wx and the gradient passed down, Wx·dz_t, on the tiles in the steps.
    dropout: "fused", masks (0 or 2) given to both kernels; "beforehand", the same masks'
    backward applied to dh by the caller and none given; the outputs then end with x_drop
    (fused) and h_steps as the forward left it."""
    T, B, H, dtype = (5, 16, 16, np.float32) if tiled else (5, 3, 6, np.float64)
    rng = np.random.default_rng(seed)
    G = 4 * H

    def normal(*shape):
        return rng.normal(size=shape).astype(dtype)

    Wh = normal(H, G) / dtype(np.sqrt(H))
    b, h0, c0, act, dh_seq = normal(G), normal(H, B), normal(H, B), normal(T, G, B), normal(H, T, B)
    V = 4  # the input projection looked up, as for a first layer
    table_T, dtable_T = normal(G, V), np.zeros((G, V), dtype)
    tokens = rng.integers(0, V, 0 if coupled else T * B)
    x_steps, dx_steps = normal(T, H if coupled else 0, B), np.empty((T, H if coupled else 0, B), dtype)
    c_steps, h_steps = np.empty((T, H, B), dtype), np.empty((T, H, B), dtype)
    h_seq = np.empty((H, T, B), dtype)
    dz, db, dz_steps = np.empty((G, T, B), dtype), np.zeros(G, dtype), np.empty((T, G, B), dtype)
    dWh, dWh_T = np.zeros((H, G), dtype), np.empty((G, H), dtype)
    # the state before each step: for dWh in the backward's steps when tiled, else for BLAS
    h_prev = np.empty((0 if tiled else H, T, B), dtype)
    h_prev_rows = np.empty((T if tiled else 0, B, H), dtype)
    # the weights as model._prepare_forward_weights and _train_backward lay them out
    R = tiles.ROWS
    weights = SimpleNamespace(
        Wh_bands=np.empty((bands, 0 if tiled else G // bands, H), dtype),
        Wh_packed=np.empty((bands, tiles.tiles_of(G // bands) if tiled else 0, H, R), dtype),
    )
    model._prepare_forward_weights(weights, Wh)
    Wh_rows_packed = np.empty((bands, tiles.tiles_of(H // bands) if tiled else 0, G, R), dtype)
    if tiled:
        kernels.pack_bands(Wh_rows_packed, Wh)
    Wx = normal(H, G) / dtype(np.sqrt(H))  # coupled: packed as model._train_forward/_backward do
    Wx_packed = np.empty((bands, tiles.tiles_of(G // bands) if coupled else 0, H, R), dtype)
    Wx_rows_packed = np.empty((bands, tiles.tiles_of(H // bands) if coupled else 0, G, R), dtype)
    if coupled:
        kernels.pack_into_bands(Wx_packed, Wx)
        kernels.pack_bands(Wx_rows_packed, Wx)
    meeting = np.zeros(2, dtype=np.int64)
    none = np.empty((0, T, B), dtype)
    mask = (2 * np.random.default_rng(seed + 1).integers(0, 2, (H, T, B))).astype(dtype)
    x_drop = np.full((H, T, B), np.nan, dtype)
    if dropout == "beforehand":
        dh_seq *= mask
    forward_masks = (x_drop, mask) if dropout == "fused" else (none, none)
    with numba_threads(threads):
        kernels.lstm_train_forward(
            h_seq, h_prev, h_prev_rows, act, c_steps, h_steps, weights.Wh_bands, weights.Wh_packed, b, h0,
            c0, table_T, tokens, x_steps, Wx_packed, *forward_masks, meeting,
        )  # fmt: skip
        forward_met = meeting[0]
        forward_steps = h_steps.copy()
        kernels.lstm_train_backward(
            dz, db, dWh, dWh_T, dh_seq, mask if dropout == "fused" else none, act, c_steps, Wh,
            Wh_rows_packed, c0, h_prev_rows, dz_steps, h_steps, dtable_T, tokens, dx_steps, Wx_rows_packed,
            bands, meeting,
        )  # fmt: skip
    outputs = (h_seq, h_prev, h_prev_rows, act, c_steps, dz, db, dWh, dtable_T, dx_steps)
    if dropout is not None:
        outputs += (x_drop, forward_steps, mask)
    return outputs, forward_met, meeting[0]


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two of numba's threads")
@pytest.mark.parametrize(("tiled", "coupled"), [(False, False), (True, False), (True, True)],
                         ids=["blas", "tiles", "tiles-coupled"])  # fmt: skip
def test_bands_on_one_thread_or_two_give_the_same_bits(tiled, coupled):
    """Two bands on two threads meet after every step (spin.meet); on one thread, the only
    member that comes claims the work and does both bands (spin.join_team). Both ways do
    the same arithmetic in the same order: identical results, whichever way a run goes."""
    for _ in range(3):  # a shared host may delay a thread past the patience: try a few times
        together, forward_met, backward_met = run_band_kernels(threads=2, tiled=tiled, coupled=coupled)
        if forward_met == backward_met == 2:  # both members joined, both times
            break
    assert forward_met == backward_met == 2, "two threads never met in three tries"
    alone, forward_met, backward_met = run_band_kernels(threads=1, tiled=tiled, coupled=coupled)
    assert forward_met < 0 and backward_met < 0  # claimed by the one member that came
    names = ("h_seq", "h_prev", "h_prev_rows", "act", "c_steps", "dz", "db", "dWh", "dtable_T", "dx_steps")
    for name, x, y in zip(names, together, alone, strict=True):
        assert np.array_equal(x, y), name


@pytest.mark.parametrize(("tiled", "coupled"), [(False, False), (True, False), (True, True)],
                         ids=["blas", "tiles", "tiles-coupled"])  # fmt: skip
def test_step_kernels_drop_out_in_their_copies(tiled, coupled):
    """With masks given, lstm_train_forward leaves x_drop = h * mask and its step-major output
    masked the same way while the state it keeps (h_seq, h_prev, h_prev_rows) stays unmasked,
    and lstm_train_backward masks dh as it copies it: the same as the masks applied by the
    caller, bit for bit."""
    fused, _, _ = run_band_kernels(threads=1, tiled=tiled, coupled=coupled, dropout="fused")
    beforehand, _, _ = run_band_kernels(threads=1, tiled=tiled, coupled=coupled, dropout="beforehand")
    *state, x_drop, forward_steps, mask = fused
    *expected, _, unmasked_steps, _ = beforehand
    names = ("h_seq", "h_prev", "h_prev_rows", "act", "c_steps", "dz", "db", "dWh", "dtable_T", "dx_steps")
    for name, x, y in zip(names, state, expected, strict=True):
        assert np.array_equal(x, y), name
    h_seq = state[0]
    assert np.array_equal(unmasked_steps, h_seq.transpose(1, 0, 2))  # no masks: h itself
    assert np.array_equal(x_drop, h_seq * mask)
    assert np.array_equal(forward_steps, (h_seq * mask).transpose(1, 0, 2))
    assert 0 < np.count_nonzero(mask) < mask.size


TILED = {  # bands of 8 or 16 units: on AVX2's 6-row tiles, with tails
    "plain": ModelConfig(vocab_size=7, layers=2, hidden=16, embed=4),
    "dropout": ModelConfig(vocab_size=7, layers=2, hidden=16, embed=4, dropout=0.3),
}


PRODUCT_SETS = {  # what the tests put on the tiles besides the build's own choice
    "coupled": tiles.ALL_PRODUCTS - {tiles.WINDOW, tiles.WINDOW_GRADIENT},
    "windowed": frozenset({tiles.STEP, tiles.HEAD, tiles.WINDOW, tiles.WINDOW_GRADIENT}),
}


@pytest.mark.parametrize("products", ["served", *PRODUCT_SETS])
@pytest.mark.parametrize("config", TILED.values(), ids=TILED.keys())
@pytest.mark.parametrize("bands", [1, 2])
def test_float32_training_on_register_tiles_matches_the_reference(bands, config, products, monkeypatch):
    """float32, whole tiles of units and streams: the recurrent products of both passes run
    on the register tiles (kernels.step_product); with the other product sets, so do those the
    build may leave to BLAS where the tiles measured no faster: the head's (kernels.tiled_matmul,
    V = 7 rows padded to whole tiles), and either ("coupled") dWh in the backward's steps and
    the products between layers inside the steps, or ("windowed") those between layers over
    the window and the weight gradients from the step-major dz. Loss and gradients still match
    the float64 reference to float32 precision, with dropout too."""
    served = tiles.GEOMETRY
    if products in PRODUCT_SETS:
        monkeypatch.setattr(tiles, "GEOMETRY", dataclasses.replace(served, products=PRODUCT_SETS[products]))
    T, B = 5, 16
    params, inputs, targets, h0, c0 = make_case(config, T, B, seed=31)
    loss, grads, ws = run_loss_and_grad(params.astype(np.float32), inputs, targets, h0, c0, bands)
    tb = ws._train
    geometry = tiles.GEOMETRY
    assert (tb.Wh_packed.shape[1] > 0 and tb.Wh_rows_packed.shape[1] > 0) == geometry.serves(tiles.STEP)
    head_tiled = tb.head_packed.shape[0] * tiles.ROWS == -(-7 // tiles.ROWS) * tiles.ROWS  # V = 7, padded
    assert (head_tiled and tb.head_rows_packed.shape[0] > 0) == geometry.serves(tiles.HEAD)
    in_steps = tb.dWh_in_steps  # dWh in the backward's steps
    assert in_steps == geometry.serves(tiles.STEP_GRADIENT)
    coupled = tb.Wx_packed.shape[1] > 0 and tb.Wx_rows_packed.shape[1] > 0 and tb.proj.shape[0] == 0
    assert coupled == tb.coupled == geometry.serves(tiles.COUPLING)
    windowed = tb.Wx_window.shape[0] > 0 and tb.Wx_rows_window.shape[0] > 0 and tb.proj.shape[0] == 0
    assert windowed == tb.windowed == (geometry.serves(tiles.WINDOW) and not coupled)
    tiled_gradients = tb.gradients_tiled
    assert tiled_gradients == (geometry.serves(tiles.WINDOW_GRADIENT) and not in_steps)
    assert tiled_gradients == (tb.x_panels.shape[0] > 0)
    rows = tb.h_prev_rows.shape[1] > 0 and tb.h_prev.shape[1] == 0  # h_prev a row per stream
    assert rows == in_steps
    assert (tb.dz.shape[0] == 0) == (tiled_gradients and (windowed or coupled))  # nothing reads dz
    masks = reference_masks(ws)
    assert (masks is not None) == (config.dropout > 0)
    ref_loss, ref_grads = reference.loss_and_grad(as_weights(params), inputs, targets, h0, c0, masks)
    assert abs(loss - ref_loss) <= 1e-5
    for name in grads.names():
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=0, atol=2e-6, err_msg=name)


def test_hidden_units_that_do_not_divide_into_bands_are_refused():
    with pytest.raises(ValueError, match="5 hidden units cannot be cut into 2 equal bands"):
        Workspace(SMALL["L1-embed"], 4, 4, np.float64, bands=2)


@pytest.mark.parametrize("bands", [1, 2])
@pytest.mark.parametrize("config", TINY.values(), ids=TINY.keys())
def test_gradients_match_finite_differences(config, bands):
    """Every element of every parameter, through the mean cross-entropy with random targets
    (dropout masks held fixed by reseeding). Relative error per tensor as in relative_error.
    With the units in two bands too (4 units instead of 3), each band in its own kernels."""
    if bands == 2:
        config = dataclasses.replace(config, hidden=4)
    T, B = 4, 2
    params, inputs, targets, h0, c0 = make_case(config, T, B, seed=4)
    _, grads, _ = run_loss_and_grad(params, inputs, targets, h0, c0, bands)

    def loss():
        return run_loss_and_grad(params, inputs, targets, h0, c0, bands)[0]

    numeric = Params(config, numeric_gradient(loss, params.flat))
    errors = {name: relative_error(numeric[name], grads[name]) for name in params.names()}
    assert max(errors.values()) <= 1e-6, errors
    for name in params.names():
        assert np.any(grads[name] != 0), name


@pytest.mark.parametrize("embed", [0, 3])
def test_reference_backward_matches_finite_differences(embed):
    """The reference's backward for a random upstream gradient on the logits (and random
    dropout masks), so that the 1e-10 comparisons above compare against something right."""
    config = ModelConfig(vocab_size=5, layers=2, hidden=3, embed=embed)
    T, B = 4, 2
    params, inputs, _, h0, c0 = make_case(config, T, B, seed=5)
    weights = as_weights(params)
    rng = np.random.default_rng(6)
    upstream = rng.normal(size=(T, B, config.vocab_size))
    masks = (rng.random((2, T, B, 3)) >= 0.3) / 0.7

    def objective():
        return np.sum(upstream * reference.forward(weights, inputs, h0, c0, masks)["logits"])

    cache = reference.forward(weights, inputs, h0, c0, masks)
    grads = reference.backward(weights, inputs, cache, upstream, masks)
    errors = {}
    for name, w in weights.items():
        numeric = numeric_gradient(objective, w.reshape(-1)).reshape(w.shape)
        errors[name] = relative_error(numeric, grads[name])
    assert max(errors.values()) <= 1e-6, errors


# --------------------------------------------------------------------------------------------
# Carried state and precision


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_three_windows_equal_one_long_window(dtype, atol):
    config = SMALL["L2-embed"]
    T, B = 5, 3
    params, inputs, _, h0, c0 = make_case(config, 3 * T, B, seed=7)
    params = params.astype(dtype)
    full_logits, full_h, full_c, _ = run_forward(params, inputs, h0, c0)

    ws = Workspace(config, T, B, dtype)
    h, c = h0.astype(dtype), c0.astype(dtype)
    chunks = [forward(params, inputs[k * T : (k + 1) * T], h, c, ws).copy() for k in range(3)]
    np.testing.assert_allclose(np.concatenate(chunks), full_logits, rtol=0, atol=atol)
    np.testing.assert_allclose(h, full_h, rtol=0, atol=atol)
    np.testing.assert_allclose(c, full_c, rtol=0, atol=atol)


@pytest.mark.parametrize("config", [SMALL["L2-onehot"], SMALL["L2-embed"]], ids=["onehot", "embed"])
def test_float32_runs_the_same_kernels_as_float64(config):
    T, B = 6, 3
    params, inputs, targets, h0, c0 = make_case(config, T, B, seed=8)
    params32 = params.astype(np.float32)
    logits64, h64, c64, _ = run_forward(params, inputs, h0, c0)
    logits32, h32, c32, _ = run_forward(params32, inputs, h0, c0)
    assert logits32.dtype == h32.dtype == c32.dtype == np.float32
    np.testing.assert_allclose(logits32, logits64, rtol=0, atol=1e-5)
    np.testing.assert_allclose(h32, h64, rtol=0, atol=1e-5)
    np.testing.assert_allclose(c32, c64, rtol=0, atol=1e-5)

    loss64, grads64, _ = run_loss_and_grad(params, inputs, targets, h0, c0)
    loss32, grads32, _ = run_loss_and_grad(params32, inputs, targets, h0, c0)
    assert grads32.dtype == np.float32
    assert abs(loss32 - loss64) <= 1e-5
    np.testing.assert_allclose(grads32.flat, grads64.flat, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Loss


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-12), (np.float32, 1e-6)])
def test_softmax_cross_entropy_matches_formula(dtype, tol):
    rng = np.random.default_rng(9)
    N, V = 6, 5
    logits = rng.normal(0.0, 3.0, (N, V)).astype(dtype)
    targets = rng.integers(0, V, N)
    dlogits = np.empty_like(logits)
    loss = kernels.softmax_cross_entropy(dlogits, logits, targets)

    z = logits.astype(np.float64)
    expected = np.mean(np.log(np.sum(np.exp(z), axis=1)) - z[np.arange(N), targets])
    softmax = np.exp(z) / np.sum(np.exp(z), axis=1, keepdims=True)
    onehot = np.eye(V)[targets]
    assert abs(loss - expected) <= tol * abs(expected)
    np.testing.assert_allclose(dlogits, (softmax - onehot) / N, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_huge_logits(dtype):
    logits = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    targets = np.array([0, 0, 2])
    dlogits = np.empty_like(logits)
    with np.errstate(all="raise"):
        loss = kernels.softmax_cross_entropy(dlogits, logits, targets)
    # per row: 0, 1e4 + log 2 (target two 1e4 below a tie), log 3
    expected = (0.0 + 1e4 + np.log(2.0) + np.log(3.0)) / 3
    assert np.isfinite(loss) and np.all(np.isfinite(dlogits))
    assert abs(loss - expected) <= 1e-12 * expected
    expected_grad = np.array([[0.0, 0.0, 0.0], [-1.0, 0.5, 0.5], [1 / 3, 1 / 3, -2 / 3]]) / 3
    np.testing.assert_allclose(dlogits, expected_grad, rtol=0, atol=1e-7)


@numba.njit
def _exp_each(out, x):
    for n in range(x.size):
        out[n] = kernels.exp(x[n])


def test_float32_exp_is_within_two_ulps_and_exact_at_zero():
    x = np.linspace(-87.0, 88.0, 1_000_001, dtype=np.float32)
    x[0] = 0.0
    out = np.empty_like(x)
    _exp_each(out, x)
    exact = np.exp(x.astype(np.float64))
    assert out[0] == 1.0
    assert np.max(np.abs(out - exact) / exact) <= 2 * 2.0**-24
    # clamped outside the normal range: tiny but never 0 or denormal, huge but finite
    _exp_each(out[:3], np.array([-1e4, -88.7, 1e4], dtype=np.float32))
    assert 0.0 < out[0] <= out[1] < 2e-38 and np.isfinite(out[2]) and out[2] > 1e38


@numba.njit
def _tanh_and_sigmoid_each(tanh_out, sigmoid_out, x):
    for n in range(x.size):
        tanh_out[n] = kernels.tanh(x[n])
        sigmoid_out[n] = kernels.sigmoid(x[n])


def test_float32_tanh_and_sigmoid_are_within_4e_7_odd_and_saturating():
    x = np.linspace(-12.0, 12.0, 2_000_001, dtype=np.float32)  # x[1_000_000] == 0
    t, s = np.empty_like(x), np.empty_like(x)
    _tanh_and_sigmoid_each(t, s, x)
    wide = x.astype(np.float64)
    assert np.max(np.abs(t - np.tanh(wide))) <= 4e-7
    assert np.max(np.abs(s - 1.0 / (1.0 + np.exp(-wide)))) <= 4e-7
    assert t[1_000_000] == 0.0 and s[1_000_000] == 0.5
    np.testing.assert_array_equal(t, -t[::-1])  # odd, bit for bit
    assert np.all(np.abs(t) <= 1.0) and np.all((s >= 0.0) & (s <= 1.0))
    assert t[-1] == 1.0 and s[0] < 1e-5 and s[-1] > 1.0 - 1e-5


# --------------------------------------------------------------------------------------------
# Clipping


# The norm is accumulated in float64; in float32 each square may be rounded to float32 first.
NORM_RTOL = [(np.float64, 1e-12), (np.float32, 1e-7)]


@pytest.mark.parametrize("dtype, rtol", NORM_RTOL)
def test_clip_leaves_small_gradients_untouched(dtype, rtol):
    rng = np.random.default_rng(10)
    grad = rng.normal(size=1000).astype(dtype)
    grad *= 0.5 / np.linalg.norm(grad)
    before = grad.copy()
    norm = kernels.clip_grad_norm(grad, 1.0)
    assert np.array_equal(grad, before)  # bitwise
    assert abs(norm - np.linalg.norm(before.astype(np.float64))) <= rtol * norm
    assert kernels.global_norm(grad) == norm


@pytest.mark.parametrize("dtype, rtol", NORM_RTOL)
def test_clip_rescales_large_gradients_to_max_norm(dtype, rtol):
    rng = np.random.default_rng(11)
    grad = (50.0 * rng.normal(size=1000)).astype(dtype)
    before = grad.astype(np.float64)
    expected_norm = np.linalg.norm(before)
    norm = kernels.clip_grad_norm(grad, 1.0)
    assert abs(norm - expected_norm) <= rtol * expected_norm
    assert abs(np.linalg.norm(grad.astype(np.float64)) - 1.0) <= 1e-6
    # Same direction: a uniform rescaling by max_norm / norm.
    np.testing.assert_allclose(grad, before / expected_norm, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------
# Adam


def textbook_adamw(theta, m, v, grad, mask, t, lr, beta1, beta2, eps, weight_decay):
    """Kingma & Ba with bias correction, plus decoupled weight decay on the masked entries."""
    theta = theta - lr * weight_decay * mask * theta
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta, m, v


@pytest.mark.parametrize("dtype, rtol, atol", [(np.float64, 1e-12, 0.0), (np.float32, 1e-6, 1e-7)])
def test_adam_matches_textbook(dtype, rtol, atol):
    rng = np.random.default_rng(12)
    P = 200
    lr, beta1, beta2, eps, wd = 1e-2, 0.9, 0.99, 1e-8, 0.1
    mask = (rng.random(P) < 0.5).astype(np.uint8)
    theta = rng.normal(size=P).astype(dtype)
    m = np.zeros(P, dtype=dtype)
    v = np.zeros(P, dtype=dtype)
    ref_theta, ref_m, ref_v = theta.astype(np.float64), np.zeros(P), np.zeros(P)
    for step in range(1, 6):
        grad = rng.normal(size=P).astype(dtype)
        kernels.adam_step(theta, m, v, grad, mask, step, lr, beta1, beta2, eps, wd)
        ref_theta, ref_m, ref_v = textbook_adamw(
            ref_theta, ref_m, ref_v, grad.astype(np.float64), mask, step, lr, beta1, beta2, eps, wd
        )
        np.testing.assert_allclose(m, ref_m, rtol=rtol, atol=atol, err_msg=f"m, step {step}")
        np.testing.assert_allclose(v, ref_v, rtol=rtol, atol=atol, err_msg=f"v, step {step}")
        np.testing.assert_allclose(theta, ref_theta, rtol=rtol, atol=atol, err_msg=f"theta, step {step}")


def test_adam_first_step_is_lr_times_sign():
    """Bias correction makes step 1 move every weight by lr * g / (|g| + eps), whatever beta."""
    rng = np.random.default_rng(13)
    P, lr, eps = 100, 1e-3, 1e-8
    theta = rng.normal(size=P)
    grad = rng.normal(size=P) * 10.0 ** rng.uniform(-3, 3, P)
    start = theta.copy()
    m, v = np.zeros(P), np.zeros(P)
    kernels.adam_step(theta, m, v, grad, np.ones(P, dtype=np.uint8), 1, lr, 0.9, 0.999, eps, 0.0)
    np.testing.assert_allclose(theta - start, -lr * grad / (np.abs(grad) + eps), rtol=1e-9, atol=0)


def test_adam_weight_decay_only_where_masked():
    """With a zero gradient, masked weights shrink by exactly (1 - lr * wd); others stay put."""
    P, lr, wd = 10, 1e-2, 0.5
    theta = np.linspace(-1.0, 1.0, P)
    start = theta.copy()
    mask = np.array([1, 0] * (P // 2), dtype=np.uint8)
    m, v = np.zeros(P), np.zeros(P)
    kernels.adam_step(theta, m, v, np.zeros(P), mask, 1, lr, 0.9, 0.999, 1e-8, wd)
    np.testing.assert_allclose(theta, np.where(mask == 1, start * (1 - lr * wd), start), rtol=1e-15, atol=0)


def test_dropout_masks_kernel_draws_independent_units_at_the_rate_asked():
    """kernels.dropout_masks: over a million units the drop rate is p to within 4 standard
    errors, neighbours are uncorrelated, a seed gives the same masks on one thread or two and
    for any length (the tail past whole hashes included), another seed other masks."""
    N, p = 1 << 20, 0.3
    threshold = round(p * 65536)
    masks = np.empty(N, np.float32)
    kernels.dropout_masks(masks, 99, threshold, 1.0 / (1.0 - p), 2)
    assert set(np.unique(masks)) == {0.0, np.float32(1.0 / (1.0 - p))}
    dropped = masks == 0
    assert abs(dropped.mean() - threshold / 65536) < 4 * np.sqrt(p * (1 - p) / N)
    for lag in (1, 2, 3, 4, 5):  # within one hash and across hashes
        assert abs(np.corrcoef(dropped[:-lag], dropped[lag:])[0, 1]) < 4 / np.sqrt(N)
    alone = np.empty(N, np.float32)
    kernels.dropout_masks(alone, 99, threshold, 1.0 / (1.0 - p), 1)
    assert np.array_equal(masks, alone)
    short = np.full(4 * 7 + 3, np.nan, np.float32)
    kernels.dropout_masks(short, 99, threshold, 1.0 / (1.0 - p), 2)
    assert np.array_equal(short, masks[: short.size])
    kernels.dropout_masks(alone, 100, threshold, 1.0 / (1.0 - p), 2)
    assert np.mean(alone != masks) > 0.3
