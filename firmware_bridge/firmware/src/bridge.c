/* Command handler: HELLO, BEGIN/CHUNK/COMMIT/ACTIVATE (model upload into a staging slot),
 * INFER and INFER_STATE (on-board action histories, one per environment), STATUS,
 * ARM/DISARM/HEARTBEAT (dead man's switch). Payload layouts: docs/protocol.md.
 *
 * Safety rules kept here:
 *  - uploads only ever write the staging slot; the active slot is never touched;
 *  - ACTIVATE swaps slots only for a staged model that COMMIT verified (every byte received,
 *    transfer CRC, header, dimensions, finite weights) and whose CRC is checked again;
 *  - armed motors follow the last INFER action only while HEARTBEATs keep arriving; 200 ms
 *    without one zeroes the motors and disarms (from the timer interrupt, so a busy or stuck
 *    host link cannot delay it).
 *  - the action histories live in the staging slot only while it is empty; BEGIN of a new
 *    upload forgets them, so they never overlap model bytes.
 */
#include "bridge.h"

#include <math.h>
#include <string.h>

#include "hal.h"
#include "nanofly_policy.h"

#define FORMATS_SUPPORTED ((1u << NANOFLY_FORMAT_F32) | (1u << NANOFLY_FORMAT_INT8))
/* largest reply payload: STATUS (100) or a full INFER_STATE reply */
#define STATE_REPLY_MAX (NF_MAX_STATE_ROWS * NF_STATE_REPLY_ROW_BYTES + 4u)
#define REPLY_MAX (STATE_REPLY_MAX > 160u ? STATE_REPLY_MAX : 160u)
#define CACHE_MAX 32           /* replies of state-changing commands are kept for repeats */

static uint8_t slot_mem[2][NF_SLOT_BYTES] __attribute__((aligned(8)));

typedef struct {
    uint8_t state;             /* NF_STAGE_* */
    uint8_t format;
    uint32_t size, crc, model_id, received;
    nanofly_model model;       /* valid once VERIFIED */
} staging_t;

typedef struct {
    int8_t slot;               /* -1: no active model */
    uint8_t format;
    uint32_t size, crc, model_id;
    nanofly_model model;
} active_t;

static staging_t staging;
static active_t active;

/* Shared with the timer interrupt. */
static volatile uint8_t armed;
static volatile uint8_t failsafe_latched;   /* the switch tripped since the last ARM */
static volatile uint32_t last_heartbeat_ms;
static volatile uint8_t heartbeat_seen;
static volatile uint32_t failsafe_trip_ms;
static volatile uint32_t failsafe_trips;
static volatile uint32_t control_ticks;
static uint32_t last_control_ms;
static float last_action[NF_ACT_DIM];
static float motors[4];

static uint32_t inferences, last_infer_ticks, errors_sent, repeats_answered;
#if NF_HIST_LEN > 0
static uint8_t history_loaded[NF_MAX_HISTORIES]; /* env has a history in the staging slot */
#endif
static const nf_parser *parser_ref;
static uint32_t rx_overflows;

/* The last state-changing request and its reply, to answer a repeated frame (a host retry
 * whose reply was lost, or a duplicated frame) without doing it twice. The dead man's switch
 * (timer interrupt) forgets a cached ARM reply when it trips: that reply says "armed", which
 * is no longer true, so a repeated ARM is done again and answered as it now stands. */
static struct {
    volatile uint8_t valid;    /* written last in reply(); cleared by the timer interrupt */
    uint8_t type, seq, reply_type;
    uint8_t in_reply_buf;      /* the reply is still in reply_buf (too big to copy) */
    uint32_t request_crc;
    uint16_t length;
    uint8_t payload[CACHE_MAX];
} cache;

static uint8_t reply_buf[REPLY_MAX];
static uint8_t tx_buf[REPLY_MAX + REPLY_MAX / 254 + 16];

static void send_frame(uint8_t type, uint8_t seq, const uint8_t *payload, uint16_t length) {
    size_t n = nf_frame_encode(type, seq, payload, length, tx_buf, sizeof tx_buf);
    if (n) hal_uart_write(tx_buf, n);
}

static uint8_t cacheable(uint8_t type) {
    return type == NF_CMD_BEGIN || type == NF_CMD_CHUNK || type == NF_CMD_COMMIT ||
           type == NF_CMD_ACTIVATE || type == NF_CMD_ARM || type == NF_CMD_DISARM ||
           type == NF_CMD_INFER_STATE; /* shifts histories: a repeat must not shift twice */
}

