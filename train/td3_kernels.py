"""numba kernels behind :mod:`nanofly.train.td3_core` (hand-written forward, backward and Adam).

They compute what ``nanofly.train.td3_reference.ReferenceTD3`` states in plain PyTorch:
``critic_gradient`` is the gradient of its ``critic_update`` loss (TD target with target
policy smoothing, twin critics), ``actor_gradient`` that of its ``actor_update``, ``_adam`` is
``torch.optim.Adam``'s step and ``_polyak`` its ``update_targets`` (tests/test_td3_core.py
checks them against it).

Everything here works on flat float32 buffers whose layout is defined by ``TD3Core`` (see its
module docstring); the caller passes the dimensions as an int64 array ``dims`` (actor obs,
critic obs, action, actor hidden 1, 2, critic hidden 1, 2, critic LayerNorm 0/1) and the buffer
offsets as an int64 array ``offs`` so that one compiled version serves every network size.

Conventions:
- Hidden activations are stored feature-major, shape (features, rows): every row block of a
  twin-critic activation is then contiguous, the bias + tanh loop runs along contiguous memory
  (vectorizes), and each matrix product is one BLAS sgemm.
- Network inputs stay batch-major (rows, features), as the caller has them; BLAS reads them
  transposed without a copy.
- Weights are stored as torch does, (out, in) row-major, so y^T = W x^T + b.
- No allocation: every intermediate lives in the workspace ``ws`` passed in.
- A batch can be split into row blocks: ``critic_gradient`` / ``actor_gradient`` compute the
  gradient contribution of a block (scaled by 1/B of the whole batch). One update is one call
  of ``update_kernel`` from Python, on the batch as two halves: with two threads
  (``TD3Core(threads=2)``) it runs the first half while a helper thread (the same kernel in
  its loop role, never returning to Python between jobs) runs the second, and each then adds
  the two gradients and steps one half of the parameters; with one thread it runs both halves
  and both steps in turn. Same operations in the same order either way: the thread count
  changes no bits. The replay rows can be gathered inside the same call
  (``gather_rows``), each thread its own half. Plain Python threads, not numba's
  ``parallel=True``: parfors add seconds of cold compile for the same split.

BLAS: products go straight to the sgemm of ``scipy.linalg.cython_blas`` through numba's own
C helper ``numba_xxgemm`` (what ``np.dot`` calls inside numba; an internal of numba, checked
with numba 0.68), declared as an external function with integer addresses: no array views at
the call sites (less code to compile), any leading dimension (sub-blocks of a weight matrix),
and the symbol is resolved at load time, so ``cache=True`` works. It needs SciPy, as
``np.dot`` in numba does.

Compile flags: ``fastmath`` without the no-NaN/no-Inf assumptions (clipping and min/max keep
IEEE semantics and a diverged run shows NaN instead of silently wrong numbers);
``error_model='numpy'`` lets loops that divide vectorize; ``cache=True`` keeps the warm start
at a fraction of a second.
"""
from __future__ import annotations

import ctypes
import functools
import os

import numpy as np
from numba import njit, types
from numba.extending import register_jitable

from nanofly.sim.cpu import (SPIN_TURNS_BEFORE_YIELD, cpu_relax, load_acquire, spin_until,
                             store_release, yield_cpu)
from nanofly.train.replay import gather_rows

try:  # numba's BLAS helper imports this lazily; fail here, with a clear message, instead
    import scipy.linalg.cython_blas  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("nanofly.train.td3_core needs SciPy (its BLAS runs the matrix products): "
                      "pip install scipy") from exc

# Fast-math flags minus 'nnan'/'ninf': the reassociation/contraction that vectorization needs,
# without letting LLVM assume NaN/Inf never occur.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_JIT = dict(cache=True, fastmath=_FASTMATH, error_model="numpy", nogil=True, boundscheck=False)
# Helpers are compiled into the kernels that call them (no own entry point, machine code or
# cache file of their own), which keeps the cold compile short.
_helper = register_jitable(fastmath=_FASTMATH, error_model="numpy", boundscheck=False)

_ONE = np.float32(1.0)
_ZERO = np.float32(0.0)

# ---------------------------------------------------------------------------------------------
# Fields of the small arrays the kernels take (module-level ints: numba folds them into the
# compiled code as constants, so a name costs nothing over a literal index)
# ---------------------------------------------------------------------------------------------
# dims (int64): the network sizes
(DIM_ACTOR_OBS, DIM_CRITIC_OBS, DIM_ACTION, DIM_ACTOR_H1, DIM_ACTOR_H2, DIM_CRITIC_H1,
 DIM_CRITIC_H2, DIM_LAYER_NORM, NUM_DIMS) = range(9)  # DIM_LAYER_NORM: critic LayerNorm 0/1
# offs (int64): where each block of the flat parameter buffer starts (TD3Core's layout): the
# actor's W1, b1, W2, b2, W3, b3, then the twin critics, then the end of the buffer
(OFF_ACTOR_W1, OFF_ACTOR_B1, OFF_ACTOR_W2, OFF_ACTOR_B2, OFF_ACTOR_W3, OFF_ACTOR_B3,
 OFF_CRITICS, OFF_END, NUM_OFFS) = range(9)
# hp (float64): one optimizer's hyperparameters for one step, written by TD3Core before each
# update; HP_STEP_SIZE = lr / (1 - beta1^t), HP_INV_SQRT_BIAS_CORRECTION2 = 1 / sqrt(1 - beta2^t)
(HP_GAMMA, HP_SMOOTHING_STD, HP_SMOOTHING_CLIP, HP_STEP_SIZE, HP_INV_SQRT_BIAS_CORRECTION2,
 HP_BETA1, HP_BETA2, HP_EPS, HP_WEIGHT_DECAY, HP_POLYAK, NUM_HP) = range(11)
# One row of critic statistics per half of the batch: the whole batch's results (row 0, after
# the update) [loss Q1, loss Q2, mean Q1, mean Q2, mean TD target y], then this half's sums
# [sum (q1 - y)^2, sum (q2 - y)^2, sum q1, sum q2, sum y] in the same order
(CSTAT_LOSS_Q1, CSTAT_LOSS_Q2, CSTAT_MEAN_Q1, CSTAT_MEAN_Q2, CSTAT_MEAN_Y) = range(5)
CSTAT_SUMS = 5  # + one of the five above: that value's sum over this half
NUM_CSTATS = 10
# actor statistics per half: [actor loss (row 0, whole batch), sum Q1 over this half]
ASTAT_LOSS, ASTAT_SUM_Q1, NUM_ASTATS = range(3)
# scalars (float32): [1 / B of the whole batch, reward scale]
SCALAR_INV_BATCH, SCALAR_REWARD_SCALE, NUM_SCALARS = range(3)
# The batch arrays of an update, in update_kernel's argument order (obs_c ... obs_a); the
# helper thread's mailbox holds the same eight, then the scalars, the replay row indices and
# the rows of the next observations (an n-step batch's)
(BATCH_CRITIC_OBS, BATCH_ACTION, BATCH_REWARD, BATCH_NEXT_CRITIC_OBS, BATCH_NEXT_ACTOR_OBS,
 BATCH_TERMINATED, BATCH_NOISE, BATCH_ACTOR_OBS, MAILBOX_SCALARS, MAILBOX_INDEX,
 MAILBOX_NEXT_INDEX, MAILBOX_SLOTS) = range(12)
