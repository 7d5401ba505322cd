/* Semihosting benchmark firmware for QEMU netduinoplus2 with -icount shift=0: TIM2 counts one
   per executed instruction, so "instructions per inference" is exact and repeatable.
   Prints one line per measurement (parsed by nanofly.export.mcu) and exits 0, or 1 if a model
   blob was refused. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bench_data.h"
#include "bench_timer.h"
#include "nanofly_policy.h"
#include "policy_f32.h"
#include "policy_int8.h"

void baseline_act(const float *obs, float *action);

static uint32_t bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void print_action(const char *what, int k, uint32_t count, const float *a)
{
    int o;
    printf("RUN %s %d %lu", what, k, (unsigned long)count);
    for (o = 0; o < BENCH_OUT; ++o) printf(" %08lx", (unsigned long)bits(a[o]));
    printf("\n");
}

/* Paints the free stack below this function's frame, runs one inference and returns how many
   bytes below the call's stack pointer it touched (its measured stack use). */
__attribute__((noinline)) static uint32_t stack_depth(const nanofly_model *m, const float *obs,
                                                      float *action)
{
    uint32_t sp = sp_now();
    stack_paint(sp);
    nanofly_policy_act(m, obs, action);
    return stack_touched(sp);
}

int main(void)
{
    nanofly_model mf, mi;
    float action[BENCH_OUT];
    uint32_t t0, t1, overhead, k;
    volatile float sink = 0.0f;
    int rc_f, rc_i;

    timer_start();
    t0 = ticks();
    t1 = ticks();
    overhead = t1 - t0;
    printf("OVERHEAD %lu\n", (unsigned long)overhead);

    t0 = ticks();
    rc_f = nanofly_model_init(&mf, NANOFLY_POLICY_F32_DATA, NANOFLY_POLICY_F32_SIZE);
    t1 = ticks();
    printf("INIT f32 %d %lu\n", rc_f, (unsigned long)(t1 - t0 - overhead));
    t0 = ticks();
    rc_i = nanofly_model_init(&mi, NANOFLY_POLICY_INT8_DATA, NANOFLY_POLICY_INT8_SIZE);
    t1 = ticks();
    printf("INIT int8 %d %lu\n", rc_i, (unsigned long)(t1 - t0 - overhead));
    if (rc_f != NANOFLY_OK || rc_i != NANOFLY_OK) return 1;

    for (k = 0; k < BENCH_NUM_OBS; ++k) {
        t0 = ticks();
        nanofly_policy_act(&mf, bench_obs[k], action);
        t1 = ticks();
        print_action("f32", (int)k, t1 - t0 - overhead, action);
        t0 = ticks();
        nanofly_policy_act(&mi, bench_obs[k], action);
        t1 = ticks();
        print_action("int8", (int)k, t1 - t0 - overhead, action);
        t0 = ticks();
        baseline_act(bench_obs[k], action);
        t1 = ticks();
        print_action("baseline", (int)k, t1 - t0 - overhead, action);
    }

    /* tanh: ours against newlib's tanhf, averaged over inputs spread over [-4, 4] */
    {
        uint32_t i, ours, newlib;
        t0 = ticks();
        for (i = 0; i < 64u; ++i) sink += nanofly_tanhf((float)i * 0.125f - 4.0f);
        t1 = ticks();
        ours = t1 - t0 - overhead;
        t0 = ticks();
        for (i = 0; i < 64u; ++i) sink += tanhf((float)i * 0.125f - 4.0f);
        t1 = ticks();
        newlib = t1 - t0 - overhead;
        printf("TANH %lu %lu 64\n", (unsigned long)ours, (unsigned long)newlib);
    }

    printf("STACK f32 %lu\n", (unsigned long)stack_depth(&mf, bench_obs[0], action));
    printf("STACK int8 %lu\n", (unsigned long)stack_depth(&mi, bench_obs[0], action));
    printf("DONE %d\n", (int)(sink != sink));
    return 0;
}
