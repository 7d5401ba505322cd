/* nanofly policy runtime: inference (see nanofly_policy.h and docs/model-format.md).
 *
 * Two weight formats behind one entry point, each a loop over the layers that calls the kernels
 * (kernels/, one per file, each with a Cortex-M4 and a plain-C body):
 *   float32: nanofly_dense_f32 then nanofly_tanh_f32 per layer.
 *   int8:    int8 weights (per-output-channel scales), int16 activations: nanofly_quantize_q15
 *            once, then per layer nanofly_dense_s8 and, for hidden layers,
 *            nanofly_requant_tanh_q15 (the output layer: scale, bias and nanofly_tanh_f32).
 * Validation is in nanofly_validate.c, the CRC-32 in nanofly_crc32.c.
 */
#include "nanofly_policy.h"

#include "kernels/nf_kernels.h"

/* The first layer's int16 input, zero padded to whole quads; returns its sum. */
static int32_t quantize_input(const float *obs, const float *mult, int16_t *q, uint32_t n)
{
    int32_t sum = nanofly_quantize_q15(obs, mult, q, n / 4u);
    uint32_t j;
    for (j = n / 4u * 4u; j < n; ++j) {
        int32_t v = nf_q16_saturate(NF_FMAF(obs[j], mult[j], 0.0f));
        q[j] = (int16_t)v;
        sum += v;
    }
    for (; j < nf_round_up(n, 4u); ++j) q[j] = 0;
    return sum;
}

static void act_f32(const nanofly_model *m, const float *obs, float *action)
{
    float buf[2][NANOFLY_MAX_WIDTH];
    float tail[4];
    const float *x = obs;
    uint32_t l, o, L = m->num_layers;
    for (l = 0; l < L; ++l) {
        uint32_t n = m->widths[l], mo = m->widths[l + 1u], m8 = nf_round_up(mo, 8u);
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
        nanofly_dense_f32(&a);
        nanofly_tanh_f32(y, l + 1u == L ? action : y, mo, NF_TANH_CONSTS);
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
        uint32_t n = m->widths[l], mo = m->widths[l + 1u], m4 = nf_round_up(mo, 4u);
        const float *scale = (const float *)(const void *)(m->blob + m->layer_offset[l]);
        const float *bias = scale + m4;
        int16_t *y = (l & 1u) ? arena.v : arena.v + NANOFLY_MAX_INPUT;
        nf_i8_args a;
        a.w = (const uint8_t *)(bias + m4);
        a.x = x;
        a.z = acc.z;
        a.nblk = nf_round_up(n, 4u) / 4u;
        a.ngroups = m4 / 4u;
        a.sum_x = sum_x;
        nanofly_dense_s8(&a);
        if (l + 1u == L) {
            for (o = 0; o < mo; ++o) acc.f[o] = NF_FMAF((float)acc.z[o], scale[o], bias[o]);
            nanofly_tanh_f32(acc.f, action, mo, NF_TANH_CONSTS);
        } else {
            /* padded outputs have zero weights, scale and bias: they come out as 0 */
            nf_requant_args r;
            r.z = acc.z;
            r.scale = scale;
            r.bias = bias;
            r.out = y;
            r.npairs = m4 / 2u;
            r.consts = NF_TANH_CONSTS;
            sum_x = nanofly_requant_tanh_q15(&r);
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
