"""The GRU and plain RNN cells (charlstm.cells, kernels.gru, kernels.rnn): the forward pass
against the NumPy reference in tests/reference_cells.py, gradients against finite differences,
carried state, float32 training, checkpoints, sampling and the CLI from train to inspect-gates.
"""

import contextlib
import json
import zipfile

import numba
import numpy as np
import pytest
import reference_cells
from typer.testing import CliRunner

from charlstm import model, sample
from charlstm.checkpoint import load_checkpoint, save_checkpoint
from charlstm.cli import app
from charlstm.data import Vocab
from charlstm.errors import CheckpointError
from charlstm.kernels import tiles
from charlstm.model import ModelConfig, Params, Workspace, forward, init_params, loss_and_grad, zero_state

CELLS = ("gru", "rnn")
SHAPES = {  # (layers, hidden, embed): one-hot and embedded input, one layer and two
    "L1-onehot": (1, 5, 0),
    "L2-embed": (2, 6, 4),
}
V = 7


def setup(cell, shape, dropout=0.0, T=5, B=3, dtype=np.float64, seed=0):
    """A random model, a window of inputs and targets, and a random carried-in h."""
    layers, hidden, embed = SHAPES[shape]
    config = ModelConfig(V, layers, hidden, embed, dropout, cell)
    rng = np.random.default_rng(seed)
    params = init_params(config, rng, dtype)
    inputs, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    h, c = zero_state(config, B, dtype)
    h[:] = rng.uniform(-0.8, 0.8, h.shape)
    return config, params, inputs, targets, h, c


def as_weights(params):
    return {name: params[name].astype(np.float64) for name in params.names()}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_keys_follow_the_documented_layout(cell, shape):
    config = ModelConfig(V, *SHAPES[shape], cell=cell)
    H, G = config.hidden, {"gru": 3, "rnn": 1}[cell] * config.hidden
    shapes = dict(config.param_shapes())
    for layer in range(config.layers):
        width = config.input_size(layer)
        assert shapes.pop(f"{cell}.{layer}.Wx") == (width, G)
        assert shapes.pop(f"{cell}.{layer}.Wh") == (H, G)
        biases = ("bx", "bh") if cell == "gru" else ("b",)
        for name in biases:
            assert shapes.pop(f"{cell}.{layer}.{name}") == (G,)
    assert set(shapes) == ({"embed"} if config.embed else set()) | {"head.W", "head.b"}


@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_forward_matches_the_reference(cell, shape, dropout):
    config, params, inputs, _, h, c = setup(cell, shape, dropout)
    h0 = h.copy()
    ws = Workspace(config, *inputs.shape, np.float64)
    logits = forward(params, inputs, h, c, ws, np.random.default_rng(5))
    masks = ws.masks.astype(np.float64) if dropout else None
    assert (masks is not None) == ws.dropout_on
    ref_logits, ref_h = reference_cells.forward(as_weights(params), cell, inputs, h0, masks)
    np.testing.assert_allclose(logits, ref_logits.reshape(-1, V), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h, ref_h, rtol=1e-12, atol=1e-12)
    assert not c.any()  # only the LSTM has a cell memory


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell, shape):
    """Every parameter of a tiny model, central differences of the reference's loss with the
    engine's dropout masks, against loss_and_grad (truncated BPTT: h0 held fixed)."""
    config, params, inputs, targets, h, c = setup(cell, shape, dropout=0.25, T=4, B=2)
    h0 = h.copy()
    grads = Params.zeros(config, np.float64)
    ws = Workspace(config, *inputs.shape, np.float64)
    loss = loss_and_grad(params, grads, inputs, targets, h, c, ws, np.random.default_rng(9))
    masks = ws.masks.astype(np.float64)
    weights = as_weights(params)
    assert loss == pytest.approx(reference_cells.loss(weights, cell, inputs, targets, h0, masks), rel=1e-12)
    eps = 1e-6
    for name in params.names():
        w = weights[name].reshape(-1)
        numeric = np.empty_like(w)
        for k in range(w.size):
            keep = w[k]
            w[k] = keep + eps
            up = reference_cells.loss(weights, cell, inputs, targets, h0, masks)
            w[k] = keep - eps
            down = reference_cells.loss(weights, cell, inputs, targets, h0, masks)
            w[k] = keep
            numeric[k] = (up - down) / (2 * eps)
        analytic = grads[name].reshape(-1)
        scale = np.max(np.abs(numeric) + np.abs(analytic))
        assert scale > 0, name  # every tensor takes part
        assert np.max(np.abs(numeric - analytic)) / scale < 1e-7, name


