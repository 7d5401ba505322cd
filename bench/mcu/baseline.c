/* The naive baseline: float32 plain loops over row-major const float weights,
   newlib tanhf. Weights come from the generated baseline_weights.h. */
#include <math.h>

#include "baseline_weights.h"

void baseline_act(const float *obs, float *action);

void baseline_act(const float *obs, float *action)
{
    float buf[2][BL_MAX_WIDTH];
    const float *x = obs;
    int l, o, i;
    for (l = 0; l < BL_LAYERS; ++l) {
        int n = bl_widths[l], m = bl_widths[l + 1];
        const float *w = bl_weights[l], *b = bl_biases[l];
        float *y = l == BL_LAYERS - 1 ? action : buf[l & 1];
        for (o = 0; o < m; ++o) {
            float s = b[o];
            for (i = 0; i < n; ++i) s += w[o * n + i] * x[i];
            y[o] = tanhf(s);
        }
        x = y;
    }
}
