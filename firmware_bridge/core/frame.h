/* Framing: COBS-encoded frames delimited by 0x00, each carrying type, sequence number,
 * length, payload and CRC-32. Pure C with no hardware access, so it is fuzzed on the host. */
#ifndef NF_FRAME_H
#define NF_FRAME_H
#include <stddef.h>
#include <stdint.h>
#include "protocol.h"

/* Largest decoded frame and its COBS encoding (one extra code byte per 254 data bytes). */
#define NF_FRAME_MAX_DECODED (NF_FRAME_HEADER_BYTES + NF_MAX_PAYLOAD + NF_FRAME_CRC_BYTES)
#define NF_FRAME_MAX_ENCODED (NF_FRAME_MAX_DECODED + NF_FRAME_MAX_DECODED / 254 + 2)

typedef struct {
    uint8_t type;
    uint8_t seq;
    uint16_t length;
    uint32_t crc;             /* the frame's CRC-32, used to recognise a repeated request */
    const uint8_t *payload;   /* points into the parser's buffer: valid until the next push */
} nf_frame;

typedef struct {
    uint8_t buf[NF_FRAME_MAX_ENCODED];
    uint32_t len;
    uint8_t discarding;       /* frame too long: drop bytes until the next delimiter */
    uint32_t frames_ok;
    uint32_t frames_bad;      /* bad COBS, length or CRC */
    uint32_t frames_too_long;
} nf_parser;

void nf_parser_init(nf_parser *p);
/* Feed one received byte; returns 1 and fills *out when it completes a valid frame. */
int nf_parser_push(nf_parser *p, uint8_t byte, nf_frame *out);

/* Encode a frame for the wire (leading and trailing 0x00 included) into out[cap].
 * Returns the number of bytes written, or 0 when cap is too small. */
size_t nf_frame_encode(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length,
                       uint8_t *out, size_t cap);

/* Little-endian helpers (the payload buffer has no alignment guarantee). */
static inline void nf_put_u16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline void nf_put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint16_t nf_get_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t nf_get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
#endif
