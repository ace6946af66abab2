"""Register-tiled float32 products, written in LLVM IR: the recurrent step's, and (the same
tiles) the head's and the step-by-step dWh of the backward.

Each step of the LSTM multiplies the same weights W (M, K) by a thin block of states x (K, B),
B = 32 streams. BLAS repacks all of W on every call, which at these shapes costs a quarter of
the product's time (OpenBLAS: 76-88 GFLOP/s on one core here). Packed once per window into
tiles of ROWS rows, W can be streamed straight from memory instead: `tile` keeps a ROWS x 32
block of the output in 16 vector registers and adds one rank-1 update per k (ROWS broadcast
weights times two 16-wide vectors of row k of x), which runs at 106-114 GFLOP/s on one core
(measured for M x K = 512 x 128 up to 2048 x 512).

numba cannot express vector registers, so the tile is built with llvmlite's IR builder behind
`numba.extending.intrinsic` (as in charlstm.spin); LLVM maps <16 x float> to AVX-512 registers
(or pairs of AVX ones) and the splatted loads to broadcasting FMAs.
"""

from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

ROWS = 8  # rows of W per tile (8 x 32 outputs: 16 of the 32 vector registers)
LANES = 16  # float32 lanes of one vector

_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, LANES)
_I64 = ir.IntType(64)


def _data(context, builder, array_type, array):
    """Pointer to the first element of a numba array in generated code."""
    return context.make_array(array_type)(context, builder, array).data


def _row_step(context, builder, array_type, array):
    """Elements from one row of a 2-D float32 array to the next, in generated code."""
    strides = context.make_array(array_type)(context, builder, array).strides
    return builder.sdiv(cgutils.unpack_tuple(builder, strides, 2)[0], _index(4))


def _index(value):
    return ir.Constant(_I64, value)


