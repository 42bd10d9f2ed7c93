/* The encoder in bands of rows (ld_banding) against the same encoder run
 * whole and against the diffusers fixtures: every model layout, images whose
 * sides are not multiples of the bands, chunks of several images, and the
 * banding that max_memory brings about on its own. */
#include "encodeutil.h"
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "testutil.h"

#include <check.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* banded vs whole, the fixtures' tolerance too: the same kernels over the
 * same values, but Winograd's 4x4 tiles start at each band's first row, so
 * the float rounding differs (up to ~2e-5 here; ~3e-6 with im2col alone) */
#define SAME_PATH_TOLERANCE 1e-4

static const char *const models[][2] = {
    {"models/tiny-sd", "tiny-sd"},         /* a 1x1 shortcut 32->64, attention */
    {"models/tiny-flux16", "tiny-flux16"}, /* 2 resnets per level, no quant_conv */
    {"models/tiny-noattn", "tiny-noattn"}, /* 3 levels, group size 4 and 8 */
};
#define N_MODELS (int)(sizeof models / sizeof models[0])

/* sides that are and are not multiples of the bands' rows and the tiles */
static const char *const images[] = {"rocket_128", "chelsea_60x44", "coffee_96x128"};
#define N_IMAGES (int)(sizeof images / sizeof images[0])

static void assert_same(const encoded *banded, const encoded *whole, const char *what)
{
    ck_assert_uint_eq(banded->count, whole->count);
    const double e = rel_error(banded->moments, whole->moments, 2 * banded->count);
    ck_assert_msg(e <= SAME_PATH_TOLERANCE, "%s: banded moments off by %.3g from whole", what, e);
}

/* Every bandable layer banded gives what the whole pass and diffusers give. */
START_TEST(banded_matches_whole_and_diffusers)
{
    ld_model *m = fixture_model(models[_i][0]);
    for (int k = 0; k < N_IMAGES; k++) {
        if (test_quick() && k > 1)
            break;
        ld_image img = fixture_image(images[k]);
        ld_encode_opts opts;
        ld_encode_opts_init(&opts);
        opts.banding = LD_BANDING_OFF;
        encoded whole = encode_ok(m, img.rgb, 1, img.height, img.width, &opts);
        ck_assert_int_eq(whole.banded_layers, 0);
        opts.banding = LD_BANDING_ON;
        encoded banded = encode_ok(m, img.rgb, 1, img.height, img.width, &opts);
        /* every resnet and downsample of the model */
        const ld_vae_config *cfg = ld_model_config(m);
        ck_assert_int_eq(banded.banded_layers,
                         cfg->n_levels * cfg->layers_per_block + (cfg->n_levels - 1) + 2);
        char what[160];
        snprintf(what, sizeof what, "%s × %s", models[_i][0], images[k]);
        assert_same(&banded, &whole, what);
        assert_matches_fixture(&banded,
                               fixture("expected/%s/%s.safetensors", models[_i][1], images[k]),
                               what);
        encoded_free(&whole);
        encoded_free(&banded);
        ld_image_free(&img);
    }
    ld_model_free(m);
}
END_TEST

/* batch3_64 = astronaut, chelsea, coffee: chunks of 2 and 1 banded, so the
 * packed activations of several images grow (shortcut) and shrink
 * (downsample) in one arena. */
START_TEST(banded_chunks_match_the_batch)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    for (int split = 1; split <= 3; split++) {
        ld_encode_opts opts;
        ld_encode_opts_init(&opts);
        opts.banding = LD_BANDING_ON;
        opts.vae_split = split;
        encoded r = encode_ok(m, batch, 3, 64, 64, &opts);
        ck_assert_int_eq(r.chunk, split);
        ck_assert_int_gt(r.banded_layers, 0);
        char what[64];
        snprintf(what, sizeof what, "batch3 banded, vae_split=%d", split);
        assert_matches_fixture(&r, fixture("expected/tiny-sd/batch3_64.safetensors"), what);
        encoded_free(&r);
    }
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

/* Below the whole pass's memory, the default (auto) bands by itself and the
 * result does not change; with banding off the same limit is LD_ETOOLARGE
 * (no retry could fit); below the least banded plan it is LD_ETOOLARGE too. */
