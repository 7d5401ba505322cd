/* nanofly policy runtime, internal: what the kernels and the code that calls them share.
 *
 * Each kernel lives in its own file (nf_<kernel>.c) with two bodies: the Cortex-M4 one (naked
 * assembly, DSP + single-precision FPU) and the plain-C reference, selected at compile time by
 * NANOFLY_ARM_KERNELS. Both compute the same bits for the same inputs. The M4 bodies stay
 * assembly: ACLE's intrinsics cover the integer DSP instructions only, and GCC's code from them
 * takes more instructions than the hand-scheduled loops (the integer kernels say why).
 * Everything that is not integer arithmetic is written with explicit fmaf and no a*b+c
 * expressions, so the host and the MCU compute bit-identical results whatever the compiler's
 * floating-point contraction setting.
 */
#ifndef NF_KERNELS_H
#define NF_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FP) && (__ARM_FP & 4) && \
    defined(__ARM_FEATURE_FMA) && defined(__thumb2__)
#define NANOFLY_ARM_KERNELS 1
#else
#define NANOFLY_ARM_KERNELS 0
#endif

/* The firmware flags include -ffreestanding, which turns off GCC's builtins: name them explicitly
   so fmaf is one VFMA instruction rather than a call into newlib's software fmaf. */
#if defined(__GNUC__)
#define NF_FMAF(a, b, c) __builtin_fmaf((a), (b), (c))
#define NF_FABSF(x) __builtin_fabsf(x)
#define NF_MEMCPY(d, s, n) __builtin_memcpy((d), (s), (n))
#define NF_INLINE __attribute__((always_inline)) inline
#else
#define NF_FMAF(a, b, c) fmaf((a), (b), (c))
#define NF_FABSF(x) fabsf(x)
#define NF_MEMCPY(d, s, n) memcpy((d), (s), (n))
#define NF_INLINE inline
#endif

/* Naked functions are pure assembly following the AAPCS: arguments arrive in r0-r3. */
#define NF_UNUSED __attribute__((unused))

#define NF_MAGIC 12582912.0f /* 1.5 * 2^23: x + MAGIC leaves round(x) in the low mantissa bits */

static NF_INLINE uint32_t nf_round_up(uint32_t v, uint32_t k) { return (v + k - 1u) / k * k; }

static NF_INLINE uint32_t nf_float_bits(float f)
{
    uint32_t u;
    NF_MEMCPY(&u, &f, sizeof u);
    return u;
}

/* float32 dense layer, pre-activation (nf_dense_f32.c): y = bias + W x in input order. */
typedef struct {
    const float *w;     /* blocks [m8/8][nblk][4][8] */
    const float *bias;  /* [m8] */
    const float *x;     /* [nfull * 4] */
    const float *xtail; /* 4 floats (x beyond nfull*4, zero padded) or NULL */
    float *y;           /* [m8] out */
    uint32_t nfull;     /* whole 4-input blocks read from x */
    uint32_t ngroups;   /* m8 / 8 */
} nf_f32_args;
void nanofly_dense_f32(const nf_f32_args *a);

/* int8 dense layer, exact integer dot products of int8 weights and int16 activations
   (nf_dense_s8.c). Consumes a->z and a->ngroups. */
typedef struct {
    const uint8_t *w; /* blocks [m4/4][nblk][16] */
    const int16_t *x; /* [nblk * 4], 4-byte aligned, zero padded */
    int32_t *z;       /* [m4] out: exact integer dot products */
    uint32_t nblk;    /* n4 / 4 */
    uint32_t ngroups; /* m4 / 4 */
    int32_t sum_x;    /* sum of x (for the offset-binary A bytes) */
} nf_i8_args;
void nanofly_dense_s8(nf_i8_args *a);

/* Hidden int8 layer output (nf_requant_tanh_q15.c): out[i] = round(32767 tanh(scale[i] z[i] +
   bias[i])) for 2 npairs values; returns their sum. */
typedef struct {
    const int32_t *z;    /* [2 npairs] integer dot products */
    const float *scale;  /* [2 npairs] */
    const float *bias;   /* [2 npairs] */
    int16_t *out;        /* [2 npairs] round(32767 tanh(scale z + bias)), 4-byte aligned */
    uint32_t npairs;
    const float *consts; /* nanofly_tanh_consts on the M4, unused by the C reference */
} nf_requant_args;
int32_t nanofly_requant_tanh_q15(const nf_requant_args *a);

/* out[i] = tanh(in[i]) for n >= 1 values, in == out allowed (nf_tanh_f32.c). consts is
   nanofly_tanh_consts (read by the M4 body). */
void nanofly_tanh_f32(const float *in, float *out, uint32_t n, const float *consts);
#if NANOFLY_ARM_KERNELS
extern const float nanofly_tanh_consts[15];
#define NF_TANH_CONSTS nanofly_tanh_consts
#else
#define NF_TANH_CONSTS ((const float *)0)
#endif

/* Input quantization (nf_quantize_q15.c): q[j] = sat16(round_half_even(obs[j] mult[j])), NaN -> 0,
   for the first 4 nquad values; returns sum(q). */
int32_t nanofly_quantize_q15(const float *obs, const float *mult, int16_t *q, uint32_t nquad);

/* sat16(round_half_even(v)), NaN -> 0: the semantics of VCVTR.S32.F32 followed by SSAT #16, for
   the values past the last whole quad. */
static NF_INLINE int32_t nf_q16_saturate(float v)
{
    if (v != v) return 0; /* (v is the fmaf-rounded product, so nothing contracts into v + MAGIC) */
    if (v >= 32767.0f) return 32767;
    if (v <= -32768.0f) return -32768;
    return (int32_t)(nf_float_bits(v + NF_MAGIC) - 0x4B400000u);
}

#endif /* NF_KERNELS_H */
