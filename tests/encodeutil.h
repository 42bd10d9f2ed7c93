/* What the encoder tests share: fixture models and images loaded, one
 * ld_encode call with every output kept, and the comparison with the
 * diffusers fixtures at their tolerance. */
#ifndef LATENTD_TESTS_ENCODEUTIL_H
#define LATENTD_TESTS_ENCODEUTIL_H

#include "latentd/encoder.h"
#include "latentd/image.h"

#include <stddef.h>

#define FIXTURE_TOLERANCE 1e-4 /* the fixtures README: float32 against their float64 values */

/* What one ld_encode call gave. */
typedef struct {
    float *latents, *mean, *logvar, *moments;
    size_t count;       /* floats in latents, mean and logvar (moments holds twice) */
    long banded_layers; /* layers × images run in bands (ld_encode_stats) */
    int chunk;          /* the chunk the call used (ld_encode_out.chunk_used) */
} encoded;

/* A model or an image (images/NAME.png) of the fixtures; fails the test if
 * it does not load. */
ld_model *fixture_model(const char *rel);
ld_image fixture_image(const char *name);
/* n images of one size, stacked into [n, 3, h, w] */
float *stack_images(const ld_image *imgs, int n);
/* The images of the fixtures' batch3_64 (astronaut, chelsea, coffee, 64x64)
 * loaded into imgs and stacked as one batch; any vae_split gives its file. */
float *batch3(ld_image imgs[3]);

/* ld_encode of n h×w images with opts (NULL: the defaults) into r, whose
 * buffers it allocates; returns ld_encode's code (err set on failure).
 * encode_ok fails the test unless it is LD_OK. */
int encode_into(const ld_model *m, const float *rgb, int n, int h, int w,
                const ld_encode_opts *opts, encoded *r, char *err);
encoded encode_ok(const ld_model *m, const float *rgb, int n, int h, int w,
                  const ld_encode_opts *opts);
void encoded_free(encoded *r);

/* mean, logvar and latents against a fixture file, within FIXTURE_TOLERANCE */
void assert_matches_fixture(const encoded *r, const char *path, const char *what);

#endif