static void reply(const nf_frame *req, uint8_t type, const uint8_t *payload, uint16_t length) {
    /* reply_buf stays untouched until the next frame, and any frame other than the repeat
     * forgets the cache, so a reply in reply_buf is kept by reference. */
    if (cacheable(req->type) && (length <= CACHE_MAX || payload == reply_buf)) {
        cache.type = req->type;
        cache.seq = req->seq;
        cache.request_crc = req->crc;
        cache.reply_type = type;
        cache.length = length;
        cache.in_reply_buf = payload == reply_buf;
        if (!cache.in_reply_buf) memcpy(cache.payload, payload, length);
        __asm volatile("" ::: "memory"); /* the entry is whole before it is marked valid */
        cache.valid = 1;
    }
    send_frame(type, req->seq, payload, length);
}

static void reply_ok(const nf_frame *req, uint16_t length) {
    reply(req, (uint8_t)(req->type | NF_REPLY_FLAG), reply_buf, length);
}

static void reply_error(const nf_frame *req, uint8_t code, int32_t detail0, int32_t detail1) {
    uint8_t p[12] = {req->type, code, 0, 0};
    nf_put_u32(p + 4, (uint32_t)detail0);
    nf_put_u32(p + 8, (uint32_t)detail1);
    errors_sent++;
    reply(req, NF_REPLY_ERROR, p, sizeof p);
}

static int check_length(const nf_frame *req, uint16_t expected) {
    if (req->length == expected) return 1;
    reply_error(req, NF_ERR_LENGTH, req->length, expected);
    return 0;
}

static float motor_ratio(float action) {
    /* rpm = (a + 1) / 2 * max_rpm, PWM ratio = rpm / max_rpm */
    float r = (action + 1.0f) * 0.5f;
    if (!(r > 0.0f)) return 0.0f; /* also NaN */
    return r > 1.0f ? 1.0f : r;
}

void bridge_init(void) {
    memset(&staging, 0, sizeof staging);
    memset(&active, 0, sizeof active);
    memset(&cache, 0, sizeof cache);
#if NF_HIST_LEN > 0
    memset(history_loaded, 0, sizeof history_loaded);
#endif
    active.slot = -1;
    armed = 0;
    failsafe_latched = 0;
    heartbeat_seen = 0;
    last_heartbeat_ms = failsafe_trip_ms = failsafe_trips = control_ticks = last_control_ms = 0;
    inferences = last_infer_ticks = errors_sent = repeats_answered = rx_overflows = 0;
    for (int i = 0; i < NF_ACT_DIM; i++) last_action[i] = -1.0f;
    for (int i = 0; i < 4; i++) motors[i] = 0.0f;
    hal_motors_write(motors);
}

void bridge_set_parser(const nf_parser *parser) { parser_ref = parser; }
void bridge_count_rx_overflow(uint32_t total) { rx_overflows = total; }

void bridge_control_tick(uint32_t now_ms) {
    /* Dead man's switch, checked every tick (1 ms while armed): zero at the latest 200 ms
     * after the last heartbeat. */
    if (armed && (uint32_t)(now_ms - last_heartbeat_ms) >= NF_HEARTBEAT_TIMEOUT_MS) {
        armed = 0;
        failsafe_latched = 1;
        failsafe_trip_ms = now_ms;
        failsafe_trips++;
        /* An ARM cannot be cached and trip within the same 200 ms, so this never meets a
         * half-written ARM entry. Other cached replies stay: none reports the armed state,
         * and a repeated INFER_STATE must still not shift the histories twice. */
        if (cache.type == NF_CMD_ARM) cache.valid = 0;
        for (int i = 0; i < 4; i++) motors[i] = 0.0f;
        hal_motors_write(motors);
        hal_set_tick_ms(NF_IDLE_TICK_MS);
    }
    /* Control-loop step: 500 Hz while armed (every other 1 ms tick); each 10 ms tick idle. */
    if ((uint32_t)(now_ms - last_control_ms) < 1000 / NF_CONTROL_RATE_HZ) return;
    last_control_ms = now_ms;
    control_ticks++;
    for (int i = 0; i < 4; i++) motors[i] = armed && i < NF_ACT_DIM ? motor_ratio(last_action[i]) : 0.0f;
    hal_motors_write(motors);
}

