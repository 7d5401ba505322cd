/* nanofly controller core for the Crazyflie (see nanofly_cf.h). */
#include "nanofly_cf.h"

#include <math.h>
#include <string.h>

#define NF_CF_DEG_TO_RAD 0.017453292519943295f

static bool finite_all(const float *v, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            return false;
        }
    }
    return true;
}

static float clip(float x, float lo, float hi)
{
    return x < lo ? lo : (x > hi ? hi : x);
}

int nf_cf_init(nf_cf_controller *c, const nf_cf_vehicle *vehicle, float motor_max_thrust_n)
{
    memset(c, 0, sizeof(*c));
    c->model_status = NANOFLY_ERR_SIZE; /* no model yet */
    const nf_cf_vehicle *v = vehicle;
    bool ok = v->policy_rate_hz > 0u && v->policy_rate_hz <= NF_CF_STABILIZER_HZ &&
              NF_CF_STABILIZER_HZ % v->policy_rate_hz == 0u &&
              isfinite(v->rotor_speed_min) && isfinite(v->rotor_speed_max) &&
              v->rotor_speed_max > v->rotor_speed_min &&
              isfinite(v->thrust_coefficients[0]) && isfinite(v->thrust_coefficients[1]) &&
              isfinite(v->thrust_coefficients[2]) && isfinite(v->history_reset_action) &&
              isfinite(v->position_error_limit_m) && v->position_error_limit_m >= 0.0f &&
              isfinite(motor_max_thrust_n) && motor_max_thrust_n > 0.0f;
    if (!ok) {
        c->model_status = NF_CF_ERR_CONFIG;
        return NF_CF_ERR_CONFIG;
    }
    c->vehicle = *v;
    c->motor_max_thrust_n = motor_max_thrust_n;
    c->status = NF_CF_DISABLED;
    return NANOFLY_OK;
}

int nf_cf_load_model(nf_cf_controller *c, const void *blob, uint32_t size)
{
    if (c->model_status == NF_CF_ERR_CONFIG) {
        return NF_CF_ERR_CONFIG;
    }
    nanofly_model m;
    int rc = nanofly_model_init(&m, blob, size);
    if (rc == NANOFLY_OK) {
        uint32_t in = nanofly_model_input_dim(&m);
        uint32_t out = nanofly_model_output_dim(&m);
        if (out != NF_CF_ACTION_DIM || in < NF_CF_STATE_DIM || in > NF_CF_MAX_OBS ||
            (in - NF_CF_STATE_DIM) % NF_CF_ACTION_DIM != 0u) {
            rc = NF_CF_ERR_LAYOUT;
        } else {
            c->model = m;
            c->history_length = (in - NF_CF_STATE_DIM) / NF_CF_ACTION_DIM;
            const uint8_t *bytes = (const uint8_t *)blob;
            c->model_crc = (uint32_t)bytes[size - 4u] | ((uint32_t)bytes[size - 3u] << 8) |
                           ((uint32_t)bytes[size - 2u] << 16) | ((uint32_t)bytes[size - 1u] << 24);
        }
    }
    if (rc != NANOFLY_OK) {
        memset(&c->model, 0, sizeof(c->model));
        c->history_length = 0u;
        c->model_crc = 0u;
    }
    c->model_status = rc;
    c->flying = false; /* a new model starts a new episode */
    return rc;
}

void nf_cf_state_observation(const setpoint_t *setpoint, const sensorData_t *sensors,
                             const state_t *state, float position_error_limit_m,
                             float out[NF_CF_STATE_DIM])
{
    float px = state->position.x - setpoint->position.x;
    float py = state->position.y - setpoint->position.y;
    float pz = state->position.z - setpoint->position.z;
    if (position_error_limit_m > 0.0f) {
        /* The policy never saw a position error outside the training box (episodes end
           there); a far set point is flown towards at the box's edge rather than extrapolated. */
        px = clip(px, -position_error_limit_m, position_error_limit_m);
        py = clip(py, -position_error_limit_m, position_error_limit_m);
        pz = clip(pz, -position_error_limit_m, position_error_limit_m);
    }
    const float qx = state->attitudeQuaternion.x;
    const float qy = state->attitudeQuaternion.y;
    const float qz = state->attitudeQuaternion.z;
    const float qw = state->attitudeQuaternion.w;
    out[0] = px;
    out[1] = py;
    out[2] = pz;
    /* R(q), body -> world, row-major: the simulator's formula term for term */
    out[3] = 1.0f - 2.0f * (qy * qy + qz * qz);
    out[4] = 2.0f * (qx * qy - qw * qz);
    out[5] = 2.0f * (qx * qz + qw * qy);
    out[6] = 2.0f * (qx * qy + qw * qz);
    out[7] = 1.0f - 2.0f * (qx * qx + qz * qz);
    out[8] = 2.0f * (qy * qz - qw * qx);
    out[9] = 2.0f * (qx * qz - qw * qy);
    out[10] = 2.0f * (qy * qz + qw * qx);
    out[11] = 1.0f - 2.0f * (qx * qx + qy * qy);
    out[12] = state->velocity.x - setpoint->velocity.x;
    out[13] = state->velocity.y - setpoint->velocity.y;
    out[14] = state->velocity.z - setpoint->velocity.z;
    out[15] = sensors->gyro.x * NF_CF_DEG_TO_RAD;
    out[16] = sensors->gyro.y * NF_CF_DEG_TO_RAD;
    out[17] = sensors->gyro.z * NF_CF_DEG_TO_RAD;
}

