/* nanofly kernel: int8 dense layer, the exact integer dot products Z = sum q x of int8 weights q
 * (per-output-channel scales, applied by the caller) and int16 activations x; |Z| < 2^30, no
 * overflow. On Cortex-M4 (DSP) an assembly loop does 4 multiply-accumulates per 3 instructions
 * (SMLALD on the raw weight word + SMLAD on the word masked to its offset-binary bytes, see
 * docs/model-format.md); the C reference computes the same integers.
 * Assembly rather than ACLE intrinsics: the same SMLALD/SMLAD written with __smlald/__smlad give
 * the same integers, but GCC loads the weight words one LDR each, keeps a loop counter and
 * adds pointer updates, so each block of 16 multiply-accumulates takes about half as many
 * instructions again as this loop. */
#include "nf_kernels.h"

#if NANOFLY_ARM_KERNELS

/* One pass: 4 outputs x 4 inputs. x: r8 = x0|x1, lr = x2|x3; weight words r9-r12; pairs
   (A0, B0) in r2 (dot A') and r4:r3 (raw, 64 bit), (A1, B1) in r5 and r7:r6. SMLALD of a raw
   word accumulates 256 dot(B) + dot(A'); SMLAD of the word masked to its A' bytes accumulates
   dot(A'). Every instruction is 32-bit (56 bytes per pass: the entry computation relies on it)
   and none sets the NZCV flags. */
#define NF_I8_PASS                                                                             \
    "ldrd r8, lr, [r1], #8\n\t"                                                                \
    "ldmia.w r0!, {r9-r12}\n\t"                                                                \
    "smlald r3, r4, r9, r8\n\t"                                                                \
    "and.w r9, r9, #0x00FF00FF\n\t"                                                            \
    "smlad r2, r9, r8, r2\n\t"                                                                 \
    "smlald r6, r7, r10, r8\n\t"                                                               \
    "and.w r10, r10, #0x00FF00FF\n\t"                                                          \
    "smlad r5, r10, r8, r5\n\t"                                                                \
    "smlald r3, r4, r11, lr\n\t"                                                               \
    "and.w r11, r11, #0x00FF00FF\n\t"                                                          \
    "smlad r2, r11, lr, r2\n\t"                                                                \
    "smlald r6, r7, r12, lr\n\t"                                                               \
    "and.w r12, r12, #0x00FF00FF\n\t"                                                          \
    "smlad r5, r12, lr, r5\n\t"

/* r0 = nf_i8_args * (its z and ngroups fields are consumed). The input loop is unrolled 4x and
   entered part-way (Duff's device) for nblk % 4; it ends when x reaches x + 8 nblk, kept on the
   stack, so no counter register is needed and all 14 registers do arithmetic.
   Stack: 40 bytes pushed + 8 bytes locals. */
__attribute__((naked, noinline)) void nanofly_dense_s8(nf_i8_args *a NF_UNUSED)
{
    __asm__ volatile(
        "push {r0, r4-r11, lr}\n\t"
        "sub sp, sp, #8\n\t"   /* [sp] x end, [sp, #4] entry address, [sp, #8] a */
        "ldr r1, [r0, #4]\n\t" /* x */
        "ldr r2, [r0, #12]\n\t"
        "add r3, r1, r2, lsl #3\n\t"
        "str r3, [sp]\n\t"
        "and r3, r2, #3\n\t" /* passes to skip: (4 - nblk % 4) % 4 */
        "rsb r3, r3, #4\n\t"
        "and r3, r3, #3\n\t"
        "lsl r4, r3, #6\n\t"
        "sub r3, r4, r3, lsl #3\n\t" /* x 56 bytes */
        "adr.w r4, 3f\n\t"
        "add r3, r3, r4\n\t"
        "orr r3, r3, #1\n\t" /* Thumb */
        "str r3, [sp, #4]\n\t"
        "ldr r0, [r0, #0]\n\t" /* weights, continue across groups */
        "1:\n\t"
        "ldr lr, [sp, #8]\n\t"
        "ldr r1, [lr, #4]\n\t"
        "movs r2, #0\n\t"
        "movs r3, #0\n\t"
        "movs r4, #0\n\t"
        "movs r5, #0\n\t"
        "movs r6, #0\n\t"
        "movs r7, #0\n\t"
        "ldr r8, [sp, #4]\n\t"
        "bx r8\n\t"
        ".p2align 2\n\t"
        "3:\n\t" NF_I8_PASS NF_I8_PASS NF_I8_PASS NF_I8_PASS
        "4:\n\t"
        ".if (4b - 3b) != 224\n\t"
        ".error \"nanofly: an int8 pass is not 56 bytes\"\n\t"
        ".endif\n\t"
        "ldr r9, [sp]\n\t"
        "cmp r1, r9\n\t"
        "bne 3b\n\t"
        "ldr lr, [sp, #8]\n\t"
        "ldr r9, [lr, #20]\n\t"       /* sum_x */
        "ldr r10, [lr, #8]\n\t"       /* z */
        "subs r3, r3, r2\n\t"         /* raw - dot(A') = 256 dot(B), 64 bit */
        "sbc r4, r4, r2, asr #31\n\t"
        "sub r2, r2, r9, lsl #7\n\t"  /* dot(A) = dot(A') - 128 sum_x */
        "lsrs r3, r3, #8\n\t"
        "orr r3, r3, r4, lsl #24\n\t" /* dot(B) */
        "subs r6, r6, r5\n\t"
        "sbc r7, r7, r5, asr #31\n\t"
        "sub r5, r5, r9, lsl #7\n\t"
        "lsrs r6, r6, #8\n\t"
        "orr r6, r6, r7, lsl #24\n\t"
        "stmia r10!, {r2, r3, r5, r6}\n\t" /* z[4g .. 4g+3] = A0 B0 A1 B1 */
        "str r10, [lr, #8]\n\t"
        "ldr r9, [lr, #16]\n\t"
        "subs r9, r9, #1\n\t"
        "str r9, [lr, #16]\n\t"
        "bne 1b\n\t"
        "add sp, sp, #8\n\t"
        "pop {r0, r4-r11, pc}\n\t");
}

#else /* plain-C reference */

static int32_t signed_byte(uint8_t b) { return (int32_t)b - (int32_t)((b & 0x80u) << 1); }

void nanofly_dense_s8(nf_i8_args *a)
{
    uint32_t g, k, j;
    const uint8_t *w = a->w;
    for (g = 0; g < a->ngroups; ++g) {
        int32_t acc[4] = {0, 0, 0, 0};
        for (k = 0; k < a->nblk; ++k, w += 16) {
            for (j = 0; j < 4u; ++j) { /* word j: output pair j & 1, inputs 2 (j >> 1) + {0, 1} */
                const uint8_t *b = w + 4u * j;
                int32_t x0 = a->x[4u * k + 2u * (j >> 1)], x1 = a->x[4u * k + 2u * (j >> 1) + 1u];
                acc[2u * (j & 1u)] += ((int32_t)b[0] - 128) * x0 + ((int32_t)b[2] - 128) * x1;
                acc[2u * (j & 1u) + 1u] += signed_byte(b[1]) * x0 + signed_byte(b[3]) * x1;
            }
        }
        for (j = 0; j < 4u; ++j) a->z[4u * g + j] = acc[j];
    }
}

#endif
