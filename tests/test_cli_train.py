"""Tests for `charlstm train`: bad inputs end in one `error:` line, Ctrl-C in a real process
saves a resumable state, the second Ctrl-C aborts, and a slow end-to-end train-then-eval run.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from charlstm.checkpoint import load_checkpoint
from charlstm.cli import app
from charlstm.cli.common import stderr_console
from charlstm.cli.train_cmd import _StopOnInterrupt

ENV = {"COLUMNS": "100"}
TEXT = "It was the best of times, it was the worst of times; naïve café, 東京 🌸.\n" * 40
TINY = ["--layers", "1", "--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch-size", "4"]


def invoke(*args):
    return CliRunner().invoke(app, ["train", *map(str, args)], env=ENV)


def one_error_line(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_train_writes_both_checkpoints_and_a_summary(tmp_path, corpus):
    out = tmp_path / "models" / "m.npz"
    result = invoke(corpus, *TINY, "--steps", 6, "--eval-every", 3, "--out", out)
    assert result.exit_code == 0, result.output
    assert out.exists() and (tmp_path / "models" / "m.last.npz").exists()
    assert (tmp_path / "models" / ".charlstm-cache").is_dir()
    err = result.stderr
    assert "step 1/6" in err and "val loss" in err and "training summary" in err
    assert "bits/char" in err
    compact = re.sub(r"[\s│]", "", err)  # the table folds long paths across lines
    assert str(out) in compact and str(tmp_path / "models" / "m.last.npz") in compact


# --- bad inputs: one line, exit 1


@pytest.mark.parametrize(
    "case, content, fragment",
    [
        ("missing", None, "no such file"),
        ("empty", b"", "file is empty"),
        ("bad utf-8", b"hello \xff world", "invalid UTF-8 at byte offset 6"),
        ("binary", b"PK\x03\x04\x00\x00binary", "binary"),
        ("too small", b"ab", "too small"),
    ],
)
def test_bad_corpus(tmp_path, case, content, fragment):
    path = tmp_path / "c.txt"
    if content is not None:
        path.write_bytes(content)
    one_error_line(invoke(path, *TINY, "--steps", 2, "--out", tmp_path / "m.npz"), str(path), fragment)


def test_a_directory_is_not_a_corpus(tmp_path):
    one_error_line(invoke(tmp_path, "--steps", 2), "is a directory")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--steps", "5", "--minutes", "1"], "only one of"),
        (["--dropout", "1.5"], "--dropout"),
        (["--lr", "-1"], "--lr"),
        (["--hidden", "0"], "--hidden"),
        (["--steps", "abc"], "--steps"),
        (["--no-such-option"], "no-such-option"),
    ],
)
def test_bad_options(corpus, tmp_path, args, fragment):
    one_error_line(invoke(corpus, *args, "--out", tmp_path / "m.npz"), fragment)


def test_unwritable_out_fails_before_reading_the_corpus(tmp_path, corpus):
    (tmp_path / "a-file").write_text("not a folder")
    out = tmp_path / "a-file" / "m.npz"
    one_error_line(invoke(corpus, *TINY, "--steps", 2, "--out", out), str(out), "cannot write")


def test_no_corpus_and_no_resume():
    one_error_line(invoke("--steps", 3), "no corpus")


def test_bad_resume(tmp_path, corpus):
    one_error_line(invoke("--resume", tmp_path / "nope.last.npz"), "no such checkpoint")
    out = tmp_path / "m.npz"
    assert invoke(corpus, *TINY, "--steps", 2, "--out", out).exit_code == 0
    one_error_line(invoke("--resume", out), "no training state", "m.last.npz")
    one_error_line(
        invoke("--resume", tmp_path / "m.last.npz", "--hidden", 16), "cannot resume with --hidden 16"
    )


def test_divergence_ends_with_one_error_line(tmp_path, corpus):
    args = [corpus, *TINY, "--steps", 50, "--lr", "1e6", "--warmup", 0, "--out", tmp_path / "m.npz"]
    result = invoke(*args)
    assert result.exit_code == 1 and "Traceback" not in result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: training diverged at step ") and "--lr" in last


# --- Ctrl-C


def test_first_ctrl_c_stops_after_the_step_second_aborts():
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the tests run as a background job
    stop = _StopOnInterrupt(stderr_console())
    with stop:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # Python runs the handler between bytecodes
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    assert signal.getsignal(signal.SIGINT) is before  # what was there is put back


def test_sigint_saves_a_loadable_state_and_resume_continues(tmp_path, corpus):
    out = tmp_path / "m.npz"
    cmd = [str(Path(sys.executable).parent / "charlstm"), "train", str(corpus), *TINY]
    cmd += ["--steps", "10000000", "--eval-every", "1000000", "--out", str(out)]
    env = {**os.environ, **ENV}
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("step "):
                break
        else:
            pytest.fail("no progress line: " + "".join(lines))
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest
    last = tmp_path / "m.last.npz"
    assert f"resume with: charlstm train --resume {last}" in rest
    assert "Traceback" not in rest
    state = load_checkpoint(last, with_train_state=True)
    step = state.config["step"]
    assert step >= 1 and np.isfinite(state.params.flat).all()
    assert json.loads(str(state.train_state["counters"][()]))["step"] == step

    result = invoke("--resume", last, "--steps", step + 3)
    assert result.exit_code == 0, result.output
    assert f"resuming {last} at step {step:,}" in result.stderr
    assert load_checkpoint(last).config["step"] == step + 3


# --- end to end


@pytest.mark.slow
def test_train_then_eval_end_to_end(tmp_path, corpus):
    out = tmp_path / "e2e.npz"
    args = [corpus, "--layers", "1", "--hidden", "32", "--embed", "8", "--seq-len", "16", "--batch-size", "8"]
    trained = invoke(*args, "--steps", 150, "--eval-every", 50, "--lr", "1e-2", "--out", out, "--preview")
    assert trained.exit_code == 0, trained.output
    assert "sample:" in trained.stderr or "preview unavailable" in trained.stderr
    best = load_checkpoint(out)
    scored = CliRunner().invoke(app, ["eval", str(out), str(corpus), "--json"], env=ENV)
    assert scored.exit_code == 0, scored.output
    loss = json.loads(scored.stdout)["loss_nats"]
    assert loss < 0.8 * np.log(best.vocab.size)  # learned something
    assert best.config["val_loss"] == pytest.approx(best.config["best_val_loss"])
