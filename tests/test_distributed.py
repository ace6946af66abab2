"""Data-parallel training (charlstm.distributed): the pieces in this process first (a rank's
share of the gradient, its dropout masks, its share of validation), then real runs under
MPICH's mpiexec with 2 ranks, through tests/mpi_worker.py: the same weights as one process,
bitwise repeats, resuming with another number of ranks, a failing rank, SIGINT to mpiexec,
and the error cases. The mpiexec tests need the `mpi` extra (mpi4py and the mpich wheel).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from charlstm import distributed, kernels
from charlstm.checkpoint import load_checkpoint
from charlstm.evaluate import validation_loss, validation_shares, validation_sums
from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad

WORKER = Path(__file__).with_name("mpi_worker.py")
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
# Small, with dropout (each stream's masks must not depend on the ranks) and B=8
MODEL = ["--layers", "2", "--hidden", "32", "--embed", "8", "--seq-len", "16", "--batch-size", "8"]
STEPS = 30
RTOL = 1e-5  # K ranks against one process: the same sums in another order
CLOCK_COUNTERS = ("elapsed", "train_seconds")


# ------------------------------------------------------------------ in this process


def test_rank_shares_of_the_gradient_add_up_to_one_process():
    """Two halves of the streams, each with its dropout masks and its share of the mean, give
    the whole batch's loss, gradient and final state (float64)."""
    config = ModelConfig(vocab_size=11, layers=2, hidden=6, embed=3, dropout=0.3)
    params = init_params(config, np.random.default_rng(1), np.float64)
    T, B = 5, 4
    tokens = np.random.default_rng(2).integers(0, 11, (T + 1, B))
    inputs, targets = tokens[:-1], tokens[1:]
    h, c = (0.1 * np.random.default_rng(3).standard_normal((2, B, 6)) for _ in range(2))
    whole = Params.zeros(config, np.float64)
    h_all, c_all = h.copy(), c.copy()
    loss = loss_and_grad(
        params,
        whole,
        inputs,
        targets,
        h_all,
        c_all,
        Workspace(config, T, B, np.float64),
        np.random.default_rng(7),
    )
    summed, shares = np.zeros_like(whole.flat), 0.0
    for part in (slice(0, 2), slice(2, 4)):
        grads = Params.zeros(config, np.float64)
        ws = Workspace(config, T, 2, np.float64, first_stream=part.start, all_streams=B)
        hp, cp = h[:, part].copy(), c[:, part].copy()
        columns = (np.ascontiguousarray(inputs[:, part]), np.ascontiguousarray(targets[:, part]))
        shares += loss_and_grad(
            params, grads, *columns, hp, cp, ws, np.random.default_rng(7), characters=T * B
        )
        summed += grads.flat
        np.testing.assert_allclose(hp, h_all[:, part], rtol=1e-13)
        np.testing.assert_allclose(cp, c_all[:, part], rtol=1e-13)
    assert shares == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(summed, whole.flat, rtol=1e-10, atol=1e-15)


def test_dropout_masks_of_some_streams_are_their_columns_of_all_streams():
    """kernels.dropout_masks_of_streams: any share, at any offset (past whole hashes too), on
    one thread or two, equals those columns of the masks of all the streams."""
    rows, streams, p = 37, 6, 0.4
    threshold = round(p * 65536)
    everything = np.empty(rows * streams, np.float32)
    kernels.dropout_masks(everything, 5, threshold, 1 / (1 - p), 2)
    everything = everything.reshape(rows, streams)
    for first, width in ((0, 6), (0, 3), (3, 3), (1, 2), (5, 1)):
        for threads in (1, 2):
            part = np.full((rows, width), np.nan, np.float32)
            kernels.dropout_masks_of_streams(part, 5, threshold, 1 / (1 - p), streams, first, threads)
            assert np.array_equal(part, everything[:, first : first + width]), (first, width, threads)