NUM_BATCH_ARRAYS = MAILBOX_SCALARS

# ---------------------------------------------------------------------------------------------
# BLAS
# ---------------------------------------------------------------------------------------------
# Pointers are passed as integer addresses (same ABI): no array views needed at call sites,
# which keeps the IR numba generates (and so the compile time) small.
_xxgemm = types.ExternalFunction("numba_xxgemm", types.intc(
    types.char, types.char, types.char, types.intp, types.intp, types.intp,  # kind, ta, tb, m, n, k
    types.uintp, types.uintp, types.intp, types.uintp, types.intp,  # alpha, a, lda, b, ldb
    types.uintp, types.uintp, types.intp))  # beta, c, ldc
_GEMM_ALPHA_BETA = np.array([1.0, 0.0], dtype=np.float32)
_KIND_S = np.int8(ord("s"))
_TRANS_N = np.int8(ord("N"))
_TRANS_T = np.int8(ord("T"))


@_helper
def _addr(arr, offset):
    """Address of element ``offset`` of a float32 array (its matrix start for BLAS)."""
    return arr.ctypes.data + np.uintp(4 * offset)


@_helper
def _gemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc):
    """Row-major C[m, n] = op(A) @ op(B) (op = transpose where ta/tb), overwriting C.

    a, b, c are addresses (``_addr``) of the matrix starts; lda/ldb/ldc are row strides in
    elements. Column-major BLAS sees C^T = op(B)^T op(A)^T.
    """
    alpha_beta = _GEMM_ALPHA_BETA.ctypes.data
    status = _xxgemm(_KIND_S, _TRANS_T if tb else _TRANS_N, _TRANS_T if ta else _TRANS_N,
                     n, m, k, alpha_beta, b, ldb, a, lda, alpha_beta + np.uintp(4), c, ldc)
    if status != 0:
        raise RuntimeError("BLAS sgemm from scipy.linalg.cython_blas is not available")


@functools.lru_cache(maxsize=1)
def _find_blas_library() -> str | None:
    """Path of the BLAS library behind ``scipy.linalg.cython_blas`` (the one numba calls).

    Wheels ship it in ``site-packages/scipy.libs`` (NumPy has its own copy in ``numpy.libs``,
    left alone); a system SciPy links a system BLAS. Read from the loaded objects (Linux).
    """
    import scipy

    try:
        with open("/proc/self/maps") as maps:
            loaded = {line.split()[-1] for line in maps if "/" in line}
    except OSError:
        return None
    names = ("openblas", "libblas", "mkl_rt", "blis", "flexiblas")
    blas = sorted(p for p in loaded if any(n in os.path.basename(p).lower() for n in names))
    scipy_libs = os.path.dirname(os.path.abspath(scipy.__file__)) + ".libs"
    for path in blas:  # the copy shipped with this SciPy
        if path.startswith(scipy_libs):
            return path
    for path in blas:  # otherwise a BLAS that is not NumPy's private copy
        if "numpy.libs" not in path and "numpy/.libs" not in path:
            return path
    return None


def limit_blas_threads(n: int = 1) -> str:
    """Set the thread count of the BLAS the kernels call (SciPy's); returns what was done.

    The update matrices are small: a second BLAS thread gains ~5 % on an idle machine, loses
    badly on a busy one, and a multi-threaded BLAS called from two threads at once (threads=2)
    slows the updates by two orders of magnitude. NumPy's own BLAS (a separate library in the
    wheels) is not touched.
    """
    path = _find_blas_library()
    if path is None:
        return "BLAS library not found; thread count unchanged"
    try:
        lib = ctypes.CDLL(path)
    except OSError as exc:
        return f"could not open {path}: {exc}"
    for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads",
                 "scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_",
                 "MKL_Set_Num_Threads", "bli_thread_set_num_threads"):
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int]
            fn(int(n))
            return f"{name}({n}) in {os.path.basename(path)}"
    return f"no thread-count control found in {os.path.basename(path)} (assumed single-threaded)"


# ---------------------------------------------------------------------------------------------
# spin wait (hand-off between the two update threads, see td3_core._HalfWorker)
# ---------------------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def spin_until_at_least(counter, index, value, max_turns):
    """Spin (without the GIL) until ``counter[index] >= value``; False after ``max_turns``."""
    for _ in range(max_turns):
        if load_acquire(counter, index) >= value:
            return True
        cpu_relax()
    return load_acquire(counter, index) >= value


# ---------------------------------------------------------------------------------------------
# tanh
# ---------------------------------------------------------------------------------------------
# Rational minimax tanh, odd numerator of degree 13 over even denominator of degree 6 (the
# approximation used by Eigen, XLA and ONNX Runtime's MLAS). Inputs are clamped at +-7.9053,
# where float32 tanh rounds to +-1. Measured max |error| vs float64 tanh over [-10, 10]:
# 2.7e-7 (about 5 float32 ulps, near |x| = 5; torch.tanh: 3e-8); the updates still match
# PyTorch to ~1e-6 (tests/test_td3_core.py checks the tanh error < 4e-7).
_TANH_CLAMP = np.float32(7.90531110763549805)
_A1 = np.float32(4.89352455891786e-03)
_A3 = np.float32(6.37261928875436e-04)
_A5 = np.float32(1.48572235717979e-05)
_A7 = np.float32(5.12229709037114e-08)
_A9 = np.float32(-8.60467152213735e-11)
_A11 = np.float32(2.00018790482477e-13)
_A13 = np.float32(-2.76076847742355e-16)
_B0 = np.float32(4.89352518554385e-03)
_B2 = np.float32(2.26843463243900e-03)
_B4 = np.float32(1.18534705686654e-04)
_B6 = np.float32(1.19825839466702e-06)


@njit(inline="always", **_JIT)
def tanh_approx(x):
    """float32 tanh via the 13/6 rational approximation (see the constants above)."""
    x = min(max(x, -_TANH_CLAMP), _TANH_CLAMP)
    x2 = x * x
    p = x2 * _A13 + _A11
    p = x2 * p + _A9
    p = x2 * p + _A7
    p = x2 * p + _A5
    p = x2 * p + _A3
    p = x2 * p + _A1
    q = x2 * _B6 + _B4
    q = x2 * q + _B2
    q = x2 * q + _B0
    return x * p / q


@njit(**_JIT)
def tanh_approx_array(x, out):
    """Elementwise ``tanh_approx`` over 1-D float32 arrays (for accuracy tests)."""
    for i in range(x.shape[0]):
        out[i] = tanh_approx(x[i])


# ---------------------------------------------------------------------------------------------
# small building blocks on flat buffers (compiled into the kernels that call them)
# A matrix "at offset o" with shape (rows, cols) occupies buf[o : o + rows * cols] row-major.
# Inner loops index a view from 0 (``row = buf[a:b]; row[i]``): numba then knows the index is
# not negative, drops its wrap-around code and LLVM vectorizes the loop (indexing buf[a + i]
# directly leaves the loop scalar, which halves the update speed).
# ---------------------------------------------------------------------------------------------
@_helper
def _bias_tanh(h, ho, b, bo, rows, cols):
    """h[j, :] = tanh(h[j, :] + b[j]) in place; h (rows, cols) at ho, b at bo."""
    for j in range(rows):
        bj = b[bo + j]
        row = h[ho + j * cols:ho + (j + 1) * cols]
        for i in range(cols):
            row[i] = tanh_approx(row[i] + bj)


