/* The bridge firmware's target of the protocol core (firmware_bridge/core): the commands only
 * this firmware has (INFER and INFER_STATE with on-board action histories, ARM, DISARM,
 * HEARTBEAT), the dead man's switch and the motor outputs, and the core's hooks. HELLO, the
 * upload commands, STATUS, framing, the reply cache and the persistent model store are the
 * core's. Payload layouts: docs/protocol.md.
 *
 * Safety rules kept here:
 *  - the model flash is written only while disarmed (may_write_flash); the store never
 *    touches the running slot;
 *  - armed motors follow the last INFER action only while HEARTBEATs keep arriving; 200 ms
 *    without one zeroes the motors and disarms (from the timer interrupt, so a busy or stuck
 *    host link cannot delay it);
 *  - an upload (BEGIN) forgets the action histories, and INFER_STATE is refused while one is
 *    in progress (the behaviour of firmware 0.2, whose histories shared the staging RAM).
 */
#include "bridge.h"

#include <math.h>
#include <string.h>

#include "hal.h"
#include "nanofly_policy.h"
#include "nf_core.h"

#define FORMATS_SUPPORTED ((1u << NANOFLY_FORMAT_F32) | (1u << NANOFLY_FORMAT_INT8))
#if NF_MAX_STATE_ROWS * NF_STATE_REPLY_ROW_BYTES + 4u > NF_CORE_REPLY_MAX
#error "NF_CORE_REPLY_MAX is too small for a full INFER_STATE reply"
#endif

static nf_core core;
static nf_target target;

/* The running model, as the core's activate hook set it (NULL: none). */
static const nanofly_model *volatile running_model;
static uint32_t running_crc;

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

static uint32_t inferences, last_infer_ticks;
#if NF_HIST_LEN > 0
static float histories[NF_MAX_HISTORIES][NF_HIST_FLOATS];
static uint8_t history_loaded[NF_MAX_HISTORIES]; /* env has a history since the last upload */
#endif

static float motor_ratio(float action) {
    /* rpm = (a + 1) / 2 * max_rpm, PWM ratio = rpm / max_rpm */
    float r = (action + 1.0f) * 0.5f;
    if (!(r > 0.0f)) return 0.0f; /* also NaN */
    return r > 1.0f ? 1.0f : r;
}

static int check_length(const nf_frame *req, uint16_t expected) {
    if (req->length == expected) return 1;
    nf_core_reply_error(&core, req, NF_ERR_LENGTH, req->length, expected);
    return 0;
}

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
        nf_core_forget_cached(&core, NF_CMD_ARM);
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

/* ---- action histories (one per environment) ------------------------------------------ */

static float clip_action(float a) {
    /* as the simulator stores it: min(max(a, -1), 1) in float32 */
    return a < -1.0f ? -1.0f : (a > 1.0f ? 1.0f : a);
}

#if NF_HIST_LEN > 0
static float *history_of(uint32_t env) { return histories[env]; }
#endif

/* 0 when env's history is on board, else why not (NF_HIST_*). */
static int history_problem(uint32_t env, int need_loaded) {
#if NF_HIST_LEN > 0
    if (env >= NF_MAX_HISTORIES) return NF_HIST_RANGE;
    if (nf_core_staging_state(&core) != NF_STAGE_EMPTY) return NF_HIST_BUSY;
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
    nanofly_policy_act(running_model, obs, action);
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
    if (!running_model) {
        nf_core_reply_error(&core, req, NF_ERR_NO_MODEL, 0, 0);
        return;
    }
    float action[NF_ACT_DIM];
    memcpy(obs, req->payload, sizeof obs);
    for (int i = 0; i < NF_OBS_DIM; i++) {
        if (!isfinite(obs[i])) {
            nf_core_reply_error(&core, req, NF_ERR_NONFINITE, i, 0);
            return;
        }
    }
    uint32_t ticks = infer_once(obs, action);
    /* (Re)load env's history from this observation, so the host can resynchronize any time;
     * idempotent, so a repeated INFER needs no reply cache. */
    if (env != NF_INFER_NO_ENV && history_problem(env, 0) == 0) history_push(env, obs, action);
    uint8_t *reply_buf = nf_core_reply_buf(&core);
    memcpy(reply_buf, action, sizeof action); /* little-endian float32 on both ends */
    nf_put_u32(reply_buf + 4 * NF_ACT_DIM, ticks);
    nf_put_u32(reply_buf + 4 * NF_ACT_DIM + 4, running_crc);
    nf_core_reply_ok(&core, req, 4 * NF_ACT_DIM + 8);
}

