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

    python bench/gates_speed.py --explorer [--cores 1,2] [--isa native,avx2] [--repeats 3]

measures the explorer instead, on the shipped 2x512 model over tinyshakespeare: `reach`, the
seconds of reach.compute_reach for 400 targets x 100 lags (best of --repeats, in a subprocess
pinned to that many cores); then the explorer page over 2,000 characters (every unit) and over
20,000 (the top 64 units): its size, the seconds to build it, and, in headless chromium (the
system's, through playwright) when there is one, the milliseconds to load it (navigation to the
page's ready mark) and to update the tooltip on hovering a character (median and max of 60).
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
SHIPPED = Path(__file__).resolve().parent.parent / "models" / "tinyshakespeare.npz"


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


def measure_reach(repeats: int) -> dict[str, float]:
    from charlstm import gates, reach
    from charlstm.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(SHIPPED)
    text = CORPUS.read_text(encoding="utf-8")[:2000]
    trace = gates.compute_trace(checkpoint.params, checkpoint.vocab, text, show=400)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        reach.compute_reach(checkpoint.params, trace, targets=400, lags=100)
        best = min(best, time.perf_counter() - start)
    return {"reach": best}


HOVER_PROBE = """() => {
  const times = [];
  for (let k = 0; k < 60; k++) {
    const span = document.querySelector(`[data-pos="${(k * 331) % 1900 + 50}"]`);
    const start = performance.now();
    span.dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
    void document.querySelector('[role="tooltip"]').getBoundingClientRect().width;  // layout done
    times.push(performance.now() - start);
  }
  times.sort((a, b) => a - b);
  return [times[30], times[59]];
}"""


def measure_pages(repeats: int) -> list[dict]:
    import shutil
    import tempfile

    from charlstm import explorer

    text = CORPUS.read_text(encoding="utf-8")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    rows = []
    folder = Path(tempfile.mkdtemp())
    for chars in (2_000, 20_000):
        start = time.perf_counter()
        page = explorer.explore(text[:chars], model=SHIPPED, max_chars=chars)
        row = {"chars": chars, "bytes": len(page), "build": time.perf_counter() - start}
        path = page.save(folder / f"page-{chars}.html")
        if chromium is not None:
            from playwright.sync_api import sync_playwright

            loads, hovers = [], []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
                for _ in range(repeats):
                    context = browser.new_context(bypass_csp=True, viewport={"width": 1400, "height": 1000})
                    tab = context.new_page()
                    tab.goto(path.as_uri())
                    tab.wait_for_selector("body[data-ready]", state="attached", timeout=60_000)
                    loads.append(float(tab.get_attribute("body", "data-ready-ms")))
                    hovers.append(tab.evaluate(HOVER_PROBE))
                    context.close()
                browser.close()
            row.update(
                load=min(loads), hover_median=min(h[0] for h in hovers), hover_max=min(h[1] for h in hovers)
            )
        rows.append(row)
    shutil.rmtree(folder)
    return rows


def explorer_table(args) -> None:
    print("  ".join(f"{c:>9}" for c in ("isa", "cores", "reach")) + "   (400 targets x 100 lags, 2x512)")
    for isa in args.isa.split(","):
        for cores in (int(t) for t in args.cores.split(",")):
            env = isa_env.environment(isa, cores)
            cmd = [sys.executable, __file__, "--child-reach", f"{args.repeats}:{cores}"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print("  ".join(f"{c:>9}" for c in (isa, str(cores), f"{r['reach']:.2f} s")), flush=True)
    print()
    columns = ("chars", "units", "page MB", "build s", "load ms", "hover ms", "hover max")
    print("  ".join(f"{c:>9}" for c in columns))
    for row in measure_pages(args.repeats):
        units = "all" if row["chars"] <= 2000 else "top 64"
        cells = [f"{row['chars']:,}", units, f"{row['bytes'] / 1e6:.2f}",
                 f"{row['build']:.1f}"]  # fmt: skip
        if "load" in row:
            cells += [f"{row['load']:.0f}", f"{row['hover_median']:.1f}", f"{row['hover_max']:.1f}"]
        else:
            cells += ["no chromium"] * 3
        print("  ".join(f"{c:>9}" for c in cells), flush=True)


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
    parser.add_argument("--explorer", action="store_true", help="measure the reach and the explorer page")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-reach", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_reach:
        repeats, cores = (int(x) for x in args.child_reach.split(":"))
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
        print(json.dumps(measure_reach(repeats)))
        return
    if args.explorer:
        explorer_table(args)
        return
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