/* Thrust per rotor (N) at the simulator's steady state for a rotor-speed action in [-1, 1]. */
static float thrust_of_action(const nf_cf_vehicle *vehicle, float action)
{
    const float a = clip(action, -1.0f, 1.0f);
    const float speed = vehicle->rotor_speed_min +
                        (a + 1.0f) * 0.5f * (vehicle->rotor_speed_max - vehicle->rotor_speed_min);
    const float *k = vehicle->thrust_coefficients;
    return k[0] + speed * (k[1] + speed * k[2]);
}

/* The action whose steady-state thrust is thrust_n (the thrust curve inverted, clipped to the
 * rotor-speed range). */
static float action_of_thrust(const nf_cf_vehicle *vehicle, float thrust_n)
{
    const float *k = vehicle->thrust_coefficients;
    float speed;
    if (k[2] != 0.0f) {
        const float disc = k[1] * k[1] - 4.0f * k[2] * (k[0] - thrust_n);
        speed = (-k[1] + sqrtf(disc > 0.0f ? disc : 0.0f)) / (2.0f * k[2]);
    } else {
        speed = (thrust_n - k[0]) / k[1];
    }
    const float lo = vehicle->rotor_speed_min;
    const float hi = vehicle->rotor_speed_max;
    return clip((clip(speed, lo, hi) - lo) / (hi - lo) * 2.0f - 1.0f, -1.0f, 1.0f);
}

float nf_cf_normalized_force(const nf_cf_vehicle *vehicle, float motor_max_thrust_n, float action)
{
    return clip(thrust_of_action(vehicle, action) / motor_max_thrust_n, 0.0f, 1.0f);
}

void nf_cf_motor_forces(const nf_cf_vehicle *vehicle, float motor_max_thrust_n,
                        const float action[NF_CF_ACTION_DIM], float forces[NF_CF_ACTION_DIM],
                        float applied[NF_CF_ACTION_DIM])
{
    float thrust[NF_CF_ACTION_DIM];
    float highest = 0.0f;
    for (uint32_t i = 0; i < NF_CF_ACTION_DIM; i++) {
        thrust[i] = thrust_of_action(vehicle, action[i]);
        highest = thrust[i] > highest ? thrust[i] : highest;
    }
    /* Above the firmware's maximum, all four motors give up the same thrust: the differences
       between them (the torques that right the vehicle) survive and only the collective thrust
       is cut, as the firmware's own powerDistributionCap does for its legacy mixer. Clipping
       each motor on its own would cut the torque first. */
    const float excess = highest > motor_max_thrust_n ? highest - motor_max_thrust_n : 0.0f;
    for (uint32_t i = 0; i < NF_CF_ACTION_DIM; i++) {
        const float t = thrust[i] - excess;
        forces[i] = clip(t / motor_max_thrust_n, 0.0f, 1.0f);
        /* The simulator's history holds the action applied to the rotors: a command that was
           changed here enters it as the action of the thrust the motor gets. */
        const bool changed = excess > 0.0f || forces[i] <= 0.0f;
        applied[i] = changed ? action_of_thrust(vehicle, forces[i] * motor_max_thrust_n)
                             : clip(action[i], -1.0f, 1.0f);
    }
}

void nf_cf_reset_history(nf_cf_controller *c)
{
    float *h = c->obs + NF_CF_STATE_DIM;
    for (uint32_t i = 0; i < NF_CF_ACTION_DIM * c->history_length; i++) {
        h[i] = c->vehicle.history_reset_action;
    }
}

