"""The training step of the working tree against the same step at another revision, side by
side: the two alternate, each in a fresh process, and the table gives the median and the
spread of the rounds' ratios (working tree over base; above 1, the working tree is faster).

    python bench/versus.py [--base HEAD] [--sizes 2x256,2x512] [--threads 1,2]
                           [--isa native,avx2] [--rounds 7] [--cell lstm] [--dropout P]

The base is checked out with `git worktree` into a temporary folder (its kernels compile
there on the first round, which is not counted). Each measurement is bench/train_speed.py's
own, in the checkout it times (characters per second of a full training step, B=32, T=64).
For a kernel change whose effect is a few percent, below what two separate runs of
train_speed.py can tell apart on a shared machine. With --dropout both sides run the working
tree's train_speed.py (a base from before it timed dropout would ignore the rate), each on its
own charlstm: the base must then share the tree's training API (model.loss_and_grad).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import isa as isa_env
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def rate(checkout: str, job: str, isa: str, threads: int, script_from: str | None = None) -> float:
    """Characters per second of train_speed.py's `charlstm:<job>` child run on `checkout`'s
    charlstm, the script from `script_from` (default: the checkout's own)."""
    env = isa_env.environment(isa, threads)
    env["PYTHONPATH"] = checkout
    script = os.path.join(script_from or checkout, "bench", "train_speed.py")
    cmd = [sys.executable, script, "--child", f"charlstm:{job}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=checkout)
    if done.returncode != 0:
        raise SystemExit(f"{checkout}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["chars_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="the git revision to compare with")
    parser.add_argument("--sizes", default="2x256,2x512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--isa", default="native", help="comma-separated: native, avx2 (see bench/isa.py)")
    parser.add_argument("--rounds", type=int, default=7, help="alternating pairs per row")
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--dropout", type=float, default=0.0, help="the step with dropout at this rate")
    args = parser.parse_args()
    script_from = ROOT if args.dropout else None

    with tempfile.TemporaryDirectory() as tmp:
        base = os.path.join(tmp, "base")
        subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", base, args.base],
                       check=True, capture_output=True)  # fmt: skip
        try:
            revision = subprocess.run(["git", "-C", base, "rev-parse", "--short", "HEAD"],
                                      check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
            print(f"working tree / {args.base} ({revision}): one training step of the {args.cell}, "
                  f"dropout {args.dropout}, characters/s, {args.rounds} alternating rounds")  # fmt: skip
            print(f"CPU: {isa_env.cpu_model()}")
            print(f"{'isa':>6} {'L x H':>7} {'threads':>7} {'base':>9} {'tree':>9} "
                  f"{'median':>7} {'min':>6} {'max':>6}")  # fmt: skip
            for isa in args.isa.split(","):
                for size in args.sizes.split(","):
                    layers, hidden = (int(n) for n in size.split("x"))
                    for threads in (int(n) for n in args.threads.split(",")):
                        job = f"{layers}:{hidden}:{threads}:{args.cell}"
                        if args.dropout:
                            job += f":{args.dropout}"
                        sides = ((base, script_from), (ROOT, None))
                        pairs = [
                            tuple(rate(tree, job, isa, threads, script) for tree, script in sides)
                            for _ in range(args.rounds + 1)
                        ][1:]  # the first pair compiles and warms up
                        ratios = [tree / old for old, tree in pairs]
                        print(f"{isa:>6} {size:>7} {threads:>7} {max(p[0] for p in pairs):9.0f} "
                              f"{max(p[1] for p in pairs):9.0f} {np.median(ratios):7.3f} "
                              f"{min(ratios):6.3f} {max(ratios):6.3f}", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", base], capture_output=True)


if __name__ == "__main__":
    main()
