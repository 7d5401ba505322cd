/* nanofly Crazyflie app: the out-of-tree controller that flies a nanofly policy inside the stock
 * firmware (select it with stabilizer.controller = OutOfTree, which app-config makes the
 * default, and set the param nanofly.enable = 1).
 *
 * This file is the firmware glue around the controller core (nanofly_cf.c): it owns one
 * nf_cf_controller, loads the compiled-in model at controller init (CRC, loader and layout
 * checks; a refused model never drives the motors), runs nf_cf_step at every 1 kHz stabilizer
 * step and hands the step to the stock PID controller while the policy is disabled or the
 * setpoint is not an absolute position. Params and logs: group `nanofly` (see the tables at the
 * end). Console messages (cfclient's console tab) say when the model is refused and why.
 *
 * Models without reflashing: the app task serves the nanofly bridge protocol (the shared core
 * in firmware_bridge/core, through nanofly_cf_link.c) on the CRTP app channel, and with
 * NANOFLY_DECK_UART 1 or 2 (`nanofly crazyflie build --uart uart1|uart2`) also on that deck
 * UART. Uploads stream into the flash slot that is not running (nanofly_cf_flash.c), only while
 * disarmed with the motors stopped; ACTIVATE publishes the new model and the controller takes it
 * between two stabilizer steps. At boot the newest valid slot runs, else the compiled-in model.
 *
 * Force mapping: the policy's rotor-speed actions become normalized motor forces
 * (controlModeForce), which the firmware's battery compensation turns into motor voltages as
 * fractions of THRUST_MAX per motor. That needs battery compensation switched on.
 */
#include <stdbool.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "config.h"
#include "task.h"

#include "app.h"
#include "app_channel.h"
#include "attitude_controller.h"
#include "controller.h"
#include "controller_pid.h"
#include "log.h"
#include "motors.h"
#include "param.h"
#include "platform_defaults.h"
#include "position_controller.h"
#include "supervisor.h"
#include "usec_time.h"

#define DEBUG_MODULE "NANOFLY"
#include "debug.h"

#include "nanofly_app_model.h"
#include "nanofly_cf.h"
#include "nanofly_cf_flash.h"
#include "nanofly_cf_link.h"
#include "nanofly_policy.h"

/* The deck UART that also serves the bridge protocol: 0 none (default: the Lighthouse, GPS and
   AI decks use them), 1 uart1 = USART3 on PC10/PC11, 2 uart2 = USART2 on PA2/PA3. */
#ifndef NANOFLY_DECK_UART
#define NANOFLY_DECK_UART 0
#endif
#if NANOFLY_DECK_UART == 1
#include "uart1.h"
#elif NANOFLY_DECK_UART == 2
#include "uart2.h"
#elif NANOFLY_DECK_UART != 0
#error "NANOFLY_DECK_UART must be 0 (none), 1 (uart1) or 2 (uart2)"
#endif
#define NANOFLY_DECK_UART_BAUD 115200u

/* A model the link published is taken by controllerOutOfTree between two steps. When that does
   not run (another controller selected, or the stabilizer still waiting for the sensors'
   calibration), the app task takes it after NANOFLY_APP_TAKE_OVER_POLLS polls with the
   scheduler suspended: the stabilizer task, of higher priority, is then never inside a step. */
#define NANOFLY_APP_TAKE_OVER_POLLS 2u
#if CONFIG_APP_PRIORITY >= STABILIZER_TASK_PRI
#error "nanofly: the app task must have a lower priority than the stabilizer task (app-config CONFIG_APP_PRIORITY)"
#endif

#ifndef CONFIG_ENABLE_THRUST_BAT_COMPENSATED
#error "nanofly: the force mapping needs CONFIG_ENABLE_THRUST_BAT_COMPENSATED=y (normalized forces are then fractions of THRUST_MAX, not raw PWM)"
#endif

#define NANOFLY_APP_POLL_MS 100u
/* How long the app task waits for an app-channel packet before it looks at the UART and the
   console messages: the firmware's app-channel queue holds 10 packets, uart1's 64 bytes. */
