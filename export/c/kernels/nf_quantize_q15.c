/* nanofly kernel: int8 input quantization, q[j] = sat16(round_half_even(obs[j] mult[j])), NaN -> 0,
 * for the first 4 nquad values; returns sum(q) (the first layer's sum_x). The caller quantizes
 * the values past the last whole quad with nf_q16_saturate (nf_kernels.h).
 * Assembly rather than ACLE intrinsics: ACLE has no round-to-nearest float-to-int conversion on
 * ARMv7E-M (C's cast truncates; GCC calls lrintf for lrintf), so a C body needs the compare-and-
 * add rounding of nf_q16_saturate, about three times the instructions of VCVTR + SSAT. */
#include "nf_kernels.h"

#if NANOFLY_ARM_KERNELS

/* VCVTR rounds with the FPSCR mode (round to nearest even by default), NaN -> 0.
   Stack: 28 bytes. */
__attribute__((naked, noinline)) int32_t nanofly_quantize_q15(const float *obs NF_UNUSED,
                                                              const float *mult NF_UNUSED,
                                                              int16_t *q NF_UNUSED,
                                                              uint32_t nquad NF_UNUSED)
{
    __asm__ volatile(
        "push {r4-r9, lr}\n\t"
        "mov r8, #0\n\t"
        "mov r9, #0x00010001\n\t"
        "cbz r3, 2f\n\t"
        "1:\n\t"
        "vldmia r0!, {s0-s3}\n\t"
        "vldmia r1!, {s4-s7}\n\t"
        "vmul.f32 s0, s0, s4\n\t"
        "vmul.f32 s1, s1, s5\n\t"
        "vmul.f32 s2, s2, s6\n\t"
        "vmul.f32 s3, s3, s7\n\t"
        "vcvtr.s32.f32 s0, s0\n\t"
        "vcvtr.s32.f32 s1, s1\n\t"
        "vcvtr.s32.f32 s2, s2\n\t"
        "vcvtr.s32.f32 s3, s3\n\t"
        "vmov r4, r5, s0, s1\n\t"
        "vmov r6, r7, s2, s3\n\t"
        "ssat r4, #16, r4\n\t"
        "ssat r5, #16, r5\n\t"
        "ssat r6, #16, r6\n\t"
        "ssat r7, #16, r7\n\t"
        "pkhbt r4, r4, r5, lsl #16\n\t"
        "pkhbt r6, r6, r7, lsl #16\n\t"
        "smlad r8, r4, r9, r8\n\t"
        "smlad r8, r6, r9, r8\n\t"
        "stmia r2!, {r4, r6}\n\t"
        "subs r3, r3, #1\n\t"
        "bne 1b\n\t"
        "2:\n\t"
        "mov r0, r8\n\t"
        "pop {r4-r9, pc}\n\t");
}

#else /* plain-C reference */

int32_t nanofly_quantize_q15(const float *obs, const float *mult, int16_t *q, uint32_t nquad)
{
    int32_t sum = 0;
    uint32_t j;
    for (j = 0; j < 4u * nquad; ++j) {
        int32_t v = nf_q16_saturate(NF_FMAF(obs[j], mult[j], 0.0f));
        q[j] = (int16_t)v;
        sum += v;
    }
    return sum;
}

#endif
