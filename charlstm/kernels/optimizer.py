"""Optimisation over the flat parameter buffer: the global gradient norm and clipping, AdamW,
and the running average of the weights.
"""

import math

import numpy as np
from numba import njit


@njit(cache=True, error_model="numpy", nogil=True)
def global_norm(grad):
    """L2 norm of the flat gradient buffer, accumulated in float64: in 8 running sums, one
    per position mod 8, so that the additions do not wait on each other, added at the end."""
    sums = np.zeros(8, dtype=np.float64)
    n8 = grad.size - grad.size % 8
    for k in range(0, n8, 8):
        for j in range(8):
            x = np.float64(grad[k + j])  # square in float64 too, not just the sum
            sums[j] += x * x
    for k in range(n8, grad.size):
        x = np.float64(grad[k])
        sums[0] += x * x
    return math.sqrt(sums.sum())


@njit(cache=True, error_model="numpy", nogil=True)
def clip_grad_norm(grad, max_norm):
    """Scale grad in place so its global L2 norm is at most max_norm; return the norm before."""
    norm = global_norm(grad)
    if max_norm > 0.0 and norm > max_norm:
        scale = max_norm / norm
        for k in range(grad.size):
            grad[k] *= scale
    return norm


@njit(cache=True, error_model="numpy", nogil=True)
def adam_step(theta, m, v, grad, decay_mask, step, lr, beta1, beta2, eps, weight_decay):
    """One Adam update with bias correction (Kingma & Ba) and decoupled weight decay
    (Loshchilov & Hutter) on the flat buffers theta, m, v (P,). step counts from 1.
    decay_mask (P,) is 1 where weight decay applies (matrices) and 0 elsewhere (biases).
    The per-weight arithmetic runs in the buffers' precision (as PyTorch's does) and without
    a branch, so that it vectorises; the step's constants are worked out in float64 first."""
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    real = theta.dtype.type
    keep_m, take_m = real(beta1), real(1.0 - beta1)
    keep_v, take_v = real(beta2), real(1.0 - beta2)
    step_size = real(lr / bc1)
    inv_sqrt_bc2 = real(1.0 / math.sqrt(bc2))
    shrink = real(lr * weight_decay)
    tiny = real(eps)
    for k in range(theta.size):
        g = grad[k]
        mk = keep_m * m[k] + take_m * g
        vk = keep_v * v[k] + take_v * g * g
        m[k] = mk
        v[k] = vk
        w = theta[k]
        w -= (shrink * decay_mask[k]) * w  # decay_mask is 0 or 1
        theta[k] = w - step_size * mk / (np.sqrt(vk) * inv_sqrt_bc2 + tiny)


@njit(cache=True, error_model="numpy", nogil=True)
def average_step(average, theta, decay):
    """average (P,) = decay * average + (1 - decay) * theta: the running (exponential) average
    of the weights after each update."""
    keep = average.dtype.type(decay)
    take = average.dtype.type(1.0 - decay)
    for k in range(average.size):
        average[k] = keep * average[k] + take * theta[k]
