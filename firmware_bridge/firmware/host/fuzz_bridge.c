/* libFuzzer harness: the shared protocol core (framing, commands, the two-slot model store
 * over the host NOR-flash emulator) and the bridge firmware's target commands, compiled for
 * the host.
 *
 * The first input byte picks a mode:
 *   bit 0 set: the rest is a raw byte stream fed to the parser (garbage, partial frames, COBS
 *         edge cases, CRC failures); the clock advances 1 ms every 32 bytes;
 *   bit 0 clear: the rest is a list of records, so the fuzzer reaches the command handler
 *         without having to forge CRCs: [type u8][seq u8][length u16 LE][payload] is framed
 *         (nf_frame_encode) and fed to the parser; a record starting 0xFE advances the clock
 *         by 4 * its second byte milliseconds (control ticks: dead man's switch);
 *   bit 1: the next 2 x 48 bytes are written into the flash first (per slot: a 32-byte
 *         header whose header CRC is then made valid, and the blob's first 16 bytes), so the
 *         boot scan meets headers that pass their CRC but name any size, format or sequence;
 *   bit 2: power cut: the next two bytes give the erase/program operations allowed before
 *         the cut and the bytes the cut operation still writes; after the input the board
 *         boots again with power back on;
 *   bit 3: after the input the board boots again (without a cut).
 * The flash starts erased for every input.
 * Checks beyond the sanitizers (abort on failure):
 *   - an encoded frame decodes to exactly what was encoded;
 *   - every handled request gets exactly one reply and that reply is a valid frame;
 *   - an ARM answered OK leaves the board armed (a cached "armed" reply from before the dead
 *     man's switch tripped, repeated after it, would not);
 *   - after boot and after the input: the active model's flash bytes still have the active
 *     CRC and its slot header is whole and activated, and the motors are zero when disarmed
 *     (bridge_self_check); after a power cut and a reboot the same holds (never a torn model). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bridge.h"
#include "frame.h"
#include "hal_host.h"
#include "nor_flash.h"
#include "protocol.h"

static nf_parser reply_parser;
static nf_nor nor;
static nf_flash_ops flash;

static void flash_setup(void) {
    static int ready;
    if (ready) return;
    char path[] = "/tmp/nanofly_fuzz_flash_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) abort();
    close(fd);
    unlink(path); /* nf_nor_open creates it again, empty */
    uint32_t sizes[2] = {NF_SLOT_BYTES, NF_SLOT_BYTES};
    char err[200];
    if (nf_nor_open(&nor, path, 2, sizes, err, sizeof err) != 0) abort();
    unlink(path); /* the mapping stays; nothing is left behind */
    uint32_t first[2] = {0, 1};
    nf_nor_flash_ops(&nor, &flash, first, 1);
    ready = 1;
}
static uint32_t replies;
static uint8_t last_reply_type;

static nf_parser parser; /* a second parser over the same bytes: the round-trip check */
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
        uint32_t before = replies;
        int complete = nf_parser_push(&parser, bytes[i], &frame);
        if (complete && expect_type >= 0 &&
            (frame.type != expect_type || frame.seq != expect_seq || frame.length != expect_len ||
             memcmp(frame.payload, expect_payload, (size_t)expect_len) != 0))
            abort(); /* encoder/parser round trip broken */
        uint8_t type = complete ? frame.type : 0;
        bridge_feed(bytes + i, 1);
        if (replies != before + (complete ? 1u : 0u)) abort(); /* one reply per request, none otherwise */
        if (complete && type == NF_CMD_ARM && last_reply_type == (NF_CMD_ARM | NF_REPLY_FLAG) &&
            !bridge_is_armed())
            abort(); /* "armed" answered while disarmed */
    }
}

/* The store's promise after any sequence of operations and a reboot: the running model, if
 * any, is a whole committed and activated slot (bridge_self_check checks its CRC and header). */
static void reboot_and_check(void) {
    nf_nor_set_cut(&nor, -1, 0);
    bridge_init(&flash);
    if (bridge_self_check() != 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t encoded[NF_FRAME_MAX_ENCODED + 64];
    flash_setup();
    memset(nor.mem, 0xFF, nor.size); /* every input starts on erased flash */
    nf_nor_set_cut(&nor, -1, 0);
    host_now_ms = 0;
    host_uart_sink = sink;
    replies = 0;
    nf_parser_init(&parser);
    nf_parser_init(&reply_parser);
    if (size == 0) return 0;
    uint8_t mode = data[0];
    data++;
    size--;
    if ((mode & 2) && size >= 96) {
        for (unsigned s = 0; s < 2; s++) {
            uint8_t *slot = nor.mem + s * NF_SLOT_BYTES;
            memcpy(slot, data + 48 * s, NF_SLOT_HEADER_BYTES);
            nf_put_u32(slot + 24, nanofly_crc32(0, slot, NF_SLOT_HEADER_CRC_BYTES));
            memcpy(slot + NF_SLOT_HEADER_BYTES, data + 48 * s + 32, 16);
        }
        data += 96;
        size -= 96;
    }
    int cut = 0;
    if ((mode & 4) && size >= 2) {
        nf_nor_set_cut(&nor, data[0], data[1]);
        cut = 1;
        data += 2;
        size -= 2;
    }
    bridge_init(&flash);
    if (bridge_self_check() != 0) abort();
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
    if (cut || (mode & 8)) reboot_and_check();
    return 0;
}
