"""Tests for the metrics log (charlstm.metrics) and the loss-curve renderer (charlstm.curves):
columns and rows a run writes, the cut on resume (also across a real SIGINT), a torn last
line, and curves on short, long, flat and NaN-holding series.
"""

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from charlstm import curves
from charlstm.metrics import COLUMNS, MetricsError, MetricsLog, metrics_path_for, read_curves
from charlstm.train import Hooks, train

TEXT = "It was the best of times, it was the worst of times.\n" * 80
TINY = {"layers": 1, "hidden": 8, "embed": 4, "seq_len": 8, "batch_size": 4}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def rows_of(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_metrics_path_sits_beside_the_model():
    assert metrics_path_for("models/x.npz") == Path("models/x.metrics.csv")
    assert metrics_path_for("models/x.last.npz") == Path("models/x.metrics.csv")


def test_a_run_writes_one_row_a_step_and_one_a_validation(tmp_path, corpus):
    train([corpus], {**TINY, "steps": 9, "eval_every": 4}, out=tmp_path / "m.npz")
    path = tmp_path / "m.metrics.csv"
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    rows = rows_of(path)
    steps = [int(r["step"]) for r in rows if r["val_loss"] == ""]
    vals = [int(r["step"]) for r in rows if r["val_loss"] != ""]
    assert steps == list(range(1, 10)) and vals == [4, 8, 9]
    for r in rows:
        assert float(r["elapsed"]) >= 0
        if r["val_loss"] == "":
            assert float(r["lr"]) > 0 and float(r["grad_norm"]) > 0 and float(r["chars_per_s"]) > 0
            assert 0 < float(r["train_loss"]) < 10
        else:
            assert r["lr"] == r["train_loss"] == "" and 0 < float(r["val_loss"]) < 10
    elapsed = [float(r["elapsed"]) for r in rows]
    assert elapsed == sorted(elapsed)


def test_resume_cuts_the_log_back_to_the_saved_step_then_appends(tmp_path, corpus):
    seen = {"step": 0}
    hooks = Hooks(step=lambda i: seen.update(step=i.step), should_stop=lambda: seen["step"] >= 6)
    train([corpus], {**TINY, "steps": 12, "eval_every": 4}, out=tmp_path / "m.npz", hooks=hooks)
    path = tmp_path / "m.metrics.csv"
    # a crash after the save: rows past step 6 and a torn line that the resume must drop
    with open(path, "a", encoding="utf-8") as f:
        f.write("7,1.0,0.001,2.0,1.0,100.0,\n8,1.1,0.001,2.0,1.0,100.0,\n9,1.2,0.0")
    train(None, {}, resume=tmp_path / "m.last.npz")
    rows = rows_of(path)
    steps = [int(r["step"]) for r in rows if r["val_loss"] == ""]
    vals = [int(r["step"]) for r in rows if r["val_loss"] != ""]
    assert steps == list(range(1, 13))  # no duplicate, no orphan
    assert vals == [4, 8, 12]
    assert path.read_text().count("step,") == 1


def test_a_new_run_over_the_same_out_starts_a_new_log(tmp_path, corpus):
    train([corpus], {**TINY, "steps": 5}, out=tmp_path / "m.npz")
    train([corpus], {**TINY, "steps": 3}, out=tmp_path / "m.npz")
    steps = [int(r["step"]) for r in rows_of(tmp_path / "m.metrics.csv") if r["val_loss"] == ""]
    assert steps == [1, 2, 3]


def test_sigint_then_resume_leaves_every_step_once(tmp_path, corpus):
    out = tmp_path / "m.npz"
    cmd = [str(Path(sys.executable).parent / "charlstm"), "train", str(corpus)]
    cmd += [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    cmd += ["--steps", "10000000", "--eval-every", "50", "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=os.environ)
    try:
        for line in proc.stderr:
            if "val loss" in line:  # at least one validation row is in the log
                break
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130
    log = tmp_path / "m.metrics.csv"
    stopped = max(int(r["step"]) for r in rows_of(log))
    train(None, {"steps": stopped + 60}, resume=tmp_path / "m.last.npz")
    rows = rows_of(log)
    steps = [int(r["step"]) for r in rows if r["val_loss"] == ""]
    assert steps == list(range(1, stopped + 61))
    vals = [int(r["step"]) for r in rows if r["val_loss"] != ""]
    assert vals == sorted(set(vals)) and vals[-1] == stopped + 60 and 50 in vals


def test_reader_tolerates_a_torn_last_line_and_refuses_a_foreign_file(tmp_path):
    path = tmp_path / "x.metrics.csv"
    log = MetricsLog(path)
    log.step(1, 0.5, 1e-3, 3.0, 1.0, 1000.0)
    log.step(2, 1.0, 1e-3, 2.5, 1.0, 1000.0)
    log.validation(2, 1.2, 2.4)
    log.close()
    with open(path, "a") as f:
        f.write("3,1.5,0.001,2.")
    read = read_curves(path)
    assert read.steps == [1, 2] and read.train_loss == [3.0, 2.5]
    assert read.val_steps == [2] and read.val_loss == [2.4] and read.skipped == 1
    assert read.best() == (2, 2.4)
    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(MetricsError, match="not a charlstm metrics log"):
        read_curves(foreign)
    binary = tmp_path / "bin.csv"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MetricsError):
        read_curves(binary)


# --- the curve renderer


def plot_lines(text) -> list[str]:
    return text.plain.splitlines()


def test_curves_have_axes_a_legend_and_the_best_mark():
    steps = list(range(1, 201))
    loss = [4.0 * math.exp(-s / 50) + 1.0 for s in steps]
    text = curves.render(
        steps, loss, [50, 100, 150, 200], [2.5, 1.9, 1.7, 1.8], width=60, height=10, color=False
    )
    lines = plot_lines(text)
    assert len(lines) == 10 + 3  # the rows, the axis, the step labels, the legend
    assert all(len(line) <= 60 for line in lines[:-1])
    assert lines[0].strip().startswith("4.") and "│" in lines[0]
    assert lines[10].lstrip().startswith("└")
    assert "step 200" in lines[11] and lines[11].split()[0] == "1"
    assert "best 1.7000 at step 150" in lines[12] and "validation" in lines[12]
    body = "".join(line.split("│", 1)[1] for line in lines[:10])
    assert body.count("*") == 1 and body.count("o") == 3  # best drawn over its validation point
    assert body.count(".") >= 40  # the training curve spans the width
    # the curve falls: the first training mark sits above the last
    rows = [i for i, line in enumerate(lines[:10]) if "." in line.split("│", 1)[1]]
    first_col = min(line.split("│", 1)[1].find(".") for line in lines[:10] if "." in line.split("│", 1)[1])
    top = next(i for i in rows if lines[i].split("│", 1)[1].find(".") == first_col)
    assert top == 0


def test_curves_without_colour_have_no_escape_codes_and_with_colour_have_styles():
    plain = curves.render([1, 2, 3], [3.0, 2.0, 1.0], [3], [1.5], color=False)
    assert not plain.spans
    coloured = curves.render([1, 2, 3], [3.0, 2.0, 1.0], [3], [1.5], color=True)
    assert {span.style for span in coloured.spans} >= {"cyan", "bold yellow"}


@pytest.mark.parametrize(
    "steps, loss",
    [
        ([1], [2.0]),  # one point
        (list(range(1, 20_001)), [1.0 + 1.0 / s for s in range(1, 20_001)]),  # long
        (list(range(1, 50)), [1.5] * 49),  # flat
        ([1, 2, 3, 4], [2.0, float("nan"), float("inf"), 1.0]),  # non-finite points left out
    ],
)
def test_curves_on_short_long_flat_and_non_finite_series(steps, loss):
    text = curves.render(steps, loss, width=50, height=6, color=False)
    lines = plot_lines(text)
    assert len(lines) == 6 + 3
    body = [line.split("│", 1)[1] for line in lines[:6]]
    assert all(len(row) == len(body[0]) for row in body)
    marks = sum(row.count(".") for row in body)
    finite = sum(math.isfinite(v) for v in loss)
    assert 1 <= marks <= min(finite, len(body[0]))
    assert "nan" not in text.plain and "inf" not in text.plain
    if len(set(loss)) == 1:  # flat: one row, the middle one
        assert [i for i, row in enumerate(body) if "." in row] == [(6 - 1) // 2]


def test_curves_with_nothing_to_draw_say_so():
    assert "no loss" in curves.render([], [], color=False).plain
    assert "no loss" in curves.render([1], [float("nan")], color=False).plain


def test_train_command_draws_the_curves_on_a_terminal_in_colour_or_glyphs(tmp_path, corpus):
    import io

    from rich.console import Console

    from charlstm.cli.train_cmd import _print_curves

    train([corpus], {**TINY, "steps": 8, "eval_every": 4}, out=tmp_path / "m.npz")
    for no_color in (False, True):
        console = Console(file=io.StringIO(), force_terminal=True, width=80, no_color=no_color, record=True)
        _print_curves(console, tmp_path / "m.metrics.csv")
        text = console.export_text(clear=False)
        assert "loss curves" in text and "step 8" in text and "*" in text and "." in text
        styled = console.export_text(styles=True)
        assert ("\x1b[" in styled and "36m" in styled) != no_color  # cyan training marks, or none


def test_a_resume_to_another_out_carries_the_log_over(tmp_path, corpus):
    train([corpus], {**TINY, "steps": 5, "eval_every": 5}, out=tmp_path / "a.npz")
    train(None, {"steps": 8}, resume=tmp_path / "a.last.npz", out=tmp_path / "moved" / "b.npz")
    steps = [int(r["step"]) for r in rows_of(tmp_path / "moved" / "b.metrics.csv") if r["val_loss"] == ""]
    assert steps == list(range(1, 9))
    first = [int(r["step"]) for r in rows_of(tmp_path / "a.metrics.csv") if r["val_loss"] == ""]
    assert first == [1, 2, 3, 4, 5]  # the first run's own log is left as it was