_LN_EPS = np.float32(1e-5)  # torch.nn.LayerNorm's default


@_helper
def _bias_norm_tanh(h, ho, b, bo, theta, go, beo, rows, cols, nrm, no, mean, mo, rstd, ro):
    """Linear bias, LayerNorm over the ``rows`` features of each column, then tanh:
    h[j, :] = tanh(g[j] * n[j, :] + beta[j]) with n = (z - mean(z)) / sqrt(var(z) + eps) per
    column and z = h + b (torch.nn.LayerNorm with affine g, beta; biased variance). h (rows,
    cols) at ho, b at bo, g and beta in ``theta`` at go / beo. Keeps n at ``nrm``[no] and
    1 / sqrt(var + eps) per column at ``rstd``[ro] for the backward pass (``nrm`` must not
    overlap ``h``). ``mean``[mo:mo + cols] is scratch."""
    mv = mean[mo:mo + cols]
    rv = rstd[ro:ro + cols]
    inv_rows = _ONE / np.float32(rows)
    for i in range(cols):
        mv[i] = _ZERO
        rv[i] = _ZERO
    for j in range(rows):
        bj = b[bo + j]
        row = h[ho + j * cols:ho + (j + 1) * cols]
        for i in range(cols):
            z = row[i] + bj
            row[i] = z
            mv[i] += z
    for i in range(cols):
        mv[i] *= inv_rows
    for j in range(rows):
        row = h[ho + j * cols:ho + (j + 1) * cols]
        for i in range(cols):
            d = row[i] - mv[i]
            rv[i] += d * d
    for i in range(cols):
        rv[i] = _ONE / np.sqrt(rv[i] * inv_rows + _LN_EPS)
    for j in range(rows):
        gj = theta[go + j]
        bej = theta[beo + j]
        row = h[ho + j * cols:ho + (j + 1) * cols]
        nrow = nrm[no + j * cols:no + (j + 1) * cols]
        for i in range(cols):
            n = (row[i] - mv[i]) * rv[i]
            nrow[i] = n
            row[i] = tanh_approx(gj * n + bej)


@_helper
def _norm_backward(d, do, nrm, no, theta, go, rows, cols, rstd, ro, sums, so, grads, ggo,
                   gbeo, param_grads):
    """Back through ``_bias_norm_tanh``'s LayerNorm, in place: d (rows, cols) at ``do`` holds
    dL/du (u = g n + beta, the tanh input) and becomes dL/dz (z = the linear output + bias).
    With ``param_grads``, dL/dg and dL/dbeta go to ``grads``[ggo:] and [gbeo:].
    ``sums``[so:so + 2 cols] is scratch."""
    inv_rows = _ONE / np.float32(rows)
    sa = sums[so:so + cols]
    sb = sums[so + cols:so + 2 * cols]
    for i in range(cols):
        sa[i] = _ZERO
        sb[i] = _ZERO
    for j in range(rows):
        gj = theta[go + j]
        row = d[do + j * cols:do + (j + 1) * cols]
        nrow = nrm[no + j * cols:no + (j + 1) * cols]
        if param_grads:
            acc_g = _ZERO
            acc_b = _ZERO
            for i in range(cols):
                acc_g += row[i] * nrow[i]
                acc_b += row[i]
            grads[ggo + j] = acc_g
            grads[gbeo + j] = acc_b
        for i in range(cols):
            dn = row[i] * gj
            row[i] = dn
            sa[i] += dn
            sb[i] += dn * nrow[i]
    rv = rstd[ro:ro + cols]
    for i in range(cols):
        sa[i] *= inv_rows
        sb[i] *= inv_rows
    for j in range(rows):
        row = d[do + j * cols:do + (j + 1) * cols]
        nrow = nrm[no + j * cols:no + (j + 1) * cols]
        for i in range(cols):
            row[i] = rv[i] * (row[i] - sa[i] - nrow[i] * sb[i])


@_helper
def _hidden_tanh(h, ho, theta, b, g, be, width, rows, copies, norm, nrm, no, mo, ro):
    """A critic hidden layer's activation for ``copies`` critics stacked in ``h`` (each
    (width, rows), bias at ``b``, LayerNorm gain / offset at ``g`` / ``be``, all in ``theta``):
    with ``norm`` ``_bias_norm_tanh`` per critic (normalized values at ``nrm``[no], 1/std at
    ``nrm``[ro + c rows], scratch at ``nrm``[mo]), else ``_bias_tanh`` over all of them."""
    if norm:
        for c in range(copies):
            _bias_norm_tanh(h, ho + c * width * rows, theta, b + c * width, theta,
                            g + c * width, be + c * width, width, rows, nrm,
                            no + c * width * rows, nrm, mo, nrm, ro + c * rows)
    else:
        _bias_tanh(h, ho, theta, b, copies * width, rows)


@_helper
def _critic_offsets(offs, dims):
    """Offsets of the twin critics' parameters in the flat buffer (TD3Core's layout): W1, b1,
    W2, b2, W3, b3, the LayerNorm gains and offsets g1, beta1, g2, beta2 (present when
    dims[DIM_LAYER_NORM] = 1), and the end of the critic part."""
    oc, na = dims[DIM_CRITIC_OBS], dims[DIM_ACTION]
    hc1, hc2 = dims[DIM_CRITIC_H1], dims[DIM_CRITIC_H2]
    w1 = offs[OFF_CRITICS]
    b1 = w1 + 2 * hc1 * (oc + na)
    w2 = b1 + 2 * hc1
    b2 = w2 + 2 * hc2 * hc1
    w3 = b2 + 2 * hc2
    b3 = w3 + 2 * hc2
    g1 = b3 + 2
    be1 = g1 + 2 * hc1
    g2 = be1 + 2 * hc1
    be2 = g2 + 2 * hc2
    end = be2 + 2 * hc2 if dims[DIM_LAYER_NORM] != 0 else b3 + 2
    return w1, b1, w2, b2, w3, b3, g1, be1, g2, be2, end


@_helper
def _tanh_backward(d, do, h, ho, n):
    """d *= 1 - h^2 over n contiguous elements (h = tanh output)."""
    dv = d[do:do + n]
    hv = h[ho:ho + n]
    for i in range(n):
        dv[i] = dv[i] * (_ONE - hv[i] * hv[i])


@_helper
def _row_sums(d, do, rows, cols, out, oo):
    """out[oo + j] = sum_i d[j, i] (bias gradient); d (rows, cols) at do."""
    for j in range(rows):
        row = d[do + j * cols:do + (j + 1) * cols]
        acc = _ZERO
        for i in range(cols):
            acc += row[i]
        out[oo + j] = acc


@_helper
def _linear_out(w, wo, b, h, ho, rows, cols, out, oo):
    """out[oo + i] = b + sum_j w[wo + j] h[j, i]: a 1-unit output layer; h (rows, cols) at ho."""
    o = out[oo:oo + cols]
    for i in range(cols):
        o[i] = b
    for j in range(rows):
        wj = w[wo + j]
        row = h[ho + j * cols:ho + (j + 1) * cols]
        for i in range(cols):
            o[i] += wj * row[i]


