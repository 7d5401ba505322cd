/* The compiled-in policy of the nanofly Crazyflie app: what `nanofly crazyflie build` generates
 * into the app folder's src/nanofly_model.c (the model blob of an export, as 32-bit words so it
 * is 4-byte aligned, and the vehicle/MDP it was trained on). */
#ifndef NANOFLY_APP_MODEL_H
#define NANOFLY_APP_MODEL_H

#include <stdint.h>

#include "nanofly_cf.h"

/* The blob's bytes in memory order (little-endian words); nanofly_app_blob_bytes long. */
extern const uint32_t nanofly_app_blob_words[];
extern const uint32_t nanofly_app_blob_bytes;
/* The vehicle and MDP the policy was trained on (rotor speeds, thrust curve, policy rate ...). */
extern const nf_cf_vehicle nanofly_app_vehicle;

#endif /* NANOFLY_APP_MODEL_H */
