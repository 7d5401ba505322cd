/* Host driver for the nanofly C runtime (tests, sanitizer builds, quick checks).
 *
 *   nanofly_run BLOB [OBS_F32 OUT_F32]
 *
 * Loads BLOB with nanofly_model_init and prints "rc=<code> in=<dim> out=<dim> format=<f>".
 * With OBS_F32 (raw little-endian float32 rows of input_dim values) it runs every row through
 * nanofly_policy_act and writes the actions as raw float32 to OUT_F32. Exit status 0 when the
 * blob loaded, 2 when it was refused, 1 on I/O errors.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nanofly_policy.h"

static void *read_file(const char *path, long *size)
{
    FILE *f = fopen(path, "rb");
    void *buf = NULL;
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (*size = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        /* malloc'd memory is suitably aligned for any type, so the blob is 4-byte aligned */
        buf = malloc((size_t)*size + 4u);
        if (buf && fread(buf, 1, (size_t)*size, f) != (size_t)*size) {
            free(buf);
            buf = NULL;
        }
    }
    fclose(f);
    return buf;
}

int main(int argc, char **argv)
{
    nanofly_model model;
    long blob_size = 0, obs_size = 0;
    void *blob;
    int rc, status = 0;
    if (argc != 2 && argc != 4) {
        fprintf(stderr, "usage: %s BLOB [OBS_F32 OUT_F32]\n", argv[0]);
        return 1;
    }
    blob = read_file(argv[1], &blob_size);
    if (!blob) {
        fprintf(stderr, "cannot read %s\n", argv[1]);
        return 1;
    }
    rc = nanofly_model_init(&model, blob, (uint32_t)blob_size);
    printf("rc=%d in=%u out=%u format=%u (%s)\n", rc, (unsigned)nanofly_model_input_dim(&model),
           (unsigned)nanofly_model_output_dim(&model), (unsigned)nanofly_model_format(&model),
           nanofly_strerror(rc));
    if (rc != NANOFLY_OK) {
        free(blob);
        return 2;
    }
    if (argc == 4) {
        uint32_t in = nanofly_model_input_dim(&model), out = nanofly_model_output_dim(&model);
        float *obs = (float *)read_file(argv[2], &obs_size);
        size_t rows = obs ? (size_t)obs_size / (sizeof(float) * in) : 0;
        float *act = (float *)malloc(rows * out * sizeof(float) + 1u);
        FILE *f = fopen(argv[3], "wb");
        if (!obs || !act || !f || (size_t)obs_size != rows * in * sizeof(float)) {
            fprintf(stderr, "bad observation file or cannot write %s\n", argv[3]);
            status = 1;
        } else {
            size_t r;
            for (r = 0; r < rows; ++r) nanofly_policy_act(&model, obs + r * in, act + r * out);
            if (fwrite(act, sizeof(float), rows * out, f) != rows * out) status = 1;
        }
        if (f) fclose(f);
        free(obs);
        free(act);
    }
    free(blob);
    return status;
}
