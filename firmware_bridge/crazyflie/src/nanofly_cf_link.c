/* The nanofly app's link to the host (nanofly_cf_link.h). */
#include "nanofly_cf_link.h"

#include <string.h>

static nf_core core;
static nf_target target;
static const nf_cf_link_platform *platform;
static int reply_transport = NF_CF_LINK_APP_CHANNEL;

/* Published for the controller (fields first, then the sequence number). */
static volatile nf_cf_link_model published;
static volatile uint32_t published_seq;
static volatile uint32_t taken_seq;
static nf_cf_link_model current;

static void publish(const nf_cf_link_model *m)
{
    published.blob = m->blob;
    published.size = m->size;
    published.crc = m->crc;
    published.source = m->source;
    published.slot = m->slot;
    __asm__ volatile("" ::: "memory");
    published_seq = published_seq + 1u;
}

static void core_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    platform->write(platform->ctx, reply_transport, data, len);
}

static int core_may_write_flash(void *ctx)
{
    (void)ctx;
    const int busy = platform->busy ? platform->busy(platform->ctx) : 0;
    if (busy) {
        return busy;
    }
    /* The controller still runs from the slot a new model replaced (it takes the new one at
       its next step; the stabilizer does not run before the sensors are calibrated). */
    return published_seq != taken_seq ? NF_BUSY_OTHER : 0;
}

static void core_describe(void *ctx, nf_target_state *out)
{
    (void)ctx;
    if (platform->describe) {
        platform->describe(platform->ctx, out);
    }
}

static const void *default_blob;
static uint32_t default_size, default_crc;

static void core_activate(void *ctx, const nf_active_model *m)
{
    (void)ctx;
    nf_cf_link_model model;
    if (m == NULL) {
        model.blob = default_blob;
        model.size = default_blob ? default_size : 0u;
        model.crc = default_blob ? default_crc : 0u;
        model.source = NF_CF_MODEL_COMPILED_IN;
        model.slot = 0u;
    } else {
        /* the blob follows the slot header; the core checked it (CRC, model init, dims) */
        model.blob = platform->flash->read_base(platform->flash->ctx, m->slot) + NF_SLOT_HEADER_BYTES;
        model.size = m->size;
        model.crc = m->model_crc;
        model.source = NF_CF_MODEL_FLASH_SLOT;
        model.slot = m->slot;
    }
    publish(&model);
}

int nf_cf_link_init(const nf_cf_link_platform *p, const void *blob, uint32_t size, uint32_t crc)
{
    platform = p;
    default_blob = blob;
    default_size = size;
    default_crc = crc;
    memset(&target, 0, sizeof(target));
    target.flash = p->flash;
    target.write = core_write;
    target.may_write_flash = core_may_write_flash;
    target.activate = core_activate;
    target.describe = core_describe;
    target.obs_dim = p->obs_dim;
    target.act_dim = p->act_dim;
    target.formats = (uint8_t)((1u << NANOFLY_FORMAT_F32) | (1u << NANOFLY_FORMAT_INT8));
    return nf_core_init(&core, &target);
}

void nf_cf_link_feed(int transport, const uint8_t *data, size_t len)
{
    if (transport < 0 || transport >= NF_CF_LINK_TRANSPORTS) {
        return;
    }
    reply_transport = transport;
    nf_core_feed(&core, data, len);
}

int nf_cf_link_take_pending(nf_cf_link_model *out)
{
    const uint32_t seq = published_seq;
    if (seq == taken_seq) {
        return 0;
    }
    __asm__ volatile("" ::: "memory");
    out->blob = published.blob;
    out->size = published.size;
    out->crc = published.crc;
    out->source = published.source;
    out->slot = published.slot;
    current = *out;
    taken_seq = seq;
    return 1;
}

int nf_cf_link_has_pending(void)
{
    return published_seq != taken_seq;
}

const nf_cf_link_model *nf_cf_link_current(void)
{
    return &current;
}

const nf_core *nf_cf_link_core(void)
{
    return &core;
}

void nf_cf_link_send_packets(const uint8_t *data, size_t len,
                             void (*send)(const uint8_t *packet, size_t n))
{
    while (len > 0u) {
        const size_t n = len < NF_CF_LINK_PACKET_BYTES ? len : NF_CF_LINK_PACKET_BYTES;
        send(data, n);
        data += n;
        len -= n;
    }
}
