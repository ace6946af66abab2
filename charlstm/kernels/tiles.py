"""Register-tiled float32 products W (M, K) · x (K, N) for thin x (N = B streams), written in
LLVM IR, and the one table that says which tile shape each instruction set gets.

Each step of the LSTM multiplies the same weights by a thin block of states. BLAS repacks all
of W on every call, which at these shapes costs about a quarter of the product's time. Packed
once per window into tiles of `rows` rows (charlstm.kernels.layouts), W can be streamed
straight from memory instead: a tile keeps a rows x (vectors * lanes) block of the output in
vector registers and adds one rank-1 update per k (`rows` broadcast weights times `vectors`
vectors of row k of x). The block must fit the register file with the vectors of x and the
broadcast weight, so its shape follows the vector width and the register count, as BLIS keeps
one micro-kernel shape per architecture:

  isa     lanes  registers  tile (rows x columns)  registers used
  avx512  16     32         8 x 32                 16 accumulators + 2 of x + 1 weight = 19
  avx2    8      16         6 x 16 (4 x 16 tails)  12 + 2 + 1 = 15
  neon    4      32         8 x 12                 24 + 3 + 1 = 28
  none    (no FMA: every product goes to BLAS)

The 8 x 32 AVX-512 tile, compiled for AVX2, needs 32 live 8-float halves in 16 registers and
spills (measured on a Zen 5 host built for znver3: 87 GFLOP/s against 120 for 6 x 16). A
product whose rows `rows` does not divide finishes with tiles of `tail_rows` rows.

The target is read the way numba compiles for it: NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when
set, else the host. `compile_target_isa` compiles one fused multiply-add of 16 floats for that
target with llvmlite and reads the registers LLVM chose, so a CPU named without features gets
the features LLVM gives it. numba's cache keys its builds by that same target, so each target's
build keeps the geometry it was built with.

numba cannot express vector registers, so the tile is built with llvmlite's IR builder behind
`numba.extending.intrinsic` (as in charlstm.kernels.spin).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# The products that can run on tiles (charlstm.model picks per product with Geometry.serves):
STEP = "step"  # the recurrent step's Wh products, forward and backward
HEAD = "head"  # the head's two window products, logits and dh
STEP_GRADIENT = "step_gradient"  # dWh added up step by step inside the backward
# Between layers, step by step inside the recurrence: x_t·Wx above the first layer, and its
# backward Wx·dz_t (the gradient passed down)
COUPLING = "coupling"
# Between layers, window-wide in the step kernels' step-major layout (kernels.tiled_steps_product):
# the same two products as COUPLING, each one product over the window
WINDOW = "window"
# The LSTM's weight gradients dWh and dWx over the window, from the backward's dz packed in
# tiles (kernels.add_tiled_weight_gradient)
WINDOW_GRADIENT = "window_gradient"
ALL_PRODUCTS = frozenset({STEP, HEAD, STEP_GRADIENT, COUPLING, WINDOW, WINDOW_GRADIENT})


@dataclass(frozen=True)
class Geometry:
    """One instruction set's register tile and the products it serves (measured)."""

    isa: str
    lanes: int  # float32 lanes of one vector register
    registers: int  # vector registers the ISA has
    rows: int  # rows of W per tile
    vectors: int  # vectors of columns per tile: the block is rows x vectors * lanes
    tail_rows: int  # rows of the tiles that finish a product `rows` does not divide
    products: frozenset  # the products the tiles beat BLAS on, in a full training step

    @property
    def registers_used(self) -> int:
        """Accumulators, the vectors of x's row k, and the broadcast weight."""
        return self.rows * self.vectors + self.vectors + 1

    def serves(self, product: str) -> bool:
        return product in self.products