static uint8_t slot_of_staging(void) { return active.slot == 0 ? 1 : 0; }

/* ---- commands ---------------------------------------------------------------------- */

static void cmd_hello(const nf_frame *req) {
    if (!check_length(req, 4)) return;
    uint16_t host_version = nf_get_u16(req->payload);
    uint16_t host_max = nf_get_u16(req->payload + 2);
    if (host_version != NF_PROTOCOL_VERSION) {
        reply_error(req, NF_ERR_PROTOCOL, host_version, NF_PROTOCOL_VERSION);
        return;
    }
    uint8_t *p = reply_buf;
    memset(p, 0, 52);
    nf_put_u16(p + 0, NF_PROTOCOL_VERSION);
    p[2] = NF_FW_VERSION_MAJOR;
    p[3] = NF_FW_VERSION_MINOR;
    p[4] = NF_FW_VERSION_PATCH;
    p[5] = hal_cost_counter_kind();
    nf_put_u16(p + 6, host_max < NF_MAX_PAYLOAD ? host_max : NF_MAX_PAYLOAD);
    nf_put_u32(p + 8, NF_SLOT_BYTES);
    p[12] = FORMATS_SUPPORTED;
    p[13] = (uint8_t)((armed ? 1 : 0) | (hal_clock_flags() & 3u) << 1); /* armed, PLL, emulator */
    nf_put_u16(p + 14, NF_OBS_DIM);
    nf_put_u16(p + 16, NF_ACT_DIM);
    nf_put_u16(p + 18, NF_HEARTBEAT_TIMEOUT_MS);
    nf_put_u16(p + 20, NF_CONTROL_RATE_HZ);
    p[22] = active.slot >= 0 ? active.format : 0;
    p[23] = 0;
    nf_put_u32(p + 24, active.slot >= 0 ? active.model_id : 0);
    nf_put_u32(p + 28, active.slot >= 0 ? active.crc : 0);
    nf_put_u32(p + 32, active.slot >= 0 ? active.size : 0);
    nf_put_u32(p + 36, hal_sysclk_hz());
    nf_put_u16(p + 40, NF_MAX_PAYLOAD);
    nf_put_u16(p + 42, NF_MIN_PAYLOAD);
    /* INFER_STATE capabilities (history length 0: not supported) */
    nf_put_u16(p + 44, NF_HIST_LEN > 0 ? NF_STATE_DIM : 0);
    nf_put_u16(p + 46, NF_HIST_LEN);
    nf_put_u16(p + 48, (uint16_t)NF_MAX_HISTORIES);
    nf_put_u16(p + 50, NF_HIST_LEN > 0 ? NF_MAX_STATE_ROWS : 0);
    reply_ok(req, 52);
}

static void cmd_begin(const nf_frame *req) {
    if (!check_length(req, 16)) return;
    uint32_t size = nf_get_u32(req->payload);
    uint32_t crc = nf_get_u32(req->payload + 4);
    uint8_t format = req->payload[8];
    uint32_t model_id = nf_get_u32(req->payload + 12);
    if (format > 7 || !(FORMATS_SUPPORTED & (1u << format))) {
        reply_error(req, NF_ERR_FORMAT, format, FORMATS_SUPPORTED);
        return;
    }
    if (size > NF_SLOT_BYTES || size < NF_MIN_MODEL_BYTES) {
        reply_error(req, NF_ERR_SIZE, (int32_t)size, NF_SLOT_BYTES);
        return;
    }
    /* The same upload again (a retry, or a host reconnecting): keep what already arrived so
     * it resumes. Anything else starts over. */
    int same = staging.state != NF_STAGE_EMPTY && staging.size == size && staging.crc == crc &&
               staging.format == format && staging.model_id == model_id;
    if (!same) {
#if NF_HIST_LEN > 0
        memset(history_loaded, 0, sizeof history_loaded); /* the upload overwrites them */
#endif
        staging.state = NF_STAGE_RECEIVING;
        staging.size = size;
        staging.crc = crc;
        staging.format = format;
        staging.model_id = model_id;
        staging.received = 0;
    }
    nf_put_u32(reply_buf, staging.received);
    reply_buf[4] = staging.state;
    reply_buf[5] = reply_buf[6] = reply_buf[7] = 0;
    reply_ok(req, 8);
}

