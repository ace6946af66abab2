"""Validation loss of `charlstm train` with its defaults on tinyshakespeare, per wall-clock budget.

    python bench/quality.py --minutes 3 15 [--set hidden=384 --set dropout=0.2] [--keep DIR]
    python bench/quality.py --finetune [--minutes 1 3 10] [--set lr=0.001]

With --finetune the corpus is corpora/ecclesiastes.txt (20 KB of the King James Bible, a style
the shipped model never saw; its last 10% is the validation text) and each budget runs twice,
in turn: `--init-from shipped` with the fine-tuning defaults (and --set), and from scratch
with the defaults. Target: fine-tuning reaches the lower loss at every budget.

Each budget is one fresh run (defaults, seed 1337, nanoGPT's 90/10 split) in its own
subprocess, so runs do not share warm caches or thread pools; run it on a quiet machine.
The loss is that of the saved (best-validation) model over the full validation split.
Targets from the issue: <= 1.70 nats/char after 3 minutes, <= 1.50 after 15.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "corpora" / "tinyshakespeare.txt"
FINETUNE_CORPUS = ROOT / "corpora" / "ecclesiastes.txt"
FINETUNE_MINUTES = [1.0, 3.0, 10.0]
TARGETS = {3.0: 1.70, 15.0: 1.50}  # minutes -> nats/char the defaults must reach


def run_one(
    minutes: float, overrides: dict, out: Path, corpus: Path = CORPUS, init_from: str | None = None
) -> dict:
    """Train once in this process and return the figures for the table."""
    from charlstm.train import Hooks, train

    started = time.perf_counter()

    def evaluation(info) -> None:
        elapsed = time.perf_counter() - started
        _stderr(f"  {elapsed / 60:5.2f} min  step {info.step:>6,}  val {info.val_loss:.4f}")

    hooks = Hooks(notice=_stderr, evaluation=evaluation)
    given = {**overrides, "minutes": minutes}
    result = train([corpus], given, out=out, init_from=init_from, hooks=hooks)
    return {
        "minutes": minutes,
        "val_loss": result.best_val_loss,
        "steps": result.step,
        "chars_per_s": result.chars_per_s,
        "wall": time.perf_counter() - started,
        "options": result.options.to_dict(),
    }


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_overrides(pairs: list[str]) -> dict:
    """KEY=VALUE pairs (TrainOptions names) with JSON values: hidden=384, min_lr=null."""
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            sys.exit(f"--set {pair}: the value must be JSON (a number, true/false or null)")
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", help="one or more budgets (default 3; 1 3 10)")
    parser.add_argument("--finetune", action="store_true", help="fine-tuned from shipped vs scratch")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a default")
    parser.add_argument("--keep", type=Path, help="keep the checkpoints in this folder")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one run, its figures as JSON on the last stdout line
        spec = json.loads(args.child)
        corpus = Path(spec.get("corpus", CORPUS))
        print(
            json.dumps(
                run_one(spec["minutes"], spec["overrides"], Path(spec["out"]), corpus, spec.get("init_from"))
            )
        )
        return
    if args.finetune:
        finetune_table(args.minutes or FINETUNE_MINUTES, parse_overrides(args.set), args.keep)
        return
    args.minutes = args.minutes or [3.0]

    overrides = parse_overrides(args.set)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="charlstm-quality-"))
    rows = []
    extra = f" + {overrides}" if overrides else ""
    print(f"charlstm train {CORPUS.relative_to(ROOT)} --minutes M, defaults{extra}", flush=True)
    for minutes in args.minutes:
        out = folder / f"shakespeare-{minutes:g}min.npz"
        rows.append(child({"minutes": minutes, "overrides": overrides, "out": str(out)}))
        print_table(rows)
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"checkpoints kept in {folder}")


def child(spec: dict) -> dict:
    """One run in a fresh subprocess (no warm caches or thread pools shared), its figures."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True
    )
    if done.returncode != 0:
        sys.exit(f"the {spec['minutes']:g}-minute run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def finetune_table(budgets: list[float], overrides: dict, keep: Path | None) -> None:
    folder = keep or Path(tempfile.mkdtemp(prefix="charlstm-finetune-"))
    name = FINETUNE_CORPUS.relative_to(ROOT)
    extra = f" {overrides}" if overrides else ""
    print(f"charlstm train {name} --minutes M: --init-from shipped{extra} against from scratch", flush=True)
    rows = []
    for minutes in budgets:
        row = {"minutes": minutes}
        for kind, init_from, given in (("tuned", "shipped", overrides), ("scratch", None, {})):
            out = folder / f"ecclesiastes-{kind}-{minutes:g}min.npz"
            spec = {"minutes": minutes, "overrides": given, "out": str(out), "corpus": str(FINETUNE_CORPUS)}
            row[kind] = child({**spec, "init_from": init_from})
        rows.append(row)
        print(
            f"\n{'budget':>8} {'fine-tuned':>10} {'steps':>6} {'scratch':>8} {'steps':>6}  lower", flush=True
        )
        for r in rows:
            tuned, scratch = r["tuned"], r["scratch"]
            verdict = "fine-tuned" if tuned["val_loss"] < scratch["val_loss"] else "SCRATCH"
            print(
                f"{r['minutes']:>6g} m {tuned['val_loss']:>10.4f} {tuned['steps']:>6,} "
                f"{scratch['val_loss']:>8.4f} {scratch['steps']:>6,}  {verdict}",
                flush=True,
            )
    if keep is None:
        shutil.rmtree(folder, ignore_errors=True)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'budget':>8} {'val nats':>9} {'bits/char':>9} {'steps':>7} {'chars/s':>8} {'wall':>7}  target")
    for r in rows:
        loss = r["val_loss"]
        target = TARGETS.get(r["minutes"])
        verdict = "" if target is None else f"<= {target:.2f} {'ok' if loss <= target else 'MISSED'}"
        print(
            f"{r['minutes']:>6g} m {loss:>9.4f} {loss / math.log(2):>9.4f} {r['steps']:>7,} "
            f"{r['chars_per_s']:>8,.0f} {r['wall'] / 60:>5.1f} m  {verdict}",
            flush=True,
        )


if __name__ == "__main__":
    main()
