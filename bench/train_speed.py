"""Characters per second of one full training step (forward, backward, clip, Adam), charlstm
against the same step in PyTorch, side by side.

    python bench/train_speed.py [--sizes 1x128,2x256,2x512,3x512] [--threads 1,2] [--repeats 3]

Each measurement runs in its own subprocess with the thread count fixed through the
environment (BLAS and OpenMP pools are sized when they load), and the two implementations
alternate so that a noisy neighbour hurts both alike. B=32, T=64, V=65, E=64, float32.
PyTorch columns are blank when torch is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

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


def time_charlstm(layers: int, hidden: int) -> float:
    from charlstm import kernels
    from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state

    config = ModelConfig(vocab_size=V, layers=layers, hidden=hidden, embed=E, dropout=0.0)
    rng = np.random.default_rng(0)
    params = init_params(config, rng)
    grads = Params.zeros(config)
    m, v = np.zeros_like(params.flat), np.zeros_like(params.flat)
    decay = params.decay_mask()
    ws = Workspace(config, T, B)
    h, c = zero_state(config, B)
    x = rng.integers(0, V, (T, B))
    y = rng.integers(0, V, (T, B))

    def step(k: int) -> None:
        loss_and_grad(params, grads, x, y, h, c, ws)
        kernels.clip_grad_norm(grads.flat, 5.0)
        kernels.adam_step(params.flat, m, v, grads.flat, decay, k, 2e-3, 0.9, 0.999, 1e-8, 0.0)

    step(1)
    return chars_per_second(lambda k: step(k + 2))


def time_torch(layers: int, hidden: int, threads: int) -> float:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    emb = torch.nn.Embedding(V, E)
    lstm = torch.nn.LSTM(E, hidden, layers)
    head = torch.nn.Linear(hidden, V)
    parameters = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.Adam(parameters, lr=2e-3)
    x = torch.randint(0, V, (T, B))
    y = torch.randint(0, V, (T, B))
    state = (torch.zeros(layers, B, hidden), torch.zeros(layers, B, hidden))

    def step() -> None:
        nonlocal state
        opt.zero_grad()
        out, (h, c) = lstm(emb(x), state)
        state = (h.detach(), c.detach())
        loss = torch.nn.functional.cross_entropy(head(out).reshape(-1, V), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 5.0)
        opt.step()

    step()
    return chars_per_second(lambda k: step())


def measure_in_subprocess(impl: str, layers: int, hidden: int, threads: int) -> float | None:
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    cmd = [sys.executable, __file__, "--child", f"{impl}:{layers}:{hidden}:{threads}"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        if impl == "torch" and "No module named 'torch'" in result.stderr:
            return None
        raise RuntimeError(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])["chars_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1x128,2x256,2x512,3x512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs each")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        impl, layers, hidden, threads = args.child.split(":")
        if impl == "charlstm":
            rate = time_charlstm(int(layers), int(hidden))
        else:
            rate = time_torch(int(layers), int(hidden), int(threads))
        print(json.dumps({"chars_per_s": rate}))
        return

    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    thread_counts = [int(n) for n in args.threads.split(",")]
    print(f"one training step, B={B} T={T} V={V} E={E} float32; characters/s, best of {args.repeats}")
    print(f"{'L x H':>7} {'threads':>7} {'charlstm':>10} {'pytorch':>10} {'ratio':>7}")
    for layers, hidden in sizes:
        for threads in thread_counts:
            ours, theirs = 0.0, None
            for _ in range(args.repeats):  # alternate so both see the same machine
                ours = max(ours, measure_in_subprocess("charlstm", layers, hidden, threads))
                rate = measure_in_subprocess("torch", layers, hidden, threads)
                if rate is not None:
                    theirs = max(theirs or 0.0, rate)
            ratio = f"{ours / theirs:7.2f}" if theirs else f"{'-':>7}"
            torch_col = f"{theirs:10.0f}" if theirs else f"{'-':>10}"
            print(f"{layers:>3}x{hidden:<3} {threads:>7} {ours:10.0f} {torch_col} {ratio}", flush=True)


if __name__ == "__main__":
    main()
