"""The inspector for GRU and plain RNN models: the one-stream forward (stream.run_stream) against
the NumPy reference in tests/reference_cells.py, the statistics of the GRU's gates against a
direct count, the reach against central finite differences, a planted GRU quote unit found by
the ranking, the exports, and every view of `inspect-gates` (with the one-line refusals of what
a cell has no meaning for) and the explorer page in Debian's chromium.
"""

import json
import math

import numpy as np
import pytest
import reference_cells
from reference import first_layer_input
from test_cli_gates import invoke, ok, one_error_line
from test_explorer import browser, browser_only, open_page  # noqa: F401 (browser: a pytest fixture)
from test_gates import CHARS, planted_text
from test_stream import run as run_stream

from charlstm import features, gates, reach
from charlstm.checkpoint import load_checkpoint, save_checkpoint
from charlstm.data import Vocab
from charlstm.explorer import payload
from charlstm.model import ModelConfig, Params, init_params, zero_state
from charlstm.signals import signals_of

CELLS = ("gru", "rnn")
VOCAB = Vocab(sorted(CHARS))
TEXT = 'a "bad cab." ed\nbe a dab.\n"ace"'
WARMUP = "cab "


def as_weights(params):
    return {name: params[name].astype(np.float64) for name in params.names()}


def lively(cell, layers=2, hidden=5, embed=4, dtype=np.float64, seed=3):
    """A random model with larger weights than at initialisation: gates away from 0.5."""
    config = ModelConfig(VOCAB.size, layers, hidden, embed, cell=cell)
    params = init_params(config, np.random.default_rng(seed), dtype)
    params.flat[:] *= 2.0
    return params


# --- the one-stream forward


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "layers, embed, window, dtype, tol",
    [
        (1, 0, 7, np.float64, 1e-12),
        (2, 4, 7, np.float64, 1e-12),
        (3, 0, 16, np.float64, 1e-12),
        (2, 4, 50, np.float64, 1e-12),  # one window longer than the text
        (2, 4, 9, np.float32, 2e-5),
    ],
)
def test_stream_equals_the_reference(cell, layers, embed, window, dtype, tol):
    params = lively(cell, layers, 6, embed, dtype)
    config = params.config
    N = 41
    rng = np.random.default_rng(4)
    ids = rng.integers(0, config.vocab_size, N)
    h, c = zero_state(config, 1, dtype)
    h[...] = rng.uniform(-0.5, 0.5, h.shape)
    weights = as_weights(params)
    ref = reference_cells.forward_from_vectors(
        weights, cell, first_layer_input(weights, ids.reshape(N, 1)), h.astype(np.float64)
    )
    got, logits = run_stream(params, ids, h, c, window)
    H = config.hidden
    np.testing.assert_allclose(np.concatenate([x for _, _, x in logits]), ref["logits"][:, 0], atol=tol)
    for layer in range(layers):
        assert [(a, b) for a, b, *_ in got[layer]] == [(a, min(a + window, N)) for a in range(0, N, window)]
        g, c_seq, h_seq = (np.concatenate([w[k] for w in got[layer]]) for k in (2, 3, 4))
        assert c_seq.shape == (N, 0)  # only an LSTM has a memory beside h
        record = ref["layers"][layer]
        gate_names = ("r", "z", "n") if cell == "gru" else ()
        assert g.shape == (N, len(gate_names) * H)
        for k, name in enumerate(gate_names):
            np.testing.assert_allclose(g[:, k * H : (k + 1) * H], record[name][:, 0], atol=tol, err_msg=name)
        np.testing.assert_allclose(h_seq, record["h"][:, 0], atol=tol)
    np.testing.assert_allclose(h, ref["h"], atol=tol)  # the state advanced in place
    assert np.all(c == 0.0)


# --- statistics


