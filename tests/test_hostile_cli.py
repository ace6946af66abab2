"""Hostile values for every numeric option of train, sample, eval and inspect-gates (hypothesis).

Each run, through `CliRunner`, is either a correct run (exit 0 and a usable result) or exit 1
with a single `error: ...` line on stderr, the last one, and no traceback; never a hang.
Values come from pools of the edges that break programs: 0, -1, NaN, infinities, subnormals,
integers past 64 bits, sizes no machine can allocate. Models and corpora are tiny.
"""

from __future__ import annotations

import contextlib
import json
import math
import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from charlstm.checkpoint import load_checkpoint
from charlstm.cli import app

ENV = {"COLUMNS": "100", "NO_COLOR": "1"}
TEXT = 'It was the best of times, it was the worst of times; naïve café, 東京 🌸 "q".\n' * 40
TINY = ["--layers", "1", "--hidden", "8", "--embed", "4", "--seq-len", "8", "--batch-size", "4"]
HUGE = 10**30  # past int64: numpy and numba overflow here
ABSURD = 10**12  # fits int64, but no machine allocates that many of anything
MEMORY_CAP = 3 << 30  # bytes a single run may add: far above what a tiny model needs

CLI = settings(
    max_examples=20,
    deadline=None,  # a hang is caught by no_hang; run times vary with the shared machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


class HangError(Exception):
    pass


@contextlib.contextmanager
def no_hang(seconds: float) -> Iterator[None]:
    """Interrupt a run that goes on too long (hypothesis deadlines only report afterwards)."""

    def expire(signum, frame):
        raise HangError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_cap(extra: int) -> Iterator[None]:
    """Cap this process's address space at its current size plus `extra` bytes, so a run that
    tries to allocate terabytes fails with MemoryError instead of taking the shared machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as status:
        size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    cap = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def run(*args: object, seconds: float = 60):
    with no_hang(seconds), memory_cap(MEMORY_CAP):
        return CliRunner().invoke(app, [str(a) for a in args], env=ENV)


def check_outcome(result) -> bool:
    """True for a successful run, False for a clean refusal; fails the test otherwise."""
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"escaped: {result.exception!r}\n{result.stderr[-2000:]}") from result.exception
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    if result.exit_code == 0:
        return True
    assert result.exit_code == 1, (result.exit_code, result.stderr[-2000:])
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr[-2000:]
    assert len(errors[0]) > len("error: ")
    return False


# values that break programs: each option draws from its kind's pool plus its own edges
FLOATS = [math.nan, math.inf, -math.inf, -1.0, -0.0, 0.0, 5e-324, 1e-300, 0.5, 1.0, 1e308]
SIGNED_INTS = [-HUGE, -(2**63), -1, 0, 1, 2, 3, 2**63, HUGE]


def pick(pool: list) -> st.SearchStrategy:
    return st.sampled_from(pool)


def either(pools: dict[str, list], valid: dict[str, list], name: str) -> st.SearchStrategy:
    """Half the time a sane value, so that combinations also reach a correct run."""
    return pick(valid[name]) | pick(pools[name]) if name in valid else pick(pools[name])


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny corpus, and a 1x8 model trained on it (best weights and training state)."""
    folder = tmp_path_factory.mktemp("hostile-cli")
    corpus = folder / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = folder / "models" / "tiny.npz"
    # the first run of each command may compile its kernels (minutes on a cold numba cache)
    result = run("train", corpus, *TINY, "--steps", 4, "--eval-every", 2, "--out", out, seconds=600)
    assert result.exit_code == 0, result.stderr
    for warm in (
        ["sample", "--model", out, "--length", 5],
        ["inspect-gates", "--model", out, "--text", "ab"],
    ):
        assert run(*warm, seconds=600).exit_code == 0
    assert run("eval", out, corpus, seconds=600).exit_code == 0
    return {"folder": folder, "corpus": corpus, "model": out, "last": out.with_name("tiny.last.npz")}


# --------------------------------------------------------------------------------- train

TRAIN_POOLS = {
    "--layers": [-1, 0, 1, 2, ABSURD, HUGE],
    "--hidden": [-1, 0, 1, 3, 16384, ABSURD, HUGE],  # 16384: allowed, but past MEMORY_CAP
    "--embed": [-1, 0, 1, 5, ABSURD, HUGE],
    "--dropout": FLOATS + [0.999999],
    "--seq-len": SIGNED_INTS + [ABSURD],
    "--batch-size": SIGNED_INTS + [ABSURD],
    "--lr": FLOATS + [1e-3],
    "--min-lr": FLOATS + [1e-4],
    "--warmup": SIGNED_INTS,
    "--weight-decay": FLOATS,
    "--clip": FLOATS,
    "--ema": FLOATS + [0.5, 0.999, 1.0],
    "--eval-every": SIGNED_INTS,
    "--val-frac": FLOATS + [0.1, 0.9, 0.999],
    "--random-seed": SIGNED_INTS + [2**64],
    # budgets: invalid values, or ones small enough to finish (a huge valid budget is a
    # request to train for that long, not a hostile input)
    "--steps": [-HUGE, -1, 0, 1, 3],
    "--epochs": [math.nan, math.inf, -1.0, 0.0, 5e-324, 0.02],
    "--minutes": [math.nan, math.inf, -1.0, 0.0, 5e-324, 0.002],
}
BUDGETS = ("--steps", "--epochs", "--minutes")
TRAIN_VALID = {
    "--layers": [1, 2],
    "--hidden": [4, 8],
    "--embed": [0, 4],
    "--dropout": [0.0, 0.3],
    "--seq-len": [4, 16],
    "--batch-size": [2, 8],
    "--lr": [3e-3],
    "--min-lr": [0.0, 1e-4],
    "--warmup": [0, 5],
    "--weight-decay": [0.0, 0.1],
    "--clip": [0.0, 1.0],
    "--ema": [0.0, 0.9],
    "--eval-every": [1, 2],
    "--val-frac": [0.0, 0.2],
    "--random-seed": [0, 9],
}


def sweep(pools: dict[str, list]) -> list:
    """Every value of every pool on its own: each edge is tried, not left to chance."""
    return [
        pytest.param(name, value, id=f"{name}={value!r}") for name, pool in pools.items() for value in pool
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name, value", sweep(TRAIN_POOLS))
def test_train_each_option_alone(workspace, tmp_path, name, value):
    options = {name: value} if name in BUDGETS else {name: value, "--steps": 2}
    check_train(workspace, tmp_path, options)


def check_train(workspace, folder: Path, options: dict[str, object]) -> None:
    out = folder / "models" / "m.npz"
    base = dict(zip(TINY[::2], TINY[1::2], strict=True))
    result = run("train", workspace["corpus"], *as_args({**base, **options}), "--out", out)
    if check_outcome(result):
        checkpoint = load_checkpoint(out.with_name("m.last.npz"), with_train_state=True)
        for name in ("--layers", "--hidden", "--embed"):
            if name in options:
                assert checkpoint.config[name[2:]] == options[name]
        assert "training summary" in result.stderr


@st.composite
def train_options(draw) -> dict[str, object]:
    names = draw(st.lists(st.sampled_from(sorted(TRAIN_POOLS)), min_size=1, max_size=3, unique=True))
    options = {name: draw(either(TRAIN_POOLS, TRAIN_VALID, name), label=name) for name in names}
    if not any(name in options for name in BUDGETS):
        options["--steps"] = 2
    return options


def as_args(options: dict[str, object]) -> list[object]:
    return [part for name, value in options.items() for part in (name, value)]


@pytest.mark.slow
@CLI
@given(options=train_options())
def test_train_numeric_options(workspace, tmp_path_factory, options):
    check_train(workspace, tmp_path_factory.mktemp("train"), options)


@pytest.mark.slow
@CLI
@given(
    options=st.fixed_dictionaries(
        {},
        optional={name: pick(pool) for name, pool in TRAIN_POOLS.items() if name not in BUDGETS},
    ),
    steps=pick([-HUGE, -1, 0, 4, 5]),  # the saved state is at step 4
)
def test_resume_with_numeric_options(workspace, tmp_path_factory, options, steps):
    # resuming from a copy: other options must equal the saved ones or be refused
    folder = tmp_path_factory.mktemp("resume") / "models"
    folder.mkdir()
    last = folder / "tiny.last.npz"
    last.write_bytes(workspace["last"].read_bytes())
    result = run("train", "--resume", last, "--steps", steps, *as_args(options))
    if check_outcome(result):
        assert load_checkpoint(last, with_train_state=True).config["step"] == max(steps, 4)


# -------------------------------------------------------------------------------- sample

SAMPLE_POOLS = {
    "--length": [-HUGE, -1, 0, 1, 7, 120],  # a huge valid length streams for ever: left out
    "--temperature": FLOATS + [0.01, 1e-30],
    "--top-k": SIGNED_INTS + [ABSURD],
    "--top-p": FLOATS + [1.0000001, 1e-30],
    "--random-seed": SIGNED_INTS + [2**64],
    "--num-samples": [-HUGE, -1, 0, 1, 3, ABSURD, HUGE],
}

SAMPLE_VALID = {
    "--length": [5, 40],
    "--temperature": [0.0, 0.8],
    "--top-k": [1, 5],
    "--top-p": [0.9, 1.0],
    "--random-seed": [0, 7],
    "--num-samples": [1, 2],
}

any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
known_text = st.sampled_from(["It was", "", "\n", "times", "東京"])


@pytest.mark.slow
@CLI
@given(
    options=st.fixed_dictionaries(
        {}, optional={name: either(SAMPLE_POOLS, SAMPLE_VALID, name) for name in SAMPLE_POOLS}
    ),
    seed=st.none() | known_text | any_text,
    stop=st.none() | known_text | any_text,
    as_json=st.booleans(),
    skip_unknown=st.booleans(),
)
def test_sample_numeric_options(workspace, options, seed, stop, as_json, skip_unknown):
    check_sample(workspace, options, seed, stop, as_json, skip_unknown)


@pytest.mark.slow
@pytest.mark.parametrize("name, value", sweep(SAMPLE_POOLS))
def test_sample_each_option_alone(workspace, name, value):
    check_sample(workspace, {name: value, "--length": 20} if name != "--length" else {name: value})


def check_sample(workspace, options, seed=None, stop=None, as_json=True, skip_unknown=False) -> None:
    args: list[object] = ["sample", "--model", workspace["model"], *as_args(options)]
    if seed is not None:
        args += ["--seed", seed]
    if stop is not None:
        args += ["--stop", stop]
    if as_json:
        args.append("--json")
    if skip_unknown:
        args.append("--skip-unknown")
    result = run(*args)
    if check_outcome(result) and as_json:
        report = json.loads(result.stdout)
        samples = report["samples"]
        assert len(samples) == options.get("--num-samples", 1)
        if stop is None:
            length = options.get("--length", 500)
            assert all(len(text) == length for text in samples)  # the seed is not counted


# -------------------------------------------------------------------------- inspect-gates

GATES_POOLS = {
    "--sample": SIGNED_INTS + [50],
    "--top": SIGNED_INTS + [ABSURD],
    "--layer": SIGNED_INTS,
    "--max-chars": SIGNED_INTS + [20_000, 20_001],
    "--show": SIGNED_INTS + [ABSURD],
    "--left": FLOATS + [0.95],
    "--right": FLOATS + [0.05],
    "--width": SIGNED_INTS + [19, 20, 21, 400, ABSURD],
    "--temperature": FLOATS,
    "--random-seed": SIGNED_INTS,
}
GATES_VALID = {
    "--top": [1, 4],
    "--layer": [1],
    "--max-chars": [10, 2000],
    "--show": [5, 400],
    "--left": [0.1],
    "--right": [0.9],
    "--width": [40, 120],
    "--temperature": [0.8],
    "--random-seed": [3],
}


@pytest.mark.slow
@CLI
@given(
    options=st.fixed_dictionaries(
        {}, optional={name: either(GATES_POOLS, GATES_VALID, name) for name in GATES_POOLS}
    ),
    view=st.sampled_from(["overview", "gates", "heatmap", "predict"]),
    text=st.sampled_from(["It was the best", "x", "[bold]:smile:\t\n", "\x1b[31mred"]) | any_text,
    ascii_only=st.booleans(),
)
def test_inspect_gates_numeric_options(workspace, options, view, text, ascii_only):
    check_gates(workspace, options, view, text, ascii_only)


@pytest.mark.slow
@pytest.mark.parametrize("name, value", sweep(GATES_POOLS))
def test_inspect_gates_each_option_alone(workspace, name, value):
    check_gates(workspace, {name: value})


def check_gates(workspace, options, view="overview", text="It was the best", ascii_only=False) -> None:
    args: list[object] = ["inspect-gates", "--model", workspace["model"], "--view", view]
    if "--sample" not in options:
        args += ["--text", text]
    if view == "gates":
        args += ["--units", "L1:0,L1:7"]
    if ascii_only:
        args.append("--ascii")
    result = run(*args, *as_args(options))
    if check_outcome(result) and ascii_only:
        assert result.stdout.isascii()


# ---------------------------------------------------------------------------------- eval


@pytest.mark.slow
@CLI
@given(raw=st.binary(max_size=40) | any_text.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_eval_any_file(workspace, tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("eval") / "text.txt"
    path.write_bytes(raw)
    result = run("eval", workspace["model"], path, "--json")
    if check_outcome(result):
        report = json.loads(result.stdout)
        text = raw.decode("utf-8")
        assert report["characters"] == len(text)
        assert report["predicted"] + report["unknown"] >= len(text) - 1


@pytest.mark.parametrize(
    "model",
    [b"", b"PK\x05\x06" + bytes(18), b"\x93NUMPY", b"garbage" * 100],
)
def test_eval_and_sample_with_a_file_that_is_no_model(workspace, tmp_path, model):
    path = tmp_path / "model.npz"
    path.write_bytes(model)
    for args in (
        ["eval", path, workspace["corpus"]],
        ["sample", "--model", path, "--length", 5],
        ["inspect-gates", "--model", path, "--text", "abc"],
        ["train", "--resume", path, "--steps", 5],
    ):
        result = run(*args)
        assert not check_outcome(result), args
        assert str(path) in result.stderr


# ------------------------------------------------------- hostile checkpoints at the commands


def edited_copy(src: Path, dst: Path, change) -> Path:
    """A copy of checkpoint `src` with `change(arrays)` applied (arrays written uncompressed)."""
    with np.load(src, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    change(arrays)
    np.savez(dst, **arrays)
    return dst


def state_json(key: str, value: object):
    def change(arrays):
        arrays[key] = np.array(json.dumps(value))

    return change


def state_edit(key: str, edit):
    def change(arrays):
        arrays[key] = edit(json.loads(str(arrays[key])))

    return change


def training_option(name: str, value: object):
    def change(arrays):
        config = json.loads(str(arrays["config"]))
        config["training"][name] = value
        arrays["config"] = np.array(json.dumps(config))

    return change


def config_entry(name: str, value: object):
    def change(arrays):
        config = json.loads(str(arrays["config"]))
        config[name] = value
        arrays["config"] = np.array(json.dumps(config))

    return change


def first_nan(key: str):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].flat[0] = np.nan

    return change


def drop(key: str):
    return lambda arrays: arrays.pop(key)


TAMPERED_STATES = {
    **{
        f"drop {key}": drop(f"train.{key}")
        for key in ("m", "v", "h", "c", "rng", "data", "counters", "version")
    },
    "nan in m": first_nan("train.m"),
    "nan in h": first_nan("train.h"),
    "m float64": lambda a: a.update({"train.m": a["train.m"].astype(np.float64)}),
    "m too short": lambda a: a.update({"train.m": a["train.m"][:-1].copy()}),
    "h other batch": lambda a: a.update({"train.h": np.zeros((1, 3, 8), np.float32)}),
    "version 99": lambda a: a.update({"train.version": np.array(99)}),
    "version text": lambda a: a.update({"train.version": np.array("one")}),
    "version huge": lambda a: a.update({"train.version": np.array(2**63 - 1)}),
    "rng not json": lambda a: a.update({"train.rng": np.array("{not json")}),
    "rng other generator": state_json("train.rng", {"dropout": {"bit_generator": "MT19937", "state": 5}}),
    "rng wrong state": state_edit("train.rng", lambda r: {"dropout": {**r["dropout"], "state": "x"}}),
    "rng empty": state_json("train.rng", {}),
    "data negative epoch": state_edit("train.data", lambda d: {**d, "epoch": -1}),
    "data window past the end": state_edit("train.data", lambda d: {**d, "window": 10**9}),
    "data window huge": state_edit("train.data", lambda d: {**d, "window": 10**40}),
    "data other batch": state_edit("train.data", lambda d: {**d, "batch": 3}),
    "data a list": state_json("train.data", [1, 2]),
    "counters step text": state_edit("train.counters", lambda c: {**c, "step": "x"}),
    "counters unknown key": state_edit("train.counters", lambda c: {**c, "surprise": 1}),
    "counters a list": state_json("train.counters", []),
    "training hidden mismatch": training_option("hidden", 16),
    "training unknown option": training_option("surprise", 1),
    "training lr nan": training_option("lr", math.nan),
    "training lr string": training_option("lr", "fast"),
    "training layers huge": training_option("layers", 10**12),
    "training not a dict": config_entry("training", [1]),
    "corpus missing file": config_entry("corpus", ["/nonexistent/corpus.txt"]),
    "corpus a number": config_entry("corpus", 5),
    "corpus empty": config_entry("corpus", []),
}


@pytest.mark.parametrize("name", sorted(TAMPERED_STATES))
def test_resume_from_a_tampered_training_state(workspace, tmp_path, name):
    # the loader checks the weights; the training state inside is train's to check on --resume
    last = edited_copy(workspace["last"], tmp_path / "tampered.last.npz", TAMPERED_STATES[name])
    result = run("train", "--resume", last, "--steps", 6, "--out", tmp_path / "out.npz")
    assert not check_outcome(result), f"{name}: resumed from a tampered state"


def test_model_with_a_lone_surrogate_in_its_vocabulary(workspace, tmp_path):
    # a <U1 array can hold U+D800, which no output stream can encode: refused at load
    def change(arrays):
        chars = arrays["vocab"].tolist()
        below = max(c for c in chars if ord(c) < 0xD800)
        chars.remove(below)
        arrays["vocab"] = np.array(sorted([*chars, "\ud800"]))

    model = edited_copy(workspace["model"], tmp_path / "surrogate.npz", change)
    for args in (
        ["sample", "--model", model, "--seed", "It", "--length", 200, "--temperature", 5],
        ["sample", "--model", model, "--seed", "It", "--length", 200, "--temperature", 5, "--json"],
        ["inspect-gates", "--model", model, "--sample", 200, "--warmup", "It"],
        ["eval", model, workspace["corpus"]],
    ):
        result = run(*args)
        assert not check_outcome(result), args
        assert "vocab" in result.stderr