@_helper
def _adam(p, g, m, v, lo, hi, hp):
    """torch.optim.Adam (L2 weight decay added to the gradient, bias correction) on [lo, hi).

    Same operation order as torch's single-tensor implementation:
    g += wd p; m = lerp(m, g, 1 - beta1); v = beta2 v + (1 - beta2) g^2;
    p -= step_size * m / (sqrt(v) / sqrt(bias_correction2) + eps).
    step_size = lr / bias_correction1 and 1 / sqrt(bias_correction2) come precomputed in hp.
    """
    step_size = np.float32(hp[HP_STEP_SIZE])
    inv_bc2_sqrt = np.float32(hp[HP_INV_SQRT_BIAS_CORRECTION2])
    beta1 = np.float32(hp[HP_BETA1])
    beta2 = np.float32(hp[HP_BETA2])
    eps = np.float32(hp[HP_EPS])
    weight_decay = np.float32(hp[HP_WEIGHT_DECAY])
    one_m_b1 = _ONE - beta1
    one_m_b2 = _ONE - beta2
    pv, gv, mv, vv = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    for k in range(hi - lo):
        gk = gv[k] + weight_decay * pv[k]
        mk = mv[k] + one_m_b1 * (gk - mv[k])
        vk = beta2 * vv[k] + one_m_b2 * gk * gk
        mv[k] = mk
        vv[k] = vk
        pv[k] = pv[k] - step_size * mk / (np.sqrt(vk) * inv_bc2_sqrt + eps)


@_helper
def _polyak(params, targets, polyak, lo, hi):
    tau = _ONE - polyak
    pv = params[lo:hi]
    tv = targets[lo:hi]
    for k in range(hi - lo):
        tv[k] = polyak * tv[k] + tau * pv[k]


@njit(**_JIT)
def polyak_kernel(params, targets, polyak):
    """targets = polyak * targets + (1 - polyak) * params, over the whole buffer."""
    _polyak(params, targets, polyak, 0, params.shape[0])


@_helper
def _add_into(dst, src, lo, hi):
    dv = dst[lo:hi]
    sv = src[lo:hi]
    for k in range(hi - lo):
        dv[k] += sv[k]


# ---------------------------------------------------------------------------------------------
# workspace sizes (floats per batch row); used by the kernels and by TD3Core
# ---------------------------------------------------------------------------------------------
@_helper
def forward_ws_per_row(dims):
    return dims[DIM_ACTOR_H1] + dims[DIM_ACTOR_H2] + dims[DIM_ACTION]


@_helper
def critic_ws_per_row(dims):
    na, ha1, ha2 = dims[DIM_ACTION], dims[DIM_ACTOR_H1], dims[DIM_ACTOR_H2]
    hc1, hc2 = dims[DIM_CRITIC_H1], dims[DIM_CRITIC_H2]
    cin = dims[DIM_CRITIC_OBS] + na
    return (ha1 + ha2 + na  # target actor activations
            + 2 * cin  # critic inputs (next, current), batch-major
            + 2 * (2 * hc1 + 2 * hc2 + 2)  # target and online twin activations + outputs
            + 3  # TD target y, dL/dq (2)
            + 2 * hc2 + 2 * hc1  # backward deltas
            + 2 * hc1 + 2 * hc2 + 6)  # LayerNorm: normalized values, 1/std (4), scratch (2)


@_helper
def actor_ws_per_row(dims):
    na, ha1, ha2 = dims[DIM_ACTION], dims[DIM_ACTOR_H1], dims[DIM_ACTOR_H2]
    hc1, hc2 = dims[DIM_CRITIC_H1], dims[DIM_CRITIC_H2]
    cin = dims[DIM_CRITIC_OBS] + na
    return 2 * (ha1 + ha2 + na) + cin + 2 * (hc1 + hc2) + 1 + hc1 + hc2 + 4


# ---------------------------------------------------------------------------------------------
# actor forward (feature-major activations)
# ---------------------------------------------------------------------------------------------
@_helper
def _actor_forward(theta, offs, dims, obs, ws, o_a1, o_a2, o_mu, rows):
    """mu (na, rows) at o_mu = actor(obs (rows, oa)); keeps a1 (ha1, rows), a2 (ha2, rows)."""
    oa, na = dims[DIM_ACTOR_OBS], dims[DIM_ACTION]
    ha1, ha2 = dims[DIM_ACTOR_H1], dims[DIM_ACTOR_H2]
    _gemm(False, True, ha1, rows, oa,
          _addr(theta, offs[OFF_ACTOR_W1]), oa, _addr(obs, 0), oa, _addr(ws, o_a1), rows)
    _bias_tanh(ws, o_a1, theta, offs[OFF_ACTOR_B1], ha1, rows)
    _gemm(False, False, ha2, rows, ha1,
          _addr(theta, offs[OFF_ACTOR_W2]), ha1, _addr(ws, o_a1), rows, _addr(ws, o_a2), rows)
    _bias_tanh(ws, o_a2, theta, offs[OFF_ACTOR_B2], ha2, rows)
    _gemm(False, False, na, rows, ha2,
          _addr(theta, offs[OFF_ACTOR_W3]), ha2, _addr(ws, o_a2), rows, _addr(ws, o_mu), rows)
    _bias_tanh(ws, o_mu, theta, offs[OFF_ACTOR_B3], na, rows)


@njit(**_JIT)
def actor_forward_kernel(theta, dims, offs, obs, out, ws):
    """out (N, na) = actor(obs (N, oa)) with the parameter buffer ``theta``."""
    n = obs.shape[0]
    na, ha1, ha2 = dims[DIM_ACTION], dims[DIM_ACTOR_H1], dims[DIM_ACTOR_H2]
    if n * forward_ws_per_row(dims) > ws.shape[0]:
        raise ValueError("actor_forward_kernel: workspace too small")
    o_mu = (ha1 + ha2) * n
    _actor_forward(theta, offs, dims, obs, ws, 0, ha1 * n, o_mu, n)
    for i in range(n):
        for k in range(na):
            out[i, k] = ws[o_mu + k * n + i]


