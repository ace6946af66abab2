"""Tests for text generation (charlstm.sample and the Generation kernels).

The fused step kernel is compared with model.forward; greedy decoding and the top-k/top-p
sets are recomputed here with model.forward; the sampling distribution is checked with a
chi-square test at a fixed random seed. Models are tiny random ones (init_params).
"""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import chi2

from charlstm import kernels, sample
from charlstm.checkpoint import save_checkpoint
from charlstm.data import Vocab
from charlstm.errors import CharLSTMError, ConfigError
from charlstm.model import ModelConfig, Workspace, forward, init_params, zero_state

CHARS = "\n !,.abcdefghij"  # V = 15
VOCAB = Vocab(CHARS)
CONFIGS = {
    "L1-onehot": ModelConfig(vocab_size=len(CHARS), layers=1, hidden=6, embed=0),
    "L1-embed": ModelConfig(vocab_size=len(CHARS), layers=1, hidden=6, embed=4),
    "L2-onehot": ModelConfig(vocab_size=len(CHARS), layers=2, hidden=7, embed=0),
    "L2-embed": ModelConfig(vocab_size=len(CHARS), layers=2, hidden=7, embed=4),
}
SMALL = CONFIGS["L2-embed"]


def make_params(config=SMALL, seed=0, dtype=np.float32, head_scale=3.0):
    """Random parameters; a larger head makes the next-character distributions less flat."""
    params = init_params(config, np.random.default_rng(seed), dtype)
    params["head.W"][...] *= head_scale
    return params


def forward_logits(params, text):
    """(len(text), V) float64 logits after each character of text, one forward pass per step
    (the plain engine path: no sampling code involved)."""
    config = params.config
    h, c = zero_state(config, 1, params.dtype)
    ws = Workspace(config, 1, 1, params.dtype)
    rows = []
    for token in VOCAB.encode(text):
        rows.append(forward(params, np.array([[token]]), h, c, ws)[0].astype(np.float64))
    return np.array(rows)


def softmax(logits, temperature=1.0):
    z = (logits - logits.max()) / temperature
    p = np.exp(z)
    return p / p.sum()


# --------------------------------------------------------------------------------------------
# The fused step kernel


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_step_kernel_logits_equal_forward(name, dtype):
    config = CONFIGS[name]
    params = make_params(config, seed=1, dtype=dtype)
    T, B = 9, 3
    inputs = np.random.default_rng(2).integers(0, config.vocab_size, (T, B))
    h_ref, c_ref = zero_state(config, B, dtype)
    expected = forward(params, inputs, h_ref, c_ref, Workspace(config, T, B, dtype)).reshape(T, B, -1)

    layout = sample.step_layout(params)
    L, H, V = config.layers, config.hidden, config.vocab_size
    h, c = zero_state(config, B, dtype)
    z, xh = np.empty((3, B, 4 * H), dtype), np.empty((B, 2 * H), dtype)
    logits = np.empty((B, V), dtype)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == np.float64 else {"rtol": 1e-4, "atol": 2e-5}
    for t in range(T):
        tokens = inputs[t].astype(np.int64)
        kernels.model_step(logits, h, c, z, xh, tokens, *layout.weights())
        np.testing.assert_allclose(logits, expected[t], **tol)
    np.testing.assert_allclose(h, h_ref, **tol)
    np.testing.assert_allclose(c, c_ref, **tol)
    assert len(layout.M) == L


def test_step_layout_views_the_parameters():
    params = make_params(CONFIGS["L2-onehot"])
    layout = sample.step_layout(params)
    assert np.shares_memory(layout.table, params.flat)  # one-hot: the table is Wx itself
    assert all(np.shares_memory(M, params.flat) for M in layout.M)  # [Wx; Wh] lie side by side


# --------------------------------------------------------------------------------------------
# Reproducibility, greedy decoding, lengths, stop


