/* Host stand-in for the nanofly Crazyflie app's link (`nanofly crazyflie sitl`): the app's own
 * link and store code (nanofly_cf_link.c over the shared core) on a file-backed NOR flash laid
 * out as the STM32F405's (sectors 4 x 16 KiB, 64 KiB, 7 x 128 KiB; the store in sectors 10 and
 * 11, as nanofly_cf_flash.h puts it on the Crazyflie). Python (crazyflie_link_standin.py) loads
 * it with ctypes and feeds it the app-channel packets the CRTP peer receives.
 *
 * What stands in for the firmware: the reply callback (the app channel), the busy state (the
 * peer's arming), and nf_link_sitl_controller_step, which takes a published model as the
 * controller does between two stabilizer steps and checks it with the policy runtime. */
#include <stdio.h>
#include <string.h>

#include "nanofly_cf_flash.h"
#include "nanofly_cf_link.h"
#include "nanofly_policy.h"
#include "nor_flash.h"

typedef void (*nf_link_sitl_write_fn)(int transport, const uint8_t *data, size_t len);

static const uint32_t f405_sectors[12] = {
    16384u, 16384u, 16384u, 16384u, 65536u,
    131072u, 131072u, 131072u, 131072u, 131072u, 131072u, 131072u};

static nf_nor nor;
static nf_flash_ops flash;
static nf_cf_link_platform platform;
static nf_link_sitl_write_fn write_fn;
static int busy_reason;
static int model_status = -1;
static nanofly_model running;

static void sitl_send_app_channel_packet(const uint8_t *packet, size_t n)
{
    write_fn(NF_CF_LINK_APP_CHANNEL, packet, n);
}

/* Replies go to Python packet by packet, cut as the app cuts them for the radio. */
static void sitl_write(void *ctx, int transport, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (!write_fn) {
        return;
    }
    if (transport == NF_CF_LINK_APP_CHANNEL) {
        nf_cf_link_send_packets(data, len, sitl_send_app_channel_packet);
    } else {
        write_fn(transport, data, len);
    }
}

static int sitl_busy(void *ctx)
{
    (void)ctx;
    return busy_reason;
}

static void sitl_describe(void *ctx, nf_target_state *out)
{
    (void)ctx;
    out->clock_flags = 2u; /* emulated */
    out->armed = busy_reason == NF_BUSY_ARMED;
    out->control_rate_hz = 1000u;
}

/* Open the flash image and start the link (scans the slots). default_blob: the compiled-in
 * model's bytes (kept by the caller), or NULL. Returns the slot activated, -1 for none, or -2
 * with a message in err. */
int nf_link_sitl_start(const char *flash_path, nf_link_sitl_write_fn write, const void *default_blob,
                       uint32_t default_size, uint32_t default_crc, uint16_t obs_dim, uint16_t act_dim,
                       char *err, size_t err_len)
{
    if (nf_nor_open(&nor, flash_path, 12u, f405_sectors, err, err_len) != 0) {
        return -2;
    }
    const uint32_t first[2] = {NF_CF_STORE_FIRST_SECTOR, NF_CF_STORE_FIRST_SECTOR + 1u};
    nf_nor_flash_ops(&nor, &flash, first, 1u);
    write_fn = write;
    memset(&platform, 0, sizeof(platform));
    platform.flash = &flash;
    platform.write = sitl_write;
    platform.busy = sitl_busy;
    platform.describe = sitl_describe;
    platform.obs_dim = obs_dim;
    platform.act_dim = act_dim;
    return nf_cf_link_init(&platform, default_blob, default_size, default_crc);
}

void nf_link_sitl_stop(void)
{
    nf_nor_close(&nor);
}

void nf_link_sitl_feed(const uint8_t *data, size_t len)
{
    nf_cf_link_feed(NF_CF_LINK_APP_CHANNEL, data, len);
}

/* 0, NF_BUSY_ARMED or NF_BUSY_FLYING: what the firmware's supervisor and motors would say. */
void nf_link_sitl_set_busy(int reason)
{
    busy_reason = reason;
}

/* The controller's side: take a published model (the firmware does this in controllerOutOfTree
 * between two steps) and load it with the policy runtime. Returns 1 when one was taken. */
int nf_link_sitl_controller_step(void)
{
    nf_cf_link_model m;
    if (!nf_cf_link_take_pending(&m)) {
        return 0;
    }
    model_status = m.blob ? nanofly_model_init(&running, m.blob, m.size) : -1;
    return 1;
}

/* What the controller runs: CRC (0: none), source (NF_CF_MODEL_*), slot, load status. */
void nf_link_sitl_model(uint32_t *crc, int *source, int *slot, int *status)
{
    const nf_cf_link_model *m = nf_cf_link_current();
    *crc = m->crc;
    *source = m->source;
    *slot = m->slot;
    *status = model_status;
}