#if NANOFLY_DECK_UART
#define NANOFLY_APP_RX_WAIT_MS 1
#else
#define NANOFLY_APP_RX_WAIT_MS 10
#endif

static nf_cf_controller nf;

/* params */
static uint8_t nf_enable;         /* nanofly.enable: 1 = the policy flies */
static uint16_t nf_rate_hz;       /* nanofly.rate: policy rate, Hz */
static uint32_t nf_model_crc;     /* nanofly.modelCrc: CRC-32 of the model blob (0: none) */
static uint8_t nf_history;        /* nanofly.history: actions in the observation */
static int8_t nf_model_status;    /* nanofly.modelStatus: 0 accepted, else the refusal code */
static uint8_t nf_model_format;   /* nanofly.modelFormat: 1 float32, 2 int8, 0 none */
static uint32_t nf_model_bytes;   /* nanofly.modelBytes: size of the blob */
static uint8_t nf_model_source;   /* nanofly.modelSource: 0 compiled-in, 1 flash slot */

/* logs (besides fields of nf) */
static uint16_t nf_infer_us;      /* last policy step: observation, inference, force mapping */
static uint8_t nf_status;         /* nf_cf_status of the last stabilizer step */

static bool nf_pid_in_charge;     /* the stock PID ran in the previous stabilizer step */

static const char *nanofly_app_strerror(int code)
{
    switch (code) {
    case NF_CF_ERR_LAYOUT:
        return "observation/action layout is not 18 + 4*H inputs (H <= 32) and 4 outputs";
    case NF_CF_ERR_CONFIG:
        return "vehicle configuration invalid (policy rate, rotor speeds, thrust curve)";
    default:
        return nanofly_strerror(code);
    }
}

static void print_model_status(void)
{
    if (nf_model_status == NANOFLY_OK) {
        DEBUG_PRINT("model 0x%X (%s, %u bytes) accepted: %u inputs (history %u), policy at %u Hz\n",
                    (unsigned int)nf_model_crc, nf_model_format == NANOFLY_FORMAT_INT8 ? "int8" : "float32",
                    (unsigned int)nf_model_bytes, (unsigned int)(NF_CF_STATE_DIM + NF_CF_ACTION_DIM * nf_history),
                    (unsigned int)nf_history, (unsigned int)nf_rate_hz);
    } else {
        DEBUG_PRINT("model REFUSED (%d): %s. nanofly.enable keeps the motors at zero\n",
                    (int)nf_model_status, nanofly_app_strerror(nf_model_status));
    }
}

_Static_assert(APPCHANNEL_MTU == NF_CF_LINK_PACKET_BYTES,
               "the link cuts replies into packets of the app channel's size");

static void send_app_channel_packet(const uint8_t *packet, size_t n)
{
    appchannelSendDataPacketBlock((void *)packet, n);
}

/* Link transport: replies go back on the transport the request came on. */
static void link_write(void *ctx, int transport, const uint8_t *data, size_t len)
{
    (void)ctx;
    if (transport == NF_CF_LINK_APP_CHANNEL) {
        nf_cf_link_send_packets(data, len, send_app_channel_packet);
    }
#if NANOFLY_DECK_UART == 1
    else if (transport == NF_CF_LINK_UART) {
        uart1SendData((uint32_t)len, (uint8_t *)data);
    }
#elif NANOFLY_DECK_UART == 2
    else if (transport == NF_CF_LINK_UART) {
        uart2SendData((uint32_t)len, (uint8_t *)data);
    }
#endif
}

/* Flash writes stall the CPU (nanofly_cf_flash.c): only while disarmed and the motors stopped. */
static int link_busy(void *ctx)
{
    (void)ctx;
    if (supervisorIsArmed()) {
        return NF_BUSY_ARMED;
    }
    return nf_cf_flash_may_write() ? 0 : NF_BUSY_FLYING;
}

