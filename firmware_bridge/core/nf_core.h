/* nanofly protocol core: framing, the common commands (HELLO, BEGIN, CHUNK, COMMIT, ACTIVATE,
 * STATUS), the reply cache for repeated frames, and the persistent two-slot model store
 * (nf_store.h) with verify-then-activate. One implementation shared by every target: the
 * bare-metal bridge firmware (QEMU / STM32F405), the Crazyflie app, and host builds (tests,
 * fuzzer, the Crazyflie stand-in). Wire format: docs/protocol.md.
 *
 * A target provides an nf_target (flash, transport, hooks), calls nf_core_init once at boot
 * (it activates the newest valid slot through the activate hook), and then passes every
 * received byte to nf_core_feed. Replies go out through the write hook, from within
 * nf_core_feed. Target-specific commands (the bridge firmware's INFER, INFER_STATE, ARM,
 * DISARM, HEARTBEAT) go to the command hook, which answers with nf_core_reply_ok /
 * nf_core_reply_error.
 *
 * Not thread-safe: call nf_core_feed, nf_core_handle_frame and the accessors from one task.
 * The only call allowed from another context (an interrupt) is nf_core_forget_cached.
 * No heap: an nf_core is a plain struct the target allocates statically. */
#ifndef NF_CORE_H
#define NF_CORE_H
#include <stddef.h>
#include <stdint.h>

#include "frame.h"
#include "nanofly_policy.h"
#include "nf_store.h"
#include "protocol.h"

/* Largest reply payload a target command may send (the bridge firmware's INFER_STATE reply
 * at 27 rows is 544 bytes). A target may raise it before including this header. */
#ifndef NF_CORE_REPLY_MAX
#define NF_CORE_REPLY_MAX 640u
#endif
#define NF_CORE_CACHE_MAX 32u   /* short replies are copied into the repeat cache */

/* The model the target should run (the activate hook's argument). */
typedef struct {
    /* The validated model, whose weights are in flash (slot memory). The pointer stays valid
     * until a later activate call has switched away from this slot and a BEGIN erased it;
     * the other fields are valid during the hook call only (copy what you need). */
    const nanofly_model *model;
    uint32_t model_id, model_crc, size;
    uint8_t format;             /* NANOFLY_FORMAT_* */
    uint8_t slot;               /* 0 or 1 */
    uint32_t sequence;
} nf_active_model;

/* Target values for HELLO and STATUS (the describe hook fills it; zero what does not apply). */
typedef struct {
    uint8_t cost_counter_kind;  /* NF_COUNTER_* */
    uint8_t clock_flags;        /* bit 0 PLL locked at 168 MHz, bit 1 emulated */
    uint8_t armed, failsafe_tripped;
    uint32_t sysclk_hz;
    uint16_t heartbeat_timeout_ms, control_rate_hz;
    uint16_t state_dim, history_len, max_histories, max_state_rows; /* INFER_STATE; 0: none */
    uint32_t uptime_ms;
    uint32_t ms_since_heartbeat; /* 0xFFFFFFFF: none yet */
    uint32_t last_heartbeat_ms, failsafe_trip_ms;
    float motors[4];            /* PWM ratios in [0, 1] */
    uint32_t inferences, last_infer_ticks, control_ticks, failsafe_trips;
    /* The model the target runs when the store has none active (a compiled-in default);
     * reported by HELLO / STATUS in that case. format 0: none. */
    uint8_t default_format;
    uint32_t default_model_id, default_model_crc, default_size;
} nf_target_state;

typedef struct nf_core nf_core;

