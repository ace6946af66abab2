"""The model that ships with charlstm: found from any folder, its recorded validation loss is
what `charlstm eval` measures on the validation slice, and it writes text."""

import json
import math
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlstm.checkpoint import load_checkpoint, shipped_model_path
from charlstm.cli import app
from charlstm.data import train_size

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpora" / "tinyshakespeare.txt"
README = ROOT / "README.md"
runner = CliRunner()


def test_shipped_model_is_found_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./models/ here
    path = shipped_model_path()
    assert path is not None and path.name == "tinyshakespeare.npz"
    assert path.stat().st_size < 20 * 2**20
    checkpoint = load_checkpoint(path)
    assert checkpoint.train_state == {}  # weights, vocabulary and config only


@pytest.mark.slow
def test_recorded_loss_matches_eval_on_the_validation_slice(tmp_path):
    text = CORPUS.read_text(encoding="utf-8")
    val = text[train_size(len(text), 0.1) :]
    assert len(val) == 111_540
    val_file = tmp_path / "val.txt"
    val_file.write_text(val, encoding="utf-8")
    path = shipped_model_path()

    result = runner.invoke(app, ["eval", str(path), str(val_file), "--json"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)["loss_nats"]

    recorded = load_checkpoint(path).config["best_val_loss"]  # training's 32-stream figure
    assert abs(measured - recorded) < 0.01
    # The README states the eval figure to four decimals: it must be this file's.
    stated = re.search(r"\*\*(\d\.\d{4}) nats/char,\s*\n?\s*[\d.]+ bits/char\*\*", README.read_text())
    assert stated is not None
    assert abs(measured - float(stated.group(1))) < 5e-5
    assert math.isfinite(measured) and measured <= 1.42  # the target: clearly below nanoGPT's 1.4697


def test_it_samples(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sample", "--seed", "ROMEO:", "--length", "200", "--random-seed", "3"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("ROMEO:")
    assert len(result.stdout) >= len("ROMEO:") + 200
