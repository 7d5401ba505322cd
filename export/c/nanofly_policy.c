/* nanofly policy runtime (see nanofly_policy.h and docs/model-format.md).
 *
 * Two weight formats behind one entry point:
 *   float32: fused multiply-adds in input order from the bias; on Cortex-M4F an assembly inner
 *            loop loads 4 inputs and 16 weights per VLDM (GCC alone emits one VLDR per weight).
 *   int8:    int8 weights (per-output-channel scales), int16 activations. On Cortex-M4 (DSP) an
 *            assembly loop does 4 multiply-accumulates per 3 instructions (SMLALD on the raw
 *            weight word + SMLAD on the word masked to its offset-binary bytes, see the format
 *            doc); elsewhere a plain C loop computes the same integers.
 * Everything that is not integer arithmetic is written with explicit fmaf and no a*b+c
 * expressions, so the host and the MCU compute bit-identical results whatever the compiler's
 * floating-point contraction setting.
 */
#include "nanofly_policy.h"

#include <math.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FP) && (__ARM_FP & 4) && \
    defined(__ARM_FEATURE_FMA) && defined(__thumb2__)
#define NANOFLY_ARM_KERNELS 1
#else
#define NANOFLY_ARM_KERNELS 0
#endif

/* MCU.md's flags include -ffreestanding, which turns off GCC's builtins: name them explicitly so
   fmaf is one VFMA instruction rather than a call into newlib's software fmaf. */
#if defined(__GNUC__)
#define NF_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define NF_FABSF(x) __builtin_fabsf(x)
#define NF_MEMCPY(d, s, n) __builtin_memcpy((d), (s), (n))
#else
#define NF_FMAF(a, b, c) fmaf((a), (b), (c))
#define NF_FABSF(x) fabsf(x)
#define NF_MEMCPY(d, s, n) memcpy((d), (s), (n))
#endif

#define NF_HEADER_BYTES 16u
#define NF_TANH_CLAMP 8.0f /* |x| >= 8: +-1 (error 2.3e-7); below, the rational stays <= 1 */

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static uint32_t round_up(uint32_t v, uint32_t k) { return (v + k - 1u) / k * k; }

static uint32_t float_bits(float f)
{
    uint32_t u;
    NF_MEMCPY(&u, &f, sizeof u);
    return u;
}

/* Section sizes in bytes (see docs/model-format.md). */
static uint32_t f32_layer_bytes(uint32_t n, uint32_t m)
{
    uint32_t m8 = round_up(m, 8u);
    return 4u * (m8 + m8 * round_up(n, 4u));
}

static uint32_t i8_layer_bytes(uint32_t n, uint32_t m)
{
    uint32_t m4 = round_up(m, 4u);
    return 8u * m4 + m4 * round_up(n, 4u);
}

/* ------------------------------------------------------------------------------------------ */
/* CRC-32 (zlib), 4 bits per step: a 64-byte table instead of 1 KB of flash                    */

uint32_t nanofly_crc32(uint32_t crc, const void *data, size_t len)
{
    static const uint32_t table[16] = {
        0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
        0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
        0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        crc = (crc >> 4) ^ table[crc & 15u];
        crc = (crc >> 4) ^ table[crc & 15u];
    }
    return ~crc;
}

/* ------------------------------------------------------------------------------------------ */
/* tanh: x * P(x^2) / Q(x^2), a minimax rational fitted on |x| < 9 for this runtime, used for
   |x| < 8 where it never exceeds 1 (max abs error 3.8e-7 in float32, checked exhaustively on
   [1, 10]), +-1 beyond. All coefficients are positive, so P and Q are summed in the power basis
   without cancellation: the powers are shared and no Horner step needs a copy of its constant
   (VFMA overwrites its addend). About 20 instructions inside the M4 kernels; called through a
   function in a loop, 41 against 117 for newlib's tanhf (docs/export-notes.md). */
#if defined(__GNUC__)
#define NF_INLINE __attribute__((always_inline)) inline
#else
#define NF_INLINE inline
#endif

