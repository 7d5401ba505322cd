#include "frame.h"

#include <string.h>

#include "nanofly_policy.h" /* nanofly_crc32: the export runtime's zlib-compatible CRC-32 */

void nf_parser_init(nf_parser *p) { memset(p, 0, sizeof *p); }

/* COBS decode in place (the output never overtakes the input). Returns the decoded length,
 * or -1 for a malformed encoding. */
static int32_t cobs_decode_in_place(uint8_t *buf, uint32_t len) {
    uint32_t in = 0, out = 0;
    while (in < len) {
        uint8_t code = buf[in++];
        if (code == 0) return -1;
        uint32_t run = (uint32_t)code - 1;
        if (in + run > len) return -1;
        memmove(buf + out, buf + in, run);
        out += run;
        in += run;
        /* A code below 0xFF stands for a zero after its run, except at the very end. */
        if (code != 0xFF && in < len) buf[out++] = 0;
    }
    return (int32_t)out;
}

int nf_parser_push(nf_parser *p, uint8_t byte, nf_frame *out) {
    if (byte != 0) {
        if (p->discarding) return 0;
        if (p->len >= sizeof p->buf) {
            p->discarding = 1;
            p->frames_too_long++;
            p->len = 0;
            return 0;
        }
        p->buf[p->len++] = byte;
        return 0;
    }
    /* Delimiter: a frame (or garbage) ends here. */
    uint32_t len = p->len;
    p->len = 0;
    if (p->discarding) {
        p->discarding = 0;
        return 0;
    }
    if (len == 0) return 0; /* back-to-back delimiters: nothing to do */
    int32_t n = cobs_decode_in_place(p->buf, len);
    if (n < NF_FRAME_HEADER_BYTES + NF_FRAME_CRC_BYTES) {
        p->frames_bad++;
        return 0;
    }
    uint16_t length = nf_get_u16(p->buf + 2);
    if ((int32_t)length + NF_FRAME_HEADER_BYTES + NF_FRAME_CRC_BYTES != n) {
        p->frames_bad++;
        return 0;
    }
    uint32_t crc_declared = nf_get_u32(p->buf + n - NF_FRAME_CRC_BYTES);
    uint32_t crc = nanofly_crc32(0, p->buf, (size_t)n - NF_FRAME_CRC_BYTES);
    if (crc != crc_declared) {
        p->frames_bad++;
        return 0;
    }
    p->frames_ok++;
    out->type = p->buf[0];
    out->seq = p->buf[1];
    out->length = length;
    out->crc = crc;
    out->payload = p->buf + NF_FRAME_HEADER_BYTES;
    return 1;
}

/* Streaming COBS encoder over out[cap]. */
typedef struct {
    uint8_t *out;
    size_t cap, pos, code_pos;
    uint8_t code;
    int overflow;
} cobs_writer;

static void cw_start_block(cobs_writer *w) {
    if (w->pos >= w->cap) { w->overflow = 1; return; }
    w->code_pos = w->pos++;
    w->code = 1;
}

static void cw_byte(cobs_writer *w, uint8_t b) {
    if (w->overflow) return;
    if (b == 0) {
        w->out[w->code_pos] = w->code;
        cw_start_block(w);
        return;
    }
    if (w->pos >= w->cap) { w->overflow = 1; return; }
    w->out[w->pos++] = b;
    if (++w->code == 0xFF) {
        w->out[w->code_pos] = w->code;
        cw_start_block(w);
    }
}

size_t nf_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length,
                       uint8_t *out, size_t cap) {
    uint8_t header[NF_FRAME_HEADER_BYTES] = {type, seq, (uint8_t)length, (uint8_t)(length >> 8)};
    uint32_t crc = nanofly_crc32(0, header, sizeof header);
    if (length) crc = nanofly_crc32(crc, payload, length);
    uint8_t crc_bytes[4];
    nf_put_u32(crc_bytes, crc);

    if (cap < 2) return 0;
    cobs_writer w = {out, cap, 1, 0, 0, 0};
    out[0] = 0; /* leading delimiter ends any garbage the other side may be holding */
    cw_start_block(&w);
    for (size_t i = 0; i < sizeof header; i++) cw_byte(&w, header[i]);
    for (size_t i = 0; i < length; i++) cw_byte(&w, payload[i]);
    for (size_t i = 0; i < sizeof crc_bytes; i++) cw_byte(&w, crc_bytes[i]);
    if (w.overflow || w.pos >= cap) return 0;
    w.out[w.code_pos] = w.code;
    out[w.pos++] = 0;
    return w.pos;
}
