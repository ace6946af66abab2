"""stream.run_stream, the pipelined one-stream forward of gate inspection, against the NumPy
reference: every layer's gates, memory and hidden state, the logits and the final state, for
windows that do not divide the text, 1 to 3 layers (1 to 3 threads), one-hot and embedded
input, float64 and float32."""

import numpy as np
import pytest
import reference

from charlstm import stream
from charlstm.model import ModelConfig, init_params, zero_state


def as_weights(params):
    return {name: view.astype(np.float64) for name, view in params.views.items()}


def run(params, ids, h, c, window):
    """run_stream, collecting every callback's arrays in order."""
    L = params.config.layers
    layers = {layer: [] for layer in range(L)}
    logits = []

    def on_layer(layer, start, stop, g, c_seq, h_seq):
        layers[layer].append((start, stop, g.copy(), c_seq.copy(), h_seq.copy()))

    def on_logits(start, stop, out):
        logits.append((start, stop, out.copy()))

    stream.run_stream(params, ids, h, c, window, on_layer, on_logits)
    return layers, logits


@pytest.mark.parametrize(
    "layers, embed, window, dtype, tol",
    [
        (1, 0, 7, np.float64, 1e-12),
        (2, 5, 7, np.float64, 1e-12),
        (3, 0, 16, np.float64, 1e-12),
        (2, 5, 50, np.float64, 1e-12),  # one window longer than the text
        (2, 5, 9, np.float32, 2e-5),
    ],
)
def test_stream_equals_reference(layers, embed, window, dtype, tol):
    V, H, N = 9, 6, 41
    config = ModelConfig(vocab_size=V, layers=layers, hidden=H, embed=embed)
    params = init_params(config, np.random.default_rng(3), dtype)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, V, N)
    h, c = zero_state(config, 1, dtype)
    h[...] = rng.uniform(-0.5, 0.5, h.shape)
    c[...] = rng.uniform(-1.0, 1.0, c.shape)
    ref = reference.forward(as_weights(params), ids.reshape(N, 1), h.astype(np.float64), c.astype(np.float64))

    got_layers, got_logits = run(params, ids, h, c, window)

    spans = [(a, min(a + window, N)) for a in range(0, N, window)]
    assert [(a, b) for a, b, _ in got_logits] == spans
    np.testing.assert_allclose(np.concatenate([x for _, _, x in got_logits]), ref["logits"][:, 0], atol=tol)
    for layer in range(layers):
        assert [(a, b) for a, b, *_ in got_layers[layer]] == spans
        g, c_seq, h_seq = (np.concatenate([w[k] for w in got_layers[layer]]) for k in (2, 3, 4))
        rec = ref["layers"][layer]
        for k, name in enumerate("ifgo"):
            np.testing.assert_allclose(g[:, k * H : (k + 1) * H], rec[name][:, 0], atol=tol, err_msg=name)
        np.testing.assert_allclose(c_seq, rec["c"][:, 0], atol=tol)
        np.testing.assert_allclose(h_seq, rec["h"][:, 0], atol=tol)
    np.testing.assert_allclose(h, ref["h"], atol=tol)  # the state advanced in place
    np.testing.assert_allclose(c, ref["c"], atol=tol)


def test_two_calls_carry_the_state_like_one():
    config = ModelConfig(vocab_size=9, layers=2, hidden=6, embed=5)
    params = init_params(config, np.random.default_rng(3), np.float64)
    ids = np.random.default_rng(5).integers(0, 9, 30)
    h1, c1 = zero_state(config, 1, np.float64)
    _, whole = run(params, ids, h1, c1, 8)
    h2, c2 = zero_state(config, 1, np.float64)
    _, first = run(params, ids[:13], h2, c2, 8)
    _, second = run(params, ids[13:], h2, c2, 8)
    joined = np.concatenate([x for _, _, x in first + second])
    np.testing.assert_allclose(joined, np.concatenate([x for _, _, x in whole]), atol=1e-13)
    np.testing.assert_allclose(h2, h1, atol=1e-13)


def test_empty_text_changes_nothing():
    config = ModelConfig(vocab_size=9, layers=2, hidden=6, embed=5)
    params = init_params(config, np.random.default_rng(3), np.float64)
    h, c = zero_state(config, 1, np.float64)
    h += 0.25
    called = []
    stream.run_stream(params, np.zeros(0, dtype=np.int64), h, c, 8, lambda *a: called.append(a))
    assert not called and np.all(h == 0.25) and np.all(c == 0.0)
