"""LSTM, GRU and plain RNN on tinyshakespeare for the same wall-clock budgets: validation loss,
how far back a prediction reaches, and how long the units remember.

    python bench/cells.py --minutes 3 15 [--cells lstm,gru,rnn] [--keep DIR]

Each (budget, cell) is one fresh `charlstm train` run with the defaults but --cell (2x256,
seed 1337, nanoGPT's 90/10 split), in its own subprocess (bench/quality.py's runner), one after
the other: run it on a quiet machine. Then, on the saved model, over the first CHARS characters
of the validation split:
- the reach (charlstm.reach): the median over REACH_TARGETS positions of the sensitivity of
  log p(next character) to the input k characters back, relative to lag 1, at lags 10, 50, 100;
- the share of units whose memory half-life (ln 0.5 / ln of the unit's median keep gate: the
  LSTM's forget gate f, the GRU's update gate z) is over 20 characters; a plain RNN has none.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import quality  # bench/quality.py: one training run in a fresh subprocess

CELLS = ("lstm", "gru", "rnn")
CHARS = 5_000  # validation characters the model reads for the statistics
REACH_TARGETS = 1_000
LAGS = (1, 10, 50, 100)
HALF_LIFE = 20.0  # characters


def memory_figures(path: Path) -> dict:
    """The reach and half-life figures of one saved model (see the module docstring)."""
    from charlstm import gates, reach
    from charlstm.checkpoint import load_checkpoint
    from charlstm.data import read_text, train_size

    checkpoint = load_checkpoint(path)
    text = read_text(quality.CORPUS)
    split = train_size(len(text), 0.1)  # nanoGPT's split, as training makes it (the default)
    trace = gates.compute_trace(checkpoint.params, checkpoint.vocab, text[split : split + CHARS], show=CHARS)
    reached = reach.compute_reach(checkpoint.params, trace, targets=REACH_TARGETS, lags=max(LAGS))
    lives = gates.unit_half_lives(trace)
    return {
        "reach": {lag: reached.relative_median(lag) for lag in LAGS},
        "long_memory": float(np.mean(lives > HALF_LIFE)) if trace.signals.keep else None,
        "median_half_life": float(np.median(lives)) if trace.signals.keep else None,
    }


def print_table(rows: list[dict]) -> None:
    lags = " ".join(f"{'lag ' + str(lag):>9}" for lag in LAGS[1:])
    print(
        f"\n{'budget':>7} {'cell':>4} {'val nats':>9} {'steps':>7} {'chars/s':>8} {lags} "
        f"{'t½ > 20':>8} {'t½ med':>7}"
    )
    for r in rows:
        m = r["memory"]
        reach_cols = " ".join(f"{m['reach'][lag]:>9.2e}" for lag in LAGS[1:])
        share = "-" if m["long_memory"] is None else f"{m['long_memory']:.1%}"
        median = "-" if m["median_half_life"] is None else f"{m['median_half_life']:.1f}"
        print(
            f"{r['minutes']:>5g} m {r['cell']:>4} {r['val_loss']:>9.4f} {r['steps']:>7,} "
            f"{r['chars_per_s']:>8,.0f} {reach_cols} {share:>8} {median:>7}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[3.0, 15.0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated: lstm, gru, rnn")
    parser.add_argument("--keep", type=Path, help="keep the checkpoints in this folder")
    args = parser.parse_args()
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cell {unknown[0]!r}; choose from {', '.join(CELLS)}")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="charlstm-cells-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(
        f"charlstm train {quality.CORPUS.relative_to(quality.ROOT)} --cell C --minutes M, defaults; "
        f"reach relative to lag 1 (median over {REACH_TARGETS:,} positions) and the share of units "
        f"with a half-life over {HALF_LIFE:g} characters, on {CHARS:,} validation characters",
        flush=True,
    )
    rows = []
    for minutes in args.minutes:
        for cell in cells:
            out = folder / f"shakespeare-{cell}-{minutes:g}min.npz"
            row = quality.child({"minutes": minutes, "overrides": {"cell": cell}, "out": str(out)})
            rows.append({**row, "cell": cell, "memory": memory_figures(out)})
            print_table(rows)
    if args.keep is None:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"checkpoints kept in {folder}")


if __name__ == "__main__":
    main()