START_TEST(memory_limit_brings_banding_on_its_own)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image img = fixture_image("rocket_128");
    const size_t whole = ld_encode_workspace_bytes(m, 1, 128, 128, 2);
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.threads = 2;
    encoded unlimited = encode_ok(m, img.rgb, 1, 128, 128, &opts);
    ck_assert_int_eq(unlimited.banded_layers, 0); /* small images: the fast path */

    opts.max_memory = whole - 1;
    encoded limited = encode_ok(m, img.rgb, 1, 128, 128, &opts);
    ck_assert_int_gt(limited.banded_layers, 0);
    assert_same(&limited, &unlimited, "banded by max_memory");
    assert_matches_fixture(&limited, fixture("expected/tiny-sd/rocket_128.safetensors"),
                           "banded by max_memory");

    char err[LD_ERR_LEN] = "";
    encoded refused;
    opts.banding = LD_BANDING_OFF;
    ck_assert_int_eq(encode_into(m, img.rgb, 1, 128, 128, &opts, &refused, err), LD_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(err, "working memory"));
    encoded_free(&refused);
    opts.banding = LD_BANDING_AUTO;
    opts.max_memory = (size_t)32 * 128 * 128 * sizeof(float); /* conv_in's output alone */
    ck_assert_int_eq(encode_into(m, img.rgb, 1, 128, 128, &opts, &refused, err), LD_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(err, "working memory"));
    encoded_free(&refused);
    encoded_free(&unlimited);
    encoded_free(&limited);
    ld_image_free(&img);
    ld_model_free(m);
}
END_TEST

/* ld_encode_least_workspace_bytes is exactly where max_memory starts to
 * refuse: at it the image is encoded (banded, the same result), a byte less
 * is LD_ETOOLARGE; banding off, it is the whole pass. */
START_TEST(least_workspace_is_where_the_limit_refuses)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image img = fixture_image("rocket_128");
    const size_t whole = ld_encode_workspace_bytes(m, 1, 128, 128, 2);
    const size_t least = ld_encode_least_workspace_bytes(m, 128, 128, 2, LD_BANDING_AUTO);
    ck_assert_uint_lt(least, whole);
    ck_assert_uint_eq(ld_encode_least_workspace_bytes(m, 128, 128, 2, LD_BANDING_OFF), whole);
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.threads = 2;
    opts.max_memory = least;
    encoded fits = encode_ok(m, img.rgb, 1, 128, 128, &opts);
    ck_assert_int_gt(fits.banded_layers, 0);
    assert_matches_fixture(&fits, fixture("expected/tiny-sd/rocket_128.safetensors"),
                           "at the least working memory");

    char err[LD_ERR_LEN] = "";
    encoded refused;
    opts.max_memory = least - 1;
    ck_assert_int_eq(encode_into(m, img.rgb, 1, 128, 128, &opts, &refused, err), LD_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(err, "working memory"));
    encoded_free(&refused);
    encoded_free(&fits);
    ld_image_free(&img);
    ld_model_free(m);
}
END_TEST

static uint64_t beats_of(const ld_model *m, const float *rgb, ld_banding banding)
{
    _Atomic uint64_t beats = 0;
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.banding = banding;
    opts.heartbeat = &beats;
    encoded r = encode_ok(m, rgb, 1, 64, 64, &opts);
    encoded_free(&r);
    return atomic_load(&beats);
}

/* A watchdog sees a banded pass beat once per layer, as a whole one does. */
START_TEST(banded_pass_beats_every_layer)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image img = fixture_image("astronaut_64");
    const uint64_t whole = beats_of(m, img.rgb, LD_BANDING_OFF);
    ck_assert_uint_gt(whole, 0);
    ck_assert_uint_eq(beats_of(m, img.rgb, LD_BANDING_ON), whole);
    ld_image_free(&img);
    ld_model_free(m);
}
END_TEST

/* The arena is the largest step's need, not a sum of per-image buffers: a
 * chunk of two takes less than twice one image (the scratch is shared). */
START_TEST(workspace_grows_with_the_chunk_not_the_scratch)
{
    ld_model *m = fixture_model("models/tiny-sd");
    const size_t one = ld_encode_workspace_bytes(m, 1, 128, 128, 2);
    const size_t two = ld_encode_workspace_bytes(m, 2, 128, 128, 2);
    ck_assert_uint_gt(two, one);
    ck_assert_uint_lt(two, 2 * one);
    ld_model_free(m);
}
END_TEST

static Suite *banding_suite(void)
{
    Suite *s = suite_create("banding");
    TCase *tc = tcase_create("banding");
    tcase_set_timeout(tc, 900); /* the valgrind run is ~200x slower */
    tcase_add_loop_test(tc, banded_matches_whole_and_diffusers, 0, N_MODELS);
    tcase_add_test(tc, banded_chunks_match_the_batch);
    tcase_add_test(tc, memory_limit_brings_banding_on_its_own);
    tcase_add_test(tc, least_workspace_is_where_the_limit_refuses);
    tcase_add_test(tc, banded_pass_beats_every_layer);
    tcase_add_test(tc, workspace_grows_with_the_chunk_not_the_scratch);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(banding_suite());
}
