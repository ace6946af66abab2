"""Tests for `charlstm info`: every kind of checkpoint (best weights, `.last.npz`, shipped,
with and without a metrics log), its --json, and bad input, through CliRunner.
"""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlstm.checkpoint import load_checkpoint, save_checkpoint, shipped_model_path
from charlstm.cli import app
from charlstm.info import escape
from charlstm.train import train

ENV = {"COLUMNS": "100"}
TEXT = "Tab\there, newline\nand back\\slash; naïve 東京.\n" * 60
TINY = {"layers": 1, "hidden": 8, "embed": 4, "seq_len": 8, "batch_size": 4}


def info(*args):
    return CliRunner().invoke(app, ["info", *map(str, args)], env=ENV)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("info")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    train([corpus], {**TINY, "steps": 12, "eval_every": 4}, out=folder / "m.npz")
    return folder


def test_info_on_best_weights_with_a_log(trained):
    result = info(trained / "m.npz")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "charlstm/1, weights" in out and "lstm 1x8, embed 4" in out
    assert f"{load_checkpoint(trained / 'm.npz').model_config.n_params:,} parameters" in out
    assert "\\t" in out and "\\n" in out and "\\\\" in out and "東" in out  # escaped, one line
    assert "12 steps" in out and "epochs" in out and "characters seen" in out and "of training" in out
    best_step = load_checkpoint(trained / "m.npz").config["record"]["best_step"]
    assert "best validation" in out and f"at step {best_step:,}" in out
    assert f"loss curves ({trained / 'm.metrics.csv'})" in out
    assert "step 12" in out and "validation" in out


def test_info_json_holds_the_facts(trained):
    result = info(trained / "m.last.npz", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "training state" and data["step"] == 12 and data["layers"] == 1
    assert data["vocab"] == "".join(sorted(set(TEXT)))
    assert data["chars_seen"] == 12 * 4 * 8 and data["epoch"] > 0
    assert data["resume"]["from_step"] == 12 and "budget is spent" in data["resume"]["budget"]
    assert data["resume"]["best_weights"] == str(trained / "m.npz")
    assert [s for s, _ in data["curves"]["train"]] == list(range(1, 13))
    assert [s for s, _ in data["curves"]["validation"]] == [4, 8, 12]
    assert data["curves"]["best"][1] == pytest.approx(data["best_val_loss"])


def test_info_on_a_training_state_says_what_resume_would_do(trained):
    result = info(trained / "m.last.npz")
    assert result.exit_code == 0, result.output
    assert f"charlstm train --resume {trained / 'm.last.npz'}" in result.stdout.replace("\n", "")


def test_without_a_log_the_curves_come_from_the_checkpoints_record(trained, tmp_path):
    ckpt = load_checkpoint(trained / "m.npz")
    lone = tmp_path / "lone.npz"
    save_checkpoint(lone, ckpt.params, ckpt.vocab, ckpt.config)
    data = json.loads(info(lone, "--json").stdout)
    assert data["curves"]["source"] == "checkpoint record"
    assert [s for s, _ in data["curves"]["validation"]] == [4, 8, 12]
    assert data["curves"]["train"] == []


def test_an_unreadable_log_is_a_warning(trained, tmp_path):
    ckpt = load_checkpoint(trained / "m.npz")
    save_checkpoint(tmp_path / "w.npz", ckpt.params, ckpt.vocab, ckpt.config)
    (tmp_path / "w.metrics.csv").write_bytes(b"\xff\xfe garbage")
    result = info(tmp_path / "w.npz")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("warning: ") and "metrics log" in result.stderr
    assert "checkpoint record" in result.stdout


@pytest.mark.skipif(shipped_model_path() is None, reason="no shipped model installed")
def test_info_on_the_shipped_model():
    result = info("shipped")
    assert result.exit_code == 0, result.output
    assert "lstm 2x512" in result.stdout and "65 characters" in result.stdout
    assert "none recorded" in result.stdout  # trained before the record existed, no log beside it
    data = json.loads(info("shipped", "--json").stdout)
    assert data["resume"] is None and data["best_val_loss"] == pytest.approx(1.4175, abs=1e-4)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (None, "no such checkpoint"),
        (b"not a zip", "not a readable charlstm checkpoint"),
        (b"", "not a readable"),
    ],
)
def test_bad_files_get_evals_one_line_errors(tmp_path, content, fragment):
    path = tmp_path / "bad.npz"
    if content is not None:
        path.write_bytes(content)
    result = info(path)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.output


def test_escape_reads_back():
    assert escape("a b\n\t\\\x01é") == "a␠b\\n\\t\\\\\\x01é"
