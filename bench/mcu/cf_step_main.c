/* Semihosting benchmark firmware: one Crazyflie controller step (nf_cf_step: observation from
   the firmware's structs, int8 inference, force mapping) on the emulated Cortex-M4 (QEMU
   netduinoplus2, -icount shift=0: TIM2 counts executed instructions). The controller and the
   runtime are built with the firmware's flags against its headers, as in the app; the state
   estimates, setpoints and vehicle come from cf_step_data.h (nanofly.firmware_bridge.
   crazyflie_mcu writes it). Prints one line per measurement and exits 0, or 1 if the model was
   refused. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "FreeRTOSConfig.h"
#include "bench_timer.h"
#include "cf_step_data.h"
#include "config.h"
#include "nanofly_cf.h"
#include "nanofly_sitl_inputs.h"
#include "platform_defaults.h"
#include "policy_int8.h"

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void fill(uint32_t k, setpoint_t *sp, sensorData_t *sensors, state_t *st, uint32_t stamp)
{
    nf_sitl_fill(cf_step_state[k], cf_step_setpoint[k], stamp, modeAbs, sp, sensors, st);
}

static nf_cf_controller controller; /* the app keeps it in static memory too */

/* One policy step's stack use: paints below this frame, runs nf_cf_step, measures. */
__attribute__((noinline)) static uint32_t stack_depth(control_t *control, const setpoint_t *sp,
                                                      const sensorData_t *sensors,
                                                      const state_t *st, uint32_t step)
{
    uint32_t sp_reg = sp_now();
    stack_paint(sp_reg);
    (void)nf_cf_step(&controller, true, control, sp, sensors, st, step);
    return stack_touched(sp_reg);
}

int main(void)
{
    setpoint_t sp;
    sensorData_t sensors;
    state_t st;
    control_t control;
    uint32_t t0, t1, overhead, k, step = 1000u;
    int rc;

    timer_start();
    t0 = ticks();
    t1 = ticks();
    overhead = t1 - t0;
    printf("OVERHEAD %lu\n", (unsigned long)overhead);
    printf("THRUST_MAX %08lx\n", (unsigned long)bits(THRUST_MAX));
    printf("STABILIZER_STACK_WORDS %lu\n", (unsigned long)(STABILIZER_TASK_STACKSIZE));

    t0 = ticks();
    rc = nf_cf_init(&controller, &cf_step_vehicle, THRUST_MAX);
    if (rc == NANOFLY_OK) rc = nf_cf_load_model(&controller, NANOFLY_POLICY_INT8_DATA,
                                                NANOFLY_POLICY_INT8_SIZE);
    t1 = ticks();
    printf("INIT %d %lu\n", rc, (unsigned long)(t1 - t0 - overhead));
    if (rc != NANOFLY_OK) return 1;

    /* One 100 Hz policy period per state: the policy step (inference), then the held steps. */
    for (k = 0; k < CF_STEP_NUM_STATES; ++k) {
        uint32_t s, held = 0;
        nf_cf_status status;
        fill(k, &sp, &sensors, &st, step);
        t0 = ticks();
        status = nf_cf_step(&controller, true, &control, &sp, &sensors, &st, step);
        t1 = ticks();
        printf("POLICY %lu %lu %d %08lx %08lx %08lx %08lx\n", (unsigned long)k,
               (unsigned long)(t1 - t0 - overhead), (int)status,
               (unsigned long)bits(control.normalizedForces[0]),
               (unsigned long)bits(control.normalizedForces[1]),
               (unsigned long)bits(control.normalizedForces[2]),
               (unsigned long)bits(control.normalizedForces[3]));
        for (s = 1; s < CF_STEP_PERIOD; ++s) {
            t0 = ticks();
            (void)nf_cf_step(&controller, true, &control, &sp, &sensors, &st, step + s);
            t1 = ticks();
            if (t1 - t0 - overhead > held) held = t1 - t0 - overhead;
        }
        printf("HOLD %lu %lu\n", (unsigned long)k, (unsigned long)held);
        step += CF_STEP_PERIOD;
    }
    fill(0, &sp, &sensors, &st, step);
    printf("STACK %lu\n", (unsigned long)stack_depth(&control, &sp, &sensors, &st, step));
    printf("DONE\n");
    return 0;
}