# ---------------------------------------------------------------------------------------------
# critic update
# ---------------------------------------------------------------------------------------------
@_helper
def critic_gradient(params, targets, grads, dims, offs, hp, obs_c, action, reward,
                         next_obs_c, next_obs_a, terminated, noise, ws, stats, inv_batch):
    """The gradient of one TD3 critic step for both critics (see ``TD3Core.critic_update``).

    Computes the gradient of the twin-critic loss over the rows given (a whole batch, or one
    block of it with ``inv_batch`` = 1 / B of the whole batch) into the critic part of
    ``grads``; stats[CSTAT_SUMS:] (out) = [sum (q1 - y)^2, sum (q2 - y)^2, sum q1, sum q2,
    sum y] over these rows. The Adam step is ``_finish_part``'s (``update_kernel``).

    hp (float64): the HP_ fields (gamma and the target smoothing are read here).
    """
    rows = obs_c.shape[0]
    if rows * critic_ws_per_row(dims) > ws.shape[0]:
        raise ValueError("critic_gradient: workspace too small")
    oc, na = dims[DIM_CRITIC_OBS], dims[DIM_ACTION]
    ha1, ha2 = dims[DIM_ACTOR_H1], dims[DIM_ACTOR_H2]
    hc1, hc2 = dims[DIM_CRITIC_H1], dims[DIM_CRITIC_H2]
    cin = oc + na
    # critic parameter offsets (stacked twin layout, see TD3Core); LayerNorm when
    # dims[DIM_LAYER_NORM] = 1
    w1, b1, w2, b2, w3, b3, g1, be1, g2, be2, c_end = _critic_offsets(offs, dims)
    norm = dims[DIM_LAYER_NORM] != 0
    if rows == 0:  # an empty block contributes nothing (BLAS rejects zero leading dims)
        for k in range(w1, c_end):
            grads[k] = _ZERO
        for k in range(CSTAT_SUMS, NUM_CSTATS):
            stats[k] = _ZERO
        return
    gamma = np.float32(hp[HP_GAMMA])
    smooth_std = np.float32(hp[HP_SMOOTHING_STD])
    smooth_clip = np.float32(hp[HP_SMOOTHING_CLIP])
    # workspace offsets; activations are (features, rows)
    o_a1 = 0
    o_a2 = o_a1 + ha1 * rows
    o_mu = o_a2 + ha2 * rows
    o_xn = o_mu + na * rows  # (rows, cin): [next critic obs | a']
    o_x = o_xn + rows * cin  # (rows, cin): [critic obs | action]
    o_h1n = o_x + rows * cin  # twin target layer 1 (2 hc1, rows): rows [Q1 | Q2]
    o_h2n = o_h1n + 2 * hc1 * rows
    o_qn = o_h2n + 2 * hc2 * rows
    o_h1 = o_qn + 2 * rows
    o_h2 = o_h1 + 2 * hc1 * rows
    o_q = o_h2 + 2 * hc2 * rows
    o_y = o_q + 2 * rows
    o_dq = o_y + rows
    o_dz2 = o_dq + 2 * rows
    o_dz1 = o_dz2 + 2 * hc2 * rows
    o_n1 = o_dz1 + 2 * hc1 * rows  # LayerNorm: normalized layer-1 values (2 hc1, rows)
    o_n2 = o_n1 + 2 * hc1 * rows  # ... layer 2 (2 hc2, rows)
    o_rs = o_n2 + 2 * hc2 * rows  # 1/std per row: layer 1 Q1, Q2, layer 2 Q1, Q2
    o_sc = o_rs + 4 * rows  # scratch (2 rows)

    # --- TD target: a' = clip(mu'(s') + clip(std * eps, -c, c), -1, 1) ---
    _actor_forward(targets, offs, dims, next_obs_a, ws, o_a1, o_a2, o_mu, rows)
    for i in range(rows):
        xn_row = ws[o_xn + i * cin:o_xn + (i + 1) * cin]
        x_row = ws[o_x + i * cin:o_x + (i + 1) * cin]
        for k in range(oc):
            xn_row[k] = next_obs_c[i, k]
            x_row[k] = obs_c[i, k]
        for k in range(na):
            e = min(max(smooth_std * noise[i, k], -smooth_clip), smooth_clip)
            xn_row[oc + k] = min(max(ws[o_mu + k * rows + i] + e, -_ONE), _ONE)
            x_row[oc + k] = action[i, k]

    # twin target critics (layer 1 of both in one product), then the min over the pair
    _gemm(False, True, 2 * hc1, rows, cin,
          _addr(targets, w1), cin, _addr(ws, o_xn), cin, _addr(ws, o_h1n), rows)
    # (the online pass below overwrites the normalized values; a region of their own, not in
    # place: LLVM vectorizes the loop only when the two do not overlap)
    _hidden_tanh(ws, o_h1n, targets, b1, g1, be1, hc1, rows, 2, norm, ws, o_n1, o_sc, o_rs)
    for c in range(2):
        _gemm(False, False, hc2, rows, hc1, _addr(targets, w2 + c * hc2 * hc1), hc1,
              _addr(ws, o_h1n + c * hc1 * rows), rows, _addr(ws, o_h2n + c * hc2 * rows), rows)
    _hidden_tanh(ws, o_h2n, targets, b2, g2, be2, hc2, rows, 2, norm, ws, o_n2, o_sc,
                 o_rs + 2 * rows)
    for c in range(2):
        _linear_out(targets, w3 + c * hc2, targets[b3 + c], ws, o_h2n + c * hc2 * rows, hc2,
                    rows, ws, o_qn + c * rows)
    q1n, q2n, yv = ws[o_qn:o_qn + rows], ws[o_qn + rows:o_qn + 2 * rows], ws[o_y:o_y + rows]
    y_sum = _ZERO
    for i in range(rows):
        y = reward[i] + gamma * (_ONE - terminated[i]) * min(q1n[i], q2n[i])
        yv[i] = y
        y_sum += y

    # --- online twin critics ---
    _gemm(False, True, 2 * hc1, rows, cin,
          _addr(params, w1), cin, _addr(ws, o_x), cin, _addr(ws, o_h1), rows)
    _hidden_tanh(ws, o_h1, params, b1, g1, be1, hc1, rows, 2, norm, ws, o_n1, o_sc, o_rs)
    for c in range(2):
        _gemm(False, False, hc2, rows, hc1, _addr(params, w2 + c * hc2 * hc1), hc1,
              _addr(ws, o_h1 + c * hc1 * rows), rows, _addr(ws, o_h2 + c * hc2 * rows), rows)
    _hidden_tanh(ws, o_h2, params, b2, g2, be2, hc2, rows, 2, norm, ws, o_n2, o_sc,
                 o_rs + 2 * rows)
    for c in range(2):
        _linear_out(params, w3 + c * hc2, params[b3 + c], ws, o_h2 + c * hc2 * rows, hc2, rows,
                    ws, o_q + c * rows)

    # loss = mean((q1 - y)^2) + mean((q2 - y)^2)  ->  dL/dq_c = 2 (q_c - y) / B
    scale = np.float32(2.0) * inv_batch
    for c in range(2):
        qv = ws[o_q + c * rows:o_q + (c + 1) * rows]
        dqv = ws[o_dq + c * rows:o_dq + (c + 1) * rows]
        sq = _ZERO
        q_sum = _ZERO
        for i in range(rows):
            err = qv[i] - yv[i]
            sq += err * err
            q_sum += qv[i]
            dqv[i] = scale * err
        stats[CSTAT_SUMS + CSTAT_LOSS_Q1 + c] = sq
        stats[CSTAT_SUMS + CSTAT_MEAN_Q1 + c] = q_sum
    stats[CSTAT_SUMS + CSTAT_MEAN_Y] = y_sum

    # --- backward ---
    for c in range(2):
        # output layer: gW3 = dq h2^T, gb3 = sum dq; dz2 = w3 dq (1 - h2^2)
        dqv = ws[o_dq + c * rows:o_dq + (c + 1) * rows]
        gb = _ZERO
        for i in range(rows):
            gb += dqv[i]
        grads[b3 + c] = gb
        for j in range(hc2):
            wj = params[w3 + c * hc2 + j]
            o_hj = o_h2 + (c * hc2 + j) * rows
            o_dj = o_dz2 + (c * hc2 + j) * rows
            hv, dzv = ws[o_hj:o_hj + rows], ws[o_dj:o_dj + rows]
            acc = _ZERO
            for i in range(rows):
                acc += dqv[i] * hv[i]
                dzv[i] = wj * dqv[i] * (_ONE - hv[i] * hv[i])
            grads[w3 + c * hc2 + j] = acc
        if norm:  # dz2 held dL/d(LayerNorm output); now dL/d(linear output)
            _norm_backward(ws, o_dz2 + c * hc2 * rows, ws, o_n2 + c * hc2 * rows, params,
                           g2 + c * hc2, hc2, rows, ws, o_rs + (2 + c) * rows, ws, o_sc, grads,
                           g2 + c * hc2, be2 + c * hc2, True)
        # hidden layer 2: gW2 = dz2 h1^T; dz1 = W2^T dz2 (times 1 - h1^2 below)
        _gemm(False, True, hc2, hc1, rows, _addr(ws, o_dz2 + c * hc2 * rows), rows,
              _addr(ws, o_h1 + c * hc1 * rows), rows, _addr(grads, w2 + c * hc2 * hc1), hc1)
        _gemm(True, False, hc1, rows, hc2, _addr(params, w2 + c * hc2 * hc1), hc1,
              _addr(ws, o_dz2 + c * hc2 * rows), rows, _addr(ws, o_dz1 + c * hc1 * rows), rows)
    _row_sums(ws, o_dz2, 2 * hc2, rows, grads, b2)
    _tanh_backward(ws, o_dz1, ws, o_h1, 2 * hc1 * rows)
    if norm:
        for c in range(2):
            _norm_backward(ws, o_dz1 + c * hc1 * rows, ws, o_n1 + c * hc1 * rows, params,
                           g1 + c * hc1, hc1, rows, ws, o_rs + c * rows, ws, o_sc, grads,
                           g1 + c * hc1, be1 + c * hc1, True)
    _row_sums(ws, o_dz1, 2 * hc1, rows, grads, b1)
    _gemm(False, False, 2 * hc1, cin, rows,
          _addr(ws, o_dz1), rows, _addr(ws, o_x), cin, _addr(grads, w1), cin)