/* HELLO / STATUS: the STM32F405 at 168 MHz (the firmware sets its PLL up), arming, motors. */
static void link_describe(void *ctx, nf_target_state *out)
{
    (void)ctx;
    out->clock_flags = 1u;
    out->sysclk_hz = 168000000u;
    out->armed = supervisorIsArmed() ? 1u : 0u;
    out->control_rate_hz = (uint16_t)NF_CF_STABILIZER_HZ;
    out->uptime_ms = T2M(xTaskGetTickCount());
    out->inferences = nf.inferences;
    for (uint32_t m = 0; m < 4u; m++) {
        out->motors[m] = (float)motorsGetRatio(m) / 65535.0f;
    }
}

static nf_cf_link_platform link_platform;

static void link_start(void)
{
    nanofly_model compiled_in;
    const int ok = nanofly_model_init(&compiled_in, nanofly_app_blob_words, nanofly_app_blob_bytes) ==
                   NANOFLY_OK;
    link_platform.flash = &nf_cf_flash_ops;
    link_platform.write = link_write;
    link_platform.busy = link_busy;
    link_platform.describe = link_describe;
    /* Uploads must have the compiled-in model's interface (the vehicle and the policy rate are
       compiled in with it). */
    link_platform.obs_dim = ok ? (uint16_t)nanofly_model_input_dim(&compiled_in) : 0u;
    link_platform.act_dim = ok ? (uint16_t)nanofly_model_output_dim(&compiled_in) : 0u;
    const uint8_t *bytes = (const uint8_t *)nanofly_app_blob_words;
    const uint32_t n = nanofly_app_blob_bytes;
    const uint32_t crc = n >= 4u ? (uint32_t)bytes[n - 4u] | ((uint32_t)bytes[n - 3u] << 8) |
                                       ((uint32_t)bytes[n - 2u] << 16) | ((uint32_t)bytes[n - 1u] << 24)
                                 : 0u;
    const int slot = nf_cf_link_init(&link_platform, nanofly_app_blob_words, nanofly_app_blob_bytes, crc);
    if (slot >= 0) {
        DEBUG_PRINT("model store: flash slot %d is the newest valid model\n", slot);
    } else {
        DEBUG_PRINT("model store: no valid model in flash, the compiled-in model runs\n");
    }
#if NANOFLY_DECK_UART == 1
    uart1Init(NANOFLY_DECK_UART_BAUD);
#elif NANOFLY_DECK_UART == 2
    uart2Init(NANOFLY_DECK_UART_BAUD);
#endif
}

static void link_poll(void)
{
    static uint8_t packet[APPCHANNEL_MTU];
    const size_t n = appchannelReceiveDataPacket(packet, sizeof(packet), NANOFLY_APP_RX_WAIT_MS);
    if (n > 0u) {
        nf_cf_link_feed(NF_CF_LINK_APP_CHANNEL, packet, n);
    }
#if NANOFLY_DECK_UART == 1
    uint8_t c;
    while (uart1GetDataWithTimeout(&c, 0)) {
        nf_cf_link_feed(NF_CF_LINK_UART, &c, 1u);
    }
#elif NANOFLY_DECK_UART == 2
    uint8_t c;
    while (uart2GetDataWithTimeout(1u, &c, 0) > 0) {
        nf_cf_link_feed(NF_CF_LINK_UART, &c, 1u);
    }
#endif
}

static void use_model(const void *blob, uint32_t bytes, uint8_t source);

