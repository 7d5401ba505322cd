/* nanofly kernel: tanh of a float32 vector (the float32 layers' activation and the int8
 * output layer's), and nanofly_tanhf (nanofly_policy.h). */
#include "nanofly_policy.h"
#include "nf_tanh.h"

float nanofly_tanhf(float x) { return nf_tanh(x); }

#if NANOFLY_ARM_KERNELS

/* Constants of nf_tanh for the assembly (the same literals, so the same bits): two copies of
   the accumulator seeds {P0, 1, MAGIC} / {MAGIC, P0, 1} loaded with one VLDM per tanh (VFMA
   overwrites its addend), then P1..P4, Q1..Q4, the clamp and the Q15 scale. */
const float nanofly_tanh_consts[15] = {
    NF_TANH_P0, 1.0f, NF_MAGIC, NF_TANH_P0, 1.0f,
    NF_TANH_P1, NF_TANH_P2, NF_TANH_P3, NF_TANH_P4,
    NF_TANH_Q1, NF_TANH_Q2, NF_TANH_Q3, NF_TANH_Q4, NF_TANH_CLAMP, 32767.0f};

/* Stack: 36 bytes FP registers. */
__attribute__((naked, noinline)) void nanofly_tanh_f32(const float *in NF_UNUSED,
                                                       float *out NF_UNUSED,
                                                       uint32_t n NF_UNUSED,
                                                       const float *consts NF_UNUSED)
{
    __asm__ volatile(
        "vpush {s16-s24}\n\t"
        "add r12, r3, #20\n\t"
        "vldmia r12, {s16-s24}\n\t"
        "1:\n\t"
        "vldmia r0!, {s14}\n\t"
        NF_TANH("s14", "s0", "s1", "{s0-s2}", "r3", "11", "12")
        "vstmia r1!, {s6}\n\t"
        "subs r2, r2, #1\n\t"
        "bne 1b\n\t"
        "vpop {s16-s24}\n\t"
        "bx lr\n\t"
        NF_TANH_SLOW("s14", "{s0-s2}", "r3", "11", "12"));
}

#else /* plain-C reference */

void nanofly_tanh_f32(const float *in, float *out, uint32_t n, const float *consts)
{
    uint32_t o;
    (void)consts;
    for (o = 0; o < n; ++o) out[o] = nf_tanh(in[o]);
}

#endif