# ---------------------------------------------------------------------------------------------
# actor update (+ Polyak)
# ---------------------------------------------------------------------------------------------
@_helper
def actor_gradient(params, grads, dims, offs, obs_a, obs_c, ws, stats, inv_batch):
    """The gradient of one TD3 actor step, -mean Q1(s, pi(o)).

    Back-propagates through Q1 to the action only; critic parameters and the critic part of
    ``grads`` are untouched. Over the rows given (a whole batch, or one block of it with
    ``inv_batch`` = 1 / B of the whole batch) it writes the actor part of ``grads`` and
    stats[ASTAT_SUM_Q1] = sum Q1. The Adam step is ``_finish_part``'s (``update_kernel``).
    """
    rows = obs_a.shape[0]
    if rows * actor_ws_per_row(dims) > ws.shape[0]:
        raise ValueError("actor_gradient: workspace too small")
    oa, oc, na = dims[DIM_ACTOR_OBS], dims[DIM_CRITIC_OBS], dims[DIM_ACTION]
    ha1, ha2 = dims[DIM_ACTOR_H1], dims[DIM_ACTOR_H2]
    hc1, hc2 = dims[DIM_CRITIC_H1], dims[DIM_CRITIC_H2]
    cin = oc + na
    if rows == 0:
        for k in range(offs[OFF_CRITICS]):
            grads[k] = _ZERO
        stats[ASTAT_SUM_Q1] = _ZERO
        return
    # Q1's parameters: rows [0, hc1) of the stacked layer-1 weights, block 0 of the others
    w1, b1, w2, b2, w3, b3, g1, be1, g2, be2, _ = _critic_offsets(offs, dims)
    norm = dims[DIM_LAYER_NORM] != 0
    o_a1 = 0
    o_a2 = o_a1 + ha1 * rows
    o_mu = o_a2 + ha2 * rows
    o_x = o_mu + na * rows  # (rows, cin): [critic obs | pi(actor obs)]
    o_h1 = o_x + rows * cin
    o_h2 = o_h1 + hc1 * rows
    o_q = o_h2 + hc2 * rows
    o_dz2 = o_q + rows
    o_dz1 = o_dz2 + hc2 * rows
    o_da3 = o_dz1 + hc1 * rows
    o_da2 = o_da3 + na * rows
    o_da1 = o_da2 + ha2 * rows
    o_n1 = o_da1 + ha1 * rows  # LayerNorm: normalized values (hc1, rows), (hc2, rows)
    o_n2 = o_n1 + hc1 * rows
    o_rs = o_n2 + hc2 * rows  # 1/std per row, layers 1 and 2
    o_sc = o_rs + 2 * rows  # scratch (2 rows)

    _actor_forward(params, offs, dims, obs_a, ws, o_a1, o_a2, o_mu, rows)
    for i in range(rows):
        x_row = ws[o_x + i * cin:o_x + (i + 1) * cin]
        for k in range(oc):
            x_row[k] = obs_c[i, k]
        for k in range(na):
            x_row[oc + k] = ws[o_mu + k * rows + i]
    _gemm(False, True, hc1, rows, cin,
          _addr(params, w1), cin, _addr(ws, o_x), cin, _addr(ws, o_h1), rows)
    _hidden_tanh(ws, o_h1, params, b1, g1, be1, hc1, rows, 1, norm, ws, o_n1, o_sc, o_rs)
    _gemm(False, False, hc2, rows, hc1,
          _addr(params, w2), hc1, _addr(ws, o_h1), rows, _addr(ws, o_h2), rows)
    _hidden_tanh(ws, o_h2, params, b2, g2, be2, hc2, rows, 1, norm, ws, o_n2, o_sc,
                 o_rs + rows)
    _linear_out(params, w3, params[b3], ws, o_h2, hc2, rows, ws, o_q)
    qv = ws[o_q:o_q + rows]
    q_sum = _ZERO
    for i in range(rows):
        q_sum += qv[i]
    stats[ASTAT_SUM_Q1] = q_sum

    # dL/dq = -1/B; back through Q1 to the action
    for j in range(hc2):
        wj = -params[w3 + j] * inv_batch
        hv = ws[o_h2 + j * rows:o_h2 + (j + 1) * rows]
        dzv = ws[o_dz2 + j * rows:o_dz2 + (j + 1) * rows]
        for i in range(rows):
            dzv[i] = wj * (_ONE - hv[i] * hv[i])
    if norm:  # to the action only: no gain / offset gradients
        _norm_backward(ws, o_dz2, ws, o_n2, params, g2, hc2, rows, ws, o_rs + rows, ws, o_sc,
                       grads, 0, 0, False)
    _gemm(True, False, hc1, rows, hc2,
          _addr(params, w2), hc1, _addr(ws, o_dz2), rows, _addr(ws, o_dz1), rows)
    _tanh_backward(ws, o_dz1, ws, o_h1, hc1 * rows)
    if norm:
        _norm_backward(ws, o_dz1, ws, o_n1, params, g1, hc1, rows, ws, o_rs, ws, o_sc, grads,
                       0, 0, False)
    # dL/da (na, rows) = W1[:, oc:]^T dz1: the action columns of Q1's first layer (ld = cin)
    _gemm(True, False, na, rows, hc1,
          _addr(params, w1 + oc), cin, _addr(ws, o_dz1), rows, _addr(ws, o_da3), rows)

    # back through the actor
    _tanh_backward(ws, o_da3, ws, o_mu, na * rows)
    _gemm(False, True, na, ha2, rows,
          _addr(ws, o_da3), rows, _addr(ws, o_a2), rows, _addr(grads, offs[OFF_ACTOR_W3]), ha2)
    _row_sums(ws, o_da3, na, rows, grads, offs[OFF_ACTOR_B3])
    _gemm(True, False, ha2, rows, na,
          _addr(params, offs[OFF_ACTOR_W3]), ha2, _addr(ws, o_da3), rows, _addr(ws, o_da2), rows)
    _tanh_backward(ws, o_da2, ws, o_a2, ha2 * rows)
    _gemm(False, True, ha2, ha1, rows,
          _addr(ws, o_da2), rows, _addr(ws, o_a1), rows, _addr(grads, offs[OFF_ACTOR_W2]), ha1)
    _row_sums(ws, o_da2, ha2, rows, grads, offs[OFF_ACTOR_B2])
    _gemm(True, False, ha1, rows, ha2,
          _addr(params, offs[OFF_ACTOR_W2]), ha1, _addr(ws, o_da2), rows, _addr(ws, o_da1), rows)
    _tanh_backward(ws, o_da1, ws, o_a1, ha1 * rows)
    _gemm(False, False, ha1, oa, rows,
          _addr(ws, o_da1), rows, _addr(obs_a, 0), oa, _addr(grads, offs[OFF_ACTOR_W1]), oa)
    _row_sums(ws, o_da1, ha1, rows, grads, offs[OFF_ACTOR_B1])


