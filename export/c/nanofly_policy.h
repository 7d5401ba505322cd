/* nanofly policy runtime: validates a model blob and runs the tanh MLP actor.
 *
 * C99, no malloc, no mutable global or static state (reentrant). The blob format is documented
 * in docs/model-format.md. Kernels are selected at compile time: Cortex-M4 DSP/FPU assembly
 * when __ARM_FEATURE_DSP and a single-precision FPU are present, portable C otherwise; both
 * give bit-identical results for the same blob and observation.
 */
#ifndef NANOFLY_POLICY_H
#define NANOFLY_POLICY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    NANOFLY_OK = 0,
    NANOFLY_ERR_MAGIC = -1,     /* not "NFLY" */
    NANOFLY_ERR_VERSION = -2,   /* blob version is not NANOFLY_BLOB_VERSION */
    NANOFLY_ERR_SIZE = -3,      /* size too small, not a multiple of 4, or != header/implied size */
    NANOFLY_ERR_CRC = -4,       /* trailing CRC-32 does not match the content */
    NANOFLY_ERR_FORMAT = -5,    /* unknown weight format or activation, reserved field != 0 */
    NANOFLY_ERR_DIMS = -6,      /* layer count or a width outside the runtime limits */
    NANOFLY_ERR_NONFINITE = -7, /* a float weight, bias, scale or multiplier is NaN or Inf */
    NANOFLY_ERR_ALIGN = -8      /* blob address is not 4-byte aligned */
};

enum { NANOFLY_FORMAT_F32 = 1, NANOFLY_FORMAT_INT8 = 2 };
enum { NANOFLY_ACTIVATION_TANH = 1 };

#define NANOFLY_BLOB_VERSION 1u
#define NANOFLY_MAX_LAYERS 8u   /* linear layers */
/* One inference's activations live on the caller's stack in arrays sized by these two widths
   (1.4 KB at the defaults). A firmware whose task stack is small may compile the runtime with
   lower limits, -DNANOFLY_MAX_INPUT=... -DNANOFLY_MAX_WIDTH=... (multiples of 8, the width no
   larger than the input); the loader then refuses wider models with NANOFLY_ERR_DIMS. */
#ifndef NANOFLY_MAX_INPUT
#define NANOFLY_MAX_INPUT 256u  /* observation width */
#endif
#ifndef NANOFLY_MAX_WIDTH
#define NANOFLY_MAX_WIDTH 128u  /* every hidden and the output width */
#endif
#if (NANOFLY_MAX_INPUT % 8u) != 0u || (NANOFLY_MAX_WIDTH % 8u) != 0u || \
    NANOFLY_MAX_WIDTH > NANOFLY_MAX_INPUT || NANOFLY_MAX_WIDTH < 8u
#error "NANOFLY_MAX_INPUT and NANOFLY_MAX_WIDTH must be multiples of 8 (>= 8), the width <= the input"
#endif

/* A validated view into a blob (no copy). Fill it with nanofly_model_init only. */
typedef struct nanofly_model {
    const uint8_t *blob;
    uint32_t size;
    uint8_t format;      /* NANOFLY_FORMAT_* */
    uint8_t num_layers;  /* linear layers */
    uint16_t widths[NANOFLY_MAX_LAYERS + 1u];
    uint32_t layer_offset[NANOFLY_MAX_LAYERS]; /* byte offset of each layer's section */
    uint32_t input_offset; /* int8: byte offset of the input multipliers; f32: 0 */
} nanofly_model;

/* Validate a blob (size, alignment, magic, version, CRC-32, format, dims, finite float fields,
   in that order) and fill *m. blob must be 4-byte aligned and stay alive and unchanged while m
   is used. Returns NANOFLY_OK or the first NANOFLY_ERR_*; on failure *m is zeroed. */
int nanofly_model_init(nanofly_model *m, const void *blob, uint32_t size);

/* One inference: obs[input_dim] -> action[output_dim], each action in [-1, 1]. */
void nanofly_policy_act(const nanofly_model *m, const float *obs, float *action);

/* rows inferences: obs is rows x input_dim, action rows x output_dim (row-major). */
void nanofly_policy_act_batch(const nanofly_model *m, const float *obs, float *action,
                              uint32_t rows);

/* zlib-compatible CRC-32: nanofly_crc32(0, buf, n) == zlib.crc32(buf); chainable. */
uint32_t nanofly_crc32(uint32_t crc, const void *data, size_t len);

uint32_t nanofly_model_input_dim(const nanofly_model *m);
uint32_t nanofly_model_output_dim(const nanofly_model *m);
uint32_t nanofly_model_format(const nanofly_model *m);

/* The runtime's tanh (rational approximation, max abs error ~3e-7), exposed for tests. */
float nanofly_tanhf(float x);

/* A short English description of a NANOFLY_OK / NANOFLY_ERR_* code. */
const char *nanofly_strerror(int code);

#ifdef __cplusplus
}
#endif

#endif /* NANOFLY_POLICY_H */
