"""Tests for charlstm.train and charlstm.schedule: exact resume, budgets, checkpoints, the
divergence guard and option handling, on tiny models and a tiny corpus.

Resume equality is bitwise in float32: same process, same thread count, same kernels.
"""

import math
import re
from pathlib import Path

import numpy as np
import pytest

from charlstm import train as train_module
from charlstm.checkpoint import load_checkpoint
from charlstm.errors import CheckpointError, ConfigError, CorpusError, TrainingDivergedError
from charlstm.options import TrainOptions, resolve_options
from charlstm.schedule import learning_rate
from charlstm.train import Hooks, last_path_for, train

TEXT = (
    "The quick brown fox jumps over the lazy dog. Café naïve, 中文 😀!\n"
    "Pack my box with five dozen liquor jugs; how vexingly quick daft zebras jump.\n"
) * 30

# a model small enough that a step takes well under a millisecond
TINY = {"layers": 2, "hidden": 8, "embed": 4, "seq_len": 8, "batch_size": 4, "dropout": 0.2}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(corpus, out, stop_at=None, resume=None, **options):
    """train() with TINY options; stop_at asks it to stop (as Ctrl-C does) after that step."""
    seen = {"step": 0}

    def on_step(info):
        seen["step"] = info.step

    hooks = Hooks(step=on_step, should_stop=(lambda: seen["step"] >= stop_at) if stop_at else None)
    given = options if resume else {**TINY, **options}
    return train([corpus] if corpus else None, given, out=out, resume=resume, hooks=hooks)


def state_of(path):
    return load_checkpoint(path, with_train_state=True)


# --- schedule


def test_schedule_warms_up_then_decays_to_the_floor():
    lr = [learning_rate(k, (k - 1) / 100, peak=1.0, floor=0.1, warmup=10) for k in range(1, 101)]
    assert lr[0] == pytest.approx(0.1)  # step 1 of 10 warmup steps, at the peak of the cosine
    assert all(a < b for a, b in zip(lr[:9], lr[1:10], strict=True))  # warmup rises
    assert all(a >= b for a, b in zip(lr[10:], lr[11:], strict=False))  # then never rises
    assert learning_rate(50, 0.0, peak=1.0, floor=0.1, warmup=10) == 1.0
    assert learning_rate(50, 1.0, peak=1.0, floor=0.1, warmup=10) == pytest.approx(0.1)
    assert learning_rate(50, 7.0, peak=1.0, floor=0.1, warmup=10) == pytest.approx(0.1)  # clamped
    assert learning_rate(1, 0.0, peak=1.0, floor=0.1, warmup=0) == 1.0


# --- exact resume


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_interrupted_and_resumed_run_equals_a_straight_run(tmp_path, corpus, cell):
    run(corpus, tmp_path / "a.npz", steps=14, eval_every=5, cell=cell)
    stopped = run(corpus, tmp_path / "b.npz", steps=14, eval_every=5, stop_at=7, cell=cell)
    assert stopped.interrupted and stopped.step == 7
    assert state_of(tmp_path / "b.last.npz").config["step"] == 7
    resumed = run(None, None, resume=tmp_path / "b.last.npz")
    assert resumed.step == 14 and not resumed.interrupted
    assert resumed.out == tmp_path / "b.npz"  # beside the state file, as the run wrote it

    a, b = state_of(tmp_path / "a.last.npz"), state_of(tmp_path / "b.last.npz")
    assert np.array_equal(a.params.flat, b.params.flat)  # bitwise
    for key in ("m", "v", "h", "c", "rng", "data"):
        assert np.array_equal(a.train_state[key], b.train_state[key]), key
    assert resumed.chars_seen == 14 * 4 * 8


def test_resume_with_a_larger_step_budget_counts_the_whole_run(tmp_path, corpus):
    first = run(corpus, tmp_path / "m.npz", steps=6, eval_every=100)
    assert first.step == 6 and first.best_step == 6  # the end of a run always validates
    more = run(None, None, resume=tmp_path / "m.last.npz", steps=10)
    assert more.step == 10
    again = run(None, None, resume=tmp_path / "m.last.npz", steps=10)
    assert again.step == 10  # already done: nothing to train


def test_validation_does_not_perturb_training(tmp_path, corpus):
    run(corpus, tmp_path / "often.npz", steps=12, eval_every=1)
    run(corpus, tmp_path / "once.npz", steps=12, eval_every=100)
    often, once = state_of(tmp_path / "often.last.npz"), state_of(tmp_path / "once.last.npz")
    assert np.array_equal(often.params.flat, once.params.flat)
    assert np.array_equal(often.train_state["rng"], once.train_state["rng"])


