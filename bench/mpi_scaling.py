"""Data-parallel training over MPI: measured on this machine, and modelled beyond it.

    python bench/mpi_scaling.py [--sizes 2x256,2x512] [--repeats 3] [--isa native]
                                [--batch 256] [--skip-model]

1. On one machine: `mpiexec -n 2 charlstm train` (1 thread per rank, as charlstm picks) against
   one `charlstm train` process on 2 threads, alternating, the median of --repeats runs of
   each; characters/s are the training summary's (steps only, validation excluded).
2. The exchange: `distributed.Group.exchange` of a model's gradient between the 2 ranks,
   alone, per step, and its share of a 2-rank training step.
3. On paper, K machines of this kind (2 cores each, one rank per machine): step time =
   compute(B/K) + exchange, the exchange costed as a ring, 2·(K−1)/K·P·4 bytes / bandwidth +
   2·(K−1)·latency, with compute(b) measured here for b streams on 2 threads. Printed: the
   efficiency (speed-up / K) at a global --batch for K = 2…64, and the streams per rank below
   which the exchange takes longer than the compute.
B=32 for the measured runs, T=64, E=64, dropout 0.1 (the defaults), tinyshakespeare.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import isa as isa_env
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpora" / "tinyshakespeare.txt"
B, T = 32, 64
STEPS = {256: 150, 512: 50}  # per measured run: about 10 s on 2 cores
NETWORKS = {  # bandwidth (bytes/s), latency per message (s)
    "10 GbE": (10e9 / 8, 30e-6),
    "100 Gb InfiniBand": (100e9 / 8, 2e-6),
}
RANKS = (2, 4, 8, 16, 32, 64)
STREAMS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # compute(b) measured for these b


def charlstm_command() -> list[str]:
    return [sys.executable, "-c", "from charlstm.cli import main; main()"]


def train_once(layers: int, hidden: int, ranks: int, env: dict[str, str]) -> float:
    """Characters/s of one `charlstm train` run (ranks 0: one process)."""
    with tempfile.TemporaryDirectory() as folder:
        args = [
            "train", str(CORPUS), "--layers", str(layers), "--hidden", str(hidden), "--batch-size", str(B),
            "--steps", str(STEPS[hidden]), "--eval-every", "1000000", "--out", f"{folder}/m.npz",
        ]  # fmt: skip
        command = [*charlstm_command(), *args]
        if ranks:
            command = [
                shutil.which("mpiexec", path=str(Path(sys.executable).parent)),
                "-n",
                str(ranks),
                *command,
            ]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
        match = re.search(r"characters/s\s*│\s*([\d,]+)", done.stdout + done.stderr)
        assert match, done.stderr
        return float(match.group(1).replace(",", ""))


EXCHANGE_CHILD = """
import json, sys, time
import numpy as np
from charlstm import distributed
from charlstm.model import ModelConfig
group = distributed.connect()
out = {}
for layers, hidden in json.loads(sys.argv[1]):
    P = ModelConfig(65, layers, hidden, 64, 0.1).n_params
    grads = group.gradient_buffer(P)
    grads[:] = np.random.default_rng(group.rank).standard_normal(P)
    scalars = np.array([1.0, 0.0, 0.0])
    for _ in range(3):
        group.exchange(grads, scalars)
    times = []
    for _ in range(30):
        group.broadcast(np.zeros(1))  # both ranks start together
        start = time.perf_counter()
        group.exchange(grads, scalars)
        times.append(time.perf_counter() - start)
    out[f"{layers}x{hidden}"] = {"P": P, "seconds": sorted(times)[len(times) // 2]}
if group.is_root:
    print(json.dumps(out))
"""


def exchange_times(sizes: list[tuple[int, int]], env: dict[str, str]) -> dict:
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent))
    command = [mpiexec, "-n", "2", sys.executable, "-c", EXCHANGE_CHILD, json.dumps(sizes)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout)


COMPUTE_CHILD = """
import json, sys, time
import numpy as np
from charlstm import kernels
from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state
layers, hidden, streams = json.loads(sys.argv[1])
config = ModelConfig(65, layers, hidden, 64, 0.1)
out = {}
rng = np.random.default_rng(0)
params = init_params(config, rng)
grads = Params.zeros(config)
m, v = np.zeros_like(params.flat), np.zeros_like(params.flat)
decay = params.decay_mask()
for b in streams:
    ws = Workspace(config, 64, b)
    h, c = zero_state(config, b)
    x, y = rng.integers(0, 65, (64, b)), rng.integers(0, 65, (64, b))
    def step(k):
        loss_and_grad(params, grads, x, y, h, c, ws, rng)
        kernels.clip_grad_norm(grads.flat, 5.0)
        kernels.adam_step(params.flat, m, v, grads.flat, decay, k, 1e-3, 0.9, 0.99, 1e-8, 0.01)
    step(1)
    times = []
    start = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - start < 1.0:
        t0 = time.perf_counter()
        step(len(times) + 2)
        times.append(time.perf_counter() - t0)
    out[b] = sorted(times)[len(times) // 2]
print(json.dumps(out))
"""


def compute_times(layers: int, hidden: int, env: dict[str, str]) -> dict[int, float]:
    command = [sys.executable, "-c", COMPUTE_CHILD, json.dumps([layers, hidden, list(STREAMS)])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=True)
    return {int(b): s for b, s in json.loads(done.stdout).items()}


def compute_at(times: dict[int, float], streams: float) -> float:
    """compute(b) between the measured b, linear in b; below 1 stream, a 1-stream step."""
    bs = sorted(times)
    return float(np.interp(max(streams, bs[0]), bs, [times[b] for b in bs]))


def crossover(times: dict[int, float], seconds: float) -> str:
    """The streams per rank whose compute takes `seconds` (compute grows with b)."""
    bs = sorted(times)
    if seconds <= times[bs[0]]:
        return f"{bs[0]} stream (never, down to one stream)"
    if seconds >= times[bs[-1]]:
        return f"{bs[-1]} streams (always, up to {bs[-1]})"
    return f"{np.interp(seconds, [times[b] for b in bs], bs):.1f} streams"


def ring_exchange(P: int, K: int, bandwidth: float, latency: float) -> float:
    return 2 * (K - 1) / K * P * 4 / bandwidth + 2 * (K - 1) * latency


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="2x256,2x512")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--isa", default="native", choices=sorted(isa_env.ISA_ENV))
    parser.add_argument("--batch", type=int, default=256, help="global B of the model on paper")
    parser.add_argument("--skip-model", action="store_true", help="only the measurements on this machine")
    args = parser.parse_args()
    sizes = [tuple(int(n) for n in s.split("x")) for s in args.sizes.split(",")]
    env = {**isa_env.environment(args.isa, 2), "COLUMNS": "120", "NO_COLOR": "1"}
    print(
        f"CPU: {isa_env.cpu_model()}, {args.isa}; B={B} T={T}; "
        f"median of {args.repeats} runs each, alternating"
    )

    exchange = exchange_times(sizes, env)
    print(
        "\n| L×H | parameters | 1 process, 2 threads | 2 ranks, 1 thread each | ratio "
        "| exchange/step | share |"
    )
    print("|---|---|---|---|---|---|---|")
    for layers, hidden in sizes:
        alone, ranks = [], []
        for _ in range(args.repeats):
            alone.append(train_once(layers, hidden, 0, env))
            ranks.append(train_once(layers, hidden, 2, env))
        a, r = statistics.median(alone), statistics.median(ranks)
        ex = exchange[f"{layers}x{hidden}"]
        step = B * T / r
        print(
            f"| {layers}×{hidden} | {ex['P']:,} | {a:,.0f} chars/s | {r:,.0f} chars/s | {r / a:.2f} "
            f"| {ex['seconds'] * 1e3:.2f} ms | {ex['seconds'] / step:.1%} of {step * 1e3:.0f} ms |"
        )
    if args.skip_model:
        return

    print(f"\nOn paper: K machines like this one (2 cores, one rank each), global B={args.batch}, T={T}")
    for layers, hidden in sizes:
        times = compute_times(layers, hidden, env)
        P = exchange[f"{layers}x{hidden}"]["P"]
        measured = ", ".join(f"b={b} {times[b] * 1e3:.1f}" for b in STREAMS)
        print(f"\n{layers}×{hidden} ({P:,} parameters, {P * 4 / 2**20:.1f} MiB of gradient)")
        print(f"compute(b) here, ms: {measured}")
        print("\n| network | K | B per rank | compute | exchange | step | efficiency |")
        print("|---|---|---|---|---|---|---|")
        one = compute_at(times, args.batch)
        for name, (bandwidth, latency) in NETWORKS.items():
            for K in RANKS:
                b = args.batch / K
                comp, ex = compute_at(times, b), ring_exchange(P, K, bandwidth, latency)
                eff = one / K / (comp + ex)
                print(f"| {name} | {K} | {b:g} | {comp * 1e3:.1f} ms | {ex * 1e3:.2f} ms | "
                      f"{(comp + ex) * 1e3:.1f} ms | {eff:.0%} |")  # fmt: skip
        for name, (bandwidth, latency) in NETWORKS.items():
            ex64 = ring_exchange(P, 64, bandwidth, latency)
            print(f"\n{name}: the exchange ({ex64 * 1e3:.2f} ms at K=64) outlasts the compute below "
                  f"{crossover(times, ex64)} per rank")  # fmt: skip


if __name__ == "__main__":
    main()
