"""Scalar activations for kernels: tanh, sigmoid and exp, exact (libm) in float64 and fast,
vectorisable approximations in float32 (libm's scalar calls keep LLVM from vectorising).
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload


def tanh(x):
    """tanh for scalars inside kernels: exact in float64, a fast vectorisable rational
    approximation in float32 (see the overload below)."""
    return math.tanh(x)


def sigmoid(x):
    """Logistic function for scalars inside kernels, dispatched on precision like tanh."""
    return 1.0 / (1.0 + math.exp(-x))


def exp(x):
    """e**x for scalars inside kernels: libm's in float64, a vectorisable one in float32."""
    return math.exp(x)


@intrinsic
def _float32_from_bits(typingctx, bits):
    """The float32 whose IEEE-754 bit pattern is the int32 `bits` (a free reinterpretation,
    which LLVM vectorises like any other instruction)."""

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _multiply_add(typingctx, a, b, c):
    """a*b + c in float32, one fused multiply-add where the target has them (LLVM's fmuladd:
    every AVX2, AVX-512 and NEON CPU), else a multiply and an add. numba leaves a*b + c as two
    operations, twice the instructions of a polynomial's Horner steps: the activations are
    about 25% faster fused (0.50 -> 0.38 ns a value on a Zen 4, the whole polynomial and the
    last scaling fused)."""

    def codegen(context, builder, signature, args):
        f32 = ir.FloatType()
        fmuladd = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(f32, [f32] * 3), "llvm.fmuladd.f32"
        )
        return builder.call(fmuladd, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


@overload(tanh, inline="always")
def _tanh_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        # libm's tanhf/expf are scalar calls that keep LLVM from vectorising the gate loops
        # and cost more than the recurrent matrix product. This odd rational function
        # x*P(x^2)/Q(x^2), fitted to tanh on [-9, 9] and clamped outside, stays within
        # 4e-7 of tanh (a few float32 ulps) and compiles to straight-line SIMD code.
        def tanh_f32(x):
            lim = np.float32(9.0)
            y = min(max(x, -lim), lim)
            s = y * y
            p = _multiply_add(np.float32(-8.290949086263143e-14), s, np.float32(5.192549835857732e-11))
            p = _multiply_add(p, s, np.float32(-2.00292632275991e-08))
            p = _multiply_add(p, s, np.float32(1.1101750544255102e-05))
            p = _multiply_add(p, s, np.float32(0.003098647477408729))
            p = _multiply_add(p, s, np.float32(0.13079157580670306))
            p = _multiply_add(p, s, np.float32(1.0))
            q = _multiply_add(np.float32(0.0002538591132714459), s, np.float32(0.024473734426352402))
            q = _multiply_add(q, s, np.float32(0.46412477830066656))
            q = _multiply_add(q, s, np.float32(1.0))
            one = np.float32(1.0)
            return min(max(y * p / q, -one), one)

        return tanh_f32

    def tanh_exact(x):
        return math.tanh(x)

    return tanh_exact


@overload(sigmoid, inline="always")
def _sigmoid_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:

        def sigmoid_f32(x):
            half = np.float32(0.5)
            return _multiply_add(half, tanh(half * x), half)

        return sigmoid_f32

    def sigmoid_exact(x):
        # Branching keeps exp() from overflowing for large |x|.
        if x >= 0.0:
            return 1.0 / (1.0 + math.exp(-x))
        e = math.exp(x)
        return e / (1.0 + e)

    return sigmoid_exact


@overload(exp, inline="always")
def _exp_overload(x):
    if isinstance(x, types.Float) and x.bitwidth == 32:
        # libm's expf is a scalar call per element, the bulk of the softmax's time. Instead:
        # e**x = 2**n * e**r with n = round(x / ln 2) and |r| <= ln(2)/2, e**r from its
        # degree-7 Taylor-like minimax polynomial (Cephes' expf coefficients, within 2 ulp),
        # and 2**n put together from its exponent bits. x is clamped to [-87, 88], where 2**n
        # stays a normal float: below, the result is ~1e-38 instead of 0, a difference no
        # softmax sees.
        def exp_f32(x):
            y = min(max(x, np.float32(-87.0)), np.float32(88.0))
            n = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
            r = y - n * np.float32(0.693359375)  # ln 2 in two parts, the first exact in float32
            r = r - n * np.float32(-2.12194440e-4)
            p = np.float32(1.9875691500e-4)
            p = p * r + np.float32(1.3981999507e-3)
            p = p * r + np.float32(8.3334519073e-3)
            p = p * r + np.float32(4.1665795894e-2)
            p = p * r + np.float32(1.6666665459e-1)
            p = p * r + np.float32(5.0000001201e-1)
            e_r = p * r * r + r + np.float32(1.0)
            two_n = _float32_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))
            return e_r * two_n

        return exp_f32

    def exp_exact(x):
        return math.exp(x)

    return exp_exact
