/* The firmware's setpoint_t / sensorData_t / state_t filled from flat float rows, for the host
 * SITL (nanofly_sitl.c) and the controller-step benchmark firmware (bench/mcu/cf_step_main.c):
 * Python hands over plain arrays and never mirrors the firmware's structs.
 *
 * state row (13): position m (3), velocity m/s (3), attitudeQuaternion x, y, z, w (4), gyro
 *                 deg/s (3);
 * setpoint row (6): position m (3), velocity m/s (3).
 */
#ifndef NANOFLY_SITL_INPUTS_H
#define NANOFLY_SITL_INPUTS_H

#include <stdint.h>
#include <string.h>

#include "stabilizer_types.h"

#define NF_SITL_STATE 13u
#define NF_SITL_SETPOINT 6u

static inline void nf_sitl_fill(const float *s, const float *sp, uint32_t timestamp,
                                stab_mode_t xyz_mode, setpoint_t *setpoint,
                                sensorData_t *sensors, state_t *state)
{
    memset(setpoint, 0, sizeof(*setpoint));
    memset(sensors, 0, sizeof(*sensors));
    memset(state, 0, sizeof(*state));
    state->position.x = s[0];
    state->position.y = s[1];
    state->position.z = s[2];
    state->velocity.x = s[3];
    state->velocity.y = s[4];
    state->velocity.z = s[5];
    state->attitudeQuaternion.x = s[6];
    state->attitudeQuaternion.y = s[7];
    state->attitudeQuaternion.z = s[8];
    state->attitudeQuaternion.w = s[9];
    sensors->gyro.x = s[10];
    sensors->gyro.y = s[11];
    sensors->gyro.z = s[12];
    setpoint->timestamp = timestamp;
    setpoint->position.x = sp[0];
    setpoint->position.y = sp[1];
    setpoint->position.z = sp[2];
    setpoint->velocity.x = sp[3];
    setpoint->velocity.y = sp[4];
    setpoint->velocity.z = sp[5];
    setpoint->mode.x = xyz_mode;
    setpoint->mode.y = xyz_mode;
    setpoint->mode.z = xyz_mode;
}

#endif /* NANOFLY_SITL_INPUTS_H */