static void cmd_infer_state(const nf_frame *req) {
    /* u16 count, u16 env[count], float32 state[count][NF_STATE_DIM] */
    if (req->length < 2) {
        nf_core_reply_error(&core, req, NF_ERR_LENGTH, req->length, 2 + NF_STATE_ROW_BYTES);
        return;
    }
    uint32_t count = nf_get_u16(req->payload);
    if (count == 0 || count > NF_MAX_STATE_ROWS) {
        nf_core_reply_error(&core, req, NF_ERR_LENGTH, req->length, 2 + NF_MAX_STATE_ROWS * NF_STATE_ROW_BYTES);
        return;
    }
    if (!check_length(req, (uint16_t)(2 + count * NF_STATE_ROW_BYTES))) return;
    if (!running_model) {
        nf_core_reply_error(&core, req, NF_ERR_NO_MODEL, 0, 0);
        return;
    }
    const uint8_t *envs = req->payload + 2;
    const uint8_t *states = envs + 2 * count;
    /* Check every row before running any, so a refused frame changes no history. */
    for (uint32_t r = 0; r < count; r++) {
        uint32_t env = nf_get_u16(envs + 2 * r);
        int problem = history_problem(env, 1);
        if (problem) {
            nf_core_reply_error(&core, req, NF_ERR_HISTORY, (int32_t)env, problem);
            return;
        }
        for (uint32_t j = 0; j < r; j++) {
            if (nf_get_u16(envs + 2 * j) == env) { /* one step per env and frame */
                nf_core_reply_error(&core, req, NF_ERR_HISTORY, (int32_t)env, NF_HIST_DUPLICATE);
                return;
            }
        }
        for (int i = 0; i < NF_STATE_DIM; i++) {
            float v;
            memcpy(&v, states + 4u * (r * NF_STATE_DIM + i), 4);
            if (!isfinite(v)) {
                nf_core_reply_error(&core, req, NF_ERR_NONFINITE, (int32_t)(r * NF_STATE_DIM + i), (int32_t)r);
                return;
            }
        }
    }
#if NF_HIST_LEN > 0
    uint8_t *out = nf_core_reply_buf(&core);
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
    nf_put_u32(out, running_crc);
    nf_core_reply_ok(&core, req, (uint16_t)(count * NF_STATE_REPLY_ROW_BYTES + 4));
#endif
}

