"""Where one training step's time goes: every kernel the step calls, in ms a step, beside the
whole step and PyTorch's, on one instruction set and thread count.

    python bench/step_profile.py [--size 2x256] [--threads 1] [--isa native|avx2] [--steps 20]
                                 [--dropout 0.0] [--cell lstm|gru|rnn]

The step is bench/train_speed.py's (B=32, T=64, V=65, E=64, float32: forward, backward, clip,
Adam). It runs in a subprocess held to the ISA and thread count (bench/isa.py). Each kernel
is timed by wrapping the functions of charlstm.kernels that the model calls, so a kernel's
time includes its call from Python; "the rest" is Python between them. The wrapped and plain
steps are timed in turn, to show what the wrapping costs; PyTorch's step (train_speed.py's) in
a process of its own after them. One run: for ratios to quote, use train_speed.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict

import isa as isa_env
import train_speed

B, T = train_speed.B, train_speed.T


def profile(layers: int, hidden: int, steps: int, dropout: float, cell: str) -> dict:
    """ms a step for every kernel the step calls, the wrapped and the plain step, PyTorch's."""
    from charlstm import kernels

    step = train_speed.charlstm_step(layers, hidden, cell, dropout)
    seconds: dict[str, float] = defaultdict(float)
    plain = {name: getattr(kernels, name) for name in kernels.__all__}

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[name] += time.perf_counter() - start

        return call

    def run(wrapped: bool) -> float:
        for name, fn in plain.items():
            setattr(kernels, name, timed(name, fn) if wrapped else fn)
        start = time.perf_counter()
        for k in range(steps):
            step(k + 2)
        return (time.perf_counter() - start) / steps * 1e3

    step(1)  # compile
    run(True)
    seconds.clear()
    wrapped_ms, plain_ms = [], []
    for _ in range(3):  # alternate, keep the best
        plain_ms.append(run(False))
        before = dict(seconds)
        wrapped_ms.append(run(True))
        if wrapped_ms[-1] > min(wrapped_ms):  # keep the kernel times of the best wrapped run only
            seconds.clear()
            seconds.update(before)
        else:
            for name in list(seconds):
                seconds[name] -= before.get(name, 0.0)
    run(False)
    kernels_ms = {name: s / steps * 1e3 for name, s in seconds.items()}
    return {"kernels": kernels_ms, "wrapped": min(wrapped_ms), "plain": min(plain_ms)}


def torch_ms(layers: int, hidden: int, threads: int, isa: str, cell: str) -> float | None:
    """PyTorch's step in ms, in its own process (train_speed.py's): beside numba's kernels in
    this one, it ran up to 1.5x slower."""
    rate = train_speed.measure_in_subprocess(f"torch:{layers}:{hidden}:{threads}:{cell}", isa, threads)
    return None if rate is None else B * T / rate["chars_per_s"] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2x256")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--isa", default="native", choices=sorted(isa_env.ISA_ENV))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers, hidden = (int(n) for n in args.size.split("x"))
    if args.child:
        print(json.dumps(profile(layers, hidden, args.steps, args.dropout, args.cell)))
        return
    cmd = [sys.executable, __file__, "--child", *sys.argv[1:]]
    result = subprocess.run(
        cmd, env=isa_env.environment(args.isa, args.threads), capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(result.stderr)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    theirs = torch_ms(layers, hidden, args.threads, args.isa, args.cell)
    print(f"{args.cell} {args.size}, {args.threads} thread(s), --isa {args.isa}, dropout {args.dropout}, "
          f"B={B} T={T}; ms a step, best of 3 runs of {args.steps} steps")  # fmt: skip
    print(f"CPU: {isa_env.cpu_model()}")
    print(f"{'kernel':>32} {'ms':>8} {'share':>6}")
    total = figures["wrapped"]
    for name, ms in sorted(figures["kernels"].items(), key=lambda kv: -kv[1]):
        print(f"{name:>32} {ms:8.2f} {ms / total:6.1%}")
    rest = total - sum(figures["kernels"].values())
    print(f"{'the rest (Python)':>32} {rest:8.2f} {rest / total:6.1%}")
    print(f"{'step, wrapped':>32} {total:8.2f}")
    print(f"{'step, plain':>32} {figures['plain']:8.2f}")
    if theirs is not None:
        print(f"{'PyTorch step':>32} {theirs:8.2f}   (charlstm/PyTorch {theirs / figures['plain']:.2f})")


if __name__ == "__main__":
    main()
