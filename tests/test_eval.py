"""Tests for charlstm.evaluate and the `charlstm eval` command.

`evaluate_text` is checked against the float64 NumPy reference run over the whole text as
one window; `validation_loss` with one stream must agree with it.
"""

import json
import math

import numpy as np
import pytest
import reference
from typer.testing import CliRunner

from charlstm import evaluate
from charlstm.checkpoint import save_checkpoint
from charlstm.cli import app
from charlstm.data import Vocab, encode_known
from charlstm.errors import CorpusError
from charlstm.evaluate import evaluate_text, validation_loss
from charlstm.model import ModelConfig, Workspace, init_params

TEXT = "To be, or not to be, that is the question: Café 中文 😀\nWhether 'tis nobler in the mind.\n" * 4
ENV = {"COLUMNS": "100"}


@pytest.fixture(scope="module")
def model():
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=vocab.size, layers=2, hidden=6, embed=4, dropout=0.3)
    params = init_params(config, np.random.default_rng(7), np.float32)
    return params, vocab


def reference_loss(params, vocab, text):
    """Mean -log p over the known targets of one full-length window, in float64."""
    weights = {name: view.astype(np.float64) for name, view in params.views.items()}
    ids, known = encode_known(text, vocab)
    L, H = params.config.layers, params.config.hidden
    zeros = np.zeros((L, 1, H))
    logits = reference.forward(weights, ids[:-1, None], zeros, zeros)["logits"][:, 0]  # (N-1, V)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    picked = logp[np.arange(len(ids) - 1), ids[1:]]
    mask = known[1:]
    return -picked[mask].mean(), int(mask.sum())


def test_text_loss_matches_the_reference(model):
    params, vocab = model
    result = evaluate_text(params, vocab, TEXT)
    expected, count = reference_loss(params, vocab, TEXT)
    assert result.predicted == count == len(TEXT) - 1  # the first character is not predicted
    assert result.loss == pytest.approx(expected, rel=1e-5)  # float32 with fast tanh
    assert result.bits_per_char == pytest.approx(result.loss / math.log(2))
    assert result.unknown == 0 and result.unknown_chars == []


def test_windows_and_pieces_do_not_change_the_result(model, monkeypatch):
    params, vocab = model
    whole = evaluate_text(params, vocab, TEXT)
    monkeypatch.setattr(evaluate, "TEXT_PIECE", 37)  # pieces split windows and characters
    cut = evaluate_text(params, vocab, TEXT, window=5)
    assert cut.predicted == whole.predicted
    assert cut.loss == pytest.approx(whole.loss, rel=1e-6)


def test_unknown_characters_are_counted_not_scored(model):
    params, vocab = model
    text = "Xto be\tor not to beX, ÿ" + TEXT[:40]
    result = evaluate_text(params, vocab, text)
    assert result.unknown_chars == ["\t", "X", "ÿ"]
    assert result.unknown == 4
    expected, count = reference_loss(params, vocab, text)
    assert result.predicted == count == len(text) - 1 - 3  # the first X is never a target
    assert result.loss == pytest.approx(expected, rel=1e-5)


def test_texts_that_cannot_be_scored(model):
    params, vocab = model
    with pytest.raises(CorpusError, match="too short"):
        evaluate_text(params, vocab, "T")
    with pytest.raises(CorpusError, match="no character"):
        evaluate_text(params, vocab, "TXYZ")


def test_progress_reaches_the_end(model):
    params, vocab = model
    calls = []
    evaluate_text(params, vocab, TEXT, progress=lambda done, total: calls.append((done, total)), window=16)
    assert calls[0] == (0, len(TEXT)) and calls[-1] == (len(TEXT), len(TEXT))
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_one_stream_validation_equals_text_evaluation(model):
    params, vocab = model
    tokens = vocab.encode(TEXT).astype(np.uint8)
    one_stream = validation_loss(params, tokens, batch=1, seq_len=16)
    assert one_stream == pytest.approx(evaluate_text(params, vocab, TEXT).loss, rel=1e-6)
    several = validation_loss(params, tokens, batch=4, seq_len=16)
    assert math.isfinite(several)
    assert math.isnan(validation_loss(params, tokens[:1]))


@pytest.mark.parametrize("hidden, batch", [(6, 4), (32, 16)], ids=["blas", "tiles"])
def test_validation_on_the_training_kernels_equals_its_own_pass(hidden, batch):
    """validation_loss(training=ws): the windows on the training kernels, in a training run's
    buffers (2x6 on BLAS, 2x32 in two bands on the register tiles), give the figure of its
    own inference pass to float32 rounding, from windows of the run's length; the last,
    shorter window falls back to the inference pass."""
    vocab = Vocab.from_text(TEXT)
    config = ModelConfig(vocab_size=vocab.size, layers=2, hidden=hidden, embed=4, dropout=0.3)
    params = init_params(config, np.random.default_rng(3), np.float32)
    tokens = vocab.encode(TEXT * 3).astype(np.uint8)
    training = Workspace(config, 5, batch, bands=2 if hidden == 32 else 1)
    buffers = training._training()
    buffers.act.fill(np.nan)
    on_training = validation_loss(params, tokens, batch=batch, training=training)
    own = validation_loss(params, tokens, batch=batch, seq_len=5)
    assert on_training == pytest.approx(own, rel=1e-6, abs=0)
    assert np.isfinite(buffers.act).all()  # the training kernels ran, in the run's buffers
    assert not training.dropout_on  # no dropout in validation, on any path
    other_batch = Workspace(config, 5, batch + 1)  # not the validation's streams: its own pass
    assert validation_loss(params, tokens, batch=batch, training=other_batch) == validation_loss(
        params, tokens, batch=batch
    )


# --- the command


@pytest.fixture
def files(tmp_path, model):
    params, vocab = model
    ckpt = save_checkpoint(tmp_path / "m.npz", params, vocab, {})
    text = tmp_path / "text.txt"
    text.write_text(TEXT + "\tÿ", encoding="utf-8")
    return ckpt, text


def test_eval_command_prints_json(files, model):
    ckpt, text = files
    result = CliRunner().invoke(app, ["eval", str(ckpt), str(text), "--json"], env=ENV)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    expected = evaluate_text(*model, text.read_text(encoding="utf-8"))
    assert out["loss_nats"] == pytest.approx(expected.loss)
    assert out["bits_per_char"] == pytest.approx(expected.loss / math.log(2))
    assert out["unknown"] == 2 and out["unknown_chars"] == ["\t", "ÿ"]
    assert out["characters"] == len(TEXT) + 2 and out["predicted"] == len(TEXT) - 1


def test_eval_command_prints_a_sentence(files):
    ckpt, text = files
    result = CliRunner().invoke(app, ["eval", str(ckpt), str(text)], env=ENV)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "nats/char" in lines[0] and "bits/char" in lines[0]
    assert "never seen" in lines[1] and "'ÿ'" in lines[1]


@pytest.mark.parametrize("case", ["missing model", "bad model", "missing text", "binary text"])
def test_eval_command_bad_inputs(files, tmp_path, case):
    ckpt, text = files
    if case == "missing model":
        ckpt = tmp_path / "nope.npz"
    elif case == "bad model":
        ckpt = tmp_path / "bad.npz"
        ckpt.write_bytes(b"not a zip file")
    elif case == "missing text":
        text = tmp_path / "nope.txt"
    else:
        text = tmp_path / "bin.txt"
        text.write_bytes(b"abc\0def")
    result = CliRunner().invoke(app, ["eval", str(ckpt), str(text)], env=ENV)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.output