def test_validation_shares_add_up_to_the_whole_figure():
    config = ModelConfig(vocab_size=9, layers=1, hidden=5, embed=0, dropout=0.0)
    params = init_params(config, np.random.default_rng(0), np.float64)
    tokens = np.random.default_rng(1).integers(0, 9, 3001).astype(np.uint8)
    whole = validation_loss(params, tokens, batch=7, seq_len=16)
    for parts in (2, 3):
        shares = validation_shares(tokens, parts, 16, batch=7)
        assert shares[0].start == 0 and shares[-1].stop == 7
        sums = [validation_sums(params, tokens, batch=7, seq_len=16, streams=s) for s in shares]
        total, count = (sum(x) for x in zip(*sums, strict=True))
        assert total / count == pytest.approx(whole, rel=1e-12)


def test_alone_without_a_launcher_and_mpi4py_never_imported():
    """No PMI_SIZE / OMPI_COMM_WORLD_SIZE: one process, as always, and mpi4py is not loaded."""
    assert distributed.launched_size({}) is None
    assert distributed.launched_size({"PMI_SIZE": "4"}) == 4
    assert distributed.launched_size({"OMPI_COMM_WORLD_SIZE": "3"}) == 3
    env = {k: v for k, v in os.environ.items() if k not in distributed.SIZE_VARIABLES}
    code = (
        "import sys; from charlstm import distributed as d; "
        "print(type(d.connect()).__name__, 'mpi4py' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Alone", "False"]
    alone = distributed.Alone()
    grads = alone.gradient_buffer(5)
    grads[:] = 3.0
    assert alone.exchange(grads, np.array([1.5, 0.0])).tolist() == [1.5, 0.0] and grads.tolist() == [3.0] * 5
    assert alone.streams(8) == slice(0, 8)


def test_started_by_mpiexec_without_mpi4py_is_one_line_naming_the_extra(tmp_path):
    """A launcher's environment but no mpi4py: rank 0 says which extra to install, the other
    ranks exit 1 without a word."""
    blocker = tmp_path / "blocker"
    (blocker / "mpi4py").mkdir(parents=True)
    (blocker / "mpi4py" / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    corpus = _corpus(tmp_path)
    for rank, expected in (
        (
            "0",
            "error: started by mpiexec as one of 2 processes, but mpi4py is not installed "
            '(pip install "charlstm[mpi]")',
        ),
        ("1", ""),
    ):
        env = {**_env(), "PMI_SIZE": "2", "PMI_RANK": rank, "PYTHONPATH": str(blocker)}
        args = [
            sys.executable,
            "-c",
            "from charlstm.cli import main; main()",
            "train",
            str(corpus),
            "--steps",
            "1",
        ]
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and out.stderr.strip() == expected, out.stderr
        assert "Traceback" not in out.stderr


# ------------------------------------------------------------------ under mpiexec

needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="needs the mpi extra: mpiexec in the venv")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "HYDRA_"))}
    return {**env, "COLUMNS": "100", "NO_COLOR": "1"}


def _corpus(folder: Path) -> Path:
    path = folder / "corpus.txt"
    text = Path(__file__).resolve().parents[1].joinpath("corpora", "tinyshakespeare.txt").read_text()[:60_000]
    path.write_text(text, encoding="utf-8")
    return path


def _charlstm(ranks: int, *args: object, fault: str = "none", at: int = 0, timeout: float = 300):
    """`charlstm ARGS` through the worker: under mpiexec with `ranks` ranks, or alone (0)."""
    command = [sys.executable, str(WORKER), fault, str(at), *map(str, args)]
    if ranks:
        command = [MPIEXEC, "-n", str(ranks), *command]
    return subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)


def _train(ranks: int, corpus: Path, out: Path, *extra: object, **fault) -> subprocess.CompletedProcess:
    args = ["train", corpus, *MODEL, "--steps", STEPS, "--eval-every", 10, "--out", out, *extra]
    return _charlstm(ranks, *args, **fault)