/* The app task: the link to the host, and console messages about the controller. */
void appMain(void)
{
    print_model_status();
    link_start();
    uint8_t was_enabled = 0;
    uint32_t nonfinite_seen = 0;
    uint8_t status_seen = NF_CF_DISABLED;
    uint32_t model_crc_seen = nf_model_crc;
    uint32_t pending_polls = 0;
    TickType_t next_check = xTaskGetTickCount();
    while (1) {
        link_poll();
        if ((int32_t)(xTaskGetTickCount() - next_check) < 0) {
            continue;
        }
        next_check += M2T(NANOFLY_APP_POLL_MS);
        if (nf_cf_link_has_pending()) {
            if (++pending_polls >= NANOFLY_APP_TAKE_OVER_POLLS) {
                nf_cf_link_model pending;
                vTaskSuspendAll();
                if (nf_cf_link_take_pending(&pending)) {
                    use_model(pending.blob, pending.size, pending.source);
                }
                xTaskResumeAll();
                pending_polls = 0;
            }
        } else {
            pending_polls = 0;
        }
        if (nf_model_crc != model_crc_seen) {
            print_model_status();
            model_crc_seen = nf_model_crc;
        }
        const uint8_t enabled = nf_enable;
        if (enabled && !was_enabled) {
            if (nf_model_status == NANOFLY_OK) {
                DEBUG_PRINT("enabled: the policy flies on absolute position setpoints\n");
            } else {
                print_model_status();
            }
        } else if (!enabled && was_enabled) {
            DEBUG_PRINT("disabled: the stock PID controller flies\n");
        }
        was_enabled = enabled;
        const uint32_t nonfinite = nf.nonfinite_events;
        if (nonfinite != nonfinite_seen) {
            DEBUG_PRINT("non-finite observation or action: motors stopped until nanofly.enable is set to 0 and back\n");
            nonfinite_seen = nonfinite;
        }
        const uint8_t status = nf_status;
        if (status != status_seen && status == NF_CF_NO_SETPOINT) {
            DEBUG_PRINT("no setpoint for %u ms: motors at zero\n", (unsigned int)NF_CF_SETPOINT_TIMEOUT_STEPS);
        }
        status_seen = status;
    }
}

/* Load a model into the controller and the params that describe it. */
static void use_model(const void *blob, uint32_t bytes, uint8_t source)
{
    const int rc = nf_cf_load_model(&nf, blob, bytes);
    nf_model_status = (int8_t)rc;
    nf_model_crc = nf.model_crc;
    nf_history = (uint8_t)nf.history_length;
    nf_model_format = rc == NANOFLY_OK ? (uint8_t)nanofly_model_format(&nf.model) : 0u;
    nf_model_bytes = rc == NANOFLY_OK ? bytes : 0u;
    nf_model_source = source;
}

void controllerOutOfTreeInit(void)
{
    controllerPidInit();
    int rc = nf_cf_init(&nf, &nanofly_app_vehicle, THRUST_MAX);
    if (rc == NANOFLY_OK) {
        use_model(nanofly_app_blob_words, nanofly_app_blob_bytes, NF_CF_MODEL_COMPILED_IN);
        rc = nf_model_status;
    } else {
        nf_model_status = (int8_t)rc;
    }
    nf_rate_hz = (uint16_t)nanofly_app_vehicle.policy_rate_hz;
    nf_status = NF_CF_DISABLED;
    nf_pid_in_charge = true;
    if (rc != NANOFLY_OK) {
        print_model_status();
    }
}

bool controllerOutOfTreeTest(void)
{
    /* A refused model does not fail the self test: with nanofly.enable = 0 the stock PID flies,
       with 1 the motors stay at zero, and the console says why. */
    return controllerPidTest();
}

/* The last parameter is the stabilizer step (stabilizerStep_t, named tick in older releases:
   the same uint32_t either way). */
void controllerOutOfTree(control_t *control, const setpoint_t *setpoint, const sensorData_t *sensors,
                         const state_t *state, const uint32_t stabilizerStep)
{
    /* A model the link activated (or chose at boot) replaces the running one between two steps;
       it arrives only while disarmed (flash is written only then). */
    nf_cf_link_model pending;
    if (nf_cf_link_take_pending(&pending)) {
        use_model(pending.blob, pending.size, pending.source);
    }
    const uint32_t inferences = nf.inferences;
    const uint64_t start_us = usecTimestamp();
    const nf_cf_status status = nf_cf_step(&nf, nf_enable != 0u, control, setpoint, sensors, state,
                                           stabilizerStep);
    if (nf.inferences != inferences) {
        const uint64_t took_us = usecTimestamp() - start_us;
        nf_infer_us = took_us > UINT16_MAX ? UINT16_MAX : (uint16_t)took_us;
    }
    nf_status = (uint8_t)status;
    if (status == NF_CF_DISABLED || status == NF_CF_NOT_POSITION) {
        if (!nf_pid_in_charge) {
            /* The PID's integrators and filters are stale after the policy flew: restart them
               from the present state, as the PID does itself when the setpoint mode changes. */
            positionControllerResetAllPID(state->position.x, state->position.y, state->position.z);
            positionControllerResetAllfilters();
            attitudeControllerResetAllPID(state->attitude.roll, state->attitude.pitch, state->attitude.yaw);
        }
        controllerPid(control, setpoint, sensors, state, stabilizerStep);
        nf_pid_in_charge = true;
    } else {
        nf_pid_in_charge = false;
    }
}

