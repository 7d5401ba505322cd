/* Host shim of the nanofly Crazyflie SITL (nanofly.firmware_bridge.crazyflie_sitl).
 *
 * Compiled for the host together with the app's controller (src/nanofly_cf.c), the policy
 * runtime (export/c) and the firmware's own power distribution
 * (src/modules/src/power_distribution_quadrotor.c), all against the firmware's real headers.
 * Python hands over flat float arrays in the firmware's units; this file alone fills the
 * firmware's setpoint_t / state_t / sensorData_t / control_t, so no struct layout is mirrored
 * in Python. Controllers live in caller-owned memory of nf_sitl_controller_bytes() each.
 *
 * Flat layouts, per environment:
 *   vehicle  (8): rotor_speed_min, rotor_speed_max, thrust c0, c1, c2, history_reset_action,
 *                 position_error_limit_m, policy_rate_hz                 (nf_cf_vehicle)
 *   state   (13): position x y z (m), velocity x y z (m/s, world), attitudeQuaternion x y z w
 *                 (body -> world), gyro x y z (deg/s, body)            (state_t, sensorData_t)
 *   setpoint (6): position x y z (m), velocity x y z (m/s, world)      (setpoint_t)
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "nanofly_cf.h"
#include "nanofly_sitl_inputs.h"
#include "platform_defaults.h"
#include "power_distribution.h"
#include "stabilizer_types.h"

#define NF_SITL_VEHICLE 8u

uint32_t nf_sitl_controller_bytes(void) { return (uint32_t)sizeof(nf_cf_controller); }

/* The firmware's per-motor thrust limits for the configured propellers (platform_defaults):
   out[0] THRUST_MIN (N, below it battery compensation turns the motor off), out[1] THRUST_MAX
   (N, normalized force 1.0 and thrust ratio 65535). */
void nf_sitl_thrust_limits(float out[2])
{
    out[0] = THRUST_MIN;
    out[1] = THRUST_MAX;
}

static nf_cf_controller *ctrl(void *ctrls, uint32_t i)
{
    return (nf_cf_controller *)((uint8_t *)ctrls + (size_t)i * sizeof(nf_cf_controller));
}

/* nf_cf_init for each of n controllers; returns the first error (0 when all are set up). */
int nf_sitl_init(void *ctrls, uint32_t n, const float *vehicle, float motor_max_thrust_n)
{
    nf_cf_vehicle v;
    v.rotor_speed_min = vehicle[0];
    v.rotor_speed_max = vehicle[1];
    v.thrust_coefficients[0] = vehicle[2];
    v.thrust_coefficients[1] = vehicle[3];
    v.thrust_coefficients[2] = vehicle[4];
    v.history_reset_action = vehicle[5];
    v.position_error_limit_m = vehicle[6];
    v.policy_rate_hz = (uint32_t)vehicle[7];
    int first = 0;
    for (uint32_t i = 0; i < n; i++) {
        int rc = nf_cf_init(ctrl(ctrls, i), &v, motor_max_thrust_n);
        if (rc != 0 && first == 0) {
            first = rc;
        }
    }
    return first;
}

/* nf_cf_load_model for each controller (the blob stays caller-owned); the first error. */
int nf_sitl_load(void *ctrls, uint32_t n, const void *blob, uint32_t size)
{
    int first = 0;
    for (uint32_t i = 0; i < n; i++) {
        int rc = nf_cf_load_model(ctrl(ctrls, i), blob, size);
        if (rc != 0 && first == 0) {
            first = rc;
        }
    }
    return first;
}

/* The controller's 18 state-observation values (nf_cf_state_observation) for n rows. */
void nf_sitl_state_observation(uint32_t n, const float *state, const float *setpoint,
                               float position_error_limit_m, float *out)
{
    setpoint_t sp;
    sensorData_t sensors;
    state_t st;
    for (uint32_t i = 0; i < n; i++) {
        nf_sitl_fill(state + NF_SITL_STATE * i, setpoint + NF_SITL_SETPOINT * i, 0u, modeAbs, &sp,
             &sensors, &st);
        nf_cf_state_observation(&sp, &sensors, &st, position_error_limit_m,
                                out + NF_CF_STATE_DIM * i);
    }
}

/* The firmware's motor path for one control_t, as stabilizer.c's controlMotors runs it, with
   battery compensation left out (see crazyflie_sitl.py): powerDistribution, then
   powerDistributionCap; the four 16-bit motor ratios M1..M4. */
static void motor_ratios(const control_t *control, uint16_t out[4])
{
    motors_thrust_uncapped_t uncapped;
    motors_thrust_pwm_t pwm;
    memset(&uncapped, 0, sizeof(uncapped));
    powerDistribution(control, &uncapped);
    powerDistributionCap(&uncapped, &pwm);
    for (uint32_t k = 0; k < STABILIZER_NR_OF_MOTORS; k++) {
        out[k] = pwm.list[k];
    }
}

/* Mixing of the stock controllers' outputs (tests): mode 0 legacy (values: roll, pitch, yaw as
   int16, thrust), mode 1 force/torque (thrustSi N, torqueX/Y/Z N m), mode 2 force (four
   normalized forces); the motor ratios M1..M4 after powerDistribution + powerDistributionCap. */