# ---------------------------------------------------------------------------------------------
# one whole update (update_kernel): the caller's thread and, with two threads, the helper
# thread's loop, each on one half of the batch
# ---------------------------------------------------------------------------------------------
# job (int64), one update posted to the two threads:
(JOB_PHASES,  # CRITIC_JOB | ACTOR_JOB (the actor update after the critic's); STOP_JOB: stop
 JOB_HELPER_ROWS,  # rows of the second half (the helper's)
 JOB_CALLER_ROWS,  # rows of the first half (the caller's)
 JOB_GATHER,  # GATHER_: whether and how the rows are gathered from the replay data first
 JOB_STORED_ROWS,  # replay rows stored (gathered indices must be below)
 ) = range(5)
# then two ranges of parameter indices, each [Adam lo, Adam hi, Polyak lo, Polyak hi): the
# critic update's at JOB_CRITIC_RANGES, the actor update's at JOB_ACTOR_RANGES
JOB_CRITIC_RANGES = 5
JOB_ACTOR_RANGES = 9
RANGE_ADAM_LO, RANGE_ADAM_HI, RANGE_POLYAK_LO, RANGE_POLYAK_HI = range(4)
# 1: no helper thread; the caller computes both halves, its own rows first, so one thread gets
# the same numbers as two
JOB_SOLO = 13
JOB_FIELDS = 14
CRITIC_JOB = 1
ACTOR_JOB = 2
STOP_JOB = 0
# job[JOB_GATHER]: the batch arrays as they are (GATHER_NONE); the rows ``idx`` whole
# (GATHER_ROWS); or an n-step batch (GATHER_N_STEP): observations and actions from the rows
# ``idx``, the next observations from the rows ``next_idx``, the reward and terminated values
# already in the batch arrays (the caller's)
GATHER_NONE, GATHER_ROWS, GATHER_N_STEP = range(3)
# counters (int64), shared by the two threads. Progress = 4 * job number + stage (0 critic
# gradient ready, 1 critic step done, 2 actor gradient ready); CANCELLED and BAD_ROWS hold
# job numbers.
(COUNTER_POSTED,  # jobs posted
 COUNTER_DONE,  # jobs done by the helper
 COUNTER_CALLER_PROGRESS,
 COUNTER_HELPER_PROGRESS,
 COUNTER_CANCELLED,  # the job the caller cancelled (the helper must not finish it)
 COUNTER_BAD_ROWS,  # the latest job with replay rows out of range
 COUNTER_FIELDS) = range(7)


def pack_job(phases, helper_rows, caller_rows, gather, stored_rows, critic_ranges, actor_ranges,
             solo):
    """The JOB_FIELDS values of one update (``critic_ranges`` / ``actor_ranges``: the four
    RANGE_ values each), in the job array's order."""
    return (phases, helper_rows, caller_rows, gather, stored_rows, *critic_ranges,
            *actor_ranges, solo)


assert (JOB_CRITIC_RANGES, JOB_ACTOR_RANGES, JOB_SOLO, JOB_FIELDS) == (
    JOB_STORED_ROWS + 1, JOB_CRITIC_RANGES + 4, JOB_ACTOR_RANGES + 4, JOB_SOLO + 1)  # pack_job


