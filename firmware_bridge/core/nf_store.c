/* Slot headers and slot checks of the persistent model store (layout: nf_store.h). */
#include "nf_store.h"

#include <string.h>

#include "frame.h"

void nf_slot_header_encode(const nf_slot_header *h, uint8_t out[NF_SLOT_HEADER_BYTES]) {
    memset(out, 0, NF_SLOT_HEADER_BYTES);
    nf_put_u32(out + 0, NF_SLOT_MAGIC);
    nf_put_u32(out + 4, h->sequence);
    nf_put_u32(out + 8, h->size);
    nf_put_u32(out + 12, h->model_crc);
    out[16] = h->format;
    nf_put_u32(out + 20, h->model_id);
    nf_put_u32(out + 24, nanofly_crc32(0, out, NF_SLOT_HEADER_CRC_BYTES));
    nf_put_u32(out + NF_SLOT_MARK_OFFSET, 0xFFFFFFFFu); /* programmed by ACTIVATE */
}

int nf_slot_header_decode(const uint8_t *raw, nf_slot_header *h) {
    memset(h, 0, sizeof *h);
    if (nf_get_u32(raw) != NF_SLOT_MAGIC) return 0;
    if (nf_get_u32(raw + 24) != nanofly_crc32(0, raw, NF_SLOT_HEADER_CRC_BYTES)) return 0;
    if (raw[17] || raw[18] || raw[19]) return 0;
    h->sequence = nf_get_u32(raw + 4);
    h->size = nf_get_u32(raw + 8);
    h->model_crc = nf_get_u32(raw + 12);
    h->format = raw[16];
    h->model_id = nf_get_u32(raw + 20);
    h->activated = nf_get_u32(raw + NF_SLOT_MARK_OFFSET) == NF_SLOT_ACTIVATED;
    return 1;
}

int nf_store_scan_slot(const nf_flash_ops *flash, unsigned slot, uint32_t in_dim, uint32_t out_dim,
                       nf_slot_header *h, nanofly_model *model) {
    memset(model, 0, sizeof *model);
    const uint8_t *base = flash->read_base(flash->ctx, slot);
    if (!nf_slot_header_decode(base, h)) return NF_SLOT_EMPTY;
    if (h->size < 8 || h->size > flash->slot_bytes - NF_SLOT_HEADER_BYTES) return NF_SLOT_BAD_BLOB;
    const uint8_t *blob = base + NF_SLOT_HEADER_BYTES;
    if (nanofly_crc32(0, blob, h->size - 4) != h->model_crc) return NF_SLOT_BAD_BLOB;
    if (nanofly_model_init(model, blob, h->size) != NANOFLY_OK) return NF_SLOT_BAD_BLOB;
    if (nanofly_model_format(model) != h->format ||
        (in_dim && nanofly_model_input_dim(model) != in_dim) ||
        (out_dim && nanofly_model_output_dim(model) != out_dim)) {
        memset(model, 0, sizeof *model);
        return NF_SLOT_BAD_BLOB;
    }
    return h->activated ? NF_SLOT_ACTIVE : NF_SLOT_COMMITTED;
}