def test_gru_statistics_count_the_gates_directly():
    params = lively("gru", dtype=np.float32)
    text = planted_text(600)
    th = gates.Thresholds(left=0.2, right=0.8)
    trace = gates.compute_trace(params, VOCAB, text, warmup=WARMUP, show=50, thresholds=th)
    weights = as_weights(params)
    ids = VOCAB.encode(WARMUP + text)
    ref = reference_cells.forward_from_vectors(
        weights, "gru", first_layer_input(weights, ids.reshape(-1, 1)), np.zeros((2, 1, 5))
    )
    W, stats = len(WARMUP), trace.stats
    assert trace.signal == "h" and trace.signals.names == ("r", "z", "n", "h")
    assert stats.unit_left.shape == (2, 2, 5) and stats.mean.shape == (2, 3, 5)
    for layer in range(2):
        record = {k: v[W:, 0] for k, v in ref["layers"][layer].items()}  # (N, H) each
        for s, name in enumerate(("r", "z")):
            np.testing.assert_allclose(
                stats.unit_left[layer, s], (record[name] < 0.2).mean(axis=0), atol=1e-12
            )
            np.testing.assert_allclose(
                stats.unit_right[layer, s], (record[name] > 0.8).mean(axis=0), atol=1e-12
            )
        for k, name in enumerate(("r", "z", "n")):
            np.testing.assert_allclose(stats.mean[layer, k], record[name].mean(axis=0), atol=1e-5)
            np.testing.assert_allclose(stats.std[layer, k], record[name].std(axis=0), atol=1e-4)
        median_z = float(np.median(record["z"]))
        assert 1 - stats.median_forget[layer] == pytest.approx(1 - median_z, rel=0.01)
        assert stats.half_life[layer] == pytest.approx(math.log(0.5) / math.log(median_z), rel=0.01)
        assert stats.integrators[layer] == int(((record["z"] > 0.8).mean(axis=0) > 0.5).sum())
        np.testing.assert_allclose(trace.values[layer], record["h"], atol=1e-5)
    np.testing.assert_allclose(trace.start_h, ref_state(weights, ids[:W]), atol=1e-5)


def ref_state(weights, ids):
    """(L, H) the reference's h after reading ids from zeros."""
    out = reference_cells.forward_from_vectors(
        weights, "gru", first_layer_input(weights, ids.reshape(-1, 1)), np.zeros((2, 1, 5))
    )
    return out["h"][:, 0]


def test_a_plain_rnn_has_no_gate_statistics_and_says_why():
    trace = gates.compute_trace(lively("rnn"), VOCAB, TEXT)
    stats = trace.stats
    assert trace.gates.shape == (2, len(TEXT), 0) and trace.c.shape == (2, len(TEXT), 0)
    assert stats.unit_left.shape == (2, 0, 5) and stats.mean.shape == (2, 0, 5)
    assert np.isnan(stats.median_forget).all() and (stats.integrators == 0).all()
    with pytest.raises(gates.ConfigError, match="no gate that keeps memory"):
        gates.rank_units(trace, "integrator")
    with pytest.raises(gates.ConfigError, match="unknown signal 'c' for a rnn model"):
        gates.compute_trace(lively("rnn"), VOCAB, TEXT, signal="c")
    assert [s.unit for s in gates.rank_units(trace).scores][:1]  # variance still ranks


# --- reach


def log_p_next(weights, cell, x, ids, position):
    zeros = np.zeros((reference_cells.layers_of(weights, cell), 1, weights["head.W"].shape[0]))
    logits = reference_cells.forward_from_vectors(weights, cell, x[: position + 1], zeros)["logits"][-1, 0]
    shifted = logits - logits.max()
    return shifted[ids[position + 1]] - math.log(np.exp(shifted).sum())


@pytest.mark.parametrize("embed", [4, 0])
@pytest.mark.parametrize("cell", CELLS)
def test_reach_equals_finite_differences(cell, embed):
    params = lively(cell, embed=embed)
    trace = gates.compute_trace(params, VOCAB, TEXT, warmup=WARMUP, show=len(TEXT))
    result = reach.compute_reach(params, trace, lags=12)
    assert result.keep_gate == {"gru": "z", "rnn": None}[cell]
    weights = as_weights(params)
    ids = VOCAB.encode(WARMUP + TEXT)
    x = first_layer_input(weights, ids.reshape(-1, 1))  # (T, 1, I)
    W, eps = len(WARMUP), 1e-6
    for t, k in [(0, 0), (5, 1), (5, 5), (17, 3), (17, 12), (29, 7), (29, 12)]:
        grad = np.zeros(x.shape[2])
        for d in range(x.shape[2]):
            up, down = x.copy(), x.copy()
            up[W + t - k, 0, d] += eps
            down[W + t - k, 0, d] -= eps
            grad[d] = (
                log_p_next(weights, cell, up, ids, W + t) - log_p_next(weights, cell, down, ids, W + t)
            ) / (2 * eps)
        # abs: the differences' rounding, about 1e-16 * |log p| / eps per component
        assert result.sensitivity[t, k] == pytest.approx(np.linalg.norm(grad), rel=1e-6, abs=1e-9), (
            cell,
            t,
            k,
        )
    assert np.isnan(result.sensitivity[3, 4:]).all()  # lags before the text


