"""Tests for `charlstm inspect-gates`: every view, the planted quote unit found through the CLI,
the saved SVG/HTML/text and JSON files, text from stdin, literal user text, NO_COLOR and
--ascii in real subprocesses, and every bad input ending in one `error:` line with exit 1.
"""

import json
import os
import re
import subprocess
import sys

import pytest
from test_gates import CHARS, planted_params, planted_text
from typer.testing import CliRunner

from charlstm.checkpoint import save_checkpoint
from charlstm.cli import app
from charlstm.data import Vocab

ENV = {"COLUMNS": "100", "NO_COLOR": None, "FORCE_COLOR": None}
VOCAB = Vocab(sorted(CHARS))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gates")
    return save_checkpoint(folder / "planted.npz", planted_params(VOCAB), VOCAB, {})


@pytest.fixture(scope="module")
def text_path(model_path):
    path = model_path.parent / "text.txt"
    path.write_text(planted_text(1500), encoding="utf-8")
    return path


def invoke(*args, input=None):
    return CliRunner().invoke(app, ["inspect-gates", *map(str, args)], env=ENV, input=input)


def ok(result):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


def one_error_line(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_overview(model_path, text_path):
    result = ok(invoke("--model", model_path, "--file", text_path, "--show", 120))
    assert f"model: {model_path}" in result.stderr
    for part in ("1 layer × 3 units", "bits per character", "Gate saturation", "L1 f forget", "half-life"):
        assert part in result.stdout
    assert "Units by variability" in result.stdout and "Strips" in result.stdout
    assert planted_text(1500)[:40].replace("\n", "⏎") in result.stdout
    for line in result.stdout.splitlines():
        assert len(line) <= 100


@pytest.mark.parametrize(
    ("args", "parts"),
    [
        (["--view", "gates", "--units", "L1:0,L1:2"], ["L1:0 i input/learn", "f forget", "L1:2", "h hidden"]),
        (["--view", "gates"], ["top 2", "g candidate", "o output/use", "c memory"]),
        (["--view", "heatmap", "--signal", "f", "--layer", "1"], ["Heatmap: f of 3 units", "L1:0", "L1:1"]),
        (["--view", "heatmap", "--units", "L1:1"], ["Heatmap: tanh(c) of 1 units"]),
        (["--view", "predict"], ["guess 1", "guess 3", "bits", "p1"]),
        (["--pick", "integrator", "--top", "2"], ["share of time the forget gate is wide open"]),
        (
            ["--signal", "h", "--warmup", 'ab "c'],
            ["variability (standard deviation) of h", "after 5 warm-up"],
        ),
    ],
)
def test_views(model_path, text_path, args, parts):
    result = ok(invoke("--model", model_path, "--file", text_path, "--show", 90, *args))
    for part in parts:
        assert part in result.stdout + result.stderr, part


def test_feature_quote_finds_the_planted_unit(model_path, text_path, tmp_path):
    out = tmp_path / "gates.json"
    result = ok(invoke("--model", model_path, "--file", text_path, "--feature", "quote", "--json", out))
    assert "inside double quotes" in result.stdout and "chance" in result.stdout
    doc = json.loads(out.read_text(encoding="utf-8"))
    first, *others = doc["ranking"]["units"]
    assert first["unit"] == "L1:0" and first["z"] > 3 and not first["chance"]
    assert all(u["chance"] for u in others)
    assert doc["units"][0]["unit"] == "L1:0" and len(doc["units"][0]["signal"]) == 1500
    assert doc["thresholds"]["left"] == 0.1 and doc["memory"][0]["integrators"] >= 2


def test_regex_feature_and_thresholds(model_path, text_path, tmp_path):
    out = tmp_path / "g.json"
    ok(invoke("--model", model_path, "--file", text_path, "--feature", "[.]", "--left", 0.2, "--right", 0.8,
              "--json", out))  # fmt: skip
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["ranking"]["feature"] == "[.]" and doc["thresholds"]["right"] == 0.8


@pytest.mark.parametrize("suffix", [".svg", ".html", ".txt"])
def test_save(model_path, text_path, tmp_path, suffix):
    out = tmp_path / f"view{suffix}"
    result = ok(invoke("--model", model_path, "--file", text_path, "--view", "gates", "--save", out))
    assert f"saved: {out}" in result.stderr
    content = out.read_text(encoding="utf-8")
    if suffix == ".svg":
        assert content.startswith("<svg")
    elif suffix == ".html":
        assert "<html" in content.lower()
    else:
        assert "i input/learn" in content and any(ch in content for ch in "░▒▓█")


def test_text_from_stdin_and_literal_markup(model_path):
    result = ok(invoke("--model", model_path, input='ab "cd" e.\nabc'))
    assert 'ab "cd" e.⏎abc' in result.stdout
    result = ok(invoke("--model", model_path, "--text", "[bold]a[/bold] :smile: b", "--view", "gates"))
    assert "[bold]a[/bold] :smile: b" in result.stdout


def test_max_chars_and_unknown_characters(model_path):
    result = ok(invoke("--model", model_path, "--text", "abcé" * 10, "--max-chars", 20))
    assert "first 20 characters" in result.stderr
    assert "read as a space: 'é'" in result.stderr
    assert "read 20 characters" in result.stdout


@pytest.mark.slow  # the first use of the sampler compiles its kernels
def test_sample(model_path):
    result = ok(invoke("--model", model_path, "--sample", 60, "--random-seed", 1, "--warmup", "ab"))
    assert "sampled 60 characters" in result.stderr and "read 60 characters" in result.stdout


def test_default_model_is_the_newest_in_models(tmp_path, model_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.npz").write_bytes(model_path.read_bytes())
    result = ok(invoke("--text", "abc de"))
    assert "models/m.npz" in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--units", "L2:0"], ["no layer 2"]),
        (["--units", "L1:3"], ["no unit 3"]),
        (["--units", "17"], ["not a unit"]),
        (["--feature", "("], ["bad regular expression"]),
        (["--feature", "depth"], ["bracket depth", "nothing to correlate"]),
        (["--view", "nope"], ["--view"]),
        (["--signal", "q"], ["unknown signal"]),
        (["--pick", "best"], ["--pick"]),
        (["--top", "0"], ["--top"]),
        (["--layer", "2"], ["--layer"]),
        (["--left", "0.9", "--right", "0.1"], ["thresholds"]),
        (["--max-chars", "0"], ["--max-chars"]),
        (["--max-chars", "20001"], ["--max-chars"]),
        (["--show", "0"], ["--show"]),
        (["--save", "out.png"], ["--save", ".svg"]),
        (["--file", "missing.txt"], ["give one text"]),
        (["--sample", "0"], ["--sample"]),
        (["--width", "5"], ["--width"]),
        (["--top", "x"], ["--top"]),
    ],
)
def test_bad_input_is_one_error_line(model_path, args, fragments):
    one_error_line(invoke("--model", model_path, "--text", 'ab "c" d', *args), *fragments)