def _state(path: Path) -> dict[str, np.ndarray]:
    """A training state's arrays, with its counters minus the wall-clock ones."""
    ckpt = load_checkpoint(path, with_train_state=True)
    arrays = {
        "params": ckpt.params.flat,
        **{k: v for k, v in ckpt.train_state.items() if v.dtype.kind == "f"},
    }
    counters = json.loads(str(ckpt.train_state["counters"][()]))
    for key in CLOCK_COUNTERS:
        counters.pop(key)
    arrays["data"] = np.array(str(ckpt.train_state["data"][()]))
    arrays["rng"] = np.array(str(ckpt.train_state["rng"][()]))
    return {**arrays, "step": np.array(counters["step"])}


def _assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].dtype.kind == "f":
            scale = max(float(np.abs(b[key]).max()), 1e-30)
            assert float(np.abs(a[key] - b[key]).max()) <= RTOL * scale, key
        else:
            assert np.array_equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two 2-rank runs of the same 30 steps (module-wide: each costs seconds)."""
    folder = tmp_path_factory.mktemp("runs")
    corpus = _corpus(folder)
    results = {}
    for name, ranks in (("alone", 0), ("two", 2), ("two again", 2)):
        done = _train(ranks, corpus, folder / name / "m.npz")
        assert done.returncode == 0, done.stderr
        results[name] = (done, folder / name / "m.last.npz")
    return corpus, results


@needs_mpi
def test_two_ranks_train_the_weights_of_one_process_and_repeat_bitwise(runs):
    _, results = runs
    alone, two, again = (_state(results[k][1]) for k in ("alone", "two", "two again"))
    assert int(two["step"]) == STEPS
    _assert_close(two, alone)
    for key in two:
        assert np.array_equal(two[key], again[key]), key  # the sums in rank order: the same bits
    assert not np.array_equal(two["params"], alone["params"])  # two processes really ran
    output = results["two"][0].stderr
    assert "data parallel over 2 processes: 4 of the 8 streams each" in output
    assert output.count("training summary") == 1  # rank 0 alone reports
    # validation, split across the ranks, gives the single-process figures
    record = load_checkpoint(results["two"][1]).config["record"]["validations"]
    record_alone = load_checkpoint(results["alone"][1]).config["record"]["validations"]
    assert [step for step, _ in record] == [10, 20, 30]
    np.testing.assert_allclose(record, record_alone, rtol=1e-5)


@needs_mpi
@pytest.mark.parametrize(
    ("first", "then"), [(2, 0), (0, 2)], ids=["2-ranks-then-alone", "alone-then-2-ranks"]
)
def test_a_state_resumes_with_another_number_of_ranks(runs, tmp_path, first, then):
    """Stopped (SIGUSR1 at step 12) under one number of ranks, resumed under another: the
    same run as the uninterrupted one."""
    corpus, results = runs
    out = tmp_path / "m.npz"
    stopped = _train(first, corpus, out, fault="signal", at=12)
    assert stopped.returncode == 130, stopped.stderr
    assert "interrupted at step" in stopped.stderr
    resumed = _charlstm(then, "train", "--resume", tmp_path / "m.last.npz")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stderr
    _assert_close(_state(tmp_path / "m.last.npz"), _state(results["alone"][1]))


@needs_mpi
def test_a_stop_asked_of_one_rank_stops_all_after_the_same_step(runs, tmp_path):
    corpus, _ = runs
    done = _train(2, corpus, tmp_path / "m.npz", fault="signal-rank-1", at=5)
    assert done.returncode == 130, done.stderr
    assert "another process was asked to stop: stopping after step 6 and saving" in done.stderr
    assert "interrupted at step 6" in done.stderr
    assert _state(tmp_path / "m.last.npz")["step"] == 6


@needs_mpi
def test_a_failing_rank_ends_the_job_and_the_last_state_loads(runs, tmp_path):
    corpus, _ = runs
    started = time.monotonic()
    failed = _train(2, corpus, tmp_path / "m.npz", "--eval-every", 4, fault="raise", at=9, timeout=60)
    assert time.monotonic() - started < 30
    assert failed.returncode != 0
    assert (
        "rank 1: error: RuntimeError: a fault put in by the test (a bug: the traceback follows)"
        in failed.stderr
    )
    # the abort may land while rank 0 still writes step 8's state: then step 4's stays, whole
    ckpt = load_checkpoint(tmp_path / "m.last.npz", with_train_state=True)
    assert json.loads(str(ckpt.train_state["counters"][()]))["step"] in (4, 8)
    resumed = _charlstm(2, "train", "--resume", tmp_path / "m.last.npz", "--steps", 10)
    assert resumed.returncode == 0, resumed.stderr


@needs_mpi
def test_a_rank_killed_ends_the_job_and_the_run_resumes(runs, tmp_path):
    corpus, results = runs
    started = time.monotonic()
    killed = _train(2, corpus, tmp_path / "m.npz", "--eval-every", 4, fault="kill", at=11, timeout=60)
    assert time.monotonic() - started < 30 and killed.returncode != 0
    ckpt = load_checkpoint(tmp_path / "m.last.npz", with_train_state=True)  # whole
    assert json.loads(str(ckpt.train_state["counters"][()]))["step"] in (4, 8)
    resumed = _charlstm(2, "train", "--resume", tmp_path / "m.last.npz")
    assert resumed.returncode == 0, resumed.stderr
    _assert_close(_state(tmp_path / "m.last.npz"), _state(results["alone"][1]))  # the same run


@needs_mpi
def test_sigint_to_mpiexec_saves_a_state_that_resumes(runs, tmp_path):
    corpus, _ = runs
    args = [
        "train",
        corpus,
        *MODEL,
        "--steps",
        1_000_000,
        "--eval-every",
        100_000,
        "--out",
        tmp_path / "m.npz",
    ]
    command = [MPIEXEC, "-n", "2", sys.executable, str(WORKER), "none", "0", *map(str, args)]
    proc = subprocess.Popen(command, env=_env(), stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # the first step's line: both ranks are in the loop
        if line.startswith("step 1/"):
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, rest
    assert "stopping after this step" in rest and "interrupted at step" in rest, rest
    stopped = json.loads(
        str(load_checkpoint(tmp_path / "m.last.npz", with_train_state=True).train_state["counters"][()])
    )
    more = _charlstm(2, "train", "--resume", tmp_path / "m.last.npz", "--steps", stopped["step"] + 3)
    assert more.returncode == 0, more.stderr
    assert _state(tmp_path / "m.last.npz")["step"] == stopped["step"] + 3


@needs_mpi
def test_a_batch_that_does_not_split_is_one_line_before_any_work(runs, tmp_path):
    corpus, _ = runs
    done = _charlstm(2, "train", corpus, "--batch-size", 7, "--steps", 1, "--out", tmp_path / "m.npz")
    assert done.returncode == 1
    assert (
        done.stderr.strip() == "error: --batch-size 7 does not split over 2 processes: give a multiple of 2"
    )
    assert not (tmp_path / ".charlstm-cache").exists()  # before the corpus was read


@needs_mpi
def test_the_other_commands_refuse_to_run_as_several_processes():
    done = _charlstm(2, "sample", "--seed", "To be", "--length", 10)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip() == (
        "error: charlstm sample runs as one process, not 2: start it without mpiexec "
        "(only charlstm train trains data parallel)"
    )


@needs_mpi
def test_weights_that_differ_between_ranks_stop_the_run(runs, tmp_path):
    corpus, _ = runs
    done = _train(2, corpus, tmp_path / "m.npz", "--eval-every", 5, fault="corrupt", at=7, timeout=120)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "error" in line]
    assert lines == [lines[0]] and lines[0].startswith(
        "error: at step 10 the weights of rank(s) 1 differ from rank 0's"
    )
    ckpt = load_checkpoint(tmp_path / "m.last.npz", with_train_state=True)
    assert json.loads(str(ckpt.train_state["counters"][()]))["step"] == 5  # the last good state stays
