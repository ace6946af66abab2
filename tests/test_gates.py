"""Tests for gate inspection (charlstm.gates) and its drawing (charlstm.gates_view).

The recorded gates, memory and predictions are checked against a per-gate, step-by-step NumPy
forward written here in float64; saturation, half-life and the text features on hand-made
arrays; unit ranking on a planted circuit whose unit 0 flips its memory inside double quotes;
and the views through a recording console (text and SVG export, literal text, alignment).
"""

import io
import math

import numpy as np
import pytest

from charlstm import features, gates, gates_view, reach
from charlstm.data import Vocab
from charlstm.errors import ConfigError
from charlstm.model import ModelConfig, Params, init_params
from charlstm.signals import LSTM

CHARS = ' "abcde.\n'


# --------------------------------------------------------------------------------------------
# A reference forward, one gate per line


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def reference_run(params, ids):
    """Every layer's i, f, g, o, c, h (N, H) and the logits (N, V) for one stream from a zero
    state, in float64, step by step."""
    cfg = params.config
    w = {name: params[name].astype(np.float64) for name in params.names()}
    H, N = cfg.hidden, len(ids)
    x = w["embed"][ids] if cfg.embed else np.eye(cfg.vocab_size)[ids]  # (N, I)
    layers = []
    for layer in range(cfg.layers):
        Wx, Wh, b = w[f"lstm.{layer}.Wx"], w[f"lstm.{layer}.Wh"], w[f"lstm.{layer}.b"]
        rec = {name: np.zeros((N, H)) for name in LSTM.names}
        h, c = np.zeros(H), np.zeros(H)
        for t in range(N):
            z = x[t] @ Wx + h @ Wh + b
            i = sigmoid(z[0:H])
            f = sigmoid(z[H : 2 * H])
            g = np.tanh(z[2 * H : 3 * H])
            o = sigmoid(z[3 * H : 4 * H])
            c = f * c + i * g
            h = o * np.tanh(c)
            for name, value in zip(LSTM.names, (i, f, g, o, c, h), strict=True):
                rec[name][t] = value
        layers.append(rec)
        x = rec["h"]
    logits = x @ w["head.W"] + w["head.b"]
    return layers, logits


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("embed", [0, 4], ids=["onehot", "embed"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_trace_matches_reference(embed, dtype):
    vocab = Vocab(sorted(CHARS))
    config = ModelConfig(vocab_size=vocab.size, layers=2, hidden=5, embed=embed)
    params = init_params(config, np.random.default_rng(3), dtype)
    params.flat[:] *= 3  # larger weights: saturated gates get exercised too
    warmup, text = "ab c", 'de "ab".\ncab e "d" a'
    trace = gates.compute_trace(params, vocab, text, warmup=warmup, show=17, window=5)
    layers, logits = reference_run(params, vocab.encode(warmup + text))
    W, S = len(warmup), 17
    tol = 1e-10 if dtype == np.float64 else 2e-5
    for layer, rec in enumerate(layers):
        expected = np.concatenate([rec[k][W : W + S] for k in LSTM.gates], axis=1)
        np.testing.assert_allclose(trace.gates[layer], expected, rtol=0, atol=tol)
        np.testing.assert_allclose(trace.c[layer], rec["c"][W : W + S], rtol=0, atol=tol)
        np.testing.assert_allclose(trace.h[layer], rec["h"][W : W + S], rtol=0, atol=tol)
        np.testing.assert_allclose(trace.values[layer], np.tanh(rec["c"][W:]), rtol=0, atol=max(tol, 1e-6))
        # Statistics over the whole text, not only the shown span.
        for k, name in enumerate(LSTM.sigmoid):
            left, right = gates.saturation(rec[name][W:])
            np.testing.assert_allclose(trace.stats.unit_left[layer, k], left)
            np.testing.assert_allclose(trace.stats.unit_right[layer, k], right)
        for k, name in enumerate(LSTM.gates):
            np.testing.assert_allclose(trace.stats.mean[layer, k], rec[name][W:].mean(0), atol=1e-6)
            np.testing.assert_allclose(trace.stats.std[layer, k], rec[name][W:].std(0), atol=1e-5)
        d = np.sort(1 - rec["f"][W:].ravel())  # the median of 1 - f, within its 1% bins
        lo, hi = d[(d.size - 1) // 2], d[d.size // 2]
        assert lo * 0.99 <= 1 - trace.stats.median_forget[layer] <= hi * 1.01
    assert trace.shown == S and trace.n_chars == len(text) and trace.n_warmup == W
    logp = log_softmax(logits)  # (N, V): row t predicts character t + 1
    ids = vocab.encode(warmup + text)
    expected_bits = -logp[np.arange(W - 1, W + len(text) - 1), ids[W:]] / math.log(2)
    np.testing.assert_allclose(trace.bits, expected_bits, rtol=1e-5)
    assert trace.bits_per_char == pytest.approx(expected_bits.mean(), rel=1e-5)
    order = np.argsort(-logp[W:], axis=1, kind="stable")[:, : gates.TOP_GUESSES]
    np.testing.assert_array_equal(trace.guess_ids, order[:S])  # the shown span
    np.testing.assert_allclose(
        trace.guess_probs, np.exp(np.take_along_axis(logp[W : W + S], order[:S], 1)), rtol=1e-5
    )
    everywhere = gates.compute_trace(
        params, vocab, text, warmup=warmup, show=S, window=5, guess_everywhere=True
    )
    np.testing.assert_array_equal(everywhere.guess_ids, order)  # every character


def test_trace_without_warmup_has_no_first_prediction_and_skips_unknown_characters():
    vocab = Vocab(sorted(CHARS))
    config = ModelConfig(vocab_size=vocab.size, layers=1, hidden=3, embed=0)
    params = init_params(config, np.random.default_rng(0))
    trace = gates.compute_trace(params, vocab, "ab\u00e9cd")  # é is not in the vocabulary
    assert np.isnan(trace.bits[0]) and np.isnan(trace.bits[2])
    assert not np.isnan(trace.bits[[1, 3, 4]]).any()
    assert trace.n_unknown == 1
    assert trace.ids[2] == vocab.chars.index(" ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": ""}, "empty"),
        ({"text": "a" * (gates.MAX_CHARS + 1)}, "at most"),
        ({"text": "ab", "signal": "x"}, "unknown signal"),
        ({"text": "ab", "thresholds": gates.Thresholds(left=0.9, right=0.1)}, "thresholds"),
    ],
)
def test_trace_rejects_bad_input(kwargs, message):
    vocab = Vocab(sorted(CHARS))
    params = init_params(
        ModelConfig(vocab_size=vocab.size, layers=1, hidden=2, embed=0), np.random.default_rng(0)
    )
    with pytest.raises(ConfigError, match=message):
        gates.compute_trace(params, vocab, **kwargs)