def test_bad_sources_are_one_error_line(model_path, tmp_path):
    one_error_line(invoke("--model", model_path, "--text", ""), "empty")
    one_error_line(invoke("--model", model_path, input=""), "empty")
    one_error_line(invoke("--model", model_path, "--file", tmp_path / "none.txt"), "no such file")
    one_error_line(invoke("--model", tmp_path / "none.npz", "--text", "ab"), "no such checkpoint")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    one_error_line(invoke("--model", bad, "--text", "ab"), "bad.npz")


# --------------------------------------------------------------------------------------------
# Real processes: what rich decides from the environment


def run_cli(model_path, *args, **env):
    unset = ("NO_COLOR", "FORCE_COLOR", "COLUMNS", "COLORTERM", "TERM")
    full_env = {k: v for k, v in os.environ.items() if k not in unset}
    full_env.update(COLUMNS="90", **env)
    code = "from charlstm.cli import main; main()"
    cmd = [sys.executable, "-c", code, "inspect-gates", "--model", str(model_path), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, env=full_env, timeout=300)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout


def colour_codes(output: bytes) -> set[int]:
    """The colour parameters (foreground or background) of every SGR escape in output."""
    codes = set()
    for params in re.findall(rb"\x1b\[([0-9;]*)m", output):
        numbers = [int(n) for n in params.split(b";") if n]
        codes.update(n for n in numbers if 30 <= n <= 49 or 90 <= n <= 107)
    return codes


@pytest.mark.slow
def test_colour_no_color_and_ascii_in_subprocesses(model_path):
    text = 'ab "cd" e.\n\tabc é中'
    coloured = run_cli(model_path, "--text", text, "--view", "gates", FORCE_COLOR="1", COLORTERM="truecolor")
    assert 48 in colour_codes(coloured)  # backgrounds: the heat is in colour
    assert not any(ch in coloured.decode() for ch in "░▒▓")
    plain = run_cli(model_path, "--text", text, "--view", "gates", FORCE_COLOR="1", NO_COLOR="1")
    assert colour_codes(plain) == set()
    assert any(ch in plain.decode() for ch in "░▒▓█")  # the heat fell back to glyph ramps
    ascii_out = run_cli(model_path, "--text", text, "--view", "overview", "--ascii", FORCE_COLOR="1")
    assert all(byte < 128 for byte in ascii_out)
    assert b'ab "cd" e.$>abc ??' in ascii_out and b"|" in ascii_out
