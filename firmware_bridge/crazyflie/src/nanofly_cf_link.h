/* The nanofly app's link to the host: the shared protocol core (firmware_bridge/core) on the
 * Crazyflie's transports, the model store in two flash slots, and the hand-over of a newly
 * activated model to the controller.
 *
 * Platform-neutral C: the app (nanofly_app.c) gives it the CRTP app channel, an optional deck
 * UART and the STM32F405 flash (nanofly_cf_flash.c); the host stand-in (`nanofly crazyflie
 * sitl`) gives it UDP through the CRTP peer and a file-backed NOR flash emulator. Everything
 * from the protocol down to which slot is running is this file and the core, on both.
 *
 * Threads: nf_cf_link_feed and nf_cf_link_init run in one task (the app task); the controller
 * (the stabilizer task, higher priority) only calls nf_cf_link_take_pending, which reads what
 * the activate hook published. A model is published by its fields first and its sequence
 * number last, so the controller never sees half of one; flash writes are refused until the
 * controller took the last published model, so the slot it runs from is never erased under it. */
#ifndef NANOFLY_CF_LINK_H
#define NANOFLY_CF_LINK_H
#include <stddef.h>
#include <stdint.h>

#include "nf_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Where the bytes of a request came from; its reply goes back the same way. */
enum { NF_CF_LINK_APP_CHANNEL = 0, NF_CF_LINK_UART = 1, NF_CF_LINK_TRANSPORTS = 2 };

/* nanofly.modelSource */
enum { NF_CF_MODEL_COMPILED_IN = 0, NF_CF_MODEL_FLASH_SLOT = 1 };

typedef struct {
    void *ctx;
    const nf_flash_ops *flash;
    /* Send bytes on a transport (the app channel cuts them into 30-byte packets). */
    void (*write)(void *ctx, int transport, const uint8_t *data, size_t len);
    /* 0 when flash may be written now, else NF_BUSY_ARMED / NF_BUSY_FLYING. */
    int (*busy)(void *ctx);
    /* HELLO / STATUS values (clock, armed, motors, uptime); NULL: all zero. */
    void (*describe)(void *ctx, nf_target_state *out);
    uint16_t obs_dim, act_dim;   /* the model interface the controller runs (COMMIT checks it) */
} nf_cf_link_platform;

/* A model for the controller: a blob in flash (a slot) or the compiled-in one. */
typedef struct {
    const void *blob;
    uint32_t size, crc;
    uint8_t source;              /* NF_CF_MODEL_* */
    uint8_t slot;                /* for NF_CF_MODEL_FLASH_SLOT */
} nf_cf_link_model;

/* Start the core: scans the slots and publishes the newest valid one, or the compiled-in
 * model (default_blob, may be NULL) when none is valid. Returns the slot published or -1. */
int nf_cf_link_init(const nf_cf_link_platform *platform, const void *default_blob,
                    uint32_t default_size, uint32_t default_crc);
/* The app channel's packet size, the firmware's APPCHANNEL_MTU (the app checks that they agree). */
#define NF_CF_LINK_PACKET_BYTES 30u
/* Hands data to send() in order, in packets of at most NF_CF_LINK_PACKET_BYTES: how every reply
 * goes out on the app channel. */
void nf_cf_link_send_packets(const uint8_t *data, size_t len,
                             void (*send)(const uint8_t *packet, size_t n));
/* Bytes received on a transport. */
void nf_cf_link_feed(int transport, const uint8_t *data, size_t len);
/* For the controller, between two steps: 1 and *out when a model was published since the last
 * call, else 0. */
int nf_cf_link_take_pending(nf_cf_link_model *out);
/* 1 while a published model waits for nf_cf_link_take_pending. */
int nf_cf_link_has_pending(void);
/* The model the controller was last handed (what nanofly.modelCrc / modelSource show). */
const nf_cf_link_model *nf_cf_link_current(void);
const nf_core *nf_cf_link_core(void);

#ifdef __cplusplus
}
#endif
#endif
