"""Tests for fine-tuning (`train --init-from`): the vocabulary union and where every row goes,
the zero-step exactness, refused conflicts, exact resume of a fine-tuning run, and the CLI.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charlstm import finetune
from charlstm.checkpoint import load_checkpoint, save_checkpoint
from charlstm.cli import app
from charlstm.data import Vocab
from charlstm.errors import CheckpointError, ConfigError
from charlstm.evaluate import _Scorer
from charlstm.model import ModelConfig, init_params
from charlstm.options import FINETUNE_DEFAULTS
from charlstm.train import Hooks, train

ENV = {"COLUMNS": "100"}
SOURCE_TEXT = "the cat sat on the mat. a bat ate the hat.\n" * 60
NEW_TEXT = "The Cat, 12 bats; 345 hats!\n" * 60  # new: T C , 1-5 b ; !  (and not all old ones)
TINY = {"seq_len": 8, "batch_size": 4}


def make_source(tmp_path: Path, embed: int = 4, name: str = "source.npz") -> Path:
    """A small trained-looking model on SOURCE_TEXT's characters (random weights, big biases)."""
    vocab = Vocab.from_text(SOURCE_TEXT)
    config = ModelConfig(vocab.size, layers=2, hidden=8, embed=embed, dropout=0.1)
    params = init_params(config, np.random.default_rng(5))
    params["head.b"][...] = np.random.default_rng(6).normal(0, 2, vocab.size)  # a spread like a trained head
    path = tmp_path / name
    save_checkpoint(path, params, vocab, {"training": {}})
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "new.txt"
    path.write_text(NEW_TEXT, encoding="utf-8")
    return path


def cli_train(corpus: Path, source: Path, *extra: str):
    """`charlstm train CORPUS --init-from SOURCE --steps 1 ...` through CliRunner."""
    args = ["train", str(corpus), "--init-from", str(source), "--steps", "1", *extra]
    return CliRunner().invoke(app, args, env=ENV)


def test_union_vocab_lists_the_new_characters():
    model, corpus = Vocab.from_text("abc\n"), Vocab.from_text("ab z\n")
    union, new = finetune.union_vocab(model, corpus)
    assert union.chars == ["\n", " ", "a", "b", "c", "z"]
    assert new == [" ", "z"]


@pytest.mark.parametrize("embed", [4, 0])
def test_every_row_follows_its_character(tmp_path, embed):
    source = load_checkpoint(make_source(tmp_path, embed))
    corpus_vocab = Vocab.from_text(NEW_TEXT)
    start = finetune.start_from(source, corpus_vocab, 0.2, np.random.default_rng(0))
    old, new = source.params, start.params
    assert start.vocab.chars == sorted(set(SOURCE_TEXT) | set(NEW_TEXT))
    assert start.new_chars == sorted(set(NEW_TEXT) - set(SOURCE_TEXT))
    assert new.config.dropout == 0.2 and new.config.vocab_size == start.vocab.size
    table = "embed" if embed else "lstm.0.Wx"  # the tensor indexed by the input character
    moved = 0
    for ch in source.vocab.chars:
        i, j = source.vocab.encode(ch)[0], start.vocab.encode(ch)[0]
        moved += i != j
        np.testing.assert_array_equal(new[table][j], old[table][i])
        np.testing.assert_array_equal(new["head.W"][:, j], old["head.W"][:, i])
        assert new["head.b"][j] == old["head.b"][i]
    assert moved >= source.vocab.size - 2  # new characters sort in between: the ids really moved
    floor = old["head.b"].min() - finetune.NEW_CHAR_BIAS_GAP
    for ch in start.new_chars:
        j = start.vocab.encode(ch)[0]
        assert new["head.b"][j] == pytest.approx(floor)
        assert np.abs(new[table][j]).max() > 0  # drawn as a new model's row, not left at zero
        assert np.abs(new["head.W"][:, j]).max() <= 1 / np.sqrt(8)
    for name in new.names():  # everything not indexed by a character is the model's own
        if name not in (table, "head.W", "head.b"):
            np.testing.assert_array_equal(new[name], old[name])


def per_char_log_p(params, vocab, text):
    ids = vocab.encode(text)
    scorer = _Scorer(params.astype(np.float64))
    return scorer.log_probs(ids[:-1, None], ids[1:, None])


def test_at_step_zero_known_text_gets_the_models_log_p(tmp_path):
    source = load_checkpoint(make_source(tmp_path))
    start = finetune.start_from(source, Vocab.from_text(NEW_TEXT), 0.1, np.random.default_rng(0))
    text = SOURCE_TEXT[:300]
    before = per_char_log_p(source.params, source.vocab, text)
    after = per_char_log_p(start.params, start.vocab, text)
    assert np.abs(after - before).max() < 1e-5  # the new characters hold ~e^-8 of the rarest's mass
    assert before.mean() < -0.5  # a real distribution, not a degenerate one