def test_weight_average_is_what_is_validated_saved_and_resumed(tmp_path, corpus):
    """--ema: each evaluation (here every step) sees and the best checkpoint holds the running
    average e_k = d*e_(k-1) + (1-d)*w_k of the weights w_k, which train as without it; the
    average is part of the training state and resumes exactly."""

    def weights_seen(out, **options):
        seen = []
        hooks = Hooks(evaluation=lambda info: seen.append(info.params.flat.copy()))
        given = {**TINY, "steps": 8, "eval_every": 1, **options}
        result = train([corpus], given, out=out, hooks=hooks)
        return seen, result

    d = 0.75
    raw, _ = weights_seen(tmp_path / "raw.npz")
    avg, result = weights_seen(tmp_path / "avg.npz", ema=d)
    for k in range(1, 8):
        np.testing.assert_allclose(avg[k], d * avg[k - 1] + (1 - d) * raw[k], rtol=0, atol=1e-6)
    assert not np.allclose(avg[-1], raw[-1], atol=1e-4)
    last = state_of(tmp_path / "avg.last.npz")
    assert np.array_equal(last.params.flat, raw[-1])  # training itself is unchanged
    assert np.array_equal(last.train_state["ema"], avg[-1])
    best = load_checkpoint(tmp_path / "avg.npz")
    assert np.array_equal(best.params.flat, avg[result.best_step - 1])

    run(corpus, tmp_path / "cut.npz", steps=8, eval_every=3, ema=d, stop_at=5)
    run(None, None, resume=tmp_path / "cut.last.npz")
    assert np.array_equal(state_of(tmp_path / "cut.last.npz").train_state["ema"], avg[-1])


def test_weight_average_can_start_on_resume(tmp_path, corpus):
    run(corpus, tmp_path / "m.npz", steps=4, eval_every=2)
    notices = []
    hooks = Hooks(notice=notices.append)
    train(None, {"steps": 6, "ema": 0.9}, out=None, resume=tmp_path / "m.last.npz", hooks=hooks)
    assert any("weight average starts here, at step 4" in n for n in notices)
    state = state_of(tmp_path / "m.last.npz")
    assert state.train_state["ema"].shape == state.params.flat.shape
    assert TrainOptions.from_dict(state.config["training"]).ema == 0.9


def test_different_seeds_give_different_models(tmp_path, corpus):
    run(corpus, tmp_path / "s1.npz", steps=3, random_seed=1)
    run(corpus, tmp_path / "s2.npz", steps=3, random_seed=2)
    p1, p2 = load_checkpoint(tmp_path / "s1.npz").params, load_checkpoint(tmp_path / "s2.npz").params
    assert not np.array_equal(p1.flat, p2.flat)


# --- checkpoints


def test_checkpoints_hold_what_the_readme_promises(tmp_path, corpus):
    result = run(corpus, tmp_path / "m.npz", steps=4, eval_every=2)
    best = load_checkpoint(tmp_path / "m.npz", with_train_state=True)
    assert best.train_state == {}  # weights, vocab and config only
    assert best.config["training"]["hidden"] == 8 and best.config["step"] == result.best_step
    assert best.config["corpus"] == [str(corpus.resolve())]
    last = state_of(tmp_path / "m.last.npz")
    assert set(last.train_state) == {"version", "m", "v", "h", "c", "rng", "data", "counters"}
    P = last.params.flat.size
    assert last.train_state["m"].shape == (P,) and last.train_state["h"].shape == (2, 4, 8)
    assert result.last == tmp_path / "m.last.npz" and result.out == tmp_path / "m.npz"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_last_path_sits_beside_the_best_weights():
    assert last_path_for("models/x.npz") == Path("models/x.last.npz")
    assert last_path_for("run/model") == Path("run/model.last.npz")


def test_without_validation_the_latest_weights_are_kept(tmp_path, corpus):
    notices = []
    result = train(
        [corpus],
        {**TINY, "steps": 4, "val_frac": 0.0},
        out=tmp_path / "m.npz",
        hooks=Hooks(notice=notices.append),
    )
    assert result.val_loss is None and result.out == tmp_path / "m.npz"
    assert any("no validation" in n for n in notices)


def test_stop_before_the_first_step_writes_nothing(tmp_path, corpus):
    result = train(
        [corpus], {**TINY, "steps": 5}, out=tmp_path / "m.npz", hooks=Hooks(should_stop=lambda: True)
    )
    assert result.interrupted and result.step == 0 and result.last is None
    assert not (tmp_path / "m.last.npz").exists()


# --- budgets


def test_epoch_budget(tmp_path, corpus):
    result = run(corpus, tmp_path / "m.npz", epochs=1.0)
    assert result.epoch == pytest.approx(1.0)


def test_minute_budget_stops_on_time(tmp_path, corpus):
    infos = []
    result = train(
        [corpus], {**TINY, "minutes": 0.01}, out=tmp_path / "m.npz", hooks=Hooks(step=infos.append)
    )
    assert result.step > 0 and result.elapsed >= 0.6
    assert infos[-1].total_steps is None and 0 < infos[-1].fraction <= 1


def test_no_budget_means_the_default_minutes():
    options, notices = resolve_options({})
    assert options.minutes == 15 and notices