@_helper
def _split_point(lo, hi):
    """Where [lo, hi) is cut between the two threads: its middle, rounded down to a multiple
    of 16 floats (a 64-byte line), so the two threads rarely write the same cache line."""
    mid = ((lo + hi) // 2) // 16 * 16
    return min(max(mid, lo), hi)


@_helper
def _share(lo, hi, part):
    """Half ``part``'s share of [lo, hi)."""
    mid = _split_point(lo, hi)
    return (lo, mid) if part == 0 else (mid, hi)


@_helper
def _finish_part(params, targets, grads2, adam_m, adam_v, hp, job, ranges, part):
    """Share ``part`` (0 or 1) of an update's end: the two halves' gradients added and
    the Adam step on the range's [Adam lo, Adam hi), then the Polyak step on its [Polyak lo,
    Polyak hi); each value Polyak-averaged by the thread that stepped it (no other
    ordering between the threads is needed). Every value goes through the same operations
    whichever thread computes it, so the split changes no bits."""
    alo, ahi = job[ranges + RANGE_ADAM_LO], job[ranges + RANGE_ADAM_HI]
    plo, phi = job[ranges + RANGE_POLYAK_LO], job[ranges + RANGE_POLYAK_HI]
    a0, a1 = _share(alo, ahi, part)
    if a1 > a0:
        _add_into(grads2[0], grads2[1], a0, a1)
        _adam(params, grads2[0], adam_m, adam_v, a0, a1, hp)
    if phi <= plo:
        return
    polyak = np.float32(hp[HP_POLYAK])
    lo, hi = max(plo, a0), min(phi, a1)  # inside this share of the Adam range
    if hi > lo:
        _polyak(params, targets, polyak, lo, hi)
    lo, hi = _share(plo, min(phi, alo), part)  # below the Adam range
    if hi > lo:
        _polyak(params, targets, polyak, lo, hi)
    lo, hi = _share(max(plo, ahi), phi, part)  # above it
    if hi > lo:
        _polyak(params, targets, polyak, lo, hi)


@_helper
def _meet(counters, part, solo, number, stage):
    """With two threads (not ``solo``), wait until the other one reached ``stage`` of job
    ``number`` too. False when the helper (part 1) was cancelled by the caller; the caller
    (part 0) also goes on when the helper failed (its error is raised by the caller's
    wait())."""
    if solo:
        return True
    progress = 4 * number + stage
    store_release(counters, COUNTER_CALLER_PROGRESS + part, progress)
    if part == 0:
        spin_until(counters, COUNTER_HELPER_PROGRESS, progress, COUNTER_DONE, number)
        return True
    return spin_until(counters, COUNTER_CALLER_PROGRESS, progress, COUNTER_CANCELLED, number)


@_helper
def _half_rows(job, half, second_lo):
    """Rows [lo, hi) of ``half`` in the computing thread's batch arrays: the first half is
    the caller's rows from row 0, the second the helper's rows from
    ``second_lo`` (0 in the helper's own arrays; solo, after the first half's in the
    caller's)."""
    lo = second_lo * half
    return lo, lo + (job[JOB_HELPER_ROWS] if half == 1 else job[JOB_CALLER_ROWS])


@_helper
def _rows_valid(idx, rows, stored):
    for i in range(rows):
        if idx[i] < 0 or idx[i] >= stored:
            return False
    return True


@njit(**_JIT)
def update_kernel(role, counters, job, idle_turns, params, targets, grads2, adam_m, adam_v, dims,
                  offs, hp_critic, hp_actor, ws2, stats_critic, stats_actor, obs_c, action,
                  reward, next_obs_c, next_obs_a, terminated, noise, obs_a, scalars, idx,
                  next_idx, data, data_offsets):
    """One update, or the helper thread's loop of them (``TD3Core``, ``_HalfWorker``).

    ``role`` 0 (the caller): run the job just posted: a critic update, an actor update, or a
    critic then an actor update on the same batch (job[JOB_PHASES]), on the first
    job[JOB_CALLER_ROWS] rows of the batch arrays ``obs_c`` ... ``obs_a``, gathered first from
    the replay ``data`` at ``idx`` (and ``next_idx``) as job[JOB_GATHER] says (GATHER_; rows
    outside [0, job[JOB_STORED_ROWS]): nothing changes, returns False), with ``scalars``
    (SCALAR_ fields).
    ``grads2`` has a row per half. With a helper (job[JOB_SOLO] 0) it meets the helper when
    both halves' gradients are ready and takes the lower share of the Adam and Polyak
    ranges; solo (job[JOB_SOLO] 1) it computes both halves and both shares in turn. Fills
    stats_critic[0, :CSTAT_SUMS] and stats_actor[0, ASTAT_LOSS]. Returns True when the
    update was made.

    ``role`` 1 (the helper thread, on its own mailbox arrays): run posted jobs on their first
    job[JOB_HELPER_ROWS] rows, the upper shares, until a stop job (returns True) or until
    ``idle_turns`` spins (~25 ns each) passed with nothing posted (returns False; the thread
    then blocks).

    One function for both roles, with one call of each piece of the update code, so it is
    compiled once: each entry point (or level of helpers) that links the update code optimizes
    and compiles all of it again, which multiplies the cold compile time.
    """
    part = role
    if grads2.shape[0] != 2:  # a row per half of the batch
        raise ValueError("update_kernel: grads2 needs two rows")
    done = load_acquire(counters, COUNTER_DONE)
    idle = 0
    while True:
        if role == 1:  # wait for a job
            if load_acquire(counters, COUNTER_POSTED) <= done:
                if idle > idle_turns:
                    return False
                idle += 1
                if idle % SPIN_TURNS_BEFORE_YIELD == 0:
                    yield_cpu()
                else:
                    cpu_relax()
                continue
            idle = 0
            if job[JOB_PHASES] == STOP_JOB:
                return True
        number = load_acquire(counters, COUNTER_POSTED)  # this job's number
        phases = job[JOB_PHASES]
        inv_batch = scalars[SCALAR_INV_BATCH]
        rows = job[JOB_CALLER_ROWS] if part == 0 else job[JOB_HELPER_ROWS]
        # the halves this thread computes: its own, or with no helper (solo) both, the second
        # on the rows after the first in the same arrays; the threads meet only when both run
        solo = job[JOB_SOLO] != 0
        last_half = 2 if solo else part + 1
        # row offset of the second half in this thread's arrays (solo: after the first half)
        second_lo = job[JOB_CALLER_ROWS] if solo else 0
        if solo:
            rows += job[JOB_HELPER_ROWS]
        ok = True
        if job[JOB_GATHER] != GATHER_NONE:  # gather this thread's rows
            n_step = job[JOB_GATHER] == GATHER_N_STEP
            if not (_rows_valid(idx, rows, job[JOB_STORED_ROWS]) and (
                    not n_step or _rows_valid(next_idx, rows, job[JOB_STORED_ROWS]))):
                store_release(counters, COUNTER_BAD_ROWS, number)
                ok = False
            else:
                gather_rows(idx[:rows], data, data_offsets, obs_a[:rows], obs_c[:rows],
                            action[:rows], reward[:rows], next_obs_a[:rows],
                            next_obs_c[:rows], terminated[:rows], next_idx[:rows], n_step)
                if scalars[SCALAR_REWARD_SCALE] != _ONE:
                    for i in range(rows):
                        reward[i] = reward[i] * scalars[SCALAR_REWARD_SCALE]
        if phases & CRITIC_JOB:
            if ok:
                for half in range(part, last_half):
                    lo, hi = _half_rows(job, half, second_lo)
                    critic_gradient(params, targets, grads2[half], dims, offs, hp_critic,
                                    obs_c[lo:hi], action[lo:hi], reward[lo:hi], next_obs_c[lo:hi],
                                    next_obs_a[lo:hi], terminated[lo:hi], noise[lo:hi], ws2[part],
                                    stats_critic[half], inv_batch)
            ok = _meet(counters, part, solo, number, 0) and ok
            ok = ok and load_acquire(counters, COUNTER_BAD_ROWS) < number  # no bad rows
            if ok:
                if part == 0:  # the losses and statistics of the whole batch
                    s = stats_critic[0]
                    for k in range(CSTAT_SUMS):
                        s[k] = (s[CSTAT_SUMS + k] + stats_critic[1, CSTAT_SUMS + k]) * inv_batch
                for half in range(part, last_half):
                    _finish_part(params, targets, grads2, adam_m, adam_v, hp_critic, job,
                                 JOB_CRITIC_RANGES, half)
                if phases & ACTOR_JOB:  # the actor sees the stepped critics
                    ok = _meet(counters, part, solo, number, 1)
        if ok and phases & ACTOR_JOB:
            for half in range(part, last_half):
                lo, hi = _half_rows(job, half, second_lo)
                actor_gradient(params, grads2[half], dims, offs, obs_a[lo:hi], obs_c[lo:hi],
                               ws2[part], stats_actor[half], inv_batch)
            if _meet(counters, part, solo, number, 2):
                if part == 0:
                    s = stats_actor[0]
                    s[ASTAT_LOSS] = -(s[ASTAT_SUM_Q1] + stats_actor[1, ASTAT_SUM_Q1]) * inv_batch
                for half in range(part, last_half):
                    _finish_part(params, targets, grads2, adam_m, adam_v, hp_actor, job,
                                 JOB_ACTOR_RANGES, half)
        if role == 0:
            return ok
        done += 1
        store_release(counters, COUNTER_DONE, done)