static void cmd_chunk(const nf_frame *req) {
    if (req->length < 5) {
        reply_error(req, NF_ERR_LENGTH, req->length, 5);
        return;
    }
    if (staging.state != NF_STAGE_RECEIVING) {
        reply_error(req, NF_ERR_STATE, staging.state, NF_STAGE_RECEIVING);
        return;
    }
    uint32_t offset = nf_get_u32(req->payload);
    uint32_t n = (uint32_t)req->length - 4;
    /* Chunks may repeat or overlap (idempotent) but may not leave a gap. */
    if (offset > staging.received || offset > staging.size || n > staging.size - offset) {
        reply_error(req, NF_ERR_OFFSET, (int32_t)offset, (int32_t)staging.received);
        return;
    }
    memcpy(slot_mem[slot_of_staging()] + offset, req->payload + 4, n);
    if (offset + n > staging.received) staging.received = offset + n;
    nf_put_u32(reply_buf, staging.received);
    reply_ok(req, 4);
}

static void commit_reply(const nf_frame *req) {
    nf_put_u32(reply_buf, staging.crc);
    nf_put_u32(reply_buf + 4, staging.size);
    nf_put_u16(reply_buf + 8, (uint16_t)nanofly_model_input_dim(&staging.model));
    nf_put_u16(reply_buf + 10, (uint16_t)nanofly_model_output_dim(&staging.model));
    reply_ok(req, 12);
}

static void cmd_commit(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    if (staging.state == NF_STAGE_VERIFIED) {
        commit_reply(req);
        return;
    }
    if (staging.state != NF_STAGE_RECEIVING) {
        reply_error(req, NF_ERR_STATE, staging.state, NF_STAGE_RECEIVING);
        return;
    }
    if (staging.received != staging.size) {
        reply_error(req, NF_ERR_INCOMPLETE, (int32_t)staging.received, (int32_t)staging.size);
        return;
    }
    const uint8_t *blob = slot_mem[slot_of_staging()];
    uint32_t crc = nanofly_crc32(0, blob, staging.size - 4);
    if (crc != staging.crc) {
        staging.state = NF_STAGE_EMPTY;
        reply_error(req, NF_ERR_CRC, (int32_t)crc, (int32_t)staging.crc);
        return;
    }
    int rc = nanofly_model_init(&staging.model, blob, staging.size);
    if (rc != NANOFLY_OK) {
        staging.state = NF_STAGE_EMPTY;
        reply_error(req, NF_ERR_MODEL, rc, 0);
        return;
    }
    uint32_t in = nanofly_model_input_dim(&staging.model), out = nanofly_model_output_dim(&staging.model);
    if (in != NF_OBS_DIM || out != NF_ACT_DIM || blob[6] != staging.format) {
        staging.state = NF_STAGE_EMPTY;
        if (blob[6] != staging.format)
            reply_error(req, NF_ERR_FORMAT, blob[6], staging.format);
        else
            reply_error(req, NF_ERR_DIMS, (int32_t)(in << 16 | out), NF_OBS_DIM << 16 | NF_ACT_DIM);
        return;
    }
    staging.state = NF_STAGE_VERIFIED;
    commit_reply(req);
}

static void cmd_activate(const nf_frame *req) {
    if (!check_length(req, 4)) return;
    uint32_t expected_crc = nf_get_u32(req->payload);
    if (armed) {
        reply_error(req, NF_ERR_ARMED, 0, 0);
        return;
    }
    if (staging.state != NF_STAGE_VERIFIED) {
        reply_error(req, NF_ERR_NOT_VERIFIED, staging.state, NF_STAGE_VERIFIED);
        return;
    }
    if (staging.crc != expected_crc) {
        reply_error(req, NF_ERR_MISMATCH, (int32_t)staging.crc, (int32_t)expected_crc);
        return;
    }
    uint8_t slot = slot_of_staging();
    /* Belt and braces: check the staged bytes again (transfer CRC, then the runtime's own
     * validation) right before they become the active model. */
    nanofly_model model;
    uint32_t crc = nanofly_crc32(0, slot_mem[slot], staging.size - 4);
    int rc = crc == staging.crc ? nanofly_model_init(&model, slot_mem[slot], staging.size) : NANOFLY_ERR_CRC;
    if (rc != NANOFLY_OK) {
        staging.state = NF_STAGE_EMPTY;
        reply_error(req, crc == staging.crc ? NF_ERR_MODEL : NF_ERR_CRC,
                    crc == staging.crc ? rc : (int32_t)crc, (int32_t)staging.crc);
        return;
    }
    uint32_t irq = hal_irq_save();
    active.slot = (int8_t)slot;
    active.format = staging.format;
    active.size = staging.size;
    active.crc = staging.crc;
    active.model_id = staging.model_id;
    active.model = model;
    staging.state = NF_STAGE_EMPTY; /* the old active slot is now the staging slot */
    staging.received = 0;
    for (int i = 0; i < NF_ACT_DIM; i++) last_action[i] = -1.0f;
    hal_irq_restore(irq);
    nf_put_u32(reply_buf, active.model_id);
    nf_put_u32(reply_buf + 4, active.crc);
    nf_put_u32(reply_buf + 8, active.size);
    reply_ok(req, 12);
}