void nf_sitl_power_distribution(int mode, const float values[4], uint16_t out[4])
{
    control_t control;
    memset(&control, 0, sizeof(control));
    control.controlMode = (control_mode_t)mode;
    if (mode == controlModeLegacy) {
        control.roll = (int16_t)values[0];
        control.pitch = (int16_t)values[1];
        control.yaw = (int16_t)values[2];
        control.thrust = values[3];
    } else if (mode == controlModeForceTorque) {
        control.thrustSi = values[0];
        control.torqueX = values[1];
        control.torqueY = values[2];
        control.torqueZ = values[3];
    } else {
        for (uint32_t k = 0; k < 4u; k++) {
            control.normalizedForces[k] = values[k];
        }
    }
    motor_ratios(&control, out);
}

/* `steps` consecutive 1 kHz stabilizer steps first_step, first_step + 1, ... of n controllers,
 * each seeing its (fixed) state estimate and setpoint, as the stabilizer task calls
 * controllerOutOfTree. Per controller i:
 *   enabled[i]       the app's enable param (NULL: all enabled);
 *   restart[i]       != 0: disabled for one call at first_step before the steps, so the next
 *                    enabled step starts a new episode (history refilled with
 *                    history_reset[i], which then becomes the vehicle's reset value);
 *   xyz_mode[i]      the setpoint's mode for x, y and z (NULL: modeAbs, a position setpoint);
 *   timestamp[i]     the setpoint's timestamp (a new value = a newly arrived setpoint).
 * Per controller and step (row i * steps + k): status[] (nf_cf_status), touched[] (1 when
 * *control was written; 0 means the stock controller would fly), forces[4] (normalizedForces
 * when written, else 0) and ratios[4] (the motor path's M1..M4 ratios; an untouched control is
 * the stock controller's "no output": legacy mode with zero thrust). */
void nf_sitl_run(void *ctrls, uint32_t n, const uint8_t *enabled, const uint8_t *restart,
                 const float *history_reset, const uint8_t *xyz_mode, const float *state,
                 const float *setpoint, const uint32_t *timestamp, uint32_t first_step,
                 uint32_t steps, int8_t *status, uint8_t *touched, float *forces,
                 uint16_t *ratios)
{
    setpoint_t sp;
    sensorData_t sensors;
    state_t st;
    control_t control, untouched;
    memset(&untouched, 0, sizeof(untouched));
    untouched.controlMode = controlModeLegacy;
    for (uint32_t i = 0; i < n; i++) {
        nf_cf_controller *c = ctrl(ctrls, i);
        const stab_mode_t mode = xyz_mode ? (stab_mode_t)xyz_mode[i] : modeAbs;
        nf_sitl_fill(state + NF_SITL_STATE * i, setpoint + NF_SITL_SETPOINT * i, timestamp[i], mode, &sp,
             &sensors, &st);
        if (restart && restart[i]) {
            c->vehicle.history_reset_action = history_reset[i];
            control = untouched;
            (void)nf_cf_step(c, false, &control, &sp, &sensors, &st, first_step - 1u);
        }
        const bool on = enabled ? enabled[i] != 0 : true;
        for (uint32_t k = 0; k < steps; k++) {
            const size_t row = (size_t)i * steps + k;
            control = untouched;
            status[row] = (int8_t)nf_cf_step(c, on, &control, &sp, &sensors, &st, first_step + k);
            touched[row] = memcmp(&control, &untouched, sizeof(control)) != 0;
            for (uint32_t m = 0; m < 4u; m++) {
                forces[4u * row + m] = touched[row] ? control.normalizedForces[m] : 0.0f;
            }
            motor_ratios(&control, ratios + 4u * row);
        }
    }
}

/* Controller i's internals that the app logs (tests): the last observation (returns its length,
   18 + 4 * history_length; copies at most max values), and counters: model_status, model_crc,
   history_length, inferences, nonfinite_events, status, fault_latched. */
uint32_t nf_sitl_last_observation(const void *ctrls, uint32_t i, float *out, uint32_t max)
{
    const nf_cf_controller *c = ctrl((void *)ctrls, i);
    const uint32_t len = NF_CF_STATE_DIM + NF_CF_ACTION_DIM * c->history_length;
    memcpy(out, c->obs, sizeof(float) * (len < max ? len : max));
    return len;
}

/* Controller i's last policy output (before the force mapping) and forces. */
void nf_sitl_last_action(const void *ctrls, uint32_t i, float action[4], float forces[4])
{
    const nf_cf_controller *c = ctrl((void *)ctrls, i);
    memcpy(action, c->action, sizeof(c->action));
    memcpy(forces, c->normalized_forces, sizeof(c->normalized_forces));
}

void nf_sitl_counters(const void *ctrls, uint32_t i, int64_t out[7])
{
    const nf_cf_controller *c = ctrl((void *)ctrls, i);
    out[0] = c->model_status;
    out[1] = c->model_crc;
    out[2] = c->history_length;
    out[3] = c->inferences;
    out[4] = c->nonfinite_events;
    out[5] = c->status;
    out[6] = c->fault_latched;
}
