/* libFuzzer harness: the Crazyflie app's link (nanofly_cf_link.c over the shared core and the
 * two-slot store) on its transports, compiled for the host with the firmware's own
 * app_channel.h ($CRAZYFLIE_BASE) and the file-backed NOR flash emulator laid out as the
 * STM32F405's (the store in sectors 10 and 11, as on the Crazyflie and in the stand-in).
 *
 * What stands in for the firmware: appchannelReceiveDataPacket / appchannelSendDataPacketBlock
 * (the radio: packets of at most APPCHANNEL_MTU bytes each way), the deck UART (one byte at a
 * time, as the app task polls it), arming and running motors (the busy hook), and the
 * controller, which takes a published model between two steps and loads it with the policy
 * runtime. link_poll and link_write follow the app's (nanofly_app.c needs FreeRTOS); the cut of
 * replies into app-channel packets is the link's own nf_cf_link_send_packets, as in the app.
 *
 * Input: [mode u8][records...]. Mode bit 0: the records are raw app-channel packets only
 * ([n][n % 31 bytes]), each followed by a controller step; otherwise each record is
 * [op u8][...], op & 7:
 *   0 frame     [type][seq][len u16 LE][payload]: framed (nf_frame_encode) and queued for the
 *               host's side of the radio (nothing is sent yet);
 *   1 packets   [n]: n <= 30: the next n queued bytes go as one app-channel packet (0: an empty
 *               packet); n > 30: everything queued goes in packets of (n - 31) % 30 + 1 bytes;
 *   2 raw       [n][n % 31 bytes]: one app-channel packet of these bytes;
 *   3 uart      [n][n bytes]: on the deck UART;
 *   4 busy      [b]: the firmware's state: b % 3 = 0 disarmed, 1 armed, 2 motors running;
 *   5 step      one controller step (takes a published model);
 *   6 cut       [ops][tear]: the flash loses power after ops more erase/program operations,
 *               the next one torn after tear bytes;
 *   7 reboot    power back on, the app starts again (the controller has no model until it
 *               takes the one the link publishes at boot).
 * What is queued is sent at the end in 30-byte packets; then a controller step, a reboot and
 * a last step. The flash starts erased for every input.
 *
 * Checks beyond the sanitizers (abort on failure), after every record:
 *   - every app-channel packet the link sends is at most APPCHANNEL_MTU bytes; the reply bytes
 *     on each transport are whole, valid frames;
 *   - every request frame gets exactly one reply (a frame the core decodes is one the host
 *     encoded, byte for byte);
 *   - no flash erase or program while armed or the motors run (the flash ops abort);
 *   - the model the controller runs is whole: its blob in flash still has its CRC and the
 *     policy runtime accepts it (a slot is never erased under the controller), and the core's
 *     active slot passes nf_core_self_check; after a power cut and a reboot the same holds. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app_channel.h"
#include "frame.h"
#include "nanofly_cf_flash.h"
#include "nanofly_cf_link.h"
#include "nanofly_policy.h"
#include "nor_flash.h"
#include "protocol.h"

#define OBS_DIM 146u
#define ACT_DIM 4u

static const uint32_t f405_sectors[12] = {
    16384u, 16384u, 16384u, 16384u, 65536u,
    131072u, 131072u, 131072u, 131072u, 131072u, 131072u, 131072u};

static nf_nor nor;
static nf_flash_ops nor_ops;     /* the emulator's */
static nf_flash_ops guarded_ops; /* what the link gets: the emulator's, refusing writes while busy */
static nf_cf_link_platform platform;
static int busy_reason;

/* ---- the flash, guarded ---------------------------------------------------------------- */
static int guarded_erase(void *ctx, unsigned slot)
{
    if (busy_reason != 0) abort(); /* an erase while armed or flying */
    return nor_ops.erase_slot(ctx, slot);
}

static int guarded_program(void *ctx, unsigned slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (busy_reason != 0) abort(); /* a program while armed or flying */
    return nor_ops.program(ctx, slot, offset, data, len);
}

static void flash_setup(void)
{
    static int ready;
    if (ready) return;
    char path[] = "/tmp/nanofly_fuzz_cf_flash_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) abort();
    close(fd);
    unlink(path); /* nf_nor_open creates it again, erased */
    char err[200];
    if (nf_nor_open(&nor, path, 12u, f405_sectors, err, sizeof err) != 0) abort();
    unlink(path); /* the mapping stays; nothing is left behind */
    const uint32_t first[2] = {NF_CF_STORE_FIRST_SECTOR, NF_CF_STORE_FIRST_SECTOR + 1u};
    nf_nor_flash_ops(&nor, &nor_ops, first, 1u);
    guarded_ops = nor_ops;
    guarded_ops.erase_slot = guarded_erase;
    guarded_ops.program = guarded_program;
    ready = 1;
}