static void cmd_arm(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    if (!running_model) {
        nf_core_reply_error(&core, req, NF_ERR_NO_MODEL, 0, 0);
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
    nf_put_u32(nf_core_reply_buf(&core), last_heartbeat_ms);
    nf_core_reply_ok(&core, req, 4);
}

static void cmd_disarm(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    uint32_t irq = hal_irq_save();
    armed = 0;
    for (int i = 0; i < 4; i++) motors[i] = 0.0f;
    hal_motors_write(motors);
    hal_set_tick_ms(NF_IDLE_TICK_MS);
    hal_irq_restore(irq);
    nf_put_u32(nf_core_reply_buf(&core), hal_millis());
    nf_core_reply_ok(&core, req, 4);
}

static void cmd_heartbeat(const nf_frame *req) {
    if (!check_length(req, 0)) return;
    uint32_t irq = hal_irq_save();
    last_heartbeat_ms = hal_millis();
    heartbeat_seen = 1;
    uint8_t is_armed = armed;
    hal_irq_restore(irq);
    nf_put_u32(nf_core_reply_buf(&core), last_heartbeat_ms);
    uint8_t *p = nf_core_reply_buf(&core);
    p[4] = is_armed;
    p[5] = failsafe_latched;
    p[6] = p[7] = 0;
    nf_core_reply_ok(&core, req, 8);
}

/* ---- hooks of the protocol core ---------------------------------------------------- */

static int target_command(void *ctx, nf_core *c, const nf_frame *req) {
    (void)ctx;
    (void)c;
    switch (req->type) {
    case NF_CMD_INFER: cmd_infer(req); return 1;
    case NF_CMD_INFER_STATE: cmd_infer_state(req); return 1;
    case NF_CMD_ARM: cmd_arm(req); return 1;
    case NF_CMD_DISARM: cmd_disarm(req); return 1;
    case NF_CMD_HEARTBEAT: cmd_heartbeat(req); return 1;
    default: return 0;
    }
}

static void target_write(void *ctx, const uint8_t *data, size_t len) {
    (void)ctx;
    hal_uart_write(data, len);
}

/* Flash erase/program stall the CPU (and this firmware's interrupts) for up to seconds:
 * only while disarmed, when the motors are off and the dead man's switch has nothing to do. */
static int target_may_write_flash(void *ctx) {
    (void)ctx;
    return armed ? NF_BUSY_ARMED : 0;
}

static void target_activate(void *ctx, const nf_active_model *m) {
    (void)ctx;
    uint32_t irq = hal_irq_save();
    running_model = m ? m->model : NULL;
    running_crc = m ? m->model_crc : 0;
    for (int i = 0; i < NF_ACT_DIM; i++) last_action[i] = -1.0f;
    hal_irq_restore(irq);
}

static void target_upload_started(void *ctx) {
    (void)ctx;
#if NF_HIST_LEN > 0
    memset(history_loaded, 0, sizeof history_loaded);
#endif
}

static void target_describe(void *ctx, nf_target_state *st) {
    (void)ctx;
    uint32_t irq = hal_irq_save();
    uint32_t now = hal_millis();
    st->armed = armed;
    st->failsafe_tripped = failsafe_latched;
    st->ms_since_heartbeat = heartbeat_seen ? now - last_heartbeat_ms : 0xFFFFFFFFu;
    st->last_heartbeat_ms = last_heartbeat_ms;
    st->failsafe_trip_ms = failsafe_trip_ms;
    st->failsafe_trips = failsafe_trips;
    st->control_ticks = control_ticks;
    memcpy(st->motors, motors, sizeof st->motors);
    hal_irq_restore(irq);
    st->uptime_ms = now;
    st->cost_counter_kind = hal_cost_counter_kind();
    st->clock_flags = hal_clock_flags() & 3u;
    st->sysclk_hz = hal_sysclk_hz();
    st->heartbeat_timeout_ms = NF_HEARTBEAT_TIMEOUT_MS;
    st->control_rate_hz = NF_CONTROL_RATE_HZ;
    st->state_dim = NF_HIST_LEN > 0 ? NF_STATE_DIM : 0;
    st->history_len = NF_HIST_LEN;
    st->max_histories = (uint16_t)NF_MAX_HISTORIES;
    st->max_state_rows = NF_HIST_LEN > 0 ? NF_MAX_STATE_ROWS : 0;
    st->inferences = inferences;
    st->last_infer_ticks = last_infer_ticks;
}

int bridge_init(const nf_flash_ops *flash) {
#if NF_HIST_LEN > 0
    memset(history_loaded, 0, sizeof history_loaded);
#endif
    running_model = NULL;
    running_crc = 0;
    armed = 0;
    failsafe_latched = 0;
    heartbeat_seen = 0;
    last_heartbeat_ms = failsafe_trip_ms = failsafe_trips = control_ticks = last_control_ms = 0;
    inferences = last_infer_ticks = 0;
    for (int i = 0; i < NF_ACT_DIM; i++) last_action[i] = -1.0f;
    for (int i = 0; i < 4; i++) motors[i] = 0.0f;
    hal_motors_write(motors);
    memset(&target, 0, sizeof target);
    target.flash = flash;
    target.write = target_write;
    target.may_write_flash = target_may_write_flash;
    target.activate = target_activate;
    target.command = target_command;
    target.upload_started = target_upload_started;
    target.describe = target_describe;
    target.obs_dim = NF_OBS_DIM;
    target.act_dim = NF_ACT_DIM;
    target.formats = FORMATS_SUPPORTED;
    /* state-changing target commands: a repeat is answered from the cache (INFER_STATE
     * shifts histories: a repeat must not shift them twice) */
    target.cacheable_commands = (1u << NF_CMD_ARM) | (1u << NF_CMD_DISARM) | (1u << NF_CMD_INFER_STATE);
    return nf_core_init(&core, &target);
}

void bridge_feed(const uint8_t *data, size_t len) { nf_core_feed(&core, data, len); }
void bridge_count_rx_overflow(uint32_t total) { nf_core_set_rx_overflows(&core, total); }
const nf_core *bridge_core(void) { return &core; }
int bridge_is_armed(void) { return armed; }

int bridge_self_check(void) {
    if (nf_core_self_check(&core) != 0) return 1;
    if (!armed)
        for (int i = 0; i < 4; i++)
            if (motors[i] != 0.0f) return 2;
    return 0;
}
