"""The instruction sets a benchmark can hold charlstm and PyTorch to, and the figures that
describe one: the CPU, the build's ISA, OpenBLAS's kernel, the measured FMA peak and the
recurrent product's GFLOP/s on the register tiles and on BLAS.

    native  what numba, OpenBLAS and PyTorch pick for this CPU (a preset OPENBLAS_CORETYPE or
            OPENBLAS_L2_SIZE is removed, in the benchmark's own processes only)
    avx2    numba built for znver3 with its own features (NUMBA_CPU_NAME alone keeps the
            host's, AVX-512 included), OpenBLAS's Haswell kernels, PyTorch's ATen and oneDNN
            held to AVX2: an AVX2-only CPU, on an AVX-512 host
"""

from __future__ import annotations

import ctypes
import os
import time

import numpy as np

_OPENBLAS_PRESETS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
ISA_ENV = {
    "native": {},
    "avx2": {
        "NUMBA_CPU_NAME": "znver3",
        "NUMBA_CPU_FEATURES": "",
        "OPENBLAS_CORETYPE": "Haswell",
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
}


# glibc's malloc told to keep what is freed (no mmap for large blocks, no trimming): PyTorch
# allocates its large tensors afresh every step, and by default glibc maps and unmaps them, so
# some steps pay page faults. Measured on a Zen 4, 2x256 (B=32, T=64): PyTorch's steps ran at
# 116-190 ms on one thread by default, 117-146 with this; on two threads 69-112 against 67-81
# (per-process rates 21.0k-27.3k chars/s against 28.8k-28.9k). charlstm allocates its buffers
# once and does not notice. bench/train_speed.py times PyTorch both ways.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def environment(isa: str, threads: int, keep_freed_memory: bool = False) -> dict[str, str]:
    """os.environ for a benchmark child on `isa` with every thread pool sized `threads`; glibc's
    malloc keeping what is freed when asked (KEEP_FREED_MEMORY)."""
    env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_PRESETS}
    env.update(ISA_ENV[isa])
    if keep_freed_memory:
        env.update(KEEP_FREED_MEMORY)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        env[var] = str(threads)
    return env


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def openblas_core() -> str:
    """The kernel family of the OpenBLAS that numba's products call (SciPy's), or '?'."""
    import scipy.linalg  # noqa: F401  loads SciPy's OpenBLAS

    with open("/proc/self/maps") as f:
        paths = {
            line.split()[-1] for line in f if "openblas" in line.lower() and line.strip().endswith(".so")
        }
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_get_corename", "openblas_get_corename"):
            get = getattr(lib, prefix, None)
            if get is not None:
                get.restype = ctypes.c_char_p
                return get().decode()
    return "?"


def build_figures() -> dict:
    """What this process's build runs on: the ISA and geometry of the tiles, OpenBLAS's core,
    the FMA peak of one core and the step product's GFLOP/s (tiles and BLAS, one thread) for
    the weights the issue's targets name, 1024x256 and 2048x512 by 32 columns."""
    from charlstm.kernels import tiles

    g = tiles.GEOMETRY
    figures = {"isa": g.isa, "tile": f"{g.rows}x{g.vectors * g.lanes}", "openblas": openblas_core()}
    figures["peak"] = fma_peak(g.lanes)
    for M, K in ((1024, 256), (2048, 512)):
        tiled, blas = step_product_gflops(M, K, 32)
        figures[f"{M}x{K}"] = {"tiles": tiled, "blas": blas}
    return figures


def _fma_chains(lanes: int, chains: int):
    """A numba intrinsic: n rounds of `chains` independent vector FMAs of `lanes` floats kept in
    registers, the ISA's peak when the chains cover the FMA units' latency."""
    from llvmlite import ir
    from numba import types
    from numba.core import cgutils
    from numba.extending import intrinsic

    vec = ir.VectorType(ir.FloatType(), lanes)

    @intrinsic
    def chains_of_fma(typingctx, n):
        def codegen(context, builder, signature, args):
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32"
            )
            scale = ir.Constant(vec, [0.999999] * lanes)
            shift = ir.Constant(vec, [1e-7] * lanes)
            acc = [
                cgutils.alloca_once_value(builder, ir.Constant(vec, [float(j)] * lanes))
                for j in range(chains)
            ]
            with cgutils.for_range(builder, args[0]):
                for a in acc:
                    builder.store(builder.call(fma, [builder.load(a), scale, shift]), a)
            total = builder.load(acc[0])
            for a in acc[1:]:
                total = builder.fadd(total, builder.load(a))
            return builder.extract_element(total, ir.Constant(ir.IntType(32), 0))

        return types.float32(types.intp), codegen

    return chains_of_fma


def fma_peak(lanes: int, chains: int = 12, rounds: int = 2_000_000) -> float:
    """GFLOP/s of one core running only fused multiply-adds of `lanes`-wide vectors."""
    from numba import njit

    kernel = _fma_chains(lanes, chains)

    @njit
    def run(n):
        return kernel(n)

    run(10)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        run(rounds)
        best = min(best, time.perf_counter() - start)
    return 2 * lanes * chains * rounds / best / 1e9


def step_product_gflops(M: int, K: int, N: int, repeats: int = 5) -> tuple[float | None, float]:
    """GFLOP/s of kernels.step_product, out (M, N) = W (M, K) · x (K, N), on the register tiles
    (None when the build's geometry does not serve the step) and on BLAS, one thread."""
    from charlstm import kernels
    from charlstm.kernels import tiles

    rng = np.random.default_rng(0)
    W = rng.normal(size=(M, K)).astype(np.float32)
    x = rng.normal(size=(K, N)).astype(np.float32)
    out = np.empty((M, N), np.float32)
    served = tiles.GEOMETRY.serves(tiles.STEP) and tiles.fits(tiles.GEOMETRY, M, N)
    packed = np.empty((sum(tiles.tile_count(tiles.GEOMETRY, M)) if served else 0, K, tiles.ROWS), np.float32)
    if served:
        kernels.pack_rows(packed, W, M, 1)
    empty = packed[:0]
    rates = []
    for W_packed in (packed, empty) if served else (empty,):
        kernels.step_product(out, W, W_packed, x)
        calls = max(1, int(2e8 // (2 * M * K * N)))
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                kernels.step_product(out, W, W_packed, x)
            best = min(best, (time.perf_counter() - start) / calls)
        rates.append(2 * M * K * N / best / 1e9)
    return (rates[0], rates[1]) if served else (None, rates[0])