# --------------------------------------------------------------------------------------------
# Saturation, half-life and features on hand-made arrays


def test_saturation_shares_per_unit():
    values = np.array([[0.05, 0.50], [0.95, 0.99], [0.50, 0.02], [0.10, 0.90]])  # (T=4, H=2)
    left, right = gates.saturation(values, left=0.1, right=0.9)
    np.testing.assert_allclose(left, [0.25, 0.25])  # strictly below 0.1
    np.testing.assert_allclose(right, [0.25, 0.25])  # strictly above 0.9
    left, right = gates.saturation(values, left=0.2, right=0.8)
    np.testing.assert_allclose(left, [0.5, 0.25])
    np.testing.assert_allclose(right, [0.25, 0.50])


def test_integrators_are_units_whose_forget_gate_is_mostly_open():
    assert gates.integrator_count(np.array([0.2, 0.51, 0.9, 0.5])) == 2
    np.testing.assert_array_equal(gates.integrator_count(np.array([[0.6, 0.7], [0.1, 0.2]])), [2, 0])


def test_half_life():
    hl = gates.half_life(np.array([0.5, 0.9, 0.99, 1.0, 0.0, 0.25]))
    np.testing.assert_allclose(hl[[0, 1, 2, 5]], [1.0, math.log(0.5) / math.log(0.9), 68.967, 0.5], rtol=1e-4)
    assert hl[3] == math.inf  # never forgets
    assert hl[4] == 0.0  # forgets at once
    # Memory kept by f for half-life steps halves: f ** hl == 0.5.
    assert 0.97 ** gates.half_life(0.97) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_median_forget_from_bins_is_within_one_percent(seed):
    rng = np.random.default_rng(seed)
    f = (1.0 - rng.lognormal(-3.0, 2.0, (300, 7)).clip(0, 1)).astype(np.float32)
    median = gates.median_from_bins(gates.forget_bins_of(f))
    assert 1 - median == pytest.approx(1 - np.median(f), rel=0.01)
    ones = np.ones((10, 3), dtype=np.float32)
    ones[0, 0] = 0.5
    assert gates.median_from_bins(gates.forget_bins_of(ones)) == 1.0
    assert gates.half_life(1.0) == math.inf


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("quote", 'a "bc" d', [0, 0, 1, 1, 1, 0, 0, 0]),
        ("quote", "\u201cab\u201d c", [1, 1, 1, 0, 0, 0]),
        ("line-pos", "ab\ncd\n", [1, 2, 0, 1, 2, 0]),
        ("indent", "  a\n\tb c", [1, 2, 2, 0, 1, 1, 1, 1]),
        ("depth", "(a[b])c)", [1, 1, 2, 2, 1, 0, 0, 0]),
        ("b+", "abbcb", [0, 1, 1, 0, 1]),
        ("re:quote", "a quote", [0, 0, 1, 1, 1, 1, 1]),
    ],
)
def test_features(name, text, expected):
    values, desc = features.feature_values(text, name)
    np.testing.assert_array_equal(values, expected)
    assert desc


