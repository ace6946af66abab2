"""A register-tiled float32 product for the recurrent step, written in LLVM IR.

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
from numba import types
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


def _make_tile(vectors):
    """The tile intrinsic for a block of `vectors` * 16 columns."""

    @intrinsic
    def tile(typingctx, out, w_packed, x, p, col):
        """out[p*ROWS + i, col + c] = sum over k of w_packed[p, k, i] * x[k, col + c], for
        i < ROWS and c < vectors * 16. out (M, N) and x (K, N) float32 with contiguous rows
        (column slices of bigger arrays allowed); w_packed (P, K, ROWS) float32, C-contiguous.
        Nothing is checked."""
        sig = types.void(out, w_packed, x, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            out_ty, w_ty, x_ty = signature.args[:3]
            out_ptr = _data(context, builder, out_ty, args[0])
            w_ptr = _data(context, builder, w_ty, args[1])
            x_ptr = _data(context, builder, x_ty, args[2])
            p, col = args[3], args[4]
            K = cgutils.unpack_tuple(builder, context.make_array(x_ty)(context, builder, args[2]).shape, 2)[0]
            x_row_step = _row_step(context, builder, x_ty, args[2])
            out_row_step = _row_step(context, builder, out_ty, args[0])
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VEC, [_VEC] * 3), "llvm.fma.v16f32"
            )
            zeros = ir.Constant(_VEC, [0.0] * LANES)
            splat = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)
            undefined = ir.Constant(_VEC, ir.Undefined)
            acc = [[cgutils.alloca_once_value(builder, zeros) for _ in range(vectors)] for _ in range(ROWS)]
            w_tile = builder.gep(w_ptr, [builder.mul(builder.mul(p, K), _index(ROWS))])
            x_col = builder.gep(x_ptr, [col])

            def vector_at(row_ptr, v):
                return builder.bitcast(builder.gep(row_ptr, [_index(LANES * v)]), _VEC.as_pointer())

            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                x_row = builder.gep(x_col, [builder.mul(k, x_row_step)])
                xs = [builder.load(vector_at(x_row, v), align=4) for v in range(vectors)]
                w_k = builder.gep(w_tile, [builder.mul(k, _index(ROWS))])
                for i in range(ROWS):
                    w = builder.load(builder.gep(w_k, [_index(i)]))
                    ws = builder.shuffle_vector(
                        builder.insert_element(undefined, w, ir.Constant(ir.IntType(32), 0)), undefined, splat
                    )
                    for v in range(vectors):
                        builder.store(builder.call(fma, [ws, xs[v], builder.load(acc[i][v])]), acc[i][v])
            out_col = builder.gep(out_ptr, [col])
            first_row = builder.mul(p, _index(ROWS))
            for i in range(ROWS):
                out_row = builder.gep(out_col, [builder.mul(builder.add(first_row, _index(i)), out_row_step)])
                for v in range(vectors):
                    builder.store(builder.load(acc[i][v]), vector_at(out_row, v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


tile_32 = _make_tile(2)  # 32 columns: two vectors per row
tile_16 = _make_tile(1)


def product(out, W_packed, x):
    """out (M, N) = W (M, K) · x (K, N) from W packed (M/ROWS, K, ROWS), W_packed[p, k, i] =
    W[p*ROWS + i, k]; N a multiple of 16, rows contiguous (out and x may be column slices of
    bigger arrays), W_packed C-contiguous. Kernels only (see the overload):
    float32 runs the register tiles; other precisions a plain loop with the same meaning."""
    raise NotImplementedError("charlstm.tiles.product runs inside numba kernels only")


@overload(product)
def _product_overload(out, W_packed, x):
    if isinstance(out.dtype, types.Float) and out.dtype.bitwidth == 32:

        def tiled(out, W_packed, x):
            B = out.shape[1]
            for p in range(W_packed.shape[0]):
                col = 0
                while col + 2 * LANES <= B:
                    tile_32(out, W_packed, x, p, col)
                    col += 2 * LANES
                if col < B:
                    tile_16(out, W_packed, x, p, col)

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