def test_each_cell_gets_its_own_default_learning_rate_unless_one_is_given():
    lstm, _ = resolve_options({})
    gru, _ = resolve_options({"cell": "gru"})
    rnn, _ = resolve_options({"cell": "rnn", "steps": 3})
    assert (lstm.lr, gru.lr, rnn.lr) == (8e-3, 2e-3, 2e-3)
    assert lstm.floor_lr == 8e-4 and gru.floor_lr == 2e-4  # the cosine ends at a tenth of each
    given, _ = resolve_options({"cell": "gru", "lr": 5e-3})
    assert given.lr == 5e-3
    # a resumed run keeps the rate it was started with, whatever the cell's default
    resumed, _ = resolve_options({"minutes": 1.0}, TrainOptions(cell="gru", lr=8e-3, steps=10))
    assert resumed.lr == 8e-3


# --- divergence


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_absurd_learning_rate_stops_with_a_clear_error(tmp_path, corpus, weight_decay):
    # without weight decay the loss stays finite (about 1e7 nats); with it, it turns inf/NaN
    out = tmp_path / "m.npz"
    with pytest.raises(TrainingDivergedError, match=r"diverged at step \d+") as err:
        run(corpus, out, steps=50, eval_every=1, lr=1e6, warmup=0, weight_decay=weight_decay)
    step = int(re.search(r"diverged at step (\d+)", str(err.value)).group(1))
    assert f"the last good state is {last_path_for(out)} (step {step - 1})" in str(err.value)
    good = state_of(last_path_for(out))  # written by the validation before: loadable, finite
    assert good.config["step"] == step - 1
    assert np.isfinite(good.params.flat).all() and np.isfinite(good.train_state["m"]).all()


# --- options and resume errors


def test_options_are_validated():
    with pytest.raises(ConfigError, match="only one of"):
        resolve_options({"steps": 5, "minutes": 1.0})
    with pytest.raises(ConfigError, match="--dropout"):
        resolve_options({"dropout": 1.0})
    with pytest.raises(ConfigError, match="--steps"):
        resolve_options({"steps": 0})
    with pytest.raises(ConfigError, match="unknown training option"):
        resolve_options({"hiden": 3})
    with pytest.raises(ConfigError, match="--ema"):
        resolve_options({"ema": 1.0})


def test_resume_refuses_conflicting_options_and_allows_budget_changes():
    saved = TrainOptions(hidden=8, steps=10)
    options, _ = resolve_options({"hidden": 8, "minutes": 2.0, "eval_every": 3}, saved)
    assert options.hidden == 8 and options.minutes == 2.0 and options.steps is None
    with pytest.raises(ConfigError, match="--hidden 16.*started with --hidden 8"):
        resolve_options({"hidden": 16}, saved)


def test_resume_errors(tmp_path, corpus):
    out = tmp_path / "m.npz"
    run(corpus, out, steps=2)
    with pytest.raises(CheckpointError, match="no training state"):
        run(None, None, resume=out)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        run(None, None, resume=tmp_path / "missing.last.npz")
    other = tmp_path / "other.txt"
    other.write_text("abcabcabcabcabcabc" * 20, encoding="utf-8")
    with pytest.raises(ConfigError, match="different vocabulary"):
        run(other, None, resume=last_path_for(out))
    with pytest.raises(ConfigError, match="reserved"):
        run(corpus, tmp_path / "x.last.npz", steps=1)


def test_small_corpus_shrinks_the_batch_with_a_notice(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("hello there, general kenobi\n", encoding="utf-8")
    notices = []
    result = train(
        [path],
        {**TINY, "steps": 3, "val_frac": 0.0},
        out=tmp_path / "m.npz",
        hooks=Hooks(notice=notices.append),
    )
    assert result.batch_size * (result.seq_len + 1) <= 27
    assert any("corpus is small" in n for n in notices)
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab", encoding="utf-8")
    with pytest.raises(CorpusError, match="too small"):
        train([tiny], {**TINY, "steps": 3}, out=tmp_path / "t.npz")


def test_models_too_large_to_save_or_train_are_refused_before_allocating(tmp_path, corpus, monkeypatch):
    with pytest.raises(ConfigError, match="too large"):
        run(corpus, tmp_path / "m.npz", steps=1, layers=64, hidden=16384)
    monkeypatch.setattr(train_module.os, "sysconf", lambda name: 1024)  # a 1 MB machine
    with pytest.raises(ConfigError, match="needs about .* GB to train"):
        run(corpus, tmp_path / "m.npz", steps=1, hidden=256)


def test_saved_options_of_the_wrong_type_are_refused():
    with pytest.raises(ConfigError, match="--steps must be a whole number"):
        TrainOptions.from_dict({"steps": "12"})
    with pytest.raises(ConfigError, match="--lr must be a number"):
        TrainOptions.from_dict({"lr": True})
    assert TrainOptions.from_dict({"lr": 1}).lr == 1.0
    with pytest.raises(ConfigError, match="finite"):
        resolve_options({"clip": math.inf})
