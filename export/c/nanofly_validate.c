/* nanofly policy runtime: validating a model blob (docs/model-format.md) into a nanofly_model,
 * and the model's accessors and error strings. */
#include "nanofly_policy.h"

#include <string.h>

#include "kernels/nf_kernels.h"

#define NF_HEADER_BYTES 16u

static uint32_t rd16(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8); }

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

/* Section sizes in bytes: the layouts the dense kernels read (see docs/model-format.md). */
static uint32_t f32_layer_bytes(uint32_t n, uint32_t m)
{
    uint32_t m8 = nf_round_up(m, 8u);
    return 4u * (m8 + m8 * nf_round_up(n, 4u));
}

static uint32_t i8_layer_bytes(uint32_t n, uint32_t m)
{
    uint32_t m4 = nf_round_up(m, 4u);
    return 8u * m4 + m4 * nf_round_up(n, 4u);
}

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
    payload = nf_round_up(NF_HEADER_BYTES + 2u * (L + 1u), 4u);
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
            if (!all_finite(b + t.layer_offset[l], 2u * nf_round_up(t.widths[l + 1u], 4u)))
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
