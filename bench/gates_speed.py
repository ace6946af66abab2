"""Seconds for `inspect-gates` statistics over a long text: one stream (B=1) through the model,
gate statistics, and unit ranking, for a few model sizes and core counts.

    python bench/gates_speed.py [--sizes 1x128,2x256,2x512] [--chars 20000] [--cores 1,2] [--repeats 3]
                                [--isa native,avx2]

Columns: `model.forward` is the evaluation forward pass over the text in windows (one BLAS
product per step and layer), for comparison; `stream` is stream.run_stream, what inspection
uses (layers pipelined on threads); `trace` gates.compute_trace (stream plus every statistic),
`rank` variance ranking plus the `line-pos`-feature ranking with its 20-shift null, `total`
trace + rank in wall-clock seconds, `total cpu` the same in CPU seconds of all threads. Best of
--repeats, each size and core count in its own subprocess, pinned to that many cores and with
BLAS sized to them. V=65, E=64, float32, random weights (speed does not depend on training),
Shakespeare text.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import isa as isa_env
import numpy as np

V, E = 65, 64
CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "tinyshakespeare.txt"


def measure(layers: int, hidden: int, chars: int, repeats: int) -> dict[str, float]:
    from charlstm import gates, stream
    from charlstm.data import Vocab
    from charlstm.model import ModelConfig, Workspace, forward, init_params, zero_state

    text = CORPUS.read_text(encoding="utf-8")[:chars] if CORPUS.exists() else ""
    text = (text or '"the cat," she said.\n') * (chars // max(1, len(text)) + 1)
    text = text[:chars]
    vocab = Vocab.from_text(text)
    config = ModelConfig(vocab_size=vocab.size, layers=layers, hidden=hidden, embed=E)
    params = init_params(config, np.random.default_rng(0))
    ids = vocab.encode(text)
    T = gates.WINDOW
    ws = Workspace(config, T, 1)
    tail_ws = Workspace(config, max(1, chars % T), 1)
    gates.rank_units(
        gates.compute_trace(params, vocab, text[: T + 10]), feature="line-pos"
    )  # compile, warm up

    best = {key: float("inf") for key in ("model.forward", "stream", "trace", "rank", "total", "cpu")}
    for _ in range(repeats):
        h, c = zero_state(config, 1)
        start = time.perf_counter()
        for a in range(0, chars, T):
            chunk = ids[a : a + T]
            forward(params, chunk.reshape(-1, 1), h, c, ws if len(chunk) == T else tail_ws)
        best["model.forward"] = min(best["model.forward"], time.perf_counter() - start)

        h, c = zero_state(config, 1)
        start = time.perf_counter()
        stream.run_stream(params, ids, h, c, T)
        best["stream"] = min(best["stream"], time.perf_counter() - start)

        start, cpu_start = time.perf_counter(), time.process_time()
        trace = gates.compute_trace(params, vocab, text)
        mid = time.perf_counter()
        gates.rank_units(trace, "variance")
        gates.rank_units(trace, feature="line-pos")
        end, cpu_end = time.perf_counter(), time.process_time()
        best["trace"] = min(best["trace"], mid - start)
        best["rank"] = min(best["rank"], end - mid)
        best["total"] = min(best["total"], end - start)
        best["cpu"] = min(best["cpu"], cpu_end - cpu_start)
    return best


def in_subprocess(
    layers: int, hidden: int, chars: int, cores: int, repeats: int, isa: str
) -> dict[str, float]:
    env = isa_env.environment(isa, cores)
    cmd = [sys.executable, __file__, "--child", f"{layers}:{hidden}:{chars}:{repeats}:{cores}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1x128,2x256,2x512")
    parser.add_argument("--chars", type=int, default=20_000)
    parser.add_argument("--cores", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--isa", default="native", help="comma-separated: native, avx2 (see bench/isa.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        layers, hidden, chars, repeats, cores = (int(x) for x in args.child.split(":"))
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
        print(json.dumps(measure(layers, hidden, chars, repeats)))
        return

    columns = [
        "isa",
        "L x H",
        "cores",
        "chars",
        "model.forward",
        "stream",
        "trace",
        "rank",
        "total",
        "total cpu",
        "chars/s",
    ]
    print("  ".join(f"{c:>13}" for c in columns))
    for isa in args.isa.split(","):
        for size in args.sizes.split(","):
            layers, hidden = (int(x) for x in size.split("x"))
            for cores in (int(t) for t in args.cores.split(",")):
                r = in_subprocess(layers, hidden, args.chars, cores, args.repeats, isa)
                cells = [isa, size, str(cores), f"{args.chars:,}"]
                cells += [
                    f"{r[k]:.2f} s" for k in ("model.forward", "stream", "trace", "rank", "total", "cpu")
                ]
                cells.append(f"{args.chars / r['total']:,.0f}")
                print("  ".join(f"{c:>13}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