@pytest.mark.parametrize("spec", ["(", "[a-", "re:"])
def test_bad_regex_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="regular expression"):
        features.feature_values("abc", spec)


def test_correlation_against_the_shift_null():
    rng = np.random.default_rng(0)
    N = 3000
    runs = rng.integers(10, 80, N // 10)  # random long runs, like quotes
    feature = (np.repeat(np.arange(runs.size) % 2, runs)[:N]).astype(float)
    X = np.stack(
        [
            feature + rng.normal(0, 0.5, N),  # tracks the feature
            rng.normal(0, 1, N),  # noise
            np.full(N, 0.3),  # never changes
        ],
        axis=1,
    ).astype(np.float32)
    r, z = features.feature_correlation(X, feature)
    assert r[0] > 0.6 and z[0] > 4
    assert abs(r[1]) < 0.1 and abs(z[1]) < 3
    assert r[2] == 0 and z[2] == 0
    np.testing.assert_allclose(r[0], np.corrcoef(X[:, 0], feature)[0, 1], rtol=1e-4)
    with pytest.raises(ConfigError, match="does not change"):
        features.feature_correlation(X, np.ones(N))


def test_parse_units():
    config = ModelConfig(vocab_size=5, layers=2, hidden=20, embed=0)
    units = gates.parse_units("L2:17, l1:3,L2:17", config)
    assert units == [gates.Unit(1, 17), gates.Unit(0, 3)]
    assert [str(u) for u in units] == ["L2:17", "L1:3"]
    for bad, message in [
        ("L3:0", "no layer 3"),
        ("L1:20", "no unit 20"),
        ("x", "not a unit"),
        (",", "no unit"),
    ]:
        with pytest.raises(ConfigError, match=message):
            gates.parse_units(bad, config)


# --------------------------------------------------------------------------------------------
# A planted circuit: unit 0 flips its memory at every double quote


BIG = 12.0  # saturates a gate: sigmoid(12) = 0.999994
FEEDBACK = 10.0  # how strongly the candidate opposes the unit's own hidden state


def planted_params(vocab: Vocab, seed: int = 0, dtype=np.float32) -> Params:
    """One layer of three units, one-hot input.

    Unit 0 on '"': input gate open, forget gate shut, candidate g = tanh(1 - 10 h_prev), so its
    memory becomes the opposite sign of what it was (the first quote takes it from 0 to +0.76);
    on any other character the forget gate is wide open and the input gate shut, so it holds.
    Its output gate is always open. c > 0 exactly inside quotes.
    Unit 1 is unit 0 with the input rows shuffled so it flips on '.' instead: the same kind of
    slow square wave, unrelated to quotes. Unit 2 has random weights and reads only itself.
    """
    config = ModelConfig(vocab_size=vocab.size, layers=1, hidden=3, embed=0)
    params = Params.zeros(config, np.float64)
    H = config.hidden
    Wx, Wh, b = params["lstm.0.Wx"], params["lstm.0.Wh"], params["lstm.0.b"]
    for unit, trigger in ((0, '"'), (1, ".")):
        i, f, g, o = (k * H + unit for k in range(4))
        for row, ch in enumerate(vocab.chars):
            Wx[row, i] = BIG if ch == trigger else -BIG
            Wx[row, f] = -BIG if ch == trigger else BIG
        Wh[unit, g] = -FEEDBACK
        b[g] = 1.0
        b[o] = BIG
    rng = np.random.default_rng(seed)
    for k in range(4):
        Wx[:, k * H + 2] = rng.uniform(-2, 2, vocab.size)
        Wh[2, k * H + 2] = rng.uniform(-1, 1)
    params["head.W"][...] = rng.uniform(-0.5, 0.5, params["head.W"].shape)
    return params.astype(dtype)


def planted_text(n: int, seed: int = 0) -> str:
    """Words of a..e with sentences, lines and quoted stretches."""
    rng = np.random.default_rng(seed)
    parts: list[str] = []
    quoted = False
    size = 0
    while size < n:
        word = "".join(rng.choice(list("abcde"), rng.integers(1, 6)))
        if rng.random() < 0.08:
            word = word + '"' if quoted else '"' + word
            quoted = not quoted
        piece = word + ("." if rng.random() < 0.1 else "") + ("\n" if rng.random() < 0.05 else " ")
        parts.append(piece)
        size += len(piece)
    return "".join(parts)[:n]


def test_planted_quote_unit_is_ranked_first():
    vocab = Vocab(sorted(CHARS))
    text = planted_text(2000)
    trace = gates.compute_trace(planted_params(vocab), vocab, text)
    inside = features.feature_values(text, "quote")[0] > 0
    c0 = trace.values[0, :, 0]
    assert (c0[inside] > 0.5).all() and (c0[~inside][text.index('"') :] < -0.5).all()

    ranking = gates.rank_units(trace, feature="quote")
    first = ranking.scores[0]
    assert first.unit == gates.Unit(0, 0)
    assert first.r > 0.9 and first.z > 3 and not first.is_chance(3.0)
    for unit in (gates.Unit(0, 1), gates.Unit(0, 2)):  # shuffled and random: chance
        score = ranking.score_of(unit)
        assert abs(score.z) < 3 and score.is_chance(3.0)
    assert ranking.n_shifts == features.N_SHIFTS


def test_variance_and_integrator_picks():
    vocab = Vocab(sorted(CHARS))
    trace = gates.compute_trace(planted_params(vocab), vocab, planted_text(600))
    by_variance = gates.rank_units(trace, "variance")
    assert [s.score for s in by_variance.scores] == sorted(
        (s.score for s in by_variance.scores), reverse=True
    )
    assert by_variance.scores[0].score == pytest.approx(trace.value_std.max())
    by_integrator = gates.rank_units(trace, "integrator")
    # Units 0 and 1 keep their forget gate open except on their trigger character.
    assert {s.unit.index for s in by_integrator.scores[:2]} == {0, 1}
    assert by_integrator.scores[0].score > 0.9
    assert trace.stats.integrators[0] >= 2
    with pytest.raises(ConfigError, match="--pick"):
        gates.rank_units(trace, "nonsense")


def test_json_document():
    vocab = Vocab(sorted(CHARS))
    text = planted_text(300)
    trace = gates.compute_trace(planted_params(vocab), vocab, text, show=50)
    ranking = gates.rank_units(trace, feature="quote")
    units = [s.unit for s in ranking.top(2)]
    doc = gates.to_json(trace, ranking, units, "planted.npz")
    import json

    json.dumps(doc, allow_nan=False)  # strict JSON: no NaN or Infinity
    assert doc["text"] == text and doc["shown_chars"] == 50
    assert doc["thresholds"] == {"left": 0.1, "right": 0.9, "mostly": 0.5, "z": 3.0}
    assert doc["ranking"]["units"][0]["unit"] == "L1:0" and doc["ranking"]["units"][0]["z"] > 3
    assert len(doc["units"][0]["shown"]["f"]) == 50 and len(doc["units"][0]["signal"]) == len(text)
    assert doc["surprisal_bits"][0] is None and len(doc["feature"]) == len(text)


# --------------------------------------------------------------------------------------------
# Drawing


def recorded(width=80, colour=True):
    return gates_view.make_console(width=width, file=io.StringIO(), record=True, colour=colour)


def draw(view, text, *, width=80, colour=True, ascii_only=False, units=None, show=400):
    vocab = Vocab(sorted(set(CHARS + text)))
    params = init_params(
        ModelConfig(vocab_size=vocab.size, layers=2, hidden=4, embed=0), np.random.default_rng(1)
    )
    trace = gates.compute_trace(params, vocab, text, show=show)
    ranking = gates.rank_units(trace)
    console = gates_view.make_console(
        width=width, file=io.StringIO(), record=True, colour=colour and not ascii_only, ascii_only=ascii_only
    )
    look = gates_view.choose_look(console, ascii_only)
    chosen = units or [s.unit for s in ranking.top(3)]
    reached = reach.compute_reach(params, trace, window=4) if view == "reach" else None
    options = gates_view.ViewOptions(view=view, units=chosen, model_name="m.npz", reach=reached)
    gates_view.render(console, look, trace, ranking, options)
    return console


@pytest.mark.parametrize("view", gates_view.VIEWS)
def test_views_record_text_and_svg(view):
    console = draw(view, "abc de.\nab", units=[gates.Unit(0, 1), gates.Unit(1, 3)])
    text = console.export_text(clear=False)
    assert ("abc de.⏎a" if view == "reach" else "abc de.⏎ab") in text  # reach: the text before its target
    assert console.export_svg().startswith("<svg")
    if view == "reach":
        for label in ("Reach at position 8", "next character = 'b'", "not a contribution", "prod f", "BPTT"):
            assert label in text
    if view == "overview":
        for label in ("i input/learn", "f forget", "o output/use", "half-life", "integrators", "Strips"):
            assert label in text
    if view == "gates":
        for name, role in LSTM.roles.items():
            assert f"{name} {role}" in text
        assert "L1:1" in text and "L2:3" in text


def test_user_text_is_never_markup():
    console = draw("gates", "[bold]x[/bold] :smile: [red]", colour=True)
    text = console.export_text()
    assert "[bold]x[/bold] :smile: [red]" in text
    assert "😄" not in text


def test_glyph_ramps_when_colour_is_off():
    console = draw("gates", "abc abc", colour=False)
    text = console.export_text()
    assert any(ch in text for ch in "░▒▓█") and any(ch in text for ch in "▁▂▃▄▅▆▇")


def test_ascii_output_is_ascii():
    console = draw("overview", 'ab "c"\tde\u4e2d\u00e9\n.', ascii_only=True)
    text = console.export_text()
    text.encode("ascii")  # raises if anything is not ASCII
    assert 'ab "c">de??$.' in text


def test_wide_and_control_characters_take_one_cell():
    look = gates_view.Look(colour=False, ascii=False)
    shown = gates_view.cell_chars("a\u4e2d\U0001f600\u0301\x1b\t\n", look)
    assert shown == ["a", "▯", "▯", "▯", "·", "→", "⏎"]
    assert all(gates_view.cell_len(ch) == 1 for ch in shown)


@pytest.mark.parametrize("colour", [True, False])
def test_long_text_wraps_with_rows_aligned(colour):
    text = ("the cat sat on the mat. " * 12)[:250]
    console = draw("gates", text, width=60, colour=colour, units=[gates.Unit(0, 0)])
    lines = console.export_text().splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("text @")]
    assert len(starts) >= 5  # wrapped into several blocks
    covered = ""
    for k in starts:
        block = lines[k : k + 7]  # text, then i f g o c h of the one unit
        column = len("L1:0 i input/learn ")  # the longest label, and a space
        assert block[1].startswith("L1:0 i input/learn ")
        assert all(len(row.rstrip("\n")) == len(block[0]) for row in block)
        assert all(len(row) <= 60 for row in block)
        covered += block[0][column:]
    assert covered == text


def test_sparkline():
    look = gates_view.Look(colour=False, ascii=False)
    assert gates_view.sparkline(np.linspace(-1, 1, 8), look, width=8) == "▁▂▃▄▅▆▇█"
    assert gates_view.sparkline(np.array([0.0, 1.0]), gates_view.Look(False, True), 2, 0.0, 1.0) == "_@"


def test_large_trace_arrays_are_ordinary_writable_arrays():
    big = gates._populated_empty((2, 3000, 512), np.float32)  # 12 MB: mapped up front
    small = gates._populated_empty((2, 5), np.float32)
    for array, shape in ((big, (2, 3000, 512)), (small, (2, 5))):
        assert array.shape == shape and array.dtype == np.float32 and array.flags.writeable
        array[...] = 1.5
        assert float(array.sum()) == 1.5 * array.size