/* ---- the radio and the UART (host side) ------------------------------------------------ */
static nf_parser reply_parser[NF_CF_LINK_TRANSPORTS];
static uint32_t replies;
static nf_parser request_parser; /* the same bytes the core gets: how many requests completed */
static uint32_t requests;

static const uint8_t *rx_packet; /* the packet appchannelReceiveDataPacket hands out next */
static size_t rx_packet_len;

static void host_receives(int transport, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        nf_frame reply;
        if (nf_parser_push(&reply_parser[transport], data[i], &reply)) replies++;
    }
    if (reply_parser[transport].frames_bad || reply_parser[transport].frames_too_long) abort();
}

size_t appchannelReceiveDataPacket(void *buffer, size_t max_length, int timeout_ms)
{
    (void)timeout_ms;
    size_t n = rx_packet_len < max_length ? rx_packet_len : max_length;
    if (n) memcpy(buffer, rx_packet, n);
    rx_packet_len = 0;
    return n;
}

void appchannelSendDataPacketBlock(void *data, size_t length)
{
    if (length == 0 || length > APPCHANNEL_MTU) abort(); /* not one app-channel packet */
    host_receives(NF_CF_LINK_APP_CHANNEL, data, length);
}

/* ---- the app's side (as nanofly_app.c's link_write / link_poll) ------------------------ */
static void send_app_channel_packet(const uint8_t *packet, size_t n)
{
    appchannelSendDataPacketBlock((void *)packet, n);
}

static void link_write(void *ctx, int transport, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (transport == NF_CF_LINK_APP_CHANNEL) {
        nf_cf_link_send_packets(data, len, send_app_channel_packet);
    } else if (transport == NF_CF_LINK_UART) {
        host_receives(NF_CF_LINK_UART, data, len);
    } else {
        abort(); /* a reply on a transport no request came from */
    }
}

static int link_busy(void *ctx)
{
    (void)ctx;
    return busy_reason;
}

static void link_describe(void *ctx, nf_target_state *out)
{
    (void)ctx;
    out->clock_flags = 2u;
    out->armed = busy_reason == NF_BUSY_ARMED;
    out->control_rate_hz = 1000u;
}

/* Feed bytes to the link, checking one reply per completed request. */
static void link_feed_checked(int transport, const uint8_t *data, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        nf_frame frame;
        if (nf_parser_push(&request_parser, data[i], &frame)) requests++;
    }
    nf_cf_link_feed(transport, data, len);
    if (replies != requests) abort(); /* a request without exactly one reply */
}

static void send_packet(const uint8_t *data, size_t len)
{
    uint8_t packet[APPCHANNEL_MTU];
    rx_packet = data;
    rx_packet_len = len;
    const size_t n = appchannelReceiveDataPacket(packet, sizeof packet, 10);
    if (n > 0u) link_feed_checked(NF_CF_LINK_APP_CHANNEL, packet, n);
}

/* ---- the controller -------------------------------------------------------------------- */
static struct {
    int has_model;
    nf_cf_link_model model;
} controller;

static void controller_step(void)
{
    nf_cf_link_model m;
    if (!nf_cf_link_take_pending(&m)) return;
    controller.has_model = m.blob != NULL;
    controller.model = m;
    const nf_cf_link_model *cur = nf_cf_link_current();
    if (cur->blob != m.blob || cur->crc != m.crc || cur->source != m.source) abort();
}

/* The running model is whole: its bytes still have its CRC and the runtime accepts them. */
static void check_running(void)
{
    if (nf_core_self_check(nf_cf_link_core()) != 0) abort();
    if (!controller.has_model) return;
    const nf_cf_link_model *m = &controller.model;
    if (m->source != NF_CF_MODEL_FLASH_SLOT) abort(); /* no compiled-in model in this build */
    const uint8_t *base = nor_ops.read_base(nor_ops.ctx, m->slot);
    if ((const uint8_t *)m->blob != base + NF_SLOT_HEADER_BYTES) abort();
    if (m->size < 4u || m->size > nor_ops.slot_bytes - NF_SLOT_HEADER_BYTES) abort();
    if (nanofly_crc32(0, m->blob, m->size - 4u) != m->crc) abort();
    nanofly_model model;
    if (nanofly_model_init(&model, m->blob, m->size) != NANOFLY_OK) abort();
    if (nanofly_model_input_dim(&model) != OBS_DIM || nanofly_model_output_dim(&model) != ACT_DIM) abort();
}

