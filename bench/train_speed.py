"""Characters per second of one full training step (forward, backward, clip, Adam), charlstm
against the same step in PyTorch, side by side.

    python bench/train_speed.py [--sizes 1x128,2x256,2x512,3x512] [--threads 1,2] [--repeats 3]
                                [--isa native,avx2] [--end-to-end STEPS] [--cell lstm|gru|rnn]

Each measurement runs in its own subprocess with the thread count fixed through the
environment (BLAS and OpenMP pools are sized when they load), and the two implementations
alternate so that a noisy neighbour hurts both alike. PyTorch runs twice each round: as it
comes, and with glibc's malloc keeping what is freed (bench/isa.py KEEP_FREED_MEMORY), its
best; a ratio against each. B=32, T=64, V=65, E=64, float32.
PyTorch columns are blank when torch is not installed. --isa runs every row on each instruction
set in turn, charlstm and PyTorch both held to it (bench/isa.py), and first prints what that
build runs on: its tile, OpenBLAS's kernels, the FMA peak of one core, the recurrent product's
GFLOP/s. --end-to-end times `charlstm train` with its defaults against the bare step, with
dropout off (the table's) and on at train's default rate (what train's steps do).
The child job `charlstm:L:H:threads[:cell[:dropout]]` times one step alone (bench/versus.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import isa as isa_env
import numpy as np

B, T, V, E = 32, 64, 65, 64
MIN_STEPS, MIN_SECONDS = 6, 1.0  # each timing: at least this many steps and this long


def chars_per_second(step) -> float:
    """Characters per second of step(k), k = 0, 1, ..., over at least MIN_STEPS calls and
    MIN_SECONDS (small models take a few ms a step: a handful would be timer noise)."""
    start = time.perf_counter()
    steps = 0
    while steps < MIN_STEPS or time.perf_counter() - start < MIN_SECONDS:
        step(steps)
        steps += 1
    return B * T * steps / (time.perf_counter() - start)


def charlstm_step(layers: int, hidden: int, cell: str = "lstm", dropout: float = 0.0):
    """step(k): one full training step of charlstm (forward, backward, clip, Adam as step k)
    on random characters, B=32 T=64 V=65 E=64 float32; dropout off unless given."""
    from charlstm import kernels
    from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state

    config = ModelConfig(vocab_size=V, layers=layers, hidden=hidden, embed=E, dropout=dropout, cell=cell)
    rng = np.random.default_rng(0)
    params = init_params(config, rng)
    grads = Params.zeros(config)
    m, v = np.zeros_like(params.flat), np.zeros_like(params.flat)
    decay = params.decay_mask()
    ws = Workspace(config, T, B)
    h, c = zero_state(config, B)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))
    masks = np.random.default_rng(1) if dropout > 0 else None

    def step(k: int) -> None:
        loss_and_grad(params, grads, x, y, h, c, ws, dropout_rng=masks)
        kernels.clip_grad_norm(grads.flat, 5.0)
        kernels.adam_step(params.flat, m, v, grads.flat, decay, k, 2e-3, 0.9, 0.999, 1e-8, 0.0)

    return step


def time_charlstm(layers: int, hidden: int, cell: str = "lstm", dropout: float = 0.0) -> float:
    step = charlstm_step(layers, hidden, cell, dropout)
    step(1)
    return chars_per_second(lambda k: step(k + 2))


def time_torch(layers: int, hidden: int, threads: int, cell: str = "lstm") -> float:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(V, E)
    lstm = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](E, hidden, layers)
    head = torch.nn.Linear(hidden, V)
    parameters = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(parameters, lr=2e-3)
    x = torch.randint(0, V, (T, B))
    y = torch.randint(0, V, (T, B))
    zeros = torch.zeros(layers, B, hidden)
    state = (zeros, zeros.clone()) if cell == "lstm" else zeros

    def step() -> None:
        nonlocal state
        opt.zero_grad()
        out, final = lstm(emb(x), state)
        state = tuple(s.detach() for s in final) if cell == "lstm" else final.detach()
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        opt.step()

    step()
    return chars_per_second(lambda k: step())


def measure_in_subprocess(child: str, isa: str, threads: int, keep_freed_memory: bool = False) -> dict | None:
    """Run this script's `--child` job on `isa` with `threads` threads (glibc's malloc keeping
    what is freed when asked); its JSON answer, or None when it needs torch and torch is not
    installed."""
    cmd = [sys.executable, __file__, "--child", child]
    env = isa_env.environment(isa, threads, keep_freed_memory)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        if "No module named 'torch'" in result.stderr:
            return None
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def end_to_end(isa: str, steps: int) -> dict:
    """`charlstm train` on tinyshakespeare with its defaults (2x256, dropout, validation and
    checkpoints every 500 steps, two threads) for `steps` steps: characters trained per second
    of the whole run and over its steps alone. The run's time is the metrics log's last elapsed
    figure (milliseconds, counted from the first step: start-up and compilation excluded, the
    validations and the checkpoint between them included; only the final checkpoint's write,
    after the last validation, is left out). The summary's clock shows whole seconds: ±1.3% at
    1,000 steps."""
    from charlstm.metrics import metrics_path_for, read_curves

    corpus = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "corpora", "tinyshakespeare.txt")
    with tempfile.TemporaryDirectory() as out:
        charlstm = os.path.join(os.path.dirname(sys.executable), "charlstm")
        model = os.path.join(out, "e2e.npz")
        cmd = [charlstm, "train", corpus, "--steps", str(steps), "--out", model]
        env = isa_env.environment(isa, 2)
        env.update(NO_COLOR="1", COLUMNS="200")
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        elapsed = read_curves(metrics_path_for(model)).elapsed
    summary = dict(re.findall(r"(characters seen|characters/s)\s*[│|]\s*(\S+)", result.stderr))
    seen = int(summary["characters seen"].replace(",", ""))
    steps_only = float(summary["characters/s"].replace(",", ""))
    return {"wall": seen / elapsed[max(elapsed)], "steps_only": steps_only}


def print_end_to_end(isa: str, steps: int, repeats: int) -> None:
    """`charlstm train`'s rate against the bare step's (dropout off, as in the table; and on,
    at train's default rate, as train's steps run), each run against the bare steps timed just
    before and after it: the best of `repeats` such pairs."""
    from charlstm.options import TrainOptions

    dropout = TrainOptions().dropout
    bare: dict[float, list[float]] = {0.0: [], dropout: []}
    runs = []

    def time_bare() -> None:
        for rate, rates in bare.items():
            rates.append(measure_in_subprocess(f"charlstm:2:256:2:lstm:{rate}", isa, 2)["chars_per_s"])

    for _ in range(repeats):
        time_bare()
        runs.append(end_to_end(isa, steps))
    time_bare()
    beside = {rate: [max(a, b) for a, b in zip(r, r[1:], strict=False)] for rate, r in bare.items()}

    def best(key: str, rate: float) -> float:
        return max(run[key] / s for run, s in zip(runs, beside[rate], strict=True))

    print(f"end to end, charlstm train (2x256, 2 threads, {steps} steps, defaults): "
          f"{max(r['wall'] for r in runs):.0f} characters/s over the run with validation and "
          f"checkpoints, {max(r['steps_only'] for r in runs):.0f} over its steps alone; the bare "
          f"step {max(bare[0.0]):.0f} with dropout off, {max(bare[dropout]):.0f} with {dropout}; "
          f"best of {repeats} pairs, run / bare steps beside it: {best('wall', 0.0):.2f} over the run, "
          f"{best('steps_only', 0.0):.2f} over its steps (dropout off); {best('wall', dropout):.2f} "
          f"and {best('steps_only', dropout):.2f} (dropout {dropout})", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1x128,2x256,2x512,3x512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--isa", default="native", help="comma-separated: native, avx2 (see bench/isa.py)")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--cell", default="lstm", help="lstm, gru or rnn (PyTorch: nn.LSTM, nn.GRU, nn.RNN)")
    parser.add_argument("--end-to-end", type=int, default=0, metavar="STEPS",
                        help="also time `charlstm train` with its defaults, this many steps")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        impl, *rest = args.child.split(":")
        if impl == "figures":
            print(json.dumps(isa_env.build_figures()))
            return
        layers, hidden, threads = (int(n) for n in rest[:3])
        cell = rest[3] if len(rest) > 3 else "lstm"
        if impl == "charlstm":
            dropout = float(rest[4]) if len(rest) > 4 else 0.0
            print(json.dumps({"chars_per_s": time_charlstm(layers, hidden, cell, dropout)}))
        else:
            print(json.dumps({"chars_per_s": time_torch(layers, hidden, threads, cell)}))
        return

    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    thread_counts = [int(n) for n in args.threads.split(",")]
    print(f"one training step of the {args.cell}, B={B} T={T} V={V} E={E} float32; characters/s, "
          f"best of {args.repeats}")  # fmt: skip
    print(f"CPU: {isa_env.cpu_model()}")
    for isa in args.isa.split(","):
        f = measure_in_subprocess("figures", isa, 1)
        products = ", ".join(
            f"{shape}: tiles {p['tiles']:.0f}" if p["tiles"] else f"{shape}: tiles -"
            for shape, p in f.items() if isinstance(p, dict)
        )  # fmt: skip
        blas = ", ".join(f"{p['blas']:.0f}" for p in f.values() if isinstance(p, dict))
        print(f"\n--isa {isa}: built for {f['isa']} (tile {f['tile']}), OpenBLAS {f['openblas']}; "
              f"FMA peak {f['peak']:.0f} GFLOP/s a core; step product x32, one thread, GFLOP/s: "
              f"{products} (BLAS {blas})")  # fmt: skip
        print(f"{'isa':>6} {'L x H':>7} {'threads':>7} {'charlstm':>10} {'pytorch':>10} {'ratio':>7} "
              f"{'pytorch, malloc kept':>21} {'ratio':>7}")  # fmt: skip
        for layers, hidden in sizes:
            for threads in thread_counts:
                ours, theirs = 0.0, {False: None, True: None}
                for _ in range(args.repeats):  # alternate so all three see the same machine
                    job = f"{layers}:{hidden}:{threads}:{args.cell}"
                    ours = max(ours, measure_in_subprocess(f"charlstm:{job}", isa, threads)["chars_per_s"])
                    for kept in theirs:
                        rate = measure_in_subprocess(f"torch:{job}", isa, threads, kept)
                        if rate is not None:
                            theirs[kept] = max(theirs[kept] or 0.0, rate["chars_per_s"])
                row = f"{isa:>6} {layers:>3}x{hidden:<3} {threads:>7} {ours:10.0f}"
                for kept, width in ((False, 10), (True, 21)):
                    rate = theirs[kept]
                    row += f" {rate:{width}.0f} {ours / rate:7.2f}" if rate else f" {'-':>{width}} {'-':>7}"
                print(row, flush=True)
        if args.end_to_end:
            print_end_to_end(isa, args.end_to_end, args.repeats)


if __name__ == "__main__":
    main()