def test_the_gru_direct_path_is_the_product_of_its_update_gates():
    params = lively("gru")
    trace = gates.compute_trace(params, VOCAB, TEXT, show=len(TEXT))
    result = reach.compute_reach(params, trace, lags=6)
    H = 5
    for layer in range(2):
        z = trace.gates[layer, :, H : 2 * H]
        for k in (1, 3, 6):
            products = [np.prod(z[t - k + 1 : t + 1], axis=0) for t in range(k, len(TEXT) - 1)]
            assert result.forget_product[layer, k] == pytest.approx(np.median(products), rel=1e-9)
    rnn = lively("rnn")
    assert reach.compute_reach(rnn, gates.compute_trace(rnn, VOCAB, TEXT), lags=6).forget_product.shape == (
        0,
        7,
    )


# --- a planted GRU unit: it flips its sign at every quote and holds between them


def planted_gru(seed=0) -> Params:
    """One layer of three GRU units, one-hot input. Unit 0: r open always; z shut on '"' (take
    the candidate n = tanh(1 - 10 h_prev), the opposite sign of what it was), wide open on any
    other character (keep h). h > 0 exactly inside quotes. Units 1 and 2 are random."""
    config = ModelConfig(vocab_size=VOCAB.size, layers=1, hidden=3, embed=0, cell="gru")
    params = Params.zeros(config, np.float64)
    H, Wx, Wh = 3, params["gru.0.Wx"], params["gru.0.Wh"]
    for row, ch in enumerate(VOCAB.chars):
        Wx[row, H] = -12.0 if ch == '"' else 12.0  # z of unit 0
        Wx[row, 2 * H] = 1.0  # n of unit 0: 1 - 10 h_prev below
    params["gru.0.bx"][0] = 12.0  # r of unit 0 open
    Wh[0, 2 * H] = -10.0
    rng = np.random.default_rng(seed)
    for k in range(3):
        for unit in (1, 2):
            Wx[:, k * H + unit] = rng.uniform(-2, 2, VOCAB.size)
    params["head.W"][...] = rng.uniform(-0.5, 0.5, params["head.W"].shape)
    return params.astype(np.float32)


def test_the_planted_gru_quote_unit_is_ranked_first_and_integrates():
    text = planted_text(2000)
    trace = gates.compute_trace(planted_gru(), VOCAB, text)
    inside = features.feature_values(text, "quote")[0] > 0
    assert ((trace.values[0, :, 0] > 0) == inside).all()
    by_quote = gates.rank_units(trace, feature="quote")
    assert by_quote.scores[0].unit == gates.Unit(0, 0)
    assert by_quote.scores[0].r > 0.9 and by_quote.scores[0].z > 10
    by_keep = gates.rank_units(trace, "integrator")
    assert by_keep.scores[0].unit == gates.Unit(0, 0) and by_keep.scores[0].score > 0.9
    assert by_keep.describe() == "share of time the update gate z is wide open"
    assert trace.stats.integrators[0] >= 1


# --- the exports and the CLI


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cells")
    text = folder / "text.txt"
    text.write_text(planted_text(800), encoding="utf-8")
    paths = {"text": text}
    for cell in CELLS:
        paths[cell] = save_checkpoint(folder / f"{cell}.npz", lively(cell, dtype=np.float32), VOCAB, {})
    paths["planted"] = save_checkpoint(folder / "planted.npz", planted_gru(), VOCAB, {})
    return paths


def test_every_view_of_a_gru(models):
    common = ("--model", models["planted"], "--file", models["text"], "--show", 80)
    overview = ok(invoke(*common)).stdout
    for part in ("GRU", "L1 r reset", "L1 z update/keep", "half-life", "ln 0.5 / ln z", "h (hidden/memory)"):
        assert part in overview, part
    assert "L1 f" not in overview and "L1 i" not in overview
    shown = ok(invoke(*common, "--view", "gates", "--units", "L1:0")).stdout
    for line in ("r reset", "z update/keep", "n candidate", "h hidden/memory"):
        assert line in shown, line
    assert "reset: how much of the past the candidate sees" in shown
    heat = ok(invoke(*common, "--view", "heatmap", "--signal", "z")).stdout
    assert "update: keep the old state vs take the new" in heat
    assert "median prod z" in ok(invoke(*common, "--view", "reach", "--lags", 20)).stdout
    ranked = ok(invoke(*common, "--feature", "quote", "--top", 1)).stdout
    assert "L1:0" in ranked.split("Units by", 1)[1]
    one_error_line(invoke(*common, "--signal", "c"), "unknown signal 'c' for a gru model", "r, z, n, h")