@pytest.mark.parametrize("cell", CELLS)
def test_three_chunks_with_carried_state_equal_one_pass(cell):
    config, params, inputs, _, h, c = setup(cell, "L2-embed", T=12)
    whole_h = h.copy()
    whole = forward(params, inputs, whole_h, c, Workspace(config, 12, 3, np.float64)).copy()
    ws = Workspace(config, 4, 3, np.float64)
    chunks = [forward(params, inputs[t : t + 4], h, c, ws).copy() for t in (0, 4, 8)]
    np.testing.assert_allclose(np.concatenate(chunks), whole, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(h, whole_h, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell", CELLS)
def test_float32_training_step_agrees_with_float64(cell):
    config, params, inputs, targets, h, c = setup(cell, "L2-embed", dropout=0.2, T=16, B=8)
    results = {}
    for dtype in (np.float64, np.float32):
        grads = Params.zeros(config, dtype)
        ws = Workspace(config, 16, 8, dtype)
        h_run, c_run = h.astype(dtype), c.astype(dtype)
        loss = loss_and_grad(
            params.astype(dtype), grads, inputs, targets, h_run, c_run, ws, np.random.default_rng(3)
        )
        results[dtype] = loss, grads.flat.astype(np.float64), h_run.astype(np.float64)
    (l64, g64, h64), (l32, g32, h32) = results[np.float64], results[np.float32]
    assert l32 == pytest.approx(l64, rel=1e-5)
    assert np.max(np.abs(g32 - g64)) < 1e-5 * np.max(np.abs(g64)) + 1e-7
    np.testing.assert_allclose(h32, h64, atol=1e-5)


@pytest.mark.parametrize("bands", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_float32_step_products_on_register_tiles_match_float64(cell, bands):
    """B and the bands' rows in whole tiles: float32 runs the step products on the register
    tiles (forward and backward), float64 on BLAS; both give the same step."""
    B, T = 16, 8  # whole vectors of every geometry
    config = ModelConfig(V, 2, 16, 4, 0.2, cell)
    rng = np.random.default_rng(5)
    params = init_params(config, rng, np.float64)
    params.flat[:] *= 2.0
    inputs, targets = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    h = rng.uniform(-0.8, 0.8, (2, B, 16))
    results = {}
    for dtype in (np.float64, np.float32):
        grads = Params.zeros(config, dtype)
        ws = Workspace(config, T, B, dtype, bands=bands)
        h_run, c_run = h.astype(dtype), np.zeros_like(h, dtype=dtype)
        loss = loss_and_grad(
            params.astype(dtype), grads, inputs, targets, h_run, c_run, ws, np.random.default_rng(3)
        )
        results[dtype] = loss, grads.flat.astype(np.float64), h_run.astype(np.float64), ws._cells
    if not tiles.serve(tiles.STEP, config.projection_width // bands, B, np.float32):
        pytest.skip(f"the {tiles.GEOMETRY.isa} build runs the step products on BLAS")
    assert (
        results[np.float32][3].Wh_packed.shape[1] > 0 and results[np.float32][3].Wh_rows_packed.shape[1] > 0
    )
    assert results[np.float64][3].Wh_packed.shape[1] == 0
    (l64, g64, h64, _), (l32, g32, h32, _) = results[np.float64], results[np.float32]
    assert l32 == pytest.approx(l64, rel=1e-5)
    assert np.max(np.abs(g32 - g64)) < 2e-5 * np.max(np.abs(g64))
    np.testing.assert_allclose(h32, h64, atol=2e-5)


def test_the_first_step_of_training_learns(tmp_path):
    """A few steps of loss_and_grad plus plain gradient descent lower the loss for both
    cells: the gradient points downhill on a real objective, not only in a check."""
    for cell in CELLS:
        config, params, inputs, targets, h, c = setup(cell, "L2-embed", T=8, B=4, dtype=np.float32)
        ws = Workspace(config, 8, 4, np.float32)
        grads = Params.zeros(config)
        losses = []
        for _ in range(100):
            losses.append(loss_and_grad(params, grads, inputs, targets, h * 0, c, ws))
            params.flat -= 1.0 * grads.flat
        assert losses[-1] < 0.7 * losses[0], (cell, losses[0], losses[-1])


# --- checkpoints


def saved_model(tmp_path, cell, shape="L2-embed"):
    config, params, *_ = setup(cell, shape, dtype=np.float32)
    vocab = Vocab(list("abcdefg"))
    path = save_checkpoint(tmp_path / f"{cell}.npz", params, vocab, {"note": cell})
    return path, params


def rewrite(src, dst, change):
    """A copy of checkpoint src at dst with its arrays passed through change(dict)."""
    with np.load(src) as archive:
        arrays = {key: archive[key] for key in archive.files}
    change(arrays)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("cell", CELLS)
def test_checkpoint_round_trip_is_bitwise_and_keeps_the_cell(tmp_path, cell):
    path, params = saved_model(tmp_path, cell)
    ckpt = load_checkpoint(path)
    assert ckpt.model_config.cell == cell and ckpt.config["cell"] == cell
    assert np.array_equal(ckpt.params.flat, params.flat)
    with zipfile.ZipFile(path) as archive:
        assert sorted(n[:-4] for n in archive.namelist()) == sorted(
            ["format", "config", "vocab", *params.names()]
        )


def set_config(arrays, **changes):
    config = json.loads(str(arrays["config"]))
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    arrays["config"] = np.array(json.dumps(config))


@pytest.mark.parametrize("cell", CELLS)
def test_malformed_cell_checkpoints_are_refused(tmp_path, cell):
    path, _ = saved_model(tmp_path, cell)
    bias = "gru.0.bh" if cell == "gru" else "rnn.0.b"
    cases = {
        "missing": (lambda a: a.pop(bias), f"{bias}"),
        "shape": (lambda a: a.__setitem__(bias, a[bias][:-1]), f"array '{bias}' has shape"),
        "nan": (lambda a: a[f"{cell}.1.Wh"].__setitem__((0, 0), np.nan), "NaN"),
        "cell": (lambda a: set_config(a, cell="lstmx"), "config 'cell' must be one of lstm, gru, rnn"),
        "other cell": (lambda a: set_config(a, cell="lstm"), "unexpected array"),
        "no cell": (lambda a: set_config(a, cell=None), "unexpected array"),  # read as an LSTM
    }
    for name, (change, message) in cases.items():
        bad = rewrite(path, tmp_path / f"bad-{name.replace(' ', '-')}.npz", change)
        with pytest.raises(CheckpointError, match=message.replace("(", r"\(")) as refused:
            load_checkpoint(bad)
        assert "\n" not in str(refused.value), name


def test_a_config_without_a_cell_is_an_lstm(tmp_path):
    config = ModelConfig(V, 1, 4, 3)
    params = init_params(config, np.random.default_rng(0))
    path = save_checkpoint(tmp_path / "old.npz", params, Vocab(list("abcdefg")), {})
    old = rewrite(path, tmp_path / "older.npz", lambda a: set_config(a, cell=None))
    ckpt = load_checkpoint(old)
    assert ckpt.model_config.cell == "lstm" and np.array_equal(ckpt.params.flat, params.flat)


# --- sampling


@pytest.mark.parametrize("cell", CELLS)
def test_sampler_steps_the_model_as_forward_does(cell):
    """The generation kernels' logits after reading a text equal the batch forward pass's
    (float32, their own summation order), for each stream of a batch."""
    config, params, *_ = setup(cell, "L2-embed", dtype=np.float32)
    ids = np.array([1, 4, 2, 6, 0, 3, 5, 5])
    layout = sample.step_layout(params)
    state = sample._State(layout, batch=3)
    state.read(layout, ids)
    h, c = zero_state(config, 3)
    logits = forward(params, np.repeat(ids[:, None], 3, axis=1), h, c, Workspace(config, ids.size, 3))
    np.testing.assert_allclose(state.logits, logits[-3:], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state.h, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
def test_sampling_repeats_and_ignores_threads_and_batch(cell):
    config, params, *_ = setup(cell, "L2-embed", dtype=np.float32)
    params.flat *= 4  # sharper predictions than a random init's near-uniform ones
    vocab = Vocab(list("abcdefg"))
    one = sample.generate(params, vocab, "abc", 60, random_seed=7)
    assert one == sample.generate(params, vocab, "abc", 60, random_seed=7)
    assert one == sample.generate(params, vocab, "abc", 60, random_seed=7, threads=2)
    assert one[0] == sample.generate(params, vocab, "abc", 60, random_seed=7, num_samples=3)[0]
    assert one != sample.generate(params, vocab, "abc", 60, random_seed=8)
    greedy = sample.generate(params, vocab, "abc", 20, temperature=0)[0]
    state = sample._State(sample.step_layout(params), batch=1)
    state.read(sample.step_layout(params), vocab.encode("abc"))
    assert greedy[0] == vocab.chars[int(np.argmax(state.logits[0]))]


# --- the CLI, train to eval


@pytest.mark.slow
@pytest.mark.parametrize("cell", CELLS)
def test_cli_trains_samples_and_evaluates_each_cell(tmp_path, cell):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat; the dog sat on the log.\n" * 60, encoding="utf-8")
    out = tmp_path / f"{cell}.npz"
    env = {"COLUMNS": "100"}
    runner = CliRunner()
    trained = runner.invoke(
        app,
        ["train", str(corpus), "--cell", cell, "--layers", "2", "--hidden", "16", "--embed", "8",
         "--seq-len", "16", "--batch-size", "8", "--steps", "120", "--eval-every", "60", "--out", str(out),
         "--lr", "8e-3"],  # 120 steps on a toy text: the GRU's and RNN's default 2e-3 is for long runs
        env=env,
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    ckpt = load_checkpoint(out)
    assert ckpt.model_config.cell == cell and ckpt.config["training"]["cell"] == cell
    assert ckpt.config["val_loss"] < 0.8 * np.log(ckpt.vocab.size)  # it learned something
    sampled = runner.invoke(app, ["sample", "--model", str(out), "--seed", "the ", "--length", "40",
                                  "--random-seed", "1"], env=env)  # fmt: skip
    assert sampled.exit_code == 0, sampled.output
    assert sampled.stdout.startswith("the ") and len(sampled.stdout.rstrip("\n")) == 44
    scored = runner.invoke(app, ["eval", str(out), str(corpus), "--json"], env=env)
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["loss_nats"] < 0.8 * np.log(ckpt.vocab.size)
    shown = {}
    for view in ("overview", "gates", "reach"):
        inspected = runner.invoke(
            app,
            ["inspect-gates", "--model", str(out), "--text", "the cat sat on the mat", "--view", view],
            env=env,
        )
        assert inspected.exit_code == 0 and "Traceback" not in inspected.output, inspected.output
        assert cell.upper() in inspected.stdout
        shown[view] = inspected.stdout
    assert ("z update/keep" if cell == "gru" else "no gate that keeps memory") in shown["overview"]
    assert ("median prod z" if cell == "gru" else "no gate that keeps its state") in shown["reach"]


# --- the units in bands, on numba's threads


def banded_step(cell, bands, threads, dtype=np.float64):
    """loss_and_grad of a 2x8 model with its units in `bands`, numba on `threads` threads
    (model's pool of one thread a band held to them): (loss, gradients, final h, how the
    backward's team met: the members that joined, or negative if one claimed all the work)."""
    config = ModelConfig(V, 2, 8, 4, 0.2, cell)
    rng = np.random.default_rng(4)
    params = init_params(config, rng, dtype)
    inputs, targets = rng.integers(0, V, (6, 4)), rng.integers(0, V, (6, 4))
    h, c = zero_state(config, 4, dtype)
    h[:] = rng.uniform(-0.8, 0.8, h.shape)
    grads = Params.zeros(config, dtype)
    ws = Workspace(config, 6, 4, dtype, bands=bands)
    before, pool = numba.get_num_threads(), model._one_pool_of_threads
    numba.set_num_threads(threads)
    model._one_pool_of_threads = lambda bands: contextlib.nullcontext()
    try:
        loss = loss_and_grad(params, grads, inputs, targets, h, c, ws, np.random.default_rng(1))
    finally:
        numba.set_num_threads(before)
        model._one_pool_of_threads = pool
    return loss, grads.flat.copy(), h, ws._cells.meeting[0]


@pytest.mark.parametrize("cell", CELLS)
def test_bands_give_the_gradient_of_one_band(cell):
    loss, grads, h, _ = banded_step(cell, bands=1, threads=1)
    banded_loss, banded_grads, banded_h, _ = banded_step(cell, bands=2, threads=1)
    assert banded_loss == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(banded_grads, grads, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(banded_h, h, rtol=1e-13, atol=1e-14)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs two of numba's threads")
@pytest.mark.parametrize("cell", CELLS)
def test_bands_on_one_thread_or_two_give_the_same_bits(cell):
    """Two bands on two threads meet after every step; on one thread the member that comes
    does both bands (kernels.spin): the same arithmetic in the same order either way."""
    for _ in range(3):  # a shared host may delay a thread past the patience: try a few times
        together = banded_step(cell, bands=2, threads=2, dtype=np.float32)
        if together[3] == 2:  # both members joined the backward's team
            break
    assert together[3] == 2, "two threads never met in three tries"
    alone = banded_step(cell, bands=2, threads=1, dtype=np.float32)
    assert alone[3] < 0  # claimed by the one member that came
    assert together[0] == alone[0]
    assert np.array_equal(together[1], alone[1]) and np.array_equal(together[2], alone[2])