#define NF_TANH_P0 9.999998808e-01f
#define NF_TANH_P1 1.337138116e-01f
#define NF_TANH_P2 3.484441200e-03f
#define NF_TANH_P3 2.043751920e-05f
#define NF_TANH_P4 1.313886244e-08f
#define NF_TANH_Q1 4.670467675e-01f
#define NF_TANH_Q2 2.583378926e-02f
#define NF_TANH_Q3 3.267920692e-04f
#define NF_TANH_Q4 7.683613603e-07f
#define NF_MAGIC 12582912.0f /* 1.5 * 2^23: x + MAGIC leaves round(x) in the low mantissa bits */

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

float nanofly_tanhf(float x) { return nf_tanh(x); }

#if !NANOFLY_ARM_KERNELS /* (the assembly does this inline) */
/* round_half_even(32767 * t) for t in [-1, 1]: t * 32767 + 1.5 * 2^23 (one rounding, fmaf)
   holds the integer in its low mantissa bits; the low 16 bits are the int16 result (what the
   assembly packs with PKHBT). */
static int32_t q15_from_unit(float t)
{
    int32_t v = (int32_t)(float_bits(NF_FMAF(t, 32767.0f, NF_MAGIC)) & 0xFFFFu);
    return v - ((v & 0x8000) << 1);
}
#endif

/* sat16(round_half_even(v)), NaN -> 0: the semantics of VCVTR.S32.F32 followed by SSAT #16. */
static int32_t q16_saturate(float v)
{
    if (v != v) return 0; /* (v is the fmaf-rounded product, so nothing contracts into v + MAGIC) */
    if (v >= 32767.0f) return 32767;
    if (v <= -32768.0f) return -32768;
    return (int32_t)(float_bits(v + NF_MAGIC) - 0x4B400000u);
}

/* ------------------------------------------------------------------------------------------ */
/* Kernels: layer pre-activations, and the activation stage (tanh, int8: requantization).      */

typedef struct {
    const float *w;     /* blocks [m8/8][nblk][4][8] */
    const float *bias;  /* [m8] */
    const float *x;     /* [nfull * 4] */
    const float *xtail; /* 4 floats (x beyond nfull*4, zero padded) or NULL */
    float *y;           /* [m8] out */
    uint32_t nfull;     /* whole 4-input blocks read from x */
    uint32_t ngroups;   /* m8 / 8 */
} nf_f32_args;

typedef struct {
    const uint8_t *w; /* blocks [m4/4][nblk][16] */
    const int16_t *x; /* [nblk * 4], 4-byte aligned, zero padded */
    int32_t *z;       /* [m4] out: exact integer dot products */
    uint32_t nblk;    /* n4 / 4 */
    uint32_t ngroups; /* m4 / 4 */
    int32_t sum_x;    /* sum of x (for the offset-binary A bytes) */
} nf_i8_args;

typedef struct {
    const int32_t *z;    /* [2 npairs] integer dot products */
    const float *scale;  /* [2 npairs] */
    const float *bias;   /* [2 npairs] */
    int16_t *out;        /* [2 npairs] round(32767 tanh(scale z + bias)), 4-byte aligned */
    uint32_t npairs;
    const float *consts; /* nf_tanh_consts */
} nf_requant_args;

#if NANOFLY_ARM_KERNELS

/* Constants of nf_tanh for the assembly (the same literals, so the same bits): two copies of
   the accumulator seeds {P0, 1, MAGIC} / {MAGIC, P0, 1} loaded with one VLDM per tanh (VFMA
   overwrites its addend), then P1..P4, Q1..Q4, the clamp and the Q15 scale. */
static const float nf_tanh_consts[15] = {
    NF_TANH_P0, 1.0f, NF_MAGIC, NF_TANH_P0, 1.0f,
    NF_TANH_P1, NF_TANH_P2, NF_TANH_P3, NF_TANH_P4,
    NF_TANH_Q1, NF_TANH_Q2, NF_TANH_Q3, NF_TANH_Q4, NF_TANH_CLAMP, 32767.0f};

/* Naked functions are pure assembly following the AAPCS: arguments arrive in r0-r3. */
#define NF_UNUSED __attribute__((unused))

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
__attribute__((naked, noinline)) static void nf_f32_layer_arm(const nf_f32_args *a NF_UNUSED)
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
__attribute__((naked, noinline)) static void nf_i8_layer_arm(nf_i8_args *a NF_UNUSED)
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