/* ---- action histories (one per environment, in the empty staging slot) --------------- */

static float clip_action(float a) {
    /* as the simulator stores it: min(max(a, -1), 1) in float32 */
    return a < -1.0f ? -1.0f : (a > 1.0f ? 1.0f : a);
}

#if NF_HIST_LEN > 0
static float *history_of(uint32_t env) {
    return (float *)(void *)slot_mem[slot_of_staging()] + env * NF_HIST_FLOATS;
}
#endif

/* 0 when env's history is on board, else why not (NF_HIST_*). */
static int history_problem(uint32_t env, int need_loaded) {
#if NF_HIST_LEN > 0
    if (env >= NF_MAX_HISTORIES) return NF_HIST_RANGE;
    if (staging.state != NF_STAGE_EMPTY) return NF_HIST_BUSY;
    if (need_loaded && !history_loaded[env]) return NF_HIST_NOT_LOADED;
    return 0;
#else
    (void)env;
    (void)need_loaded;
    return NF_HIST_LAYOUT;
#endif
}

/* After an inference on obs: env's history = [clip(action), obs history minus its oldest]. */
static void history_push(uint32_t env, const float *obs, const float *action) {
#if NF_HIST_LEN > 0
    float *h = history_of(env);
    memmove(h + NF_ACT_DIM, obs + NF_STATE_DIM, 4u * (NF_HIST_FLOATS - NF_ACT_DIM));
    for (int k = 0; k < NF_ACT_DIM; k++) h[k] = clip_action(action[k]);
    history_loaded[env] = 1;
#else
    (void)env;
    (void)obs;
    (void)action;
#endif
}

static float obs[NF_OBS_DIM]; /* model input of INFER / INFER_STATE */

static uint32_t infer_once(const float *obs, float *action) {
    uint32_t t0 = hal_cost_counter();
    nanofly_policy_act(&active.model, obs, action);
    uint32_t ticks = hal_cost_counter() - t0;
    last_infer_ticks = ticks;
    inferences++;
    uint32_t irq = hal_irq_save();
    memcpy(last_action, action, 4u * NF_ACT_DIM);
    hal_irq_restore(irq);
    return ticks;
}

static void cmd_infer(const nf_frame *req) {
    /* float32[obs] (the original layout: no history kept) or float32[obs], u16 env, u16 0 */
    uint32_t env = NF_INFER_NO_ENV;
    if (req->length == NF_OBS_DIM * 4 + 4) {
        env = nf_get_u16(req->payload + NF_OBS_DIM * 4);
    } else if (!check_length(req, NF_OBS_DIM * 4)) {
        return;
    }
    if (active.slot < 0) {
        reply_error(req, NF_ERR_NO_MODEL, 0, 0);
        return;
    }
    float action[NF_ACT_DIM];
    memcpy(obs, req->payload, sizeof obs);
    for (int i = 0; i < NF_OBS_DIM; i++) {
        if (!isfinite(obs[i])) {
            reply_error(req, NF_ERR_NONFINITE, i, 0);
            return;
        }
    }
    uint32_t ticks = infer_once(obs, action);
    /* (Re)load env's history from this observation, so the host can resynchronize any time;
     * idempotent, so a repeated INFER needs no reply cache. */
    if (env != NF_INFER_NO_ENV && history_problem(env, 0) == 0) history_push(env, obs, action);
    memcpy(reply_buf, action, sizeof action); /* little-endian float32 on both ends */
    nf_put_u32(reply_buf + 4 * NF_ACT_DIM, ticks);
    nf_put_u32(reply_buf + 4 * NF_ACT_DIM + 4, active.crc);
    reply_ok(req, 4 * NF_ACT_DIM + 8);
}

