/* nanofly policy runtime, internal: the tanh every kernel uses.
 *
 * tanh(x) = x * P(x^2) / Q(x^2), a minimax rational fitted on |x| < 9 for this runtime, used for
 * |x| < 8 where it never exceeds 1 (max abs error 3.8e-7 in float32, checked exhaustively on
 * [1, 10]), +-1 beyond. All coefficients are positive, so P and Q are summed in the power basis
 * without cancellation: the powers are shared and no Horner step needs a copy of its constant
 * (VFMA overwrites its addend). The M4 kernels inline the same operations in assembly
 * (docs/export-notes.md compares it with newlib's tanhf).
 */
#ifndef NF_TANH_H
#define NF_TANH_H

#include "nf_kernels.h"

#define NF_TANH_CLAMP 8.0f /* |x| >= 8: +-1 (error 2.3e-7); below, the rational stays <= 1 */

#define NF_TANH_P0 9.999998808e-01f
#define NF_TANH_P1 1.337138116e-01f
#define NF_TANH_P2 3.484441200e-03f
#define NF_TANH_P3 2.043751920e-05f
#define NF_TANH_P4 1.313886244e-08f
#define NF_TANH_Q1 4.670467675e-01f
#define NF_TANH_Q2 2.583378926e-02f
#define NF_TANH_Q3 3.267920692e-04f
#define NF_TANH_Q4 7.683613603e-07f

static NF_INLINE float nf_tanh(float x)
{
    float y, y2, y3, y4, p, q;
    if (!(NF_FABSF(x) < NF_TANH_CLAMP)) {
        /* large |x| (and NaN, which compares false and is passed through) */
        return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : x);
    }
    y = x * x;
    y2 = y * y;
    y3 = y2 * y;
    y4 = y2 * y2;
    p = NF_FMAF(y, NF_TANH_P1, NF_TANH_P0);
    q = NF_FMAF(y, NF_TANH_Q1, 1.0f);
    p = NF_FMAF(y2, NF_TANH_P2, p);
    q = NF_FMAF(y2, NF_TANH_Q2, q);
    p = NF_FMAF(y3, NF_TANH_P3, p);
    q = NF_FMAF(y3, NF_TANH_Q3, q);
    p = NF_FMAF(y4, NF_TANH_P4, p);
    q = NF_FMAF(y4, NF_TANH_Q4, q);
    return (x * p) / q;
}

#if NANOFLY_ARM_KERNELS
/* nf_tanh in assembly (NF_TANH / NF_TANH_SLOW), shared by nf_tanh_f32.c and
   nf_requant_tanh_q15.c: the same operations in the same order as the C, result in s6.
   Needs s16-s24 = P1..P4, Q1..Q4 and the clamp (nanofly_tanh_consts[5..13]) and SEED = a register pointing at
   {P0, 1, ...} (p, q seeds land in P and Q; a third value lands in the register after Q).
   Temporaries s6-s10. SLOW and JOIN are label numbers for the out-of-line |x| >= 8 / NaN path. */
#define NF_TANH(X, P, Q, SEEDS, SEED, SLOW, JOIN)                                              \
    "vabs.f32 s6, " X "\n\t"                                                                   \
    "vcmpe.f32 s6, s24\n\t"                                                                    \
    "vmrs APSR_nzcv, fpscr\n\t"                                                                \
    "bge " SLOW "f\n\t"                                                                        \
    "vmul.f32 s7, " X ", " X "\n\t"                                                            \
    "vldmia " SEED ", " SEEDS "\n\t"                                                           \
    "vmul.f32 s8, s7, s7\n\t"                                                                  \
    "vfma.f32 " P ", s7, s16\n\t"                                                              \
    "vmul.f32 s9, s8, s7\n\t"                                                                  \
    "vfma.f32 " Q ", s7, s20\n\t"                                                              \
    "vmul.f32 s10, s8, s8\n\t"                                                                 \
    "vfma.f32 " P ", s8, s17\n\t"                                                              \
    "vfma.f32 " Q ", s8, s21\n\t"                                                              \
    "vfma.f32 " P ", s9, s18\n\t"                                                              \
    "vfma.f32 " Q ", s9, s22\n\t"                                                              \
    "vfma.f32 " P ", s10, s19\n\t"                                                             \
    "vfma.f32 " Q ", s10, s23\n\t"                                                             \
    "vmul.f32 " P ", " X ", " P "\n\t"                                                         \
    "vdiv.f32 s6, " P ", " Q "\n\t" JOIN ":\n\t"
/* the rare path: +-1 beyond the clamp, NaN passed through; reloads the seeds like the fast path */
#define NF_TANH_SLOW(X, SEEDS, SEED, SLOW, JOIN)                                               \
    SLOW ":\n\t"                                                                               \
    "vldmia " SEED ", " SEEDS "\n\t"                                                           \
    "vmov.f32 s6, " X "\n\t"                                                                   \
    "vcmpe.f32 " X ", #0\n\t"                                                                  \
    "vmrs APSR_nzcv, fpscr\n\t"                                                                \
    "it gt\n\t"                                                                                \
    "vmovgt.f32 s6, #1.0\n\t"                                                                  \
    "it lt\n\t"                                                                                \
    "vmovlt.f32 s6, #-1.0\n\t"                                                                 \
    "b " JOIN "b\n\t"
#endif /* NANOFLY_ARM_KERNELS */

#endif /* NF_TANH_H */