static void boot(void)
{
    nf_nor_set_cut(&nor, -1, 0);
    busy_reason = 0; /* the firmware starts disarmed, motors stopped */
    memset(&controller, 0, sizeof controller);
    for (int t = 0; t < NF_CF_LINK_TRANSPORTS; t++) nf_parser_init(&reply_parser[t]);
    nf_parser_init(&request_parser);
    replies = requests = 0;
    memset(&platform, 0, sizeof platform);
    platform.flash = &guarded_ops;
    platform.write = link_write;
    platform.busy = link_busy;
    platform.describe = link_describe;
    platform.obs_dim = OBS_DIM;
    platform.act_dim = ACT_DIM;
    nf_cf_link_init(&platform, NULL, 0u, 0u);
    check_running();
}

/* ---- one input ------------------------------------------------------------------------- */
static uint8_t queued[1u << 17]; /* host -> board bytes not sent yet */
static size_t queued_len, queued_sent;

static void send_queued(size_t n, size_t packet_bytes)
{
    while (n > 0u && queued_sent < queued_len) {
        size_t k = queued_len - queued_sent;
        if (k > packet_bytes) k = packet_bytes;
        if (k > n) k = n;
        send_packet(queued + queued_sent, k);
        queued_sent += k;
        n -= k;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t encoded[NF_FRAME_MAX_ENCODED + 64];
    flash_setup();
    memset(nor.mem, 0xFF, nor.size); /* every input starts on erased flash */
    queued_len = queued_sent = 0;
    boot();
    if (size == 0) return 0;
    const uint8_t mode = data[0];
    data++;
    size--;
    while (size > 0) {
        const uint8_t op = (mode & 1u) ? 2u : (uint8_t)(data[0] & 7u);
        if (!(mode & 1u)) {
            data++;
            size--;
        }
        if (op == 0) { /* frame */
            if (size < 4) break;
            const uint8_t type = data[0], seq = data[1];
            size_t length = (size_t)(data[2] | data[3] << 8);
            data += 4;
            size -= 4;
            if (length > size) length = size;
            if (length > NF_MAX_PAYLOAD + 8) length = NF_MAX_PAYLOAD + 8; /* a bit over: too long */
            const size_t n = nf_frame_encode(type, seq, data, (uint16_t)length, encoded, sizeof encoded);
            if (n == 0) abort(); /* the buffer is big enough for any length used here */
            if (queued_len + n <= sizeof queued) {
                memcpy(queued + queued_len, encoded, n);
                queued_len += n;
            }
            data += length;
            size -= length;
        } else if (op == 1 || op == 4) { /* packets, busy */
            if (size < 1) break;
            const uint8_t n = data[0];
            data++;
            size--;
            if (op == 4) {
                busy_reason = n % 3;
            } else if (n <= APPCHANNEL_MTU) {
                if (n == 0) send_packet(NULL, 0);
                else send_queued(n, APPCHANNEL_MTU);
            } else {
                send_queued(SIZE_MAX, (size_t)(n - 31u) % APPCHANNEL_MTU + 1u);
            }
        } else if (op == 2 || op == 3) { /* raw packet, UART bytes */
            if (size < 1) break;
            size_t n = op == 2 ? data[0] % (APPCHANNEL_MTU + 1u) : data[0];
            data++;
            size--;
            if (n > size) n = size;
            if (op == 2) {
                send_packet(data, n);
                if (mode & 1u) controller_step(); /* the controller steps far more often */
            } else {
                for (size_t i = 0; i < n; i++) link_feed_checked(NF_CF_LINK_UART, data + i, 1u);
            }
            data += n;
            size -= n;
        } else if (op == 5) {
            controller_step();
        } else if (op == 6) {
            if (size < 2) break;
            nf_nor_set_cut(&nor, data[0], data[1]);
            data += 2;
            size -= 2;
        } else { /* 7: reboot */
            boot();
        }
        check_running();
    }
    send_queued(SIZE_MAX, APPCHANNEL_MTU);
    controller_step();
    check_running();
    boot();
    controller_step();
    check_running();
    return 0;
}