static void cmd_infer_state(const nf_frame *req) {
    /* u16 count, u16 env[count], float32 state[count][NF_STATE_DIM] */
    if (req->length < 2) {
        reply_error(req, NF_ERR_LENGTH, req->length, 2 + NF_STATE_ROW_BYTES);
        return;
    }
    uint32_t count = nf_get_u16(req->payload);
    if (count == 0 || count > NF_MAX_STATE_ROWS) {
        reply_error(req, NF_ERR_LENGTH, req->length, 2 + NF_MAX_STATE_ROWS * NF_STATE_ROW_BYTES);
        return;
    }
    if (!check_length(req, (uint16_t)(2 + count * NF_STATE_ROW_BYTES))) return;
    if (active.slot < 0) {
        reply_error(req, NF_ERR_NO_MODEL, 0, 0);
        return;
    }
    const uint8_t *envs = req->payload + 2;
    const uint8_t *states = envs + 2 * count;
    /* Check every row before running any, so a refused frame changes no history. */
    for (uint32_t r = 0; r < count; r++) {
        uint32_t env = nf_get_u16(envs + 2 * r);
        int problem = history_problem(env, 1);
        if (problem) {
            reply_error(req, NF_ERR_HISTORY, (int32_t)env, problem);
            return;
        }
        for (uint32_t j = 0; j < r; j++) {
            if (nf_get_u16(envs + 2 * j) == env) { /* one step per env and frame */
                reply_error(req, NF_ERR_HISTORY, (int32_t)env, NF_HIST_DUPLICATE);
                return;
            }
        }
        for (int i = 0; i < NF_STATE_DIM; i++) {
            float v;
            memcpy(&v, states + 4u * (r * NF_STATE_DIM + i), 4);
            if (!isfinite(v)) {
                reply_error(req, NF_ERR_NONFINITE, (int32_t)(r * NF_STATE_DIM + i), (int32_t)r);
                return;
            }
        }
    }
#if NF_HIST_LEN > 0
    uint8_t *out = reply_buf;
    for (uint32_t r = 0; r < count; r++) {
        uint32_t env = nf_get_u16(envs + 2 * r);
        float action[NF_ACT_DIM];
        memcpy(obs, states + 4u * r * NF_STATE_DIM, 4u * NF_STATE_DIM);
        memcpy(obs + NF_STATE_DIM, history_of(env), 4u * NF_HIST_FLOATS);
        uint32_t ticks = infer_once(obs, action);
        history_push(env, obs, action);
        memcpy(out, action, sizeof action);
        nf_put_u32(out + sizeof action, ticks);
        out += NF_STATE_REPLY_ROW_BYTES;
    }
    nf_put_u32(out, active.crc);
    reply_ok(req, (uint16_t)(count * NF_STATE_REPLY_ROW_BYTES + 4));
#endif
}

static void cmd_status(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    uint8_t *p = reply_buf;
    memset(p, 0, REPLY_MAX);
    uint32_t irq = hal_irq_save();
    uint32_t now = hal_millis();
    uint8_t is_armed = armed, latched = failsafe_latched, seen = heartbeat_seen;
    uint32_t last_hb = last_heartbeat_ms, trip = failsafe_trip_ms, trips = failsafe_trips,
             ticks = control_ticks;
    float m[4];
    memcpy(m, motors, sizeof m);
    hal_irq_restore(irq);
    nf_put_u32(p + 0, now);
    p[4] = is_armed;
    p[5] = latched;
    p[6] = staging.state;
    p[7] = active.slot >= 0 ? active.format : 0;
    nf_put_u32(p + 8, seen ? now - last_hb : 0xFFFFFFFFu);
    nf_put_u32(p + 12, last_hb);
    nf_put_u32(p + 16, trip);
    memcpy(p + 20, m, sizeof m);
    nf_put_u32(p + 36, active.slot >= 0 ? active.model_id : 0);
    nf_put_u32(p + 40, active.slot >= 0 ? active.crc : 0);
    nf_put_u32(p + 44, active.slot >= 0 ? active.size : 0);
    nf_put_u32(p + 48, staging.size);
    nf_put_u32(p + 52, staging.crc);
    nf_put_u32(p + 56, staging.received);
    nf_put_u32(p + 60, parser_ref ? parser_ref->frames_ok : 0);
    nf_put_u32(p + 64, parser_ref ? parser_ref->frames_bad : 0);
    nf_put_u32(p + 68, parser_ref ? parser_ref->frames_too_long : 0);
    nf_put_u32(p + 72, rx_overflows);
    nf_put_u32(p + 76, errors_sent);
    nf_put_u32(p + 80, inferences);
    nf_put_u32(p + 84, last_infer_ticks);
    nf_put_u32(p + 88, ticks);
    nf_put_u32(p + 92, trips);
    nf_put_u32(p + 96, repeats_answered);
    reply_ok(req, 100);
}