def test_same_random_seed_same_text():
    params = make_params()
    first = sample.generate(params, VOCAB, "ab", 150, random_seed=7, num_samples=2)
    again = sample.generate(params, VOCAB, "ab", 150, random_seed=7, num_samples=2)
    other = sample.generate(params, VOCAB, "ab", 150, random_seed=8, num_samples=2)
    assert first == again
    assert first != other
    assert first[0] != first[1]  # the samples of a batch are independent draws
    # Sample b does not depend on how many were drawn with it.
    assert sample.generate(params, VOCAB, "ab", 150, random_seed=7)[0] == first[0]


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("threads", [2, 3])
def test_threads_write_the_same_text(name, threads):
    """Splitting each layer's rows between two threads keeps every sum in the same order: the
    same characters, bit for bit the same state."""
    params = make_params(CONFIGS[name], dtype=np.float64)
    options = {"random_seed": 5, "num_samples": 2, "temperature": 1.0}
    one = sample.generate(params, VOCAB, "abc", 130, **options)
    many = sample.generate(params, VOCAB, "abc", 130, threads=threads, **options)
    assert many == one
    layout = sample.step_layout(params)
    states = []
    for n in (1, threads):
        state = sample._State(layout, 2, n)
        state.read(layout, VOCAB.encode("abc, def"))
        states.append((state.h.copy(), state.c.copy(), state.logits.copy()))
    for a, b in zip(*states, strict=True):
        np.testing.assert_array_equal(a, b)


def greedy_reference(params, seed, length):
    """Argmax decoding written with model.forward, one character at a time."""
    config = params.config
    h, c = zero_state(config, 1, params.dtype)
    ws = Workspace(config, 1, 1, params.dtype)
    logits = None
    for token in VOCAB.encode(seed):
        logits = forward(params, np.array([[token]]), h, c, ws)[0].copy()
    out = []
    for _ in range(length):
        token = int(np.argmax(logits))
        out.append(CHARS[token])
        logits = forward(params, np.array([[token]]), h, c, ws)[0].copy()
    return "".join(out)


@pytest.mark.parametrize("name", ["L1-onehot", "L2-embed"])
def test_temperature_zero_and_top_k_one_are_greedy(name):
    params = make_params(CONFIGS[name], seed=3, dtype=np.float64)
    expected = greedy_reference(params, "a.b", 80)
    assert sample.generate(params, VOCAB, "a.b", 80, temperature=0.0) == [expected]
    assert sample.generate(params, VOCAB, "a.b", 80, top_k=1, random_seed=5, num_samples=2) == [expected] * 2
    # A vanishing temperature is greedy too, without overflow or NaN.
    assert sample.generate(params, VOCAB, "a.b", 80, temperature=1e-30, random_seed=1) == [expected]


def test_softmax_is_safe_at_any_temperature():
    params = make_params(head_scale=1e4)  # logits in the thousands
    for temperature in (0.01, 1e-6, 1e-300, 5e-324, 1e6, 1e300):
        (text,) = sample.generate(params, VOCAB, "ab", 30, temperature=temperature, random_seed=0)
        assert len(text) == 30 and set(text) <= set(CHARS)


@pytest.mark.parametrize("length", [0, 1, 63, 64, 65, 200])
def test_exact_length(length):
    texts = sample.generate(make_params(), VOCAB, "hi", length, random_seed=length, num_samples=3)
    assert [len(t) for t in texts] == [length] * 3


def test_empty_seed_starts_from_a_newline():
    params = make_params()
    assert sample.generate(params, VOCAB, "", 40, random_seed=2) == sample.generate(
        params, VOCAB, "\n", 40, random_seed=2
    )


@pytest.mark.parametrize("start, size", [(100, 1), (100, 2), (62, 4), (0, 3)])
def test_stop_ends_the_text_at_its_first_occurrence(start, size):
    params = make_params()
    options = {"random_seed": 11, "num_samples": 2, "temperature": 1.0}
    full = sample.generate(params, VOCAB, "a", 300, **options)
    stop = full[0][start : start + size]  # occurs in sample 0; maybe across a chunk boundary
    cut = sample.generate(params, VOCAB, "a", 300, stop=stop, **options)
    for whole, text in zip(full, cut, strict=True):
        at = whole.find(stop)
        assert text == (whole if at < 0 else whole[: at + len(stop)])
    assert cut[0].endswith(stop) and cut[0].count(stop) == 1


def test_on_text_streams_every_piece():
    pieces = {0: [], 1: []}
    texts = sample.generate(
        make_params(), VOCAB, "ab", 150, random_seed=4, num_samples=2,
        on_text=lambda b, piece: pieces[b].append(piece),
    )  # fmt: skip
    assert ["".join(pieces[b]) for b in (0, 1)] == texts
    assert [len(p) for p in pieces[0]] == [64, 64, 22]


# --------------------------------------------------------------------------------------------
# The sampling distribution


