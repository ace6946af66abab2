"""Soak test: a long training run must stay flat in memory (peak RSS grows by at most 5%).

    python bench/soak.py [--minutes 10] [--corpus corpora/tinyshakespeare.txt] [--eval-every 100]
                         [--layers 2 --hidden 256 --embed 64 ...] [--rows 12]

Trains in this process with the default model (or the sizes given), validating and writing
both checkpoints to a temporary folder every --eval-every steps, so validation, checkpoint
writes and epoch wrap-arounds all repeat many times. The step callback samples VmRSS, RssAnon
and VmHWM from /proc/self/status. The start peak is VmHWM once the first validation and its
checkpoint writes are done (buffers, compiled kernels and corpus are in by then); the end peak
is VmHWM when the budget is spent. Exit status 1 when the end peak exceeds the start by > 5%.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from charlstm.train import EvalInfo, Hooks, StepInfo, train

REPO = Path(__file__).resolve().parents[1]
MAX_GROWTH = 0.05
SAMPLE_SECONDS = 2.0  # at most one /proc read this often (the step callback runs every step)
STATUS_FIELDS = ("VmRSS", "RssAnon", "VmHWM")


def memory() -> dict[str, int]:
    """This process's VmRSS, RssAnon and VmHWM in KiB."""
    values = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in STATUS_FIELDS:
                values[key] = int(rest.split()[0])
    return values


class Sampler:
    """Memory over time, fed by the training callbacks."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, int, dict[str, int]]] = []  # (elapsed s, step, memory)
        self.start_peak: int | None = None  # VmHWM after the first validation
        self.start_step = 0
        self.last_sample = -SAMPLE_SECONDS
        self.evaluations = 0

    def step(self, info: StepInfo) -> None:
        if info.elapsed - self.last_sample >= SAMPLE_SECONDS:
            self.last_sample = info.elapsed
            self.rows.append((info.elapsed, info.step, memory()))

    def evaluation(self, info: EvalInfo) -> None:
        self.evaluations += 1
        now = memory()
        if self.start_peak is None:
            self.start_peak, self.start_step = now["VmHWM"], info.step
        self.rows.append((self.rows[-1][0] if self.rows else 0.0, info.step, now))


def mib(kib: int) -> str:
    return f"{kib / 1024:,.1f}"


def print_table(sampler: Sampler, rows: int) -> None:
    picked = sampler.rows
    if len(picked) > rows:  # evenly spread, first and last included
        picked = [picked[round(i * (len(picked) - 1) / (rows - 1))] for i in range(rows)]
    print(f"{'elapsed s':>10} {'step':>8} {'VmRSS MiB':>10} {'RssAnon MiB':>12} {'VmHWM MiB':>10}")
    for elapsed, step, mem in picked:
        rss, anon, peak = (mib(mem[key]) for key in STATUS_FIELDS)
        print(f"{elapsed:>10.0f} {step:>8,} {rss:>10} {anon:>12} {peak:>10}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget (default 10)")
    parser.add_argument("--corpus", type=Path, default=REPO / "corpora" / "tinyshakespeare.txt")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validations and writes")
    parser.add_argument("--rows", type=int, default=12, help="rows of the memory table")
    for name in ("layers", "hidden", "embed", "seq-len", "batch-size"):
        parser.add_argument(f"--{name}", type=int, help="model or batch size (default: train's)")
    args = parser.parse_args()

    sampler = Sampler()
    given = {
        "minutes": args.minutes,
        "eval_every": args.eval_every,
        "layers": args.layers,
        "hidden": args.hidden,
        "embed": args.embed,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
    }
    before = memory()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            [args.corpus],
            given,
            out=Path(tmp) / "soak.npz",
            hooks=Hooks(
                notice=lambda text: print(f"notice: {text}"), step=sampler.step, evaluation=sampler.evaluation
            ),
        )
    end = memory()
    sampler.rows.append((result.elapsed, result.step, end))
    wall = time.perf_counter() - started

    print(
        f"soak: {result.options.layers}x{result.options.hidden} model, {result.batch_size}x{result.seq_len} "
        f"batches, {result.step:,} steps, {result.epoch:.2f} epochs, {sampler.evaluations} validations "
        f"with checkpoint writes, {wall:.0f} s wall, {result.chars_per_s:,.0f} chars/s"
    )
    print(f"before training: VmRSS {mib(before['VmRSS'])} MiB\n")
    print_table(sampler, args.rows)
    if sampler.start_peak is None:
        print("\nno validation happened: lower --eval-every or raise --minutes")
        return 1
    growth = (end["VmHWM"] - sampler.start_peak) / sampler.start_peak
    print()
    print(f"{'':<28} {'step':>8} {'peak RSS MiB':>13}")
    print(f"{'start (first validation)':<28} {sampler.start_step:>8,} {mib(sampler.start_peak):>13}")
    print(f"{'end':<28} {result.step:>8,} {mib(end['VmHWM']):>13}")
    verdict = "ok" if growth <= MAX_GROWTH else "FAIL"
    print(f"growth {growth:+.2%} (limit {MAX_GROWTH:.0%}): {verdict}")
    return 0 if growth <= MAX_GROWTH else 1


if __name__ == "__main__":
    sys.exit(main())