def test_every_view_of_a_plain_rnn(models):
    common = ("--model", models["rnn"], "--file", models["text"], "--show", 80)
    overview = ok(invoke(*common)).stdout
    assert "RNN" in overview and "no gate that keeps memory" in overview
    assert "Gate saturation over" not in overview
    assert "h hidden/memory" in ok(invoke(*common, "--view", "gates", "--units", "L2:1")).stdout
    ok(invoke(*common, "--view", "heatmap"))
    ok(invoke(*common, "--view", "predict"))
    assert "no gate that keeps its state" in ok(invoke(*common, "--view", "reach", "--lags", 20)).stdout
    one_error_line(invoke(*common, "--pick", "integrator"), "--pick integrator", "no gate that keeps memory")
    one_error_line(invoke(*common, "--signal", "z"), "unknown signal 'z' for a rnn model")
    one_error_line(invoke(*common, "--signal", "q"), "unknown signal 'q'")


@pytest.mark.parametrize("cell", CELLS)
def test_the_json_export_names_the_cell_and_its_signals(models, tmp_path, cell):
    out = tmp_path / "out.json"
    ok(invoke("--model", models[cell], "--file", models["text"], "--units", "L2:1", "--json", out))
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["config"]["cell"] == cell
    unit = doc["units"][0]
    assert set(unit["shown"]) == ({"r", "z", "n", "h"} if cell == "gru" else {"h"})
    assert set(unit["mean"]) == ({"r", "z", "n"} if cell == "gru" else set())
    assert {row["gate"] for row in doc["saturation"]} == ({"r", "z"} if cell == "gru" else set())
    memory = doc["memory"][0]
    if cell == "gru":
        assert memory["keep_gate"] == "z" and memory["half_life_steps"] > 0
        assert len(doc["reach"]["forget_product"]) == 2
    else:
        assert memory["keep_gate"] is None and memory["median_forget"] is None
        assert doc["reach"]["forget_product"] == [] and doc["reach"]["keep_gate"] is None
    assert doc["signal"] == "h"


@pytest.mark.parametrize("cell", CELLS)
def test_the_explorer_payload_holds_the_cells_signals(models, cell):
    checkpoint = load_checkpoint(models[cell])
    text = models["text"].read_text(encoding="utf-8")[:300]
    recorder = payload.SignalRecorder(2, len(text), 5, signals_of(cell))
    trace = gates.compute_trace(checkpoint.params, VOCAB, text, observe=recorder, guess_everywhere=True)
    ranking = gates.rank_units(trace)
    reached = reach.compute_reach(checkpoint.params, trace, lags=10)
    meta = payload.build_payload(
        trace, recorder, ranking, reached, model_name=cell, feature=None, chosen=None, curves=None
    ).meta
    names = ["r", "z", "n", "h"] if cell == "gru" else ["h"]
    assert meta["signals"] == names and meta["ranked_signal"] == "h" and meta["config"]["cell"] == cell
    assert sorted(k.split(".")[1] for k in meta["blocks"] if k.startswith("L1.")) == sorted(names)
    for s, name in enumerate(names):  # the codes are the trace's values, quantised
        values = trace.layer_signal(1, name)
        assert np.abs(payload.dequantise(recorder.codes[1, s, : trace.shown], name) - values).max() <= 1 / 254
    assert meta["saturation"]["gates"] == (["r", "z"] if cell == "gru" else [])
    assert meta["rankings"]["integrator"]["available"] == (cell == "gru")


@browser_only
@pytest.mark.parametrize("cell", CELLS)
def test_the_explorer_page_of_each_cell_opens_without_an_error(browser, models, tmp_path, cell):  # noqa: F811
    path = tmp_path / f"{cell}.html"
    ok(
        invoke(
            "--model", models[cell], "--file", models["text"], "--units", "L2:1", "--lags", 20, "--save", path
        )
    )
    page, events = open_page(browser, path, "#unit=L2:1")
    page.hover('[data-pos="30"]')
    rows = page.eval_on_selector_all(
        '[role="tooltip"] tr[data-signal]', "rows => rows.map(r => r.dataset.signal)"
    )
    assert rows == (["r", "z", "n", "h"] if cell == "gru" else ["h"])
    assert cell.upper() in page.inner_text("#shape")
    if cell == "rnn":
        assert "no gates" in page.inner_text("#saturation")
        assert "no gate that keeps its state" in page.inner_text("#decay")
    else:
        assert page.locator("#saturation svg").count() == 4  # 2 layers x r, z
    assert [m for m in events["console"] if m.startswith(("error", "pageerror"))] == []
    page.close()


def test_unit_half_lives_come_from_each_units_median_keep_gate():
    params = lively("gru")
    trace = gates.compute_trace(params, VOCAB, planted_text(300), show=300)
    z = trace.gates[:, :, 5:10]  # (L, S, H) the update gates
    expected = np.log(0.5) / np.log(np.median(z, axis=1))
    np.testing.assert_allclose(gates.unit_half_lives(trace), expected, rtol=1e-12)
    assert np.isnan(gates.unit_half_lives(gates.compute_trace(lively("rnn"), VOCAB, TEXT))).all()
