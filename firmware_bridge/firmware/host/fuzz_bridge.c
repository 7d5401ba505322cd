/* libFuzzer harness: the firmware's frame parser and command handler, compiled for the host.
 *
 * The first input byte picks a mode:
 *   odd:  the rest is a raw byte stream fed to the parser (garbage, partial frames, COBS
 *         edge cases, CRC failures); the clock advances 1 ms every 32 bytes;
 *   even: the rest is a list of records, so the fuzzer reaches the command handler without
 *         having to forge CRCs: [type u8][seq u8][length u16 LE][payload] is framed
 *         (nf_frame_encode) and fed to the parser; a record starting 0xFE advances the clock
 *         by 4 * its second byte milliseconds (control ticks: dead man's switch).
 * Checks beyond the sanitizers (abort on failure):
 *   - an encoded frame decodes to exactly what was encoded;
 *   - every handled request gets exactly one reply and that reply is a valid frame;
 *   - an ARM answered OK leaves the board armed (a cached "armed" reply from before the dead
 *     man's switch tripped, repeated after it, would not);
 *   - after the input: the active model's bytes still have the active CRC, and the motors
 *     are zero when disarmed (bridge_self_check). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bridge.h"
#include "frame.h"
#include "hal_host.h"
#include "protocol.h"

static nf_parser parser, reply_parser;
static uint32_t replies;
static uint8_t last_reply_type;

static void sink(const uint8_t *data, size_t len) {
    for (size_t i = 0; i < len; i++) {
        nf_frame reply;
        if (nf_parser_push(&reply_parser, data[i], &reply)) {
            replies++;
            last_reply_type = reply.type;
        }
    }
    if (reply_parser.frames_bad || reply_parser.frames_too_long) abort();
}

static void advance(uint32_t ms) {
    for (uint32_t i = 0; i < ms; i++) bridge_control_tick(++host_now_ms);
}

static void feed(const uint8_t *bytes, size_t n, const uint8_t *expect_payload, int expect_type,
                 int expect_seq, int expect_len) {
    for (size_t i = 0; i < n; i++) {
        nf_frame frame;
        if (!nf_parser_push(&parser, bytes[i], &frame)) continue;
        if (expect_type >= 0 && (frame.type != expect_type || frame.seq != expect_seq ||
                                 frame.length != expect_len ||
                                 memcmp(frame.payload, expect_payload, (size_t)expect_len) != 0))
            abort(); /* encoder/parser round trip broken */
        uint32_t before = replies;
        bridge_handle_frame(&frame);
        if (replies != before + 1) abort(); /* every request gets exactly one reply */
        if (frame.type == NF_CMD_ARM && last_reply_type == (NF_CMD_ARM | NF_REPLY_FLAG) &&
            !bridge_is_armed())
            abort(); /* "armed" answered while disarmed */
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t encoded[NF_FRAME_MAX_ENCODED + 64];
    host_now_ms = 0;
    host_uart_sink = sink;
    replies = 0;
    nf_parser_init(&parser);
    nf_parser_init(&reply_parser);
    bridge_init();
    bridge_set_parser(&parser);
    if (size == 0) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if (mode & 1) {
        for (size_t i = 0; i < size; i++) {
            feed(data + i, 1, NULL, -1, 0, 0);
            if (i % 32 == 31) advance(1);
        }
    } else {
        while (size >= 2) {
            if (data[0] == 0xFE) {
                advance(4u * data[1]);
                data += 2;
                size -= 2;
                continue;
            }
            if (size < 4) break;
            uint8_t type = data[0], seq = data[1];
            size_t length = (size_t)(data[2] | data[3] << 8);
            data += 4;
            size -= 4;
            if (length > size) length = size;
            if (length > NF_MAX_PAYLOAD + 8) length = NF_MAX_PAYLOAD + 8; /* a bit over: too long */
            size_t n = nf_frame_encode(type, seq, data, (uint16_t)length, encoded, sizeof encoded);
            if (n == 0) abort(); /* the buffer is big enough for any length used here */
            if (length <= NF_MAX_PAYLOAD)
                feed(encoded, n, data, type, seq, (int)length);
            else
                feed(encoded, n, NULL, -1, 0, 0); /* must be dropped as too long, not crash */
            data += length;
            size -= length;
        }
    }
    if (bridge_self_check() != 0) abort();
    return 0;
}