static void cmd_arm(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    if (active.slot < 0) {
        reply_error(req, NF_ERR_NO_MODEL, 0, 0);
        return;
    }
    hal_set_tick_ms(1); /* 1 ms ticks before the heartbeat clock starts */
    uint32_t irq = hal_irq_save();
    for (int i = 0; i < NF_ACT_DIM; i++) last_action[i] = -1.0f; /* motors idle until INFER */
    last_heartbeat_ms = hal_millis();
    heartbeat_seen = 1;
    failsafe_latched = 0;
    armed = 1;
    hal_irq_restore(irq);
    nf_put_u32(reply_buf, last_heartbeat_ms);
    reply_ok(req, 4);
}

static void cmd_disarm(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    uint32_t irq = hal_irq_save();
    armed = 0;
    for (int i = 0; i < 4; i++) motors[i] = 0.0f;
    hal_motors_write(motors);
    hal_set_tick_ms(NF_IDLE_TICK_MS);
    hal_irq_restore(irq);
    nf_put_u32(reply_buf, hal_millis());
    reply_ok(req, 4);
}

static void cmd_heartbeat(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    uint32_t irq = hal_irq_save();
    last_heartbeat_ms = hal_millis();
    heartbeat_seen = 1;
    uint8_t is_armed = armed;
    hal_irq_restore(irq);
    nf_put_u32(reply_buf, last_heartbeat_ms);
    reply_buf[4] = is_armed;
    reply_buf[5] = failsafe_latched;
    reply_buf[6] = reply_buf[7] = 0;
    reply_ok(req, 8);
}

void bridge_handle_frame(const nf_frame *req) {
    /* Only the frame right after the cached one can be its repeat (the host waits for each
     * reply before it sends the next request), so any other frame forgets the cache: a seq
     * number that wrapped around can never be mistaken for a retry. */
    if (cache.valid && req->type == cache.type && req->seq == cache.seq && req->crc == cache.request_crc) {
        repeats_answered++;
        send_frame(cache.reply_type, req->seq, cache.in_reply_buf ? reply_buf : cache.payload, cache.length);
        return;
    }
    cache.valid = 0;
    switch (req->type) {
    case NF_CMD_HELLO: cmd_hello(req); break;
    case NF_CMD_BEGIN: cmd_begin(req); break;
    case NF_CMD_CHUNK: cmd_chunk(req); break;
    case NF_CMD_COMMIT: cmd_commit(req); break;
    case NF_CMD_ACTIVATE: cmd_activate(req); break;
    case NF_CMD_INFER: cmd_infer(req); break;
    case NF_CMD_INFER_STATE: cmd_infer_state(req); break;
    case NF_CMD_STATUS: cmd_status(req); break;
    case NF_CMD_ARM: cmd_arm(req); break;
    case NF_CMD_DISARM: cmd_disarm(req); break;
    case NF_CMD_HEARTBEAT: cmd_heartbeat(req); break;
    default: reply_error(req, NF_ERR_UNKNOWN_COMMAND, req->type, 0); break;
    }
}

int bridge_is_armed(void) { return armed; }

int bridge_self_check(void) {
    if (active.slot >= 0 && nanofly_crc32(0, slot_mem[active.slot], active.size - 4) != active.crc) return 1;
    if (!armed)
        for (int i = 0; i < 4; i++)
            if (motors[i] != 0.0f) return 2;
    return 0;
}