def test_zero_step_exactness_through_the_cli(tmp_path, corpus):
    """A fine-tuned checkpoint after one step at lr 1e-12 scores known text as the source does."""
    source = make_source(tmp_path)
    out = tmp_path / "tuned.npz"
    result = cli_train(corpus, source, "--lr", "1e-12", "--out", str(out), "--seq-len=8", "--batch-size=4")
    assert result.exit_code == 0, result.output
    assert "new character(s) get fresh rows" in result.stderr
    known = tmp_path / "known.txt"
    known.write_text(SOURCE_TEXT[:400], encoding="utf-8")
    losses = []
    for model in (source, out):
        scored = CliRunner().invoke(app, ["eval", str(model), str(known), "--json"], env=ENV)
        assert scored.exit_code == 0, scored.output
        losses.append(json.loads(scored.stdout)["loss_nats"])
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    tuned = load_checkpoint(out)
    assert tuned.config["init_from"]["path"] == str(source.resolve())
    assert tuned.config["init_from"]["new_chars"] == sorted(set(NEW_TEXT) - set(SOURCE_TEXT))


def test_architecture_and_defaults_come_from_the_model(tmp_path, corpus):
    source = make_source(tmp_path)
    result = train([corpus], {**TINY, "steps": 2}, out=tmp_path / "t.npz", init_from=source)
    o = result.options
    assert (o.layers, o.hidden, o.embed, o.dropout) == (2, 8, 4, 0.1)
    assert (o.lr, o.warmup, o.eval_every) == (FINETUNE_DEFAULTS["lr"], FINETUNE_DEFAULTS["warmup"], 50)
    given = train(
        [corpus], {**TINY, "steps": 2, "lr": 1e-3, "hidden": 8}, out=tmp_path / "u.npz", init_from=source
    )
    assert given.options.lr == 1e-3  # what the user gives wins


def test_conflicts_are_refused(tmp_path, corpus):
    source = make_source(tmp_path)
    with pytest.raises(ConfigError, match="the model has --hidden 8, not 16"):
        train([corpus], {"hidden": 16, "steps": 1}, out=tmp_path / "t.npz", init_from=source)
    with pytest.raises(ConfigError, match="--resume or --init-from"):
        train([corpus], {"steps": 1}, out=tmp_path / "t.npz", init_from=source, resume=source)
    with pytest.raises(ConfigError, match="must not overwrite the model"):
        train([corpus], {"steps": 1}, out=source, init_from=source)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        train([corpus], {"steps": 1}, out=tmp_path / "t.npz", init_from=tmp_path / "missing.npz")


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--layers", "3"], "the model has --layers 2, not 3"),
        (["--embed", "0"], "the model has --embed 4, not 0"),
        (["--resume", "x.last.npz"], "--resume or --init-from"),
    ],
)
def test_cli_conflicts_are_one_line_errors(tmp_path, corpus, extra, fragment):
    source = make_source(tmp_path)
    if "--resume" in extra:
        ckpt = load_checkpoint(source)
        save_checkpoint(tmp_path / "x.last.npz", ckpt.params, ckpt.vocab, {})
        extra = ["--resume", str(tmp_path / "x.last.npz")]
    result = cli_train(corpus, source, "--out", str(tmp_path / "t.npz"), *extra)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_shipped_model_can_be_fine_tuned_from_by_name(tmp_path):
    corpus = tmp_path / "new.txt"
    corpus.write_text("Verse 1:1 In the beginning, 2 + 2 = 4.\n" * 40, encoding="utf-8")
    result = train([corpus], {**TINY, "steps": 1}, out=tmp_path / "t.npz", init_from="shipped")
    shipped = load_checkpoint(finetune.named_model_path("shipped"))
    assert result.options.hidden == shipped.model_config.hidden
    tuned = load_checkpoint(tmp_path / "t.npz")
    assert set(tuned.vocab.chars) == set(shipped.vocab.chars) | set(corpus.read_text())


def test_a_fine_tuning_run_resumes_exactly(tmp_path, corpus):
    source = make_source(tmp_path)
    options = {**TINY, "steps": 12, "eval_every": 5}
    train([corpus], options, out=tmp_path / "a.npz", init_from=source)
    seen = {"step": 0}
    hooks = Hooks(step=lambda info: seen.update(step=info.step), should_stop=lambda: seen["step"] >= 7)
    stopped = train([corpus], options, out=tmp_path / "b.npz", init_from=source, hooks=hooks)
    assert stopped.interrupted and stopped.step == 7
    resumed = train(None, {}, resume=tmp_path / "b.last.npz")
    assert resumed.step == 12
    a = load_checkpoint(tmp_path / "a.last.npz", with_train_state=True)
    b = load_checkpoint(tmp_path / "b.last.npz", with_train_state=True)
    assert a.vocab == b.vocab and a.vocab.size > Vocab.from_text(NEW_TEXT).size
    assert np.array_equal(a.params.flat, b.params.flat)
    for key in ("m", "v", "h", "c", "rng", "data"):
        assert np.array_equal(a.train_state[key], b.train_state[key]), key


def test_resume_refuses_a_corpus_that_grew_new_characters(tmp_path, corpus):
    source = make_source(tmp_path)
    train([corpus], {**TINY, "steps": 2}, out=tmp_path / "t.npz", init_from=source)
    corpus.write_text(NEW_TEXT + "Zebra%\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="character"):
        train(None, {"steps": 4}, resume=tmp_path / "t.last.npz")