# Which products run on tiles, per ISA, and why. Measured with bench/tile_choice.py: a full
# training step with a product on BLAS over the same step with it on the tiles, median of 25
# alternating pairs, on an AMD EPYC Zen 5 host (AVX-512, and built for znver3 as AVX2) with
# OpenBLAS's own kernels for each (SkylakeX; Haswell), 1x128, 2x256 and 2x512, one and two
# threads (2026-12-02):
# - STEP pays everywhere: 1.089-1.118 on AVX-512, 1.049-1.096 on AVX2 (BLAS repacks Wh on every
#   call; a tile streams it once per step, packed once per window).
# - HEAD does not: 0.968-1.007 on AVX-512, 0.959-1.004 on AVX2. OpenBLAS's own kernels run the
#   head's window-wide products as fast as the tiles (the gain measured earlier on a Zen 4 was
#   against OpenBLAS held to its Haswell kernels).
# - STEP_GRADIENT does not: 0.959-0.994 on AVX-512, 0.987-1.013 on AVX2 where it applies
#   (model.STEP_GRADIENT_BYTES); one BLAS product over the window does as well.
# - COUPLING does not: 0.989-1.019 on AVX-512, 0.924-1.007 on AVX2, at 2x256 and 2x512 on an
#   AMD EPYC Zen 4 host (1 MiB L2 a core; 20 pairs, 2026-12-03). It reads Wx once a step where
#   BLAS reads it once a window: with Wh beside it, a band's weights outgrow L2 at 2x256.
# - WINDOW pays on AVX-512: 1.044 / 1.021 at 2x256 and 1.013 / 1.016 at 2x512 (1 / 2 threads;
#   1x128 has no layer above the first; an AMD EPYC Zen 4 host, 20 pairs, 2026-12-04), and
#   1.052 / 1.037, 1.038 / 1.031 (30 pairs, 2026-12-06). Each step's x is one contiguous
#   block (the rows of the feature-major x that BLAS reads lie T*B apart): the tiles run at
#   106-114 GFLOP/s, OpenBLAS at 90-100; and the layout copies between the window-wide
#   products and the steps go. On AVX2 it is within the noise, slightly ahead: 1.011 /
#   1.007, 1.001 / 1.008 (20 pairs) and 1.032 / 0.992, 1.014 / 0.998 (30 pairs), 2026-12-06
#   (0.990-1.028 on 12-04); served, which keeps one layout between the layers on x86.
# - WINDOW_GRADIENT pays on AVX-512: 1.003 / 1.019 at 1x128, 1.018 / 1.008 at 2x256, 1.017 /
#   1.017 at 2x512 (30 pairs, 2026-12-06); not on AVX2: 0.961-1.038, below 1 in four of
#   six. The gradient alone (products.add_tiled_weight_gradient, one thread) runs at 107-111
#   GFLOP/s on AVX-512 and 101-110 on AVX2 against OpenBLAS's 88-98, but then cost packing dz
#   in tiles (1.5-3 ms a layer at 2x256-2x512) where BLAS reads dz feature-major. (Its first
#   form read dz in place, K in chunks of steps, at 100-104 GFLOP/s, and lost where dW_T
#   outgrew L2: 0.999 / 0.991 at 2x512.) Since 2026-12-07 it reads dz_steps in place again,
#   all of K in registers, the next step's rows prefetched (112 GFLOP/s alone at 2x256 and
#   2x512, as fast as from packed tiles, and no packing): against the packed form, versus.py
#   gave 1.067 / 1.057 at 1x128, 1.003 / 1.033 at 2x256, 0.998 / 0.987 at 2x512 (Zen 4).
#   On AVX2 it still does not pay without the packing: 0.987 / 1.020 at 1x128, 0.996 / 0.991
#   at 2x256, 0.994 / 0.933 at 2x512 (30 pairs, Zen 4 built for znver3, 2026-12-07 third
#   session). Alone it ran at 69-94 GFLOP/s against OpenBLAS's 79-92 there (runs that far
#   apart: a noisy host), and padding the steps apart (dz_steps' steps lie 128 KiB apart, one
#   L2 set) changed nothing on either ISA.
# So AVX-512 runs the step, the products between layers and the weight gradients on tiles,
# AVX2 the step and the products between layers, the rest on BLAS; the head, dWh-in-the-steps
# and coupling tiles stay built and tested, for a CPU where tile_choice.py shows they pay.
# - neon: the step, for the same reason as on x86; not measured, as no ARM machine was at hand.
# - none: a target without FMA (or vectors) has nothing the tiles do better.
_STEP_ONLY = frozenset({STEP})
_STEP_AND_WINDOW = frozenset({STEP, WINDOW})
GEOMETRIES = {
    "avx512": Geometry(
        "avx512", 16, 32, rows=8, vectors=2, tail_rows=8, products=frozenset({STEP, WINDOW, WINDOW_GRADIENT})
    ),
    "avx2": Geometry("avx2", 8, 16, rows=6, vectors=2, tail_rows=4, products=_STEP_AND_WINDOW),
    "neon": Geometry("neon", 4, 32, rows=8, vectors=3, tail_rows=8, products=_STEP_ONLY),
    "none": Geometry("none", 4, 16, rows=4, vectors=1, tail_rows=4, products=frozenset()),
}

