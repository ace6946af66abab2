"""Tests for `charlstm sample`: what reaches stdout (seed, text, separators, JSON), what reaches
stderr (the model used, warnings), and every bad value ending in one `error:` line, exit 1.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from charlstm import sample
from charlstm.checkpoint import save_checkpoint
from charlstm.cli import app
from charlstm.data import Vocab
from charlstm.model import ModelConfig, init_params

ENV = {"COLUMNS": "100"}
VOCAB = Vocab("\n !,.abcdefghij")
CONFIG = ModelConfig(vocab_size=VOCAB.size, layers=2, hidden=7, embed=4)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, np.random.default_rng(0))


@pytest.fixture
def model_path(tmp_path, params):
    return save_checkpoint(tmp_path / "tiny.npz", params, VOCAB, {})


def invoke(*args):
    return CliRunner().invoke(app, ["sample", *map(str, args)], env=ENV)


def one_error_line(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_prints_the_seed_then_the_text(model_path, params):
    result = invoke("--model", model_path, "--seed", "a b", "--length", 100, "--random-seed", 5)
    assert result.exit_code == 0, result.output
    (expected,) = sample.generate(params, VOCAB, "a b", 100, random_seed=5)
    assert result.stdout == "a b" + expected  # exactly: no newline added when not a terminal
    assert f"model: {model_path} (random seed 5)" in result.stderr


def test_options_reach_the_sampler(model_path, params):
    args = ["--seed", "ab", "--length", 150, "--random-seed", 3, "--temperature", 1.3]
    args += ["--top-k", 4, "--top-p", 0.9, "--stop", "a"]
    result = invoke("--model", model_path, *args)
    assert result.exit_code == 0, result.output
    (expected,) = sample.generate(
        params, VOCAB, "ab", 150, random_seed=3, temperature=1.3, top_k=4, top_p=0.9, stop="a"
    )
    assert result.stdout == "ab" + expected


def test_temperature_zero_is_repeatable_without_a_random_seed(model_path):
    first = invoke("--model", model_path, "--seed", "hi", "--length", 40, "--temperature", 0)
    second = invoke("--model", model_path, "--seed", "hi", "--length", 40, "--temperature", 0)
    assert first.exit_code == second.exit_code == 0
    assert first.stdout == second.stdout and len(first.stdout) == 42


def test_same_random_seed_same_output(model_path):
    runs = [invoke("--model", model_path, "--length", 80, "--random-seed", 9) for _ in range(2)]
    assert runs[0].stdout == runs[1].stdout and len(runs[0].stdout) == 80


def test_several_samples_are_separated(model_path, params):
    result = invoke(
        "--model", model_path, "--seed", "a", "--length", 30, "--num-samples", 3, "--random-seed", 1
    )
    assert result.exit_code == 0, result.output
    texts = sample.generate(params, VOCAB, "a", 30, random_seed=1, num_samples=3)
    expected = "".join(f"--- sample {k} of 3 ---\na{text}\n" for k, text in enumerate(texts, start=1))
    assert result.stdout == expected


def test_json(model_path, params):
    result = invoke(
        "--model", model_path, "--seed", "b", "--length", 20, "--random-seed", 2, "--num-samples", 2, "--json"
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["model"] == str(model_path)
    assert document["options"] == {
        "seed": "b", "length": 20, "stop": None, "temperature": 0.8, "top_k": None,
        "top_p": None, "random_seed": 2, "num_samples": 2, "threads": 1,
    }  # fmt: skip
    assert document["samples"] == sample.generate(params, VOCAB, "b", 20, random_seed=2, num_samples=2)


def test_json_names_the_random_seed_it_picked(model_path, params):
    result = invoke("--model", model_path, "--length", 25, "--json")
    document = json.loads(result.stdout)
    seed = document["options"]["random_seed"]
    assert isinstance(seed, int)
    assert document["samples"] == sample.generate(params, VOCAB, "", 25, random_seed=seed)


def test_default_model_is_the_newest_in_models(tmp_path, params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "models" / "old.npz", params, VOCAB, {})
    newest = save_checkpoint(tmp_path / "models" / "new.npz", params, VOCAB, {})
    os.utime(newest, ns=(2 * 10**18, 2 * 10**18))
    result = invoke("--length", 5)
    assert result.exit_code == 0, result.output
    assert "models/new.npz" in result.stderr


def test_unknown_seed_characters(model_path):
    one_error_line(invoke("--model", model_path, "--seed", "aé€b"), "'é', '€'", "--skip-unknown")


def test_skip_unknown_warns_and_drops_them(model_path, params):
    result = invoke(
        "--model", model_path, "--seed", "aé€b", "--skip-unknown", "--length", 10, "--random-seed", 4
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == "ab" + sample.generate(params, VOCAB, "ab", 10, random_seed=4)[0]
    warning = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "'é', '€'" in warning[0]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--length", "-1"], "length"),
        (["--temperature", "-0.5"], "temperature"),
        (["--top-p", "0"], "top-p"),
        (["--top-p", "1.5"], "top-p"),
        (["--top-k", "0"], "top-k"),
        (["--num-samples", "0"], "num-samples"),
        (["--random-seed", "-1"], "random seed"),
        (["--stop", ""], "stop"),
        (["--length", "many"], "--length"),
        (["--threads", "0"], "threads"),
    ],
)
def test_bad_values(model_path, args, fragment):
    one_error_line(invoke("--model", model_path, *args), fragment)


def test_threads_print_the_same_text(model_path):
    args = ("--model", model_path, "--seed", "ab", "--length", 90, "--random-seed", 3)
    one, two = invoke(*args), invoke(*args, "--threads", 2)
    assert one.exit_code == 0 and two.exit_code == 0, two.output
    assert two.stdout == one.stdout


def test_missing_model(tmp_path):
    one_error_line(invoke("--model", tmp_path / "nope.npz"), "nope.npz")


def test_corrupt_model(tmp_path, model_path):
    broken = tmp_path / "broken.npz"
    broken.write_bytes(model_path.read_bytes()[:300])
    one_error_line(invoke("--model", broken), "broken.npz")


CLI = f"{sys.executable} -c 'from charlstm.cli import main; main()'"  # the console script


@pytest.mark.slow
def test_piping_into_head_ends_quietly(model_path):
    command = f"{CLI} sample --model {model_path} --length 20000 | head -c 10; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0  # charlstm's own exit code: a reader that stops early is no error
    assert len(done.stdout) == 10
    assert "Traceback" not in done.stderr and "Error" not in done.stderr, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("command", ["", "train", "sample", "eval", "inspect-gates"])
def test_help_into_a_closed_pipe_ends_quietly(command):
    """`charlstm eval --help | head -1`: the reader is gone before the help is written (here it
    never reads at all); rich, which typer prints help with, would exit 1."""
    line = f"{CLI} {command} --help | true; exit ${{PIPESTATUS[0]}}"
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
