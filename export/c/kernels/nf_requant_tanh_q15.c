/* nanofly kernel: a hidden int8 layer's output, requantized for the next layer:
 * out[i] = round_half_even(32767 tanh(fmaf((float)z[i], scale[i], bias[i]))) as int16, two per
 * pass; returns sum(out) (the next layer's sum_x). Padded outputs have zero scale and bias and
 * come out as 0. */
#include "nf_tanh.h"

#if NANOFLY_ARM_KERNELS

/* r0 = const nf_requant_args *. Stack: 32 bytes core + 40 bytes FP registers. */
__attribute__((naked, noinline)) int32_t nanofly_requant_tanh_q15(const nf_requant_args *a NF_UNUSED)
{
    __asm__ volatile(
        "push {r4-r10, lr}\n\t"
        "vpush {s16-s25}\n\t"
        "ldm r0, {r0-r5}\n\t" /* r0 z, r1 scale, r2 bias, r3 out, r4 npairs, r5 consts */
        "add r10, r5, #20\n\t"
        "vldmia r10, {s16-s25}\n\t" /* P1..P4 Q1..Q4 clamp 32767 */
        "add r10, r5, #8\n\t"       /* seeds {MAGIC, P0, 1} for the second value */
        "movs r6, #0\n\t"
        "mov r7, #0x00010001\n\t"
        "1:\n\t"
        "vldmia r0!, {s12-s13}\n\t"
        "vldmia r1!, {s10-s11}\n\t"
        "vldmia r2!, {s14-s15}\n\t"
        "vcvt.f32.s32 s12, s12\n\t"
        "vcvt.f32.s32 s13, s13\n\t"
        "vfma.f32 s14, s12, s10\n\t" /* z0 = bias + Z scale */
        "vfma.f32 s15, s13, s11\n\t" /* z1 */
        NF_TANH("s14", "s0", "s1", "{s0-s2}", "r5", "11", "12")
        "vfma.f32 s2, s6, s25\n\t" /* MAGIC + 32767 t */
        NF_TANH("s15", "s4", "s5", "{s3-s5}", "r10", "13", "14")
        "vfma.f32 s3, s6, s25\n\t"
        "vmov r8, r9, s2, s3\n\t"
        "pkhbt r8, r8, r9, lsl #16\n\t" /* the low 16 bits are round(32767 t) */
        "smlad r6, r8, r7, r6\n\t"
        "str r8, [r3], #4\n\t"
        "subs r4, r4, #1\n\t"
        "bne 1b\n\t"
        "mov r0, r6\n\t"
        "vpop {s16-s25}\n\t"
        "pop {r4-r10, pc}\n\t"
        NF_TANH_SLOW("s14", "{s0-s2}", "r5", "11", "12")
        NF_TANH_SLOW("s15", "{s3-s5}", "r10", "13", "14"));
}

#else /* plain-C reference */

/* round_half_even(32767 * t) for t in [-1, 1]: t * 32767 + 1.5 * 2^23 (one rounding, fmaf)
   holds the integer in its low mantissa bits; the low 16 bits are the int16 result (what the
   assembly packs with PKHBT). */
static int32_t q15_from_unit(float t)
{
    int32_t v = (int32_t)(nf_float_bits(NF_FMAF(t, 32767.0f, NF_MAGIC)) & 0xFFFFu);
    return v - ((v & 0x8000) << 1);
}

int32_t nanofly_requant_tanh_q15(const nf_requant_args *a)
{
    uint32_t o;
    int32_t sum = 0;
    for (o = 0; o < 2u * a->npairs; ++o) {
        int32_t q = q15_from_unit(nf_tanh(NF_FMAF((float)a->z[o], a->scale[o], a->bias[o])));
        a->out[o] = (int16_t)q;
        sum += q;
    }
    return sum;
}

#endif