static nf_cf_status motors_zero(nf_cf_controller *c, control_t *control, nf_cf_status why)
{
    control->controlMode = controlModeForce;
    for (uint32_t i = 0; i < NF_CF_ACTION_DIM; i++) {
        control->normalizedForces[i] = 0.0f;
        c->normalized_forces[i] = 0.0f;
    }
    c->flying = false;
    c->status = why;
    return why;
}

static bool is_position_setpoint(const setpoint_t *s)
{
    return s->mode.x == modeAbs && s->mode.y == modeAbs && s->mode.z == modeAbs;
}

nf_cf_status nf_cf_step(nf_cf_controller *c, bool enabled, control_t *control,
                        const setpoint_t *setpoint, const sensorData_t *sensors,
                        const state_t *state, uint32_t step)
{
    /* Setpoint arrival: the commander stamps each new setpoint with its tick count and
       hands the last one out again until the next arrives, so a changed stamp is a new one. */
    if (!c->have_setpoint || setpoint->timestamp != c->setpoint_timestamp) {
        c->have_setpoint = true;
        c->setpoint_timestamp = setpoint->timestamp;
        c->setpoint_step = step;
    }
    if (!enabled) {
        c->fault_latched = false;
        c->flying = false;
        c->status = NF_CF_DISABLED;
        return NF_CF_DISABLED;
    }
    if (c->fault_latched) {
        return motors_zero(c, control, NF_CF_NONFINITE);
    }
    if (c->model_status != NANOFLY_OK) {
        return motors_zero(c, control, NF_CF_NO_MODEL);
    }
    if (step - c->setpoint_step >= NF_CF_SETPOINT_TIMEOUT_STEPS) {
        return motors_zero(c, control, NF_CF_NO_SETPOINT);
    }
    if (!is_position_setpoint(setpoint)) {
        c->flying = false;
        c->status = NF_CF_NOT_POSITION;
        return NF_CF_NOT_POSITION;
    }
    const uint32_t period = NF_CF_STABILIZER_HZ / c->vehicle.policy_rate_hz;
    if (!c->flying) {
        nf_cf_reset_history(c); /* a new episode, as in training */
        c->first_step = step;   /* the policy runs now and every period steps after */
    } else if ((step - c->first_step) % period != 0u) {
        /* between policy steps the last forces are held */
        control->controlMode = controlModeForce;
        for (uint32_t i = 0; i < NF_CF_ACTION_DIM; i++) {
            control->normalizedForces[i] = c->normalized_forces[i];
        }
        return NF_CF_FLYING;
    }

    float *obs = c->obs;
    nf_cf_state_observation(setpoint, sensors, state, c->vehicle.position_error_limit_m, obs);
    float sum = 0.0f;
    for (uint32_t i = 0; i < NF_CF_STATE_DIM; i++) {
        sum += obs[i] * obs[i];
    }
    c->observation_norm = sqrtf(sum);
    float action[NF_CF_ACTION_DIM];
    if (!isfinite(sum)) {
        c->nonfinite_events++;
        c->fault_latched = true;
        return motors_zero(c, control, NF_CF_NONFINITE);
    }
    nanofly_policy_act(&c->model, obs, action);
    c->inferences++;
    if (!finite_all(action, NF_CF_ACTION_DIM)) {
        c->nonfinite_events++;
        c->fault_latched = true;
        return motors_zero(c, control, NF_CF_NONFINITE);
    }
    /* The action history, newest first, shifted as the simulator does after each step. */
    const uint32_t hist = NF_CF_ACTION_DIM * c->history_length;
    float *h = obs + NF_CF_STATE_DIM;
    if (hist > 0u) {
        memmove(h + NF_CF_ACTION_DIM, h, sizeof(float) * (hist - NF_CF_ACTION_DIM));
    }
    float applied[NF_CF_ACTION_DIM];
    nf_cf_motor_forces(&c->vehicle, c->motor_max_thrust_n, action, c->normalized_forces, applied);
    control->controlMode = controlModeForce;
    for (uint32_t i = 0; i < NF_CF_ACTION_DIM; i++) {
        c->action[i] = action[i];
        if (hist > 0u) {
            h[i] = applied[i];
        }
        control->normalizedForces[i] = c->normalized_forces[i];
    }
    c->flying = true;
    c->status = NF_CF_FLYING;
    return NF_CF_FLYING;
}