/* nf_tanh of X (an s register) in the same operations and order as the C, result in s6.
   Needs s16-s24 = P1..P4, Q1..Q4, 9 and SEED = a register pointing at {P0, 1, ...} (p, q seeds
   land in P and Q; a third value lands in the register after Q). Temporaries s6-s10. SLOW and
   JOIN are label numbers for the out-of-line |x| >= 8 / NaN path (NF_TANH_SLOW). */
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

/* out[i] = q15(tanh(fmaf((float)z[i], scale[i], bias[i]))), two per pass; returns sum(out).
   r0 = const nf_requant_args *. Stack: 32 bytes core + 40 bytes FP registers. */
__attribute__((naked, noinline)) static int32_t nf_requant_arm(const nf_requant_args *a NF_UNUSED)
{
    __asm__ volatile(
        "push {r4-r10, lr}\n\t"
        "vpush {s16-s25}\n\t"
        "ldm r0, {r0-r5}\n\t" /* r0 z, r1 scale, r2 bias, r3 out, r4 npairs, r5 consts */
        "add r10, r5, #20\n\t"
        "vldmia r10, {s16-s25}\n\t" /* P1..P4 Q1..Q4 9 32767 */
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

/* out[i] = tanh(in[i]) for n values (in == out allowed). Stack: 36 bytes FP registers. */
__attribute__((naked, noinline)) static void nf_tanh_arm(const float *in NF_UNUSED,
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

/* q[j] = sat16(round(obs[j] * mult[j])) for 4 * nquad values; returns sum(q).
   VCVTR rounds with the FPSCR mode (round to nearest even by default), NaN -> 0.
   Stack: 28 bytes. */
__attribute__((naked, noinline)) static int32_t nf_quantize_input_arm(
    const float *obs NF_UNUSED, const float *mult NF_UNUSED, int16_t *q NF_UNUSED,
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

#endif /* NANOFLY_ARM_KERNELS */

static void f32_layer(const nf_f32_args *a)
{
#if NANOFLY_ARM_KERNELS
    nf_f32_layer_arm(a);
#else
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
#endif
}

#if !NANOFLY_ARM_KERNELS
static int32_t signed_byte(uint8_t b) { return (int32_t)b - (int32_t)((b & 0x80u) << 1); }
#endif

static void i8_layer(nf_i8_args *a)
{
#if NANOFLY_ARM_KERNELS
    nf_i8_layer_arm(a);
#else
    /* The same integers as the assembly: Z = sum q * x exactly (|Z| < 2^30, no overflow). */
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
#endif
}

/* Hidden int8 layer output: q15(tanh(scale Z + bias)) for 2 npairs values; returns their sum. */
static int32_t requant(const nf_requant_args *a)
{
#if NANOFLY_ARM_KERNELS
    return nf_requant_arm(a);
#else
    uint32_t o;
    int32_t sum = 0;
    for (o = 0; o < 2u * a->npairs; ++o) {
        int32_t q = q15_from_unit(nf_tanh(NF_FMAF((float)a->z[o], a->scale[o], a->bias[o])));
        a->out[o] = (int16_t)q;
        sum += q;
    }
    return sum;
#endif
}

static void tanh_block(const float *in, float *out, uint32_t n)
{
#if NANOFLY_ARM_KERNELS
    nf_tanh_arm(in, out, n, nf_tanh_consts);
#else
    uint32_t o;
    for (o = 0; o < n; ++o) out[o] = nf_tanh(in[o]);
#endif
}

static int32_t quantize_input(const float *obs, const float *mult, int16_t *q, uint32_t n)
{
    int32_t sum = 0;
    uint32_t j = 0;
#if NANOFLY_ARM_KERNELS
    sum = nf_quantize_input_arm(obs, mult, q, n / 4u);
    j = n / 4u * 4u;
#endif
    for (; j < n; ++j) {
        int32_t v = q16_saturate(NF_FMAF(obs[j], mult[j], 0.0f));
        q[j] = (int16_t)v;
        sum += v;
    }
    for (; j < round_up(n, 4u); ++j) q[j] = 0;
    return sum;
}

/* ------------------------------------------------------------------------------------------ */
/* inference                                                                                   */

static void act_f32(const nanofly_model *m, const float *obs, float *action)
{
    float buf[2][NANOFLY_MAX_WIDTH];
    float tail[4];
    const float *x = obs;
    uint32_t l, o, L = m->num_layers;
    for (l = 0; l < L; ++l) {
        uint32_t n = m->widths[l], mo = m->widths[l + 1u], m8 = round_up(mo, 8u);
        const float *sec = (const float *)(const void *)(m->blob + m->layer_offset[l]);
        float *y = buf[l & 1u];
        nf_f32_args a;
        a.bias = sec;
        a.w = sec + m8;
        a.x = x;
        a.nfull = n / 4u;
        a.xtail = NULL;
        if (n % 4u) {
            for (o = 0; o < 4u; ++o) tail[o] = o < n % 4u ? x[4u * a.nfull + o] : 0.0f;
            a.xtail = tail;
        }
        a.y = y;
        a.ngroups = m8 / 8u;
        f32_layer(&a);
        tanh_block(y, l + 1u == L ? action : y, mo);
        x = y;
    }
}

static void act_int8(const nanofly_model *m, const float *obs, float *action)
{
    /* int16 activations ping-pong in one 4-byte-aligned arena: [0, 256) and [256, 384) */
    union {
        int32_t align;
        int16_t v[NANOFLY_MAX_INPUT + NANOFLY_MAX_WIDTH];
    } arena;
    union {
        int32_t z[NANOFLY_MAX_WIDTH];
        float f[NANOFLY_MAX_WIDTH];
    } acc;
    const float *mult = (const float *)(const void *)(m->blob + m->input_offset);
    int16_t *x = arena.v;
    int32_t sum_x;
    uint32_t l, o, L = m->num_layers;

    sum_x = quantize_input(obs, mult, x, m->widths[0]);
    for (l = 0; l < L; ++l) {
        uint32_t n = m->widths[l], mo = m->widths[l + 1u], m4 = round_up(mo, 4u);
        const float *scale = (const float *)(const void *)(m->blob + m->layer_offset[l]);
        const float *bias = scale + m4;
        int16_t *y = (l & 1u) ? arena.v : arena.v + NANOFLY_MAX_INPUT;
        nf_i8_args a;
        a.w = (const uint8_t *)(bias + m4);
        a.x = x;
        a.z = acc.z;
        a.nblk = round_up(n, 4u) / 4u;
        a.ngroups = m4 / 4u;
        a.sum_x = sum_x;
        i8_layer(&a);
        if (l + 1u == L) {
            for (o = 0; o < mo; ++o) acc.f[o] = NF_FMAF((float)acc.z[o], scale[o], bias[o]);
            tanh_block(acc.f, action, mo);
        } else {
            /* padded outputs have zero weights, scale and bias: they come out as 0 */
            nf_requant_args r;
            r.z = acc.z;
            r.scale = scale;
            r.bias = bias;
            r.out = y;
            r.npairs = m4 / 2u;
#if NANOFLY_ARM_KERNELS
            r.consts = nf_tanh_consts;
#else
            r.consts = NULL;
#endif
            sum_x = requant(&r);
        }
        x = y;
    }
}

void nanofly_policy_act(const nanofly_model *m, const float *obs, float *action)
{
    if (m->format == NANOFLY_FORMAT_INT8) {
        act_int8(m, obs, action);
    } else {
        act_f32(m, obs, action);
    }
}

void nanofly_policy_act_batch(const nanofly_model *m, const float *obs, float *action,
                              uint32_t rows)
{
    uint32_t r, n = m->widths[0], k = m->widths[m->num_layers];
    for (r = 0; r < rows; ++r) nanofly_policy_act(m, obs + (size_t)r * n, action + (size_t)r * k);
}

/* ------------------------------------------------------------------------------------------ */
/* validation                                                                                  */

static int all_finite(const uint8_t *p, uint32_t count)
{
    uint32_t i;
    for (i = 0; i < count; ++i, p += 4) {
        if ((rd32(p) & 0x7F800000u) == 0x7F800000u) return 0;
    }
    return 1;
}

int nanofly_model_init(nanofly_model *m, const void *blob, uint32_t size)
{
    const uint8_t *b = (const uint8_t *)blob;
    const uint16_t endian_probe = 1u;
    nanofly_model t;
    uint32_t format, L, l, off, payload, n0;

    memset(m, 0, sizeof *m);
    if (b == NULL || size < 24u || (size & 3u) != 0) return NANOFLY_ERR_SIZE;
    if (((uintptr_t)b & 3u) != 0) return NANOFLY_ERR_ALIGN;
    if (memcmp(b, "NFLY", 4) != 0) return NANOFLY_ERR_MAGIC;
    if (rd16(b + 4) != NANOFLY_BLOB_VERSION) return NANOFLY_ERR_VERSION;
    if (rd32(b + 12) != size) return NANOFLY_ERR_SIZE;
    if (nanofly_crc32(0, b, size - 4u) != rd32(b + size - 4u)) return NANOFLY_ERR_CRC;

    format = b[6];
    L = b[8];
    if ((format != NANOFLY_FORMAT_F32 && format != NANOFLY_FORMAT_INT8) ||
        b[7] != NANOFLY_ACTIVATION_TANH || b[9] != 0 || rd16(b + 10) != 0)
        return NANOFLY_ERR_FORMAT;
    /* the payload is read in place as float32 / int16: needs a little-endian host */
    if (*(const uint8_t *)&endian_probe != 1u) return NANOFLY_ERR_FORMAT;
    if (L < 1u || L > NANOFLY_MAX_LAYERS) return NANOFLY_ERR_DIMS;
    payload = round_up(NF_HEADER_BYTES + 2u * (L + 1u), 4u);
    if (payload + 4u > size) return NANOFLY_ERR_SIZE;
    for (off = NF_HEADER_BYTES + 2u * (L + 1u); off < payload; ++off) {
        if (b[off] != 0) return NANOFLY_ERR_FORMAT;
    }

    memset(&t, 0, sizeof t);
    t.blob = b;
    t.size = size;
    t.format = (uint8_t)format;
    t.num_layers = (uint8_t)L;
    for (l = 0; l <= L; ++l) {
        uint32_t w = rd16(b + NF_HEADER_BYTES + 2u * l);
        uint32_t limit = l == 0 ? NANOFLY_MAX_INPUT : NANOFLY_MAX_WIDTH;
        if (w < 1u || w > limit) return NANOFLY_ERR_DIMS;
        t.widths[l] = (uint16_t)w;
    }

    /* offsets and the implied size (all small: no overflow within the limits) */
    off = payload;
    n0 = t.widths[0];
    if (format == NANOFLY_FORMAT_INT8) {
        t.input_offset = off;
        off += 4u * n0;
    }
    for (l = 0; l < L; ++l) {
        t.layer_offset[l] = off;
        off += format == NANOFLY_FORMAT_INT8 ? i8_layer_bytes(t.widths[l], t.widths[l + 1u])
                                             : f32_layer_bytes(t.widths[l], t.widths[l + 1u]);
    }
    if (off + 4u != size) return NANOFLY_ERR_SIZE;

    /* every float field must be finite */
    if (format == NANOFLY_FORMAT_F32) {
        if (!all_finite(b + payload, (size - 4u - payload) / 4u)) return NANOFLY_ERR_NONFINITE;
    } else {
        if (!all_finite(b + t.input_offset, n0)) return NANOFLY_ERR_NONFINITE;
        for (l = 0; l < L; ++l) {
            if (!all_finite(b + t.layer_offset[l], 2u * round_up(t.widths[l + 1u], 4u)))
                return NANOFLY_ERR_NONFINITE;
        }
    }
    *m = t;
    return NANOFLY_OK;
}

uint32_t nanofly_model_input_dim(const nanofly_model *m) { return m->widths[0]; }

uint32_t nanofly_model_output_dim(const nanofly_model *m) { return m->widths[m->num_layers]; }

uint32_t nanofly_model_format(const nanofly_model *m) { return m->format; }

const char *nanofly_strerror(int code)
{
    switch (code) {
    case NANOFLY_OK: return "ok";
    case NANOFLY_ERR_MAGIC: return "not a nanofly model blob (magic is not NFLY)";
    case NANOFLY_ERR_VERSION: return "unsupported model blob version";
    case NANOFLY_ERR_SIZE: return "model blob size does not match its header";
    case NANOFLY_ERR_CRC: return "model blob CRC-32 mismatch (corrupt or truncated)";
    case NANOFLY_ERR_FORMAT: return "unsupported weight format, activation or reserved field";
    case NANOFLY_ERR_DIMS: return "layer count or width outside the runtime limits";
    case NANOFLY_ERR_NONFINITE: return "model blob contains NaN or Inf";
    case NANOFLY_ERR_ALIGN: return "model blob is not 4-byte aligned";
    default: return "unknown nanofly error";
    }
}