def filtered(p, top_k=None, top_p=None):
    """p restricted to the top_k most likely, then to the fewest of those reaching top_p."""
    order = sorted(range(len(p)), key=lambda v: (-p[v], v))
    keep = order[: top_k or len(p)]
    if top_p is not None:
        total, cum = sum(p[v] for v in keep), 0.0
        for n, v in enumerate(keep):
            cum += p[v]
            if cum >= top_p * total:
                keep = keep[: n + 1]
                break
    q = np.zeros_like(p)
    q[keep] = p[keep]
    return q / q.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [(1.0, None, None), (0.5, None, None), (1.0, 4, None), (1.0, None, 0.7), (2.0, 6, 0.8)],
)
def test_frequencies_match_the_distribution(temperature, top_k, top_p):
    params = make_params(seed=5, dtype=np.float64)
    N = 20000  # streams from the same state: their first characters are N independent draws
    texts = sample.generate(
        params, VOCAB, "ab", 1, temperature=temperature, top_k=top_k, top_p=top_p,
        random_seed=2024, num_samples=N,
    )  # fmt: skip
    counts = np.bincount(VOCAB.encode("".join(texts)), minlength=len(CHARS))
    p = filtered(softmax(forward_logits(params, "ab")[-1], temperature), top_k, top_p)
    assert counts[p == 0].sum() == 0
    expected = N * p[p > 0]
    assert expected.min() > 5  # the chi-square approximation holds
    statistic = ((counts[p > 0] - expected) ** 2 / expected).sum()
    assert chi2.sf(statistic, df=(p > 0).sum() - 1) > 0.001


@pytest.mark.parametrize("top_k, top_p", [(2, None), (None, 0.5), (3, 0.6)])
def test_top_k_and_top_p_never_leave_the_allowed_set(top_k, top_p):
    params = make_params(seed=6, dtype=np.float64)
    seed = "ab"
    texts = sample.generate(
        params, VOCAB, seed, 120, temperature=1.5, top_k=top_k, top_p=top_p, random_seed=9, num_samples=3
    )
    for text in texts:
        logits = forward_logits(params, seed + text)[len(seed) - 1 : -1]  # before each character
        for row, ch in zip(logits, text, strict=True):
            allowed = filtered(softmax(row, 1.5), top_k, top_p) > 0
            assert allowed[CHARS.index(ch)]
            if top_k is not None:
                assert allowed.sum() <= top_k


# --------------------------------------------------------------------------------------------
# Bad input


def test_unknown_seed_characters_are_listed():
    params = make_params()
    with pytest.raises(sample.UnknownCharactersError) as info:
        sample.generate(params, VOCAB, "abc€jé€", 10)
    assert isinstance(info.value, CharLSTMError)
    assert info.value.chars == ["é", "€"]
    assert "'é', '€'" in str(info.value)


def test_skip_unknown_drops_them_with_a_warning():
    params = make_params()
    with pytest.warns(sample.UnknownCharactersWarning, match="'€'"):
        texts = sample.generate(params, VOCAB, "a€b", 30, random_seed=1, skip_unknown=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert texts == sample.generate(params, VOCAB, "ab", 30, random_seed=1)


@pytest.mark.parametrize(
    "options",
    [
        {"length": -1},
        {"length": 2.5},
        {"length": True},
        {"temperature": -0.1},
        {"temperature": math.nan},
        {"temperature": math.inf},
        {"top_k": 0},
        {"top_k": 1.5},
        {"top_p": 0.0},
        {"top_p": 1.01},
        {"top_p": -0.5},
        {"num_samples": 0},
        {"stop": ""},
        {"random_seed": -3},
        {"threads": 0},
        {"threads": 1.5},
        {"threads": sample.MAX_THREADS + 1},
    ],
)
def test_bad_values_raise_config_error(options):
    kwargs = {"length": 10, **options}
    length = kwargs.pop("length")
    with pytest.raises(ConfigError):
        sample.generate(make_params(), VOCAB, "ab", length, **kwargs)


def test_load_model_and_generate(tmp_path):
    params = make_params()
    path = save_checkpoint(tmp_path / "m.npz", params, VOCAB, {})
    model = sample.load_model(path)
    assert model.path == path and model.config == params.config
    assert "2x7" in repr(model)
    assert model.generate("ab", 50, random_seed=3) == sample.generate(params, VOCAB, "ab", 50, random_seed=3)
    model.warm_up(2)