/**
 * nanofly policy controller. Set enable to 1 to fly the compiled-in policy (with
 * stabilizer.controller = OutOfTree); the other values are read-only model information.
 */
PARAM_GROUP_START(nanofly)
/** @brief 1: the policy drives the motors on absolute position setpoints; 0: the stock PID */
PARAM_ADD(PARAM_UINT8, enable, &nf_enable)
/** @brief Policy rate (Hz) the model was trained at */
PARAM_ADD(PARAM_UINT16 | PARAM_RONLY, rate, &nf_rate_hz)
/** @brief CRC-32 of the running model blob (0: no model) */
PARAM_ADD(PARAM_UINT32 | PARAM_RONLY, modelCrc, &nf_model_crc)
/** @brief Actions in the observation's history */
PARAM_ADD(PARAM_UINT8 | PARAM_RONLY, history, &nf_history)
/** @brief 0: model accepted; otherwise why it was refused (NANOFLY_ERR_*, -20 layout, -21 config) */
PARAM_ADD(PARAM_INT8 | PARAM_RONLY, modelStatus, &nf_model_status)
/** @brief Weight format: 1 float32, 2 int8, 0 none */
PARAM_ADD(PARAM_UINT8 | PARAM_RONLY, modelFormat, &nf_model_format)
/** @brief Size of the model blob in bytes (0: none) */
PARAM_ADD(PARAM_UINT32 | PARAM_RONLY, modelBytes, &nf_model_bytes)
/** @brief Where the running model came from: 0 compiled in, 1 a flash slot (uploaded with nanofly flash --uri) */
PARAM_ADD(PARAM_UINT8 | PARAM_RONLY, modelSource, &nf_model_source)
PARAM_GROUP_STOP(nanofly)

/**
 * nanofly policy controller state.
 */
LOG_GROUP_START(nanofly)
/** @brief Time of the last policy step (observation, inference, force mapping), us */
LOG_ADD(LOG_UINT16, inferUs, &nf_infer_us)
/** @brief CRC-32 of the active model (0: none) */
LOG_ADD(LOG_UINT32, modelCrc, &nf_model_crc)
/** @brief Last policy actions in [-1, 1], motors M1..M4 */
LOG_ADD(LOG_FLOAT, a0, &nf.action[0])
LOG_ADD(LOG_FLOAT, a1, &nf.action[1])
LOG_ADD(LOG_FLOAT, a2, &nf.action[2])
LOG_ADD(LOG_FLOAT, a3, &nf.action[3])
/** @brief Normalized motor forces sent to the firmware, 0..1 of THRUST_MAX, motors M1..M4 */
LOG_ADD(LOG_FLOAT, f0, &nf.normalized_forces[0])
LOG_ADD(LOG_FLOAT, f1, &nf.normalized_forces[1])
LOG_ADD(LOG_FLOAT, f2, &nf.normalized_forces[2])
LOG_ADD(LOG_FLOAT, f3, &nf.normalized_forces[3])
/** @brief Euclidean norm of the last observation's state part (18 values) */
LOG_ADD(LOG_FLOAT, obsNorm, &nf.observation_norm)
/** @brief 0 disabled, 1 no model, 2 no setpoint, 3 flying, 4 non-finite stop, 5 not a position setpoint */
LOG_ADD(LOG_UINT8, status, &nf_status)
/** @brief Non-finite observations or actions since boot */
LOG_ADD(LOG_UINT32, nonfinite, &nf.nonfinite_events)
/** @brief Policy inferences since boot */
LOG_ADD(LOG_UINT32, inferences, &nf.inferences)
LOG_GROUP_STOP(nanofly)
