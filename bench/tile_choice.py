"""Whether each product pays on the register tiles, in a full training step: the step with every
product the build's geometry serves on the tiles, against the same step with one of them on
BLAS instead, side by side in one process (alternating steps, median of the pairs).

    python bench/tile_choice.py [--sizes 1x128,2x256,2x512] [--threads 1,2] [--pairs 30]
                                [--isa native,avx2] [--candidates window,head]

A ratio above 1 means the tiles make the step faster: BLAS's step time over the tiles'. This is
the measurement behind charlstm.kernels.tiles.GEOMETRIES' `products` (a product whose tile does
not make a full step faster goes to BLAS). --candidates adds products the geometry does not
serve yet (tiles.ALL_PRODUCTS), to see whether they would pay. B=32, T=64, V=65, E=64, float32, dropout 0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import isa as isa_env
import numpy as np

B, T, V, E = 32, 64, 65, 64


def step_ratios(layers: int, hidden: int, pairs: int, candidates: frozenset) -> dict[str, float]:
    """For each product the geometry serves, and each candidate: median over `pairs` of (step
    time with that product on BLAS) / (step time with it on the tiles, with the others)."""
    from charlstm import model
    from charlstm.kernels import tiles
    from charlstm.model import ModelConfig, Params, Workspace, init_params, loss_and_grad, zero_state

    config = ModelConfig(vocab_size=V, layers=layers, hidden=hidden, embed=E, dropout=0.1)
    rng = np.random.default_rng(0)
    params = init_params(config, rng)
    grads = Params.zeros(config)
    x, y = rng.integers(0, V, (T, B)), rng.integers(0, V, (T, B))
    served = tiles.GEOMETRY
    tried = served.products | candidates

    def runner(products: frozenset):
        """A step on a workspace whose buffers were laid out with only `products` on tiles."""
        ws = Workspace(config, T, B)
        h, c = zero_state(config, B)
        tiles.GEOMETRY = dataclasses.replace(served, products=products)
        try:
            loss_and_grad(params, grads, x, y, h, c, ws, np.random.default_rng(1))  # lays out the buffers
        finally:
            tiles.GEOMETRY = served
        dropout = np.random.default_rng(1)

        def step() -> float:
            start = time.perf_counter()
            loss_and_grad(params, grads, x, y, h, c, ws, dropout)
            return time.perf_counter() - start

        return step

    assert model.tiles is tiles
    on_tiles = runner(tried)
    ratios = {}
    for product in sorted(tried):
        on_blas = runner(tried - {product})
        for _ in range(3):  # warm both
            on_tiles(), on_blas()
        ratios[product] = float(np.median([on_blas() / on_tiles() for _ in range(pairs)]))
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1x128,2x256,2x512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--isa", default="native", help="comma-separated: native, avx2 (see bench/isa.py)")
    parser.add_argument("--candidates", default="", help="comma-separated products to try on the tiles too")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        layers, hidden, pairs = (int(n) for n in args.child.split(":"))
        print(json.dumps(step_ratios(layers, hidden, pairs, _products(args.candidates))))
        return

    print(f"step time with one product on BLAS / with it on the tiles; median of {args.pairs} pairs")
    print(f"CPU: {isa_env.cpu_model()}")
    print(f"{'isa':>6} {'L x H':>7} {'threads':>7}  ratios")
    for isa in args.isa.split(","):
        for size in args.sizes.split(","):
            layers, hidden = (int(n) for n in size.split("x"))
            for threads in (int(n) for n in args.threads.split(",")):
                cmd = [sys.executable, __file__, "--child", f"{layers}:{hidden}:{args.pairs}"]
                cmd += ["--candidates", args.candidates]
                env = isa_env.environment(isa, threads)
                done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                ratios = json.loads(done.stdout.strip().splitlines()[-1])
                cells = "  ".join(f"{name} {ratio:.3f}" for name, ratio in ratios.items())
                print(f"{isa:>6} {size:>7} {threads:>7}  {cells}", flush=True)


def _products(names: str) -> frozenset:
    from charlstm.kernels import tiles

    products = frozenset(name for name in names.split(",") if name)
    if unknown := products - tiles.ALL_PRODUCTS:
        raise SystemExit(f"unknown products: {', '.join(sorted(unknown))}")
    return products


if __name__ == "__main__":
    main()