_PROBE = """
define void @probe(ptr %p) {
  %a = load <16 x float>, ptr %p
  %r = call <16 x float> @llvm.fma.v16f32(<16 x float> %a, <16 x float> %a, <16 x float> %a)
  store <16 x float> %r, ptr %p
  ret void
}
declare <16 x float> @llvm.fma.v16f32(<16 x float>, <16 x float>, <16 x float>)
"""


def numba_target() -> tuple[str, str]:
    """(CPU name, features) that numba compiles for: NUMBA_CPU_NAME / NUMBA_CPU_FEATURES when
    set, else the host's (numba.core.codegen does the same)."""
    import llvmlite.binding as ll
    from numba.core import config

    name = config.CPU_NAME or ll.get_host_cpu_name()
    features = config.CPU_FEATURES
    if features is None:
        features = ll.get_host_cpu_features().flatten()
    return name, features


@functools.cache
def isa_of(cpu_name: str, features: str) -> str:
    """The GEOMETRIES key for code LLVM builds for this CPU and features: one 16-float fused
    multiply-add compiled, its registers read off the assembly."""
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    target = ll.Target.from_triple(ll.get_process_triple())
    machine = target.create_target_machine(cpu=cpu_name, features=features, opt=0)
    module = ll.parse_assembly(_PROBE)
    module.triple = machine.triple
    asm = machine.emit_assembly(module)
    if "vfmadd" in asm:
        return "avx512" if "zmm" in asm else "avx2" if "ymm" in asm else "none"
    if "fmla" in asm and ".4s" in asm:
        return "neon"
    return "none"


def compile_target_isa() -> str:
    """The ISA numba compiles for here; CHARLSTM_TILES=isa overrides it (tests only: numba's
    cache does not know of it, so it is refused without a NUMBA_CACHE_DIR of its own)."""
    forced = os.environ.get("CHARLSTM_TILES")
    if forced:
        if forced not in GEOMETRIES:
            raise ValueError(f"CHARLSTM_TILES={forced!r}: one of {', '.join(GEOMETRIES)}")
        if not os.environ.get("NUMBA_CACHE_DIR"):
            raise ValueError("CHARLSTM_TILES needs a NUMBA_CACHE_DIR of its own (numba's cache keys by CPU)")
        return forced
    return isa_of(*numba_target())


GEOMETRY = GEOMETRIES[compile_target_isa()]

# product_of_panels' tiles of W a block (a weight gradient's dz, K = T*B = 2048: 8 tiles of
# 8 rows are 512 KiB, in L2 beside a panel of x). One thread on a Zen 4, 1024 x 256 and
# 2048 x 512 outputs: 107-111 GFLOP/s with 4-8 tiles on AVX-512 (OpenBLAS 88-98), 102-110 on
# AVX2 (OpenBLAS 92-98); with 16-32 tiles 98-107, with 128 down to 96-99.
PANEL_BLOCK = 8

