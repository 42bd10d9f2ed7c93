/* The seeded-sample fixtures (tests/fixtures/sampling/sample/MODEL/NAME.safetensors):
 * what diffusers' vae.encode(x).latent_dist.sample(generator=[...]) gave for
 * images[k] with a CPU generator seeded seeds[k], scaled.  Shared by the tests
 * of the library, the CLI and the daemon. */
#ifndef LATENTD_TESTS_SAMPLEFIX_H
#define LATENTD_TESTS_SAMPLEFIX_H

#include <stddef.h>
#include <stdint.h>

#define SAMPLEFIX_MAX_IMAGES 8

typedef struct {
    char model[64]; /* the folder under models/ */
    char name[128]; /* the file name without .safetensors */
    int n;          /* images in the batch */
    char images[SAMPLEFIX_MAX_IMAGES][64]; /* names under images/, without .png */
    uint64_t seeds[SAMPLEFIX_MAX_IMAGES];
    int channels, lh, lw;
    size_t per_image; /* channels * lh * lw */
    float *latents;   /* [n, channels, lh, lw] */
    float *noise;     /* [n, channels, lh, lw]: the standard normal draws */
} sample_fixture;

/* Every sample fixture, in path order; fails the test when there are none or
 * one cannot be read. */
sample_fixture *sample_fixtures_load(int *count);
void sample_fixtures_free(sample_fixture *all, int count);

/* A decimal 64-bit number, as the fixtures' metadata writes seeds. */
uint64_t parse_u64(const char *text);

/* Its seeds are S, S+1, ...: what one request (or one CLI call) with seed S draws. */
int sample_fixture_consecutive(const sample_fixture *f);

#endif
