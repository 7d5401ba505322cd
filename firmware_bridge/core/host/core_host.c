/* The protocol core on the host: a minimal target (no motors, no target commands) over the
 * file-backed NOR emulator, with a C API for Python's ctypes (firmware_bridge/core_host.py).
 * Used by the power-cut bench, tests, and as the store of host stand-ins.
 *
 * Flash image layout: slot 0 = sectors [0, n), slot 1 = sectors [n, 2n), all of sector_bytes. */
#include <stdlib.h>
#include <string.h>

#include "nf_core.h"
#include "nor_flash.h"

typedef struct nf_host {
    nf_nor nor;
    nf_flash_ops flash;
    nf_target target;
    nf_core core;
    int busy_reason;
    uint8_t *out;               /* replies written during one nf_host_feed */
    size_t out_len, out_cap;
    size_t out_dropped;
    uint32_t activations;
    const nanofly_model *running; /* what the activate hook last chose (NULL: none) */
} nf_host;

static void host_write(void *ctx, const uint8_t *data, size_t len) {
    nf_host *h = ctx;
    size_t room = h->out_cap - h->out_len;
    size_t n = len < room ? len : room;
    if (h->out) memcpy(h->out + h->out_len, data, n);
    h->out_len += n;
    h->out_dropped += len - n;
}

static int host_may_write(void *ctx) { return ((nf_host *)ctx)->busy_reason; }

static void host_activate(void *ctx, const nf_active_model *m) {
    nf_host *h = ctx;
    h->running = m ? m->model : NULL;
    h->activations++;
}

nf_host *nf_host_open(const char *path, uint32_t sector_bytes, uint32_t sectors_per_slot,
                      uint32_t max_model_bytes, uint16_t obs_dim, uint16_t act_dim, char *err,
                      size_t err_len) {
    if (sectors_per_slot == 0 || 2 * sectors_per_slot > NF_NOR_MAX_SECTORS) {
        strncpy(err, "sectors per slot must be between 1 and 8", err_len);
        return NULL;
    }
    nf_host *h = calloc(1, sizeof *h);
    if (!h) {
        strncpy(err, "out of memory", err_len);
        return NULL;
    }
    uint32_t sizes[NF_NOR_MAX_SECTORS];
    for (uint32_t i = 0; i < 2 * sectors_per_slot; i++) sizes[i] = sector_bytes;
    if (nf_nor_open(&h->nor, path, 2 * sectors_per_slot, sizes, err, err_len) != 0) {
        free(h);
        return NULL;
    }
    uint32_t first[2] = {0, sectors_per_slot};
    nf_nor_flash_ops(&h->nor, &h->flash, first, sectors_per_slot);
    if (max_model_bytes && max_model_bytes + NF_SLOT_HEADER_BYTES < h->flash.slot_bytes)
        h->flash.slot_bytes = max_model_bytes + NF_SLOT_HEADER_BYTES;
    h->target.ctx = h;
    h->target.flash = &h->flash;
    h->target.write = host_write;
    h->target.may_write_flash = host_may_write;
    h->target.activate = host_activate;
    h->target.obs_dim = obs_dim;
    h->target.act_dim = act_dim;
    h->target.formats = (1u << NANOFLY_FORMAT_F32) | (1u << NANOFLY_FORMAT_INT8);
    return h;
}

/* (Re)boot: a fresh core over the flash as it is. Returns the slot activated or -1. */
int nf_host_boot(nf_host *h) { return nf_core_init(&h->core, &h->target); }

void nf_host_close(nf_host *h) {
    if (!h) return;
    nf_nor_close(&h->nor);
    free(h);
}

/* Feed bytes; the replies written meanwhile go to out[cap]. Returns their length (bytes that
 * did not fit are dropped and counted in nf_host_stats). */
size_t nf_host_feed(nf_host *h, const uint8_t *data, size_t len, uint8_t *out, size_t cap) {
    h->out = out;
    h->out_cap = cap;
    h->out_len = 0;
    nf_core_feed(&h->core, data, len);
    h->out = NULL;
    return h->out_len;
}

void nf_host_set_busy(nf_host *h, int reason) { h->busy_reason = reason; }
void nf_host_set_cut(nf_host *h, int64_t ops, uint32_t tear_bytes) { nf_nor_set_cut(&h->nor, ops, tear_bytes); }
int nf_host_powered(const nf_host *h) { return h->nor.powered; }

/* counters: [0] flash ops, [1] erases, [2] programs, [3] bytes programmed, [4] reply bytes
 * dropped, [5] activations, [6] slot bytes */
void nf_host_stats(const nf_host *h, uint64_t out[7]) {
    out[0] = h->nor.ops;
    out[1] = h->nor.erases;
    out[2] = h->nor.programs;
    out[3] = h->nor.bytes_programmed;
    out[4] = h->out_dropped;
    out[5] = h->activations;
    out[6] = h->flash.slot_bytes;
}

/* The active model: returns its slot (-1: none) and fills [crc, id, size, format, sequence]. */
int nf_host_active(const nf_host *h, uint32_t info[5]) {
    const nf_active_model *a = nf_core_active(&h->core);
    memset(info, 0, 5 * sizeof info[0]);
    if (!a) return -1;
    info[0] = a->model_crc;
    info[1] = a->model_id;
    info[2] = a->size;
    info[3] = a->format;
    info[4] = a->sequence;
    return a->slot;
}

/* Run the model the activate hook chose: 0, or -1 without one. */
int nf_host_infer(const nf_host *h, const float *obs, float *action) {
    if (!h->running) return -1;
    nanofly_policy_act(h->running, obs, action);
    return 0;
}

/* The flash operations since the last nf_host_set_cut: kinds ('E'/'P') and lengths into
 * kinds[cap] / lens[cap]; returns how many there were (may exceed cap or NF_NOR_TRACE). */
uint32_t nf_host_trace(const nf_host *h, uint8_t *kinds, uint32_t *lens, uint32_t cap) {
    uint32_t n = h->nor.trace_n < NF_NOR_TRACE ? h->nor.trace_n : NF_NOR_TRACE;
    for (uint32_t i = 0; i < n && i < cap; i++) {
        kinds[i] = h->nor.trace_kind[i];
        lens[i] = h->nor.trace_len[i];
    }
    return h->nor.trace_n;
}

/* Raw flash access (tests of the emulator): erase a sector, program at an image address. */
int nf_host_nor_erase(nf_host *h, uint32_t sector) { return nf_nor_erase_sector(&h->nor, sector); }
int nf_host_nor_program(nf_host *h, uint32_t address, const uint8_t *data, uint32_t len) {
    return nf_nor_program(&h->nor, address, data, len);
}

int nf_host_self_check(const nf_host *h) { return nf_core_self_check(&h->core); }
uint8_t nf_host_staging_state(const nf_host *h) { return nf_core_staging_state(&h->core); }
