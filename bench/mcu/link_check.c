/* Link check: the runtime and both weight blobs in one firmware built with export.mcu's flags and
   --specs=nosys.specs. Never run; it only has to link. */
#include "nanofly_policy.h"
#include "policy_f32.h"
#include "policy_int8.h"

int main(void)
{
    static float obs[NANOFLY_POLICY_F32_INPUT_DIM];
    float action[NANOFLY_POLICY_F32_OUTPUT_DIM];
    nanofly_model m;
    int rc = nanofly_model_init(&m, NANOFLY_POLICY_F32_DATA, NANOFLY_POLICY_F32_SIZE);
    if (rc == NANOFLY_OK) nanofly_policy_act(&m, obs, action);
    rc |= nanofly_model_init(&m, NANOFLY_POLICY_INT8_DATA, NANOFLY_POLICY_INT8_SIZE);
    if (rc == NANOFLY_OK) nanofly_policy_act(&m, obs, action);
    return rc;
}