def _make_tile(vectors, accumulate):
    """The tile intrinsic for a block of `vectors` * 16 columns, adding to the output block
    (accumulate) or overwriting it."""

    @intrinsic
    def tile(typingctx, out, w, x, w_first, w_row_step, w_k_step, row, col):
        """out[row + i, col + c] (+)= sum over k < K of W[i, k] * x[k, col + c] for i < ROWS and
        c < vectors * 16, with W[i, k] = w's element w_first + i*w_row_step + k*w_k_step counted
        from w's first one (any float32 array) and K = x.shape[0]. out and x float32 with
        contiguous rows (column slices of bigger arrays allowed). Nothing is checked."""
        sig = types.void(out, w, x, types.intp, types.intp, types.intp, types.intp, types.intp)

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
                builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v16f32"
            )
            splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
            undefined = ir.Constant(_VEC, ir.Undefined)

            def vector_at(row_ptr, v):
                return builder.bitcast(builder.gep(row_ptr, [_index(LANES * v)]), _VEC.as_pointer())

            out_col = builder.gep(out_ptr, [col])
            row_offsets = [builder.mul(builder.add(row, _index(i)), out_row_step) for i in range(ROWS)]
            out_rows = [builder.gep(out_col, [offset]) for offset in row_offsets]
            start = ir.Constant(_VEC, [0.0] * LANES)
            acc = [
                [
                    cgutils.alloca_once_value(
                        builder, builder.load(vector_at(out_rows[i], v), align=4) if accumulate else start
                    )
                    for v in range(vectors)
                ]
                for i in range(ROWS)
            ]
            w_first_row = builder.gep(w_ptr, [w_first])
            w_rows = [builder.gep(w_first_row, [builder.mul(_index(i), w_row_step)]) for i in range(ROWS)]
            x_col = builder.gep(x_ptr, [col])

            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                x_row = builder.gep(x_col, [builder.mul(k, x_row_step)])
                xs = [builder.load(vector_at(x_row, v), align=4) for v in range(vectors)]
                w_k = builder.mul(k, w_k_step)
                for i in range(ROWS):
                    w = builder.load(builder.gep(w_rows[i], [w_k]))
                    ws = builder.shuffle_vector(
                        builder.insert_element(undefined, w, ir.Constant(ir.IntType(32), 0)), undefined, splat
                    )
                    for v in range(vectors):
                        builder.store(builder.call(fma, [ws, xs[v], builder.load(acc[i][v])]), acc[i][v])
            for i in range(ROWS):
                for v in range(vectors):
                    builder.store(builder.load(acc[i][v]), vector_at(out_rows[i], v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


tile_32 = _make_tile(2, False)  # 32 columns: two vectors per row
tile_16 = _make_tile(1, False)
add_tile_32 = _make_tile(2, True)
add_tile_16 = _make_tile(1, True)


def product(out, W_packed, x):
    """out (M, N) = W (M, K) · x (K, N) from W packed (M/ROWS, K, ROWS), W_packed[p, k, i] =
    W[p*ROWS + i, k]; N a multiple of 16, rows contiguous (out and x may be column slices of
    bigger arrays), W_packed's last axis contiguous. Kernels only (see the overload):
    float32 runs the register tiles; other precisions a plain loop with the same meaning."""
    raise NotImplementedError("charlstm.tiles.product runs inside numba kernels only")


def add_product(out, W, x):
    """out (M, N) += W (M, K) · x (K, N), W read in place (contiguous rows, M a multiple of
    ROWS): for short K, where W's ROWS rows at a time stay in cache. N a multiple of 16,
    rows contiguous. Kernels only (see the overload): float32 runs the register tiles;
    other precisions a plain loop with the same meaning."""
    raise NotImplementedError("charlstm.tiles.add_product runs inside numba kernels only")


def _float32(array_type):
    return isinstance(array_type.dtype, types.Float) and array_type.dtype.bitwidth == 32


def _tiles_across(wide, narrow):
    """A row of tiles for every column of the output: blocks of 32 (`wide`), then one of 16
    (`narrow`) if left; the tiles fixed when compiled."""

    @njit(inline="always")
    def row_of_tiles(out, w, x, w_first, w_row_step, w_k_step, row):
        N = out.shape[1]
        col = 0
        while col + 2 * LANES <= N:
            wide(out, w, x, w_first, w_row_step, w_k_step, row, col)
            col += 2 * LANES
        if col < N:
            narrow(out, w, x, w_first, w_row_step, w_k_step, row, col)

    return row_of_tiles


_row_of_tiles = _tiles_across(tile_32, tile_16)
_row_of_added_tiles = _tiles_across(add_tile_32, add_tile_16)


@overload(product)
def _product_overload(out, W_packed, x):
    if _float32(out):

        def tiled(out, W_packed, x):
            tile_step = W_packed.strides[0] // W_packed.itemsize
            k_step = W_packed.strides[1] // W_packed.itemsize
            for p in range(W_packed.shape[0]):
                _row_of_tiles(out, W_packed, x, p * tile_step, 1, k_step, p * ROWS)

        return tiled

    def plain(out, W_packed, x):
        P, K, R = W_packed.shape
        out[:] = 0.0
        for p in range(P):
            for i in range(R):
                row = out[p * R + i]
                for k in range(K):
                    w = W_packed[p, k, i]
                    for c in range(out.shape[1]):
                        row[c] += w * x[k, c]

    return plain


@overload(add_product)
def _add_product_overload(out, W, x):
    if _float32(out):

        def tiled(out, W, x):
            row_step = W.strides[0] // W.itemsize
            for first in range(0, W.shape[0], ROWS):
                _row_of_added_tiles(out, W, x, first * row_step, row_step, 1, first)

        return tiled

    def plain(out, W, x):
        for m in range(W.shape[0]):
            row = out[m]
            for k in range(W.shape[1]):
                w = W[m, k]
                for c in range(out.shape[1]):
                    row[c] += w * x[k, c]

    return plain
