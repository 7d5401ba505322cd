/* nanofly kernel: float32 dense layer, pre-activation. y = bias + W x with fused multiply-adds in
 * input order from the bias. On Cortex-M4F an assembly inner loop loads 4 inputs and 16 weights
 * per VLDM (GCC alone emits one VLDR per weight); the C reference does the same fmaf in the same
 * order. Weight layout: docs/model-format.md. (No ACLE intrinsic applies: the gain is in the
 * VLDM batching, which C cannot ask for.) */
#include "nf_kernels.h"

#if NANOFLY_ARM_KERNELS

/* Assembly text helpers: 8 fused multiply-adds of one input into the 8 accumulators s0-s7. */
#define NF_VFMA(acc, w, x) "vfma.f32 s" #acc ", s" #w ", s" #x "\n\t"
#define NF_VFMA8(w0, w1, w2, w3, w4, w5, w6, w7, x)                                            \
    NF_VFMA(0, w0, x) NF_VFMA(1, w1, x) NF_VFMA(2, w2, x) NF_VFMA(3, w3, x) NF_VFMA(4, w4, x)  \
    NF_VFMA(5, w5, x) NF_VFMA(6, w6, x) NF_VFMA(7, w7, x)
/* one block: 4 inputs (s8-s11) x 8 outputs, weights in two VLDMs of 16 (s12-s27) */
#define NF_F32_BLOCK(load_x)                                                                   \
    load_x "vldmia r1!, {s12-s27}\n\t" NF_VFMA8(12, 13, 14, 15, 16, 17, 18, 19, 8)              \
    NF_VFMA8(20, 21, 22, 23, 24, 25, 26, 27, 9) "vldmia r1!, {s12-s27}\n\t"                     \
    NF_VFMA8(12, 13, 14, 15, 16, 17, 18, 19, 10) NF_VFMA8(20, 21, 22, 23, 24, 25, 26, 27, 11)

/* r0 = const nf_f32_args *. Stack: 20 bytes core + 48 bytes FP registers. */
__attribute__((naked, noinline)) void nanofly_dense_f32(const nf_f32_args *a NF_UNUSED)
{
    __asm__ volatile(
        "push {r4-r7, lr}\n\t"
        "vpush {s16-s27}\n\t"
        "ldm r0, {r1-r7}\n\t" /* r1 w, r2 bias, r3 x, r4 xtail, r5 y, r6 nfull, r7 ngroups */
        "1:\n\t"
        "vldmia r2!, {s0-s7}\n\t" /* accumulators = bias */
        "mov r0, r3\n\t"
        "movs r12, r6\n\t"
        "beq 3f\n\t"
        "2:\n\t" NF_F32_BLOCK("vldmia r0!, {s8-s11}\n\t")
        "subs r12, r12, #1\n\t"
        "bne 2b\n\t"
        "3:\n\t"
        "cmp r4, #0\n\t"
        "beq 4f\n\t" NF_F32_BLOCK("vldmia r4, {s8-s11}\n\t")
        "4:\n\t"
        "vstmia r5!, {s0-s7}\n\t"
        "subs r7, r7, #1\n\t"
        "bne 1b\n\t"
        "vpop {s16-s27}\n\t"
        "pop {r4-r7, pc}\n\t");
}

#else /* plain-C reference */

void nanofly_dense_f32(const nf_f32_args *a)
{
    uint32_t g, k, i, o, nblk = a->nfull + (a->xtail != NULL);
    const float *w = a->w;
    for (g = 0; g < a->ngroups; ++g) {
        float acc[8];
        for (o = 0; o < 8u; ++o) acc[o] = a->bias[8u * g + o];
        for (k = 0; k < nblk; ++k) {
            const float *xb = k < a->nfull ? a->x + 4u * k : a->xtail;
            for (i = 0; i < 4u; ++i, w += 8)
                for (o = 0; o < 8u; ++o) acc[o] = NF_FMAF(w[o], xb[i], acc[o]);
        }
        for (o = 0; o < 8u; ++o) a->y[8u * g + o] = acc[o];
    }
}

#endif
