#include "encodeutil.h"
#include "testutil.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

ld_model *fixture_model(const char *rel)
{
    char err[LD_ERR_LEN];
    ld_model *m = NULL;
    const int rc = ld_model_load(fixture("%s", rel), NULL, &m, err);
    ck_assert_msg(rc == LD_OK, "%s", err);
    return m;
}

ld_image fixture_image(const char *name)
{
    char err[LD_ERR_LEN];
    ld_image img;
    const int rc = ld_image_load_file(fixture("images/%s.png", name), NULL, &img, err);
    ck_assert_msg(rc == LD_OK, "%s", err);
    return img;
}

float *stack_images(const ld_image *imgs, int n)
{
    const size_t each = (size_t)3 * imgs[0].height * imgs[0].width;
    float *batch = malloc((size_t)n * each * sizeof(float));
    ck_assert_ptr_nonnull(batch);
    for (int i = 0; i < n; i++)
        memcpy(batch + i * each, imgs[i].rgb, each * sizeof(float));
    return batch;
}

float *batch3(ld_image imgs[3])
{
    static const char *const names[] = {"astronaut_64", "chelsea_64", "coffee_64"};
    for (int i = 0; i < 3; i++)
        imgs[i] = fixture_image(names[i]);
    return stack_images(imgs, 3);
}

int encode_into(const ld_model *m, const float *rgb, int n, int h, int w,
                const ld_encode_opts *opts, encoded *r, char *err)
{
    int lh, lw;
    ck_assert_int_eq(ld_model_latent_size(m, h, w, &lh, &lw, err), LD_OK);
    r->count = (size_t)n * ld_model_config(m)->latent_channels * lh * lw;
    r->latents = malloc(r->count * sizeof(float));
    r->mean = malloc(r->count * sizeof(float));
    r->logvar = malloc(r->count * sizeof(float));
    r->moments = malloc(2 * r->count * sizeof(float));
    ck_assert(r->latents && r->mean && r->logvar && r->moments);
    ld_encode_opts o;
    if (opts)
        o = *opts;
    else
        ld_encode_opts_init(&o);
    ld_encode_stats own = {0}; /* the caller's, if it keeps some */
    if (!o.stats)
        o.stats = &own;
    const long banded_before = o.stats->banded_layers;
    ld_encode_out out = {r->latents, r->mean, r->logvar, r->moments, 0};
    const int rc = ld_encode(m, rgb, n, h, w, &o, &out, err);
    r->banded_layers = o.stats->banded_layers - banded_before;
    r->chunk = out.chunk_used;
    return rc;
}

encoded encode_ok(const ld_model *m, const float *rgb, int n, int h, int w,
                  const ld_encode_opts *opts)
{
    char err[LD_ERR_LEN];
    encoded r;
    const int rc = encode_into(m, rgb, n, h, w, opts, &r, err);
    ck_assert_msg(rc == LD_OK, "%s", err);
    return r;
}

void encoded_free(encoded *r)
{
    free(r->latents);
    free(r->mean);
    free(r->logvar);
    free(r->moments);
}

void assert_matches_fixture(const encoded *r, const char *path, const char *what)
{
    static const char *const names[] = {"mean", "logvar", "latents"};
    const float *got[] = {r->mean, r->logvar, r->latents};
    for (int k = 0; k < 3; k++) {
        size_t n;
        float *want = read_tensor(path, names[k], &n, NULL);
        ck_assert_msg(n == r->count, "%s: %s has %zu values, expected %zu", what, names[k],
                      r->count, n);
        const double e = rel_error(got[k], want, n);
        ck_assert_msg(e <= FIXTURE_TOLERANCE, "%s: %s off by %.3g from diffusers (tolerance %.0e)",
                      what, names[k], e, FIXTURE_TOLERANCE);
        free(want);
    }
}