typedef struct nf_target {
    void *ctx;                  /* passed to every hook */
    const nf_flash_ops *flash;  /* the two model slots */
    /* Transport: send encoded bytes (a whole frame per call, delimiters included). */
    void (*write)(void *ctx, const uint8_t *data, size_t len);
    /* May the store erase/program flash now? 0: yes; else a reason NF_BUSY_* (> 0), and the
     * request (BEGIN, CHUNK, COMMIT, ACTIVATE) is refused with NF_ERR_BUSY, detail0 = reason.
     * Asked right before every flash write, so a target that starts its motors in between is
     * still refused. NULL: always allowed. */
    int (*may_write_flash)(void *ctx);
    /* Switch the running model to *m (m->model points into the slot), or to the target's
     * compiled-in default / none when m is NULL (only at boot, when no slot is valid). The
     * target makes the switch atomic against its control loop. Called from nf_core_init and
     * from ACTIVATE after the activation mark is in flash. */
    void (*activate)(void *ctx, const nf_active_model *m);
    /* A target command (any type the core does not handle). Return 0 for an unknown type (the
     * core answers UNKNOWN_COMMAND); else answer exactly once with nf_core_reply_ok /
     * nf_core_reply_error and return 1. NULL: no target commands. */
    int (*command)(void *ctx, nf_core *core, const nf_frame *req);
    /* A BEGIN started a new upload (the staging slot was erased). NULL: not needed. */
    void (*upload_started)(void *ctx);
    /* Fill the target's part of HELLO and STATUS. NULL: all zero. */
    void (*describe)(void *ctx, nf_target_state *out);
    /* Model interface the target runs; COMMIT refuses other dimensions (NF_ERR_DIMS). */
    uint16_t obs_dim, act_dim;
    uint8_t formats;            /* bit f: NANOFLY_FORMAT f accepted */
    /* bit t set: the reply to target command type t (< 32) changes state, so it is kept and a
     * repeated identical frame is answered from the cache instead of running twice. */
    uint32_t cacheable_commands;
} nf_target;

struct nf_core {
    const nf_target *target;
    nf_parser parser;
    struct {                    /* the upload in progress, in the staging slot */
        uint8_t state;          /* NF_STAGE_* */
        uint8_t slot;           /* the slot BEGIN writes (never the running one) */
        uint8_t format;
        uint32_t size, crc, model_id, received;
        uint32_t sequence;      /* header sequence once committed */
        nanofly_model model;    /* valid once VERIFIED */
    } staging;
    struct {
        int8_t slot;            /* -1: no model from the store (default / none) */
        nf_active_model info;
    } active;
    /* The validated view of each slot's model. The running slot's entry is never rewritten
     * (only the staging slot's, at ACTIVATE), so a control loop on another task can keep
     * using the pointer it got until the target's activate hook gives it a new one. */
    nanofly_model slot_model[NF_STORE_SLOTS];
    uint32_t errors_sent, repeats_answered, rx_overflows, flash_errors;
    struct {                    /* last state-changing request and its reply */
        volatile uint8_t valid;
        uint8_t type, seq, reply_type, in_reply_buf;
        uint32_t request_crc;
        uint16_t length;
        uint8_t payload[NF_CORE_CACHE_MAX];
    } cache;
    uint8_t reply_buf[NF_CORE_REPLY_MAX];
    uint8_t tx_buf[NF_CORE_REPLY_MAX + NF_CORE_REPLY_MAX / 254u + 16u];
};

/* Reset the core, scan both slots and activate the newest valid one (activate hook; NULL
 * when none). A committed but not activated slot newer than the active one is kept as a
 * verified upload, so a host that reconnects can still ACTIVATE it (BEGIN of the same model
 * resumes at "verified"). Returns the slot activated, or -1. */
int nf_core_init(nf_core *core, const nf_target *target);

/* Bytes from the transport. Frames that complete are handled at once (replies written). */
void nf_core_feed(nf_core *core, const uint8_t *data, size_t len);
/* Handle one decoded frame (nf_core_feed does this; for targets with their own parser). */
void nf_core_handle_frame(nf_core *core, const nf_frame *req);

/* For target commands: build the payload in nf_core_reply_buf (NF_CORE_REPLY_MAX bytes), then
 * nf_core_reply_ok(core, req, length) sends type | NF_REPLY_FLAG. */
uint8_t *nf_core_reply_buf(nf_core *core);
void nf_core_reply_ok(nf_core *core, const nf_frame *req, uint16_t length);
void nf_core_reply_error(nf_core *core, const nf_frame *req, uint8_t code, int32_t detail0,
                         int32_t detail1);
/* Forget a cached reply of the given type (from an interrupt: e.g. the dead man's switch
 * forgets a cached ARM reply, which says "armed" and no longer is). */
void nf_core_forget_cached(nf_core *core, uint8_t type);

/* The running model from the store, or NULL (default / none). */
const nf_active_model *nf_core_active(const nf_core *core);
uint8_t nf_core_staging_state(const nf_core *core); /* NF_STAGE_* */
const nf_parser *nf_core_parser(const nf_core *core);
void nf_core_set_rx_overflows(nf_core *core, uint32_t total); /* STATUS counter */
/* 0 when the active model's flash bytes still match its CRC (fuzzer / self-test). */
int nf_core_self_check(const nf_core *core);
#endif