_F32 = ir.FloatType()
_I64 = ir.IntType(64)


def _index(value):
    return ir.Constant(_I64, value)


def _data(context, builder, array_type, array):
    """Pointer to the first element of a numba array in generated code."""
    return context.make_array(array_type)(context, builder, array).data


def _row_step(context, builder, array_type, array):
    """Elements from one row of a 2-D float32 array to the next, in generated code."""
    strides = context.make_array(array_type)(context, builder, array).strides
    return builder.sdiv(cgutils.unpack_tuple(builder, strides, 2)[0], _index(4))


def _make_tile(rows, vectors, lanes, accumulate, step_major=False):
    """The tile intrinsic for a block of `rows` x `vectors` * `lanes` columns, adding to the
    output block (accumulate) or overwriting it; W read as the tile's signature says, or
    step-major (see below)."""
    vec = ir.VectorType(_F32, lanes)

    @intrinsic
    def tile(typingctx, out, w, x, w_first, w_row_step, w_k_step, row, col):
        """out[row + i, col + c] (+)= sum over k < K of W[i, k] * x[k, col + c] for i < rows and
        c < vectors * lanes, with W[i, k] = w's element w_first + i*w_row_step + k*w_k_step
        counted from w's first one (any float32 array) and K = x.shape[0]. out and x float32
        with contiguous rows (column slices of bigger arrays allowed). Nothing is checked.
        Step-major: K = T*B runs over T steps of B = w_row_step columns each, k = t*B + b, and
        W[i, k] = w's element w_first + i*B + t*w_k_step + b: the tile's rows of a step-major
        (T, M, B) array, read in place; each step the tile's rows of the next are prefetched
        (without, reading them cost what packing them would: 97 against 112 GFLOP/s)."""
        sig = types.void(out, w, x, *[types.intp] * 5)

        def codegen(context, builder, signature, args):
            out_ty, w_ty, x_ty = signature.args[:3]
            out_ptr = _data(context, builder, out_ty, args[0])
            w_ptr = _data(context, builder, w_ty, args[1])
            x_ptr = _data(context, builder, x_ty, args[2])
            w_first, w_row_step, w_k_step, row, col = args[3:]
            K = cgutils.unpack_tuple(builder, context.make_array(x_ty)(context, builder, args[2]).shape, 2)[0]
            x_row_step = _row_step(context, builder, x_ty, args[2])
            out_row_step = _row_step(context, builder, out_ty, args[0])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.v{lanes}f32"
            )
            splat = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
            lane_0 = ir.Constant(ir.IntType(32), 0)
            undefined = ir.Constant(vec, ir.Undefined)

            def vector_at(row_ptr, v):
                return builder.bitcast(builder.gep(row_ptr, [_index(lanes * v)]), vec.as_pointer())

            out_col = builder.gep(out_ptr, [col])
            row_offsets = [builder.mul(builder.add(row, _index(i)), out_row_step) for i in range(rows)]
            out_rows = [builder.gep(out_col, [offset]) for offset in row_offsets]
            start = ir.Constant(vec, [0.0] * lanes)
            acc = [
                [
                    cgutils.alloca_once_value(
                        builder, builder.load(vector_at(out_rows[i], v), align=4) if accumulate else start
                    )
                    for v in range(vectors)
                ]
                for i in range(rows)
            ]
            w_first_row = builder.gep(w_ptr, [w_first])
            x_col = builder.gep(x_ptr, [col])

            def add_rank_1(k, w_rows, w_k):
                """The accumulators += W[:, k] (from w_rows at offset w_k) times row k of x."""
                x_row = builder.gep(x_col, [builder.mul(k, x_row_step)])
                xs = [builder.load(vector_at(x_row, v), align=4) for v in range(vectors)]
                for i in range(rows):
                    w = builder.load(builder.gep(w_rows[i], [w_k]))
                    in_lane_0 = builder.insert_element(undefined, w, lane_0)
                    ws = builder.shuffle_vector(in_lane_0, undefined, splat)
                    for v in range(vectors):
                        builder.store(builder.call(fma, [ws, xs[v], builder.load(acc[i][v])]), acc[i][v])

            if step_major:
                B = w_row_step
                prefetch = cgutils.get_or_insert_function(
                    builder.module,
                    ir.FunctionType(ir.VoidType(), [ir.IntType(8).as_pointer()] + [ir.IntType(32)] * 3),
                    "llvm.prefetch.p0i8",
                )
                read, keep_close, data = (ir.Constant(ir.IntType(32), n) for n in (0, 3, 1))
                line = 64 // 4  # floats a cache line
                with cgutils.for_range(builder, builder.sdiv(K, B)) as steps:
                    t = steps.index
                    w_step = builder.gep(w_first_row, [builder.mul(t, w_k_step)])
                    w_rows = [builder.gep(w_step, [builder.mul(_index(i), B)]) for i in range(rows)]
                    with cgutils.for_range(
                        builder, builder.sdiv(builder.add(B, _index(line - 1)), _index(line))
                    ) as lines:
                        offset = builder.add(w_k_step, builder.mul(lines.index, _index(line)))
                        for i in range(rows):  # a hint: past the array's end it does nothing
                            address = builder.bitcast(
                                builder.gep(w_rows[i], [offset]), ir.IntType(8).as_pointer()
                            )
                            builder.call(prefetch, [address, read, keep_close, data])
                    with cgutils.for_range(builder, B) as columns:
                        b = columns.index
                        add_rank_1(builder.add(builder.mul(t, B), b), w_rows, b)
            else:
                w_rows = [builder.gep(w_first_row, [builder.mul(_index(i), w_row_step)]) for i in range(rows)]
                with cgutils.for_range(builder, K) as loop:
                    add_rank_1(loop.index, w_rows, builder.mul(loop.index, w_k_step))
            for i in range(rows):
                for v in range(vectors):
                    builder.store(builder.load(acc[i][v]), vector_at(out_rows[i], v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def _tiles_across(g, rows, accumulate, step_major=False):
    """A row of tiles `rows` high for every column of the output: blocks of g.vectors vectors,
    then one narrower tile for the vectors left (N a multiple of g.lanes); the tiles fixed when
    compiled. numba picks no intrinsic by a run-time number, hence one branch per width."""
    lanes, width = g.lanes, g.vectors * g.lanes
    wide = _make_tile(rows, g.vectors, lanes, accumulate, step_major)
    narrow_1 = _make_tile(rows, 1, lanes, accumulate, step_major)
    narrow_2 = _make_tile(rows, 2, lanes, accumulate, step_major) if g.vectors > 2 else narrow_1
    assert g.vectors <= 3, "one branch per narrower width: add one for wider tiles"

    @njit(inline="always")
    def row_of_tiles(out, w, x, w_first, w_row_step, w_k_step, row):
        N = out.shape[1]
        col = 0
        while col + width <= N:
            wide(out, w, x, w_first, w_row_step, w_k_step, row, col)
            col += width
        left = (N - col) // lanes
        if left == 2 and width > 2 * lanes:
            narrow_2(out, w, x, w_first, w_row_step, w_k_step, row, col)
        elif left >= 1:
            narrow_1(out, w, x, w_first, w_row_step, w_k_step, row, col)

    return row_of_tiles


def _float32(array_type):
    return isinstance(array_type.dtype, types.Float) and array_type.dtype.bitwidth == 32


def tile_count(geometry: Geometry, M: int) -> tuple[int, int]:
    """(full, tails): M rows as `full` tiles of geometry.rows then `tails` of tail_rows, the
    fewest tails that add up; M must be a multiple of tail_rows (see fits)."""
    R, T = geometry.rows, geometry.tail_rows
    tails = 0
    while (M - tails * T) % R != 0:
        tails += 1
    return (M - tails * T) // R, tails


def fits(geometry: Geometry, M: int, N: int) -> bool:
    """Whether an (M, N) output comes in whole tiles: M rows in whole tiles (of rows and
    tail_rows) and N columns in whole vectors."""
    return M > 0 and M % geometry.tail_rows == 0 and N > 0 and N % geometry.lanes == 0


def build(g: Geometry) -> SimpleNamespace:
    """The tiled products for geometry g, as functions for numba kernels (see below). The
    package builds them once for the compile target (charlstm.kernels.tiles.product, ...);
    tests build the others to check every geometry on any machine."""
    R, T = g.rows, g.tail_rows
    block = PANEL_BLOCK
    row_of_tiles = _tiles_across(g, R, False)
    row_of_tail_tiles = _tiles_across(g, T, False)
    row_of_added_tiles = _tiles_across(g, R, True)
    row_of_added_tail_tiles = _tiles_across(g, T, True)
    row_of_step_major_tiles = _tiles_across(g, R, False, step_major=True)
    row_of_step_major_tail_tiles = _tiles_across(g, T, False, step_major=True)

    @njit(inline="always")
    def plan(M):
        """(full, tails) of tile_count: the tiles M rows come in."""
        tails = 0
        while (M - tails * T) % R != 0:
            tails += 1
        return (M - tails * T) // R, tails

    @njit(inline="always")
    def first_row(p, full):
        """The first row of tile p: full tiles of R rows, then tails of T."""
        return p * R if p < full else full * R + (p - full) * T

    def product(out, W_packed, x):
        """out (M, N) = W (M, K) · x (K, N) from W packed (P, K, R) in the tiles of plan(M)
        (layouts.pack_*); N a multiple of lanes, rows contiguous (out and x may be column
        slices of bigger arrays), W_packed's last axis contiguous. Kernels only: float32 runs
        the register tiles; other precisions a plain loop with the same meaning."""
        raise NotImplementedError("tiled products run inside numba kernels only")

    def add_product(out, W, x):
        """out (M, N) += W (M, K) · x (K, N), W read in place (contiguous rows, M in whole
        tiles): for short K, where W's rows of a tile stay in cache. N a multiple of lanes,
        rows contiguous. Kernels only, like product."""
        raise NotImplementedError("tiled products run inside numba kernels only")

    def product_of_panels(out, W_steps, x_panels, first, last):
        """Tiles first .. last-1 (of plan(M)) of out (M, N) = W (M, K) · x (K, N): W step-major,
        W_steps (T, M, B) with W[m, t*B + b] = W_steps[t, m, b] (the backward's dz_steps, read
        in place; each step's (M, B) contiguous, the steps any stride apart), x in panels
        (J, K, width) of the tile's width (panel j holds columns j*width .., the last one the
        N - (J-1)*width left), for a K = T*B too long for x to stay in cache (a weight
        gradient over a window). In blocks of PANEL_BLOCK tiles: every
        panel of x passes each block, whose weights stay in L2, the tiles taking their sums
        over all of K in registers. Kernels only, like product."""
        raise NotImplementedError("tiled products run inside numba kernels only")

    @overload(product)
    def _product_overload(out, W_packed, x):
        if _float32(out):

            def tiled(out, W_packed, x):
                tile_step = W_packed.strides[0] // W_packed.itemsize
                k_step = W_packed.strides[1] // W_packed.itemsize
                full, tails = plan(out.shape[0])
                for p in range(full):
                    row_of_tiles(out, W_packed, x, p * tile_step, 1, k_step, p * R)
                for p in range(full, full + tails):
                    row_of_tail_tiles(out, W_packed, x, p * tile_step, 1, k_step, first_row(p, full))

            return tiled

        def plain(out, W_packed, x):
            full, tails = plan(out.shape[0])
            out[:] = 0.0
            for p in range(full + tails):
                start = first_row(p, full)
                height = R if p < full else T
                for i in range(height):
                    row = out[start + i]
                    for k in range(W_packed.shape[1]):
                        w = W_packed[p, k, i]
                        for c in range(out.shape[1]):
                            row[c] += w * x[k, c]

        return plain

    @overload(add_product)
    def _add_product_overload(out, W, x):
        if _float32(out):

            def tiled(out, W, x):
                row_step = W.strides[0] // W.itemsize
                full, tails = plan(W.shape[0])
                for p in range(full):
                    row_of_added_tiles(out, W, x, p * R * row_step, row_step, 1, p * R)
                for p in range(full, full + tails):
                    first = first_row(p, full)
                    row_of_added_tail_tiles(out, W, x, first * row_step, row_step, 1, first)

            return tiled

        def plain(out, W, x):
            for m in range(W.shape[0]):
                row = out[m]
                for k in range(W.shape[1]):
                    w = W[m, k]
                    for c in range(out.shape[1]):
                        row[c] += w * x[k, c]

        return plain

    @overload(product_of_panels)
    def _product_of_panels_overload(out, W_steps, x_panels, first, last):
        if _float32(out):

            def tiled(out, W_steps, x_panels, first, last):
                _, M, B = W_steps.shape
                step = W_steps.strides[0] // W_steps.itemsize
                J, _, width = x_panels.shape
                N = out.shape[1]
                full, tails = plan(M)
                for p0 in range(first, last, block):
                    for j in range(J):
                        n = min(width, N - j * width)
                        cols = out[:, j * width : j * width + n]
                        x = x_panels[j, :, :n]
                        for p in range(p0, min(last, p0 + block)):
                            start = first_row(p, full)
                            if p < full:
                                row_of_step_major_tiles(cols, W_steps, x, start * B, B, step, start)
                            else:
                                row_of_step_major_tail_tiles(cols, W_steps, x, start * B, B, step, start)

            return tiled

        def plain(out, W_steps, x_panels, first, last):
            steps, M, B = W_steps.shape
            width = x_panels.shape[2]
            full, tails = plan(M)
            for p in range(first, last):
                start = first_row(p, full)
                for i in range(R if p < full else T):
                    row = out[start + i]
                    row[:] = 0.0
                    for t in range(steps):
                        for b in range(B):
                            w = W_steps[t, start + i, b]
                            for c in range(out.shape[1]):
                                row[c] += w * x_panels[c // width, t * B + b, c % width]

        return plain

    return SimpleNamespace(
        geometry=g,
        plan=plan,
        first_row=first_row,
        product=product,
        add_product=add_product,
        product_of_panels=product_of_panels,
    )


_TARGET = build(GEOMETRY)
ROWS, TAIL_ROWS, LANES = GEOMETRY.rows, GEOMETRY.tail_rows, GEOMETRY.lanes
COLUMNS = GEOMETRY.vectors * GEOMETRY.lanes  # a tile's columns: the width of product_of_panels' panels
plan = _TARGET.plan
first_row = _TARGET.first_row
product = _TARGET.product
add_product = _TARGET.add_product
product_of_panels = _TARGET.product_of_panels


def serve(product_name: str, rows: int, columns: int, dtype) -> bool:
    """Whether the register tiles run `product_name` (STEP, HEAD, STEP_GRADIENT, COUPLING) with
    an output of `rows` x `columns` (streams, or H for dWh): float32, the compile target's
    geometry serves that product (measured: GEOMETRIES), the rows in whole tiles and the
    columns in whole vectors."""
    return np.dtype(dtype) == np.float32 and GEOMETRY.serves(product_name) and fits(GEOMETRY, rows, columns)


def tiles_of(rows: int) -> int:
    """How many register tiles a product of `rows` rows comes in (plan)."""
    return sum(tile_count(GEOMETRY, rows))
