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
 * Force mapping: the policy's rotor-speed actions become normalized motor forces
 * (controlModeForce), which the firmware's battery compensation turns into motor voltages as
 * fractions of THRUST_MAX per motor. That needs battery compensation switched on.
 */
#include <stdbool.h>
#include <stdint.h>

#include "FreeRTOS.h"
#include "task.h"

#include "app.h"
#include "attitude_controller.h"
#include "controller.h"
#include "controller_pid.h"
#include "log.h"
#include "param.h"
#include "platform_defaults.h"
#include "position_controller.h"
#include "usec_time.h"

#define DEBUG_MODULE "NANOFLY"
#include "debug.h"

#include "nanofly_app_model.h"
#include "nanofly_cf.h"
#include "nanofly_policy.h"

#ifndef CONFIG_ENABLE_THRUST_BAT_COMPENSATED
#error "nanofly: the force mapping needs CONFIG_ENABLE_THRUST_BAT_COMPENSATED=y (normalized forces are then fractions of THRUST_MAX, not raw PWM)"
#endif

#define NANOFLY_APP_POLL_MS 100u

static nf_cf_controller nf;

/* params */
static uint8_t nf_enable;         /* nanofly.enable: 1 = the policy flies */
static uint16_t nf_rate_hz;       /* nanofly.rate: policy rate, Hz */
static uint32_t nf_model_crc;     /* nanofly.modelCrc: CRC-32 of the model blob (0: none) */
static uint8_t nf_history;        /* nanofly.history: actions in the observation */
static int8_t nf_model_status;    /* nanofly.modelStatus: 0 accepted, else the refusal code */
static uint8_t nf_model_format;   /* nanofly.modelFormat: 1 float32, 2 int8, 0 none */
static uint32_t nf_model_bytes;   /* nanofly.modelBytes: size of the blob */

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

/* The app task: idle apart from console messages about the controller. */
void appMain(void)
{
    print_model_status();
    uint8_t was_enabled = 0;
    uint32_t nonfinite_seen = 0;
    uint8_t status_seen = NF_CF_DISABLED;
    while (1) {
        vTaskDelay(M2T(NANOFLY_APP_POLL_MS));
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

void controllerOutOfTreeInit(void)
{
    controllerPidInit();
    int rc = nf_cf_init(&nf, &nanofly_app_vehicle, THRUST_MAX);
    if (rc == NANOFLY_OK) {
        rc = nf_cf_load_model(&nf, nanofly_app_blob_words, nanofly_app_blob_bytes);
    }
    nf_model_status = (int8_t)rc;
    nf_model_crc = nf.model_crc;
    nf_history = (uint8_t)nf.history_length;
    nf_model_format = rc == NANOFLY_OK ? (uint8_t)nanofly_model_format(&nf.model) : 0u;
    nf_model_bytes = rc == NANOFLY_OK ? nanofly_app_blob_bytes : 0u;
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
/** @brief CRC-32 of the compiled-in model blob (0: no model) */
PARAM_ADD(PARAM_UINT32 | PARAM_RONLY, modelCrc, &nf_model_crc)
/** @brief Actions in the observation's history */
PARAM_ADD(PARAM_UINT8 | PARAM_RONLY, history, &nf_history)
/** @brief 0: model accepted; otherwise why it was refused (NANOFLY_ERR_*, -20 layout, -21 config) */
PARAM_ADD(PARAM_INT8 | PARAM_RONLY, modelStatus, &nf_model_status)
/** @brief Weight format: 1 float32, 2 int8, 0 none */
PARAM_ADD(PARAM_UINT8 | PARAM_RONLY, modelFormat, &nf_model_format)
/** @brief Size of the model blob in bytes (0: none) */
PARAM_ADD(PARAM_UINT32 | PARAM_RONLY, modelBytes, &nf_model_bytes)
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
