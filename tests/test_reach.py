"""Tests for the reach of a prediction (charlstm.reach): the batched backward pass against
central finite differences of log p in float64 through the plain NumPy reference (a warm-up,
E > 0 and one-hot), the forget-gate products against a direct product, and the summaries."""

import math

import numpy as np
import pytest
import reference

from charlstm import gates, reach
from charlstm.data import Vocab
from charlstm.errors import ConfigError
from charlstm.model import ModelConfig, init_params

CHARS = ' "abcde.\n'
TEXT = 'a "bad cab." ed\nbe a dab.\n"ace"'
WARMUP = "cab "


def tiny(embed: int, seed: int = 3):
    vocab = Vocab.from_text(CHARS)
    config = ModelConfig(vocab_size=vocab.size, layers=2, hidden=5, embed=embed)
    params = init_params(config, np.random.default_rng(seed), dtype=np.float64)
    params.flat[:] *= 2.0  # larger weights: gates away from 0.5, gradients that differ by lag
    return vocab, params


def log_p_next(weights, x, ids, position):
    """log p(ids[position + 1]) after reading x[: position + 1] (T, 1, I) from a zero state."""
    L, H = sum(1 for k in weights if k.endswith(".Wh")), weights["head.W"].shape[0]
    zeros = np.zeros((L, 1, H))
    logits = reference.forward_from_vectors(weights, x[: position + 1], zeros, zeros)["logits"][-1, 0]
    shifted = logits - logits.max()
    return shifted[ids[position + 1]] - math.log(np.exp(shifted).sum())


@pytest.mark.parametrize("embed", [4, 0])
def test_sensitivity_equals_finite_differences(embed):
    vocab, params = tiny(embed)
    trace = gates.compute_trace(params, vocab, TEXT, warmup=WARMUP, show=len(TEXT))
    result = reach.compute_reach(params, trace, lags=12)
    assert result.targets.tolist() == list(range(len(TEXT) - 1))
    assert result.lags == 12
    assert result.input_name == ("embedding row" if embed else "one-hot vector")

    weights = {name: params[name] for name in params.names()}
    ids = vocab.encode(WARMUP + TEXT)
    x = reference.first_layer_input(weights, ids.reshape(-1, 1))  # (T, 1, I)
    W, eps = len(WARMUP), 1e-6
    for t, k in [(0, 0), (5, 0), (5, 1), (5, 5), (17, 3), (17, 12), (29, 7), (29, 12)]:
        grad = np.zeros(x.shape[2])
        for d in range(x.shape[2]):
            up, down = x.copy(), x.copy()
            up[W + t - k, 0, d] += eps
            down[W + t - k, 0, d] -= eps
            grad[d] = (log_p_next(weights, up, ids, W + t) - log_p_next(weights, down, ids, W + t)) / (
                2 * eps
            )
        assert result.sensitivity[t, k] == pytest.approx(np.linalg.norm(grad), rel=1e-6, abs=1e-10), (t, k)
    # Lags before the text are not computed, and the gradient does not vanish to zero here.
    assert np.isnan(result.sensitivity[3, 4:]).all() and np.isfinite(result.sensitivity[3, :4]).all()
    assert (result.sensitivity[np.isfinite(result.sensitivity)] > 0).all()


def test_forget_products_are_the_median_of_products_of_forget_gates():
    vocab, params = tiny(4)
    trace = gates.compute_trace(params, vocab, TEXT, show=len(TEXT))
    result = reach.compute_reach(params, trace, targets=20, lags=9)
    H = params.config.hidden
    for layer in range(2):
        f = trace.gates[layer, :, H : 2 * H].astype(np.float64)
        for k in range(10):
            products = [np.prod(f[t - k + 1 : t + 1], axis=0) for t in range(k, 20)]
            expected = np.median(np.concatenate(products)) if k else 1.0
            assert result.forget_product[layer, k] == pytest.approx(expected, rel=1e-9)


def test_summaries_and_limits():
    vocab, params = tiny(4)
    trace = gates.compute_trace(params, vocab, TEXT, show=10)
    result = reach.compute_reach(params, trace, lags=100)
    assert result.targets.tolist() == list(range(10))  # the shown span, a next character each
    assert result.lags == 9  # never beyond the text
    median, q1, q3 = result.decay()
    for k in (0, 4, 9):
        column = result.sensitivity[k:, k]
        assert median[k] == pytest.approx(np.median(column))
        assert q1[k] <= median[k] <= q3[k]
    lo, hi = result.domain()
    assert 0 < lo < hi == np.nanmax(result.sensitivity)
    assert result.relative_median(1) == pytest.approx(1.0)
    bands = result.bands()
    assert [b["lags"] for b in bands] == [(0, 0), (1, 1), (2, 4), (5, 9)]
    assert bands[0]["median"] == pytest.approx(median[0])
    document = reach.to_json(result)
    assert len(document["sensitivity"]) == 10 and document["sensitivity"][2][3] is None
    with pytest.raises(ConfigError, match="--reach must be"):
        reach.compute_reach(params, trace, targets=0)
    with pytest.raises(ConfigError, match="--lags"):
        reach.compute_reach(params, trace, lags=-1)
    one = gates.compute_trace(params, vocab, "a")
    with pytest.raises(ConfigError, match="two characters"):
        reach.compute_reach(params, one)


def test_float32_agrees_with_float64():
    vocab, params = tiny(4)
    single = params.astype(np.float32)
    exact = reach.compute_reach(params, gates.compute_trace(params, vocab, TEXT, show=len(TEXT)))
    rough = reach.compute_reach(single, gates.compute_trace(single, vocab, TEXT, show=len(TEXT)))
    finite = np.isfinite(exact.sensitivity)
    assert np.array_equal(finite, np.isfinite(rough.sensitivity))
    np.testing.assert_allclose(rough.sensitivity[finite], exact.sensitivity[finite], rtol=1e-3, atol=1e-7)
