/* The encoder against the diffusers reference: every model × image of the
 * fixtures, batching, chunking, the memory-limit fallback and sampling. */
#include "encodeutil.h"
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "testutil.h"

#include <check.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const images[] = {
    "astronaut_64", "astronaut_64_gray", "astronaut_64_gray16", "astronaut_64_gray_alpha",
    "astronaut_64_interlaced", "astronaut_64_palette", "astronaut_64_rgb16",
    "astronaut_64_rgba", "chelsea_64", "chelsea_60x44", "coffee_64", "coffee_96x128",
    "rocket_128", "astronaut_256",
};
#define N_IMAGES (int)(sizeof images / sizeof images[0])

/* model path (relative to the fixtures) and the expected folder it must match */
static const char *const models[][2] = {
    {"models/tiny-sd", "tiny-sd"},
    {"models/tiny-sd-fp16", "tiny-sd-fp16"},
    {"models/tiny-sdxl-meanstd", "tiny-sdxl-meanstd"},
    {"models/tiny-flux16", "tiny-flux16"},
    {"models/tiny-noattn", "tiny-noattn"},
    {"models/tiny-sd-ldm/model.safetensors", "tiny-sd"},
    {"models/tiny-sd-ldm/model-prefixed.safetensors", "tiny-sd"},
};
#define N_MODELS (int)(sizeof models / sizeof models[0])

START_TEST(every_image_matches_diffusers)
{
    ld_model *m = fixture_model(models[_i][0]);
    for (int k = 0; k < N_IMAGES; k++) {
        if (test_quick() && strcmp(images[k], "astronaut_64") != 0 &&
            strcmp(images[k], "chelsea_60x44") != 0)
            continue;
        ld_image img = fixture_image(images[k]);
        encoded r = encode_ok(m, img.rgb, 1, img.height, img.width, NULL);
        char what[256];
        snprintf(what, sizeof what, "%s × %s", models[_i][0], images[k]);
        assert_matches_fixture(
            &r, fixture("expected/%s/%s.safetensors", models[_i][1], images[k]), what);
        encoded_free(&r);
        ld_image_free(&img);
    }
    ld_model_free(m);
}
END_TEST

/* Every matrix kernel this CPU runs (_i, an ld_kernel) matches the fixtures,
 * on every model: square, odd-sized and non-square images, so partial
 * tiles and panels are covered. */
START_TEST(every_kernel_matches_diffusers)
{
    static const char *const some[] = {"astronaut_64", "chelsea_60x44", "coffee_96x128",
                                       "rocket_128"};
    if (!ld_kernel_available((ld_kernel)_i)) {
        fprintf(stderr, "test_golden: no %s kernel on this CPU: not tested here\n",
                ld_kernel_name((ld_kernel)_i));
        return;
    }
    for (int mi = 0; mi < N_MODELS; mi++) {
        ld_model *m = fixture_model(models[mi][0]);
        for (size_t k = 0; k < sizeof some / sizeof *some; k++) {
            if (test_quick() && k > 1)
                break;
            ld_image img = fixture_image(some[k]);
            ld_encode_opts opts;
            ld_encode_opts_init(&opts);
            opts.kernel = (ld_kernel)_i;
            opts.threads = 2;
            encoded r = encode_ok(m, img.rgb, 1, img.height, img.width, &opts);
            char what[256];
            snprintf(what, sizeof what, "%s kernel: %s × %s", ld_kernel_name((ld_kernel)_i),
                     models[mi][0], some[k]);
            assert_matches_fixture(
                &r, fixture("expected/%s/%s.safetensors", models[mi][1], some[k]), what);
            encoded_free(&r);
            ld_image_free(&img);
        }
        ld_model_free(m);
    }
}
END_TEST

START_TEST(batch_of_three_matches_at_every_split)
{
    if (test_quick() && _i > 0)
        return;
    ld_model *m = fixture_model(models[_i][0]);
    ld_image imgs[3];
    float *batch = batch3(imgs);
    for (int split = 0; split <= 4; split += test_quick() ? 2 : 1) {
        ld_encode_opts opts;
        ld_encode_opts_init(&opts);
        opts.vae_split = split;
        encoded r = encode_ok(m, batch, 3, 64, 64, &opts);
        ck_assert_int_eq(r.chunk, split == 0 || split > 3 ? 3 : split);
        char what[128];
        snprintf(what, sizeof what, "%s batch3 vae_split=%d", models[_i][0], split);
        assert_matches_fixture(&r, fixture("expected/%s/batch3_64.safetensors", models[_i][1]),
                               what);
        encoded_free(&r);
    }
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

static int count_calls(void *ctx, int done, int total)
{
    int *calls = ctx;
    ck_assert_int_le(done, total);
    (*calls)++;
    return 0;
}

START_TEST(memory_limit_halves_the_chunk)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    const size_t one = ld_encode_workspace_bytes(m, 1, 64, 64, 0);
    const size_t two = ld_encode_workspace_bytes(m, 2, 64, 64, 0);
    ck_assert_uint_gt(two, one);
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    int calls = 0;
    opts.progress = count_calls;
    opts.progress_ctx = &calls;
    opts.vae_split = 3;
    opts.max_memory = two; /* 3 does not fit, 3/2 = 1 does (halving, not 2) */
    encoded r = encode_ok(m, batch, 3, 64, 64, &opts);
    ck_assert_int_eq(r.chunk, 1);
    ck_assert_int_eq(calls, 3); /* one progress report per chunk */
    assert_matches_fixture(&r, fixture("expected/tiny-sd/batch3_64.safetensors"),
                           "limited memory");
    encoded_free(&r);

    opts.vae_split = 2; /* a chunk that fits is kept */
    r = encode_ok(m, batch, 3, 64, 64, &opts);
    ck_assert_int_eq(r.chunk, 2);
    assert_matches_fixture(&r, fixture("expected/tiny-sd/batch3_64.safetensors"), "chunks of 2");
    encoded_free(&r);

    char err[LD_ERR_LEN] = "";
    float out[3 * 4 * 8 * 8];
    ld_encode_out o = {out, NULL, NULL, NULL, 0};
    opts.max_memory = one - 1; /* not even one image whole: banding would step in */
    opts.banding = LD_BANDING_OFF;
    ck_assert_int_eq(ld_encode(m, batch, 3, 64, 64, &opts, &o, err), LD_ETOOLARGE);
    ck_assert_ptr_nonnull(strstr(err, "working memory"));
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

static int cancel_after_first(void *ctx, int done, int total)
{
    (void)ctx;
    (void)total;
    return done >= 1;
}

START_TEST(progress_callback_can_cancel)
{
    ld_model *m = fixture_model("models/tiny-noattn");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.vae_split = 1;
    opts.progress = cancel_after_first;
    float out[3 * 4 * 16 * 16];
    ld_encode_out o = {out, NULL, NULL, NULL, 0};
    char err[LD_ERR_LEN];
    ck_assert_int_eq(ld_encode(m, batch, 3, 64, 64, &opts, &o, err), LD_ECANCELLED);
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

/* ---- cancellation and heartbeats ---- */

static int set_cancel(void *ctx, int done, int total)
{
    (void)done;
    (void)total;
    atomic_store((_Atomic bool *)ctx, true); /* as another thread would */
    return 0;
}

/* layers one image takes, counted by the heartbeat of a whole encode */
static uint64_t layers_per_image(const ld_model *m, const float *batch)
{
    _Atomic uint64_t beats = 0;
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.heartbeat = &beats;
    encoded r = encode_ok(m, batch, 2, 64, 64, &opts);
    encoded_free(&r);
    const uint64_t two = atomic_load(&beats);
    ck_assert_uint_gt(two, 0);
    ck_assert_uint_eq(two % 2, 0); /* every layer beats once per image */
    return two / 2;
}

START_TEST(heartbeat_counts_every_layer)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    const uint64_t per_image = layers_per_image(m, batch);
    /* tiny-sd: conv_in, 4 levels x 1 resnet (2 convs, +1 shortcut at 32->64),
     * 3 downsamples, 2 mid resnets, attention, conv_out, quant_conv */
    ck_assert_uint_eq(per_image, 1 + 4 * 2 + 1 + 3 + 2 * 2 + 1 + 1 + 1);
    for (int split = 1; split <= 3; split++) { /* chunking changes nothing */
        _Atomic uint64_t beats = 0;
        ld_encode_opts opts;
        ld_encode_opts_init(&opts);
        opts.vae_split = split;
        opts.heartbeat = &beats;
        encoded r = encode_ok(m, batch, 3, 64, 64, &opts);
        ck_assert_uint_eq(atomic_load(&beats), 3 * per_image);
        encoded_free(&r);
    }
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

START_TEST(cancel_flag_stops_within_one_layer)
{
    ld_model *m = fixture_model("models/tiny-noattn");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    const uint64_t per_image = layers_per_image(m, batch);
    float out[3 * 4 * 16 * 16];
    char err[LD_ERR_LEN] = "";

    /* set before the call: nothing runs */
    _Atomic bool cancel = true;
    _Atomic uint64_t beats = 0;
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.cancel = &cancel;
    opts.heartbeat = &beats;
    ld_encode_out o = {out, NULL, NULL, NULL, 0};
    ck_assert_int_eq(ld_encode(m, batch, 3, 64, 64, &opts, &o, err), LD_ECANCELLED);
    ck_assert_uint_eq(atomic_load(&beats), 0);
    ck_assert_ptr_nonnull(strstr(err, "cancelled"));

    /* set once the first image is done: the second stops after its first layer */
    atomic_store(&cancel, false);
    opts.vae_split = 1;
    opts.progress = set_cancel;
    opts.progress_ctx = &cancel;
    ck_assert_int_eq(ld_encode(m, batch, 3, 64, 64, &opts, &o, err), LD_ECANCELLED);
    ck_assert_uint_eq(atomic_load(&beats), per_image + 1);

    /* a caller's pool outlives a cancelled call and serves the next one */
    ld_pool *pool;
    ck_assert_int_eq(ld_pool_new(2, &pool, err), LD_OK);
    opts.pool = pool;
    atomic_store(&cancel, false);
    ck_assert_int_eq(ld_encode(m, batch, 3, 64, 64, &opts, &o, err), LD_ECANCELLED);
    atomic_store(&cancel, false);
    atomic_store(&beats, 0);
    opts.progress = NULL;
    ck_assert_int_eq(ld_encode(m, batch, 3, 64, 64, &opts, &o, err), LD_OK);
    ck_assert_uint_eq(atomic_load(&beats), 3 * per_image);
    ld_pool_free(pool);
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

/* A caller's pool of any size gives the same latents as the fixtures. */
START_TEST(caller_pool_of_any_size_matches)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    for (int threads = 1; threads <= 3; threads++) {
        char err[LD_ERR_LEN];
        ld_pool *pool;
        ck_assert_int_eq(ld_pool_new(threads, &pool, err), LD_OK);
        ld_encode_opts opts;
        ld_encode_opts_init(&opts);
        opts.pool = pool;
        opts.vae_split = 2;
        encoded r = encode_ok(m, batch, 3, 64, 64, &opts);
        char what[64];
        snprintf(what, sizeof what, "pool of %d", threads);
        assert_matches_fixture(&r, fixture("expected/tiny-sd/batch3_64.safetensors"), what);
        encoded_free(&r);
        ld_pool_free(pool);
    }
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

/* moments are the unclamped encoder output: their halves are mean and the
 * logvar before its clamp */
START_TEST(moments_are_unclamped)
{
    ld_model *m = fixture_model("models/tiny-flux16");
    ld_image img = fixture_image("astronaut_64");
    encoded r = encode_ok(m, img.rgb, 1, 64, 64, NULL);
    const size_t half = r.count;
    int clamped = 0;
    for (size_t i = 0; i < half; i++) {
        ck_assert_float_eq(r.moments[i], r.mean[i]);
        float raw = r.moments[half + i];
        float want = raw < -30.0f ? -30.0f : raw > 20.0f ? 20.0f : raw;
        ck_assert_float_eq(r.logvar[i], want);
        clamped += raw != want;
    }
    ck_assert_int_gt(clamped, 0); /* the fixture pushes logvar beyond the bounds */
    encoded_free(&r);
    ld_image_free(&img);
    ld_model_free(m);
}
END_TEST

static encoded sample(const ld_model *m, const float *batch, int n, const uint64_t *seeds)
{
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.deterministic = false;
    opts.seeds = seeds;
    return encode_ok(m, batch, n, 64, 64, &opts);
}

START_TEST(sampling_is_seeded_and_standard_normal)
{
    ld_model *m = fixture_model("models/tiny-sd");
    ld_image imgs[3];
    float *batch = batch3(imgs);
    const uint64_t seeds[3] = {42, 7, 42};
    encoded a = sample(m, batch, 3, seeds);
    encoded b = sample(m, batch, 3, seeds);
    const size_t each = a.count / 3;
    ck_assert_mem_eq(a.latents, b.latents, a.count * sizeof(float)); /* same seed, same noise */
    /* an image's noise depends on its own seed only, not on its batch */
    encoded alone = sample(m, batch, 1, &seeds[0]);
    ck_assert_mem_eq(alone.latents, a.latents, each * sizeof(float));
    /* another seed differs */
    const uint64_t other = 43;
    encoded c = sample(m, batch, 1, &other);
    ck_assert_int_ne(memcmp(c.latents, a.latents, each * sizeof(float)), 0);
    /* (z - mean)/std is standard normal */
    const float scale = ld_model_config(m)->scaling_factor;
    double sum = 0, sum_sq = 0;
    for (size_t i = 0; i < a.count; i++) {
        double eps = (a.latents[i] / scale - a.mean[i]) / exp(0.5 * a.logvar[i]);
        sum += eps;
        sum_sq += eps * eps;
    }
    double mu = sum / a.count, sd = sqrt(sum_sq / a.count - mu * mu);
    ck_assert_msg(fabs(mu) < 0.15 && fabs(sd - 1.0) < 0.15, "noise mean %g sd %g", mu, sd);
    encoded_free(&a);
    encoded_free(&b);
    encoded_free(&alone);
    encoded_free(&c);
    free(batch);
    for (int i = 0; i < 3; i++)
        ld_image_free(&imgs[i]);
    ld_model_free(m);
}
END_TEST

/* center_input_sample off: the caller's [-1,1] input goes in unchanged */
START_TEST(no_center_takes_input_as_given)
{
    ld_model *m = fixture_model("models/tiny-noattn");
    ld_image img = fixture_image("coffee_64");
    encoded centred = encode_ok(m, img.rgb, 1, 64, 64, NULL);
    const size_t n = (size_t)3 * 64 * 64;
    for (size_t i = 0; i < n; i++)
        img.rgb[i] = img.rgb[i] * 2.0f - 1.0f;
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.center_input = false;
    encoded raw = encode_ok(m, img.rgb, 1, 64, 64, &opts);
    ck_assert_double_le(rel_error(raw.mean, centred.mean, centred.count), 1e-6);
    encoded_free(&centred);
    encoded_free(&raw);
    ld_image_free(&img);
    ld_model_free(m);
}
END_TEST

/* A single LDM file without config.json: architecture read off the tensors,
 * SD's default scaling; a pipeline folder with vae/ loads too. */
START_TEST(other_layouts_load)
{
    char *dir = make_temp_dir();
    char path[4200], err[LD_ERR_LEN];
    snprintf(path, sizeof path, "%s/vae-ft-mse.safetensors", dir);
    ck_assert_int_eq(symlink(fixture("models/tiny-sd-ldm/model.safetensors"), path), 0);
    ld_model *m = NULL;
    ck_assert_msg(ld_model_load(path, NULL, &m, err) == LD_OK, "%s", err);
    ck_assert_str_eq(ld_model_config_source(m), "inferred");
    ck_assert_str_eq(ld_model_layout(m), "ldm");
    const ld_vae_config *cfg = ld_model_config(m);
    ck_assert_int_eq(cfg->n_levels, 4);
    ck_assert_int_eq(cfg->block_out_channels[1], 64);
    ck_assert(cfg->use_quant_conv && cfg->mid_attention);
    ld_image img = fixture_image("chelsea_60x44");
    encoded r = encode_ok(m, img.rgb, 1, img.height, img.width, NULL);
    assert_matches_fixture(&r, fixture("expected/tiny-sd/chelsea_60x44.safetensors"),
                           "inferred");
    encoded_free(&r);
    ld_model_free(m);
    unlink(path);

    snprintf(path, sizeof path, "%s/vae", dir);
    ck_assert_int_eq(symlink(fixture("models/tiny-sdxl-meanstd"), path), 0);
    ck_assert_msg(ld_model_load(dir, NULL, &m, err) == LD_OK, "%s", err);
    r = encode_ok(m, img.rgb, 1, img.height, img.width, NULL);
    assert_matches_fixture(&r, fixture("expected/tiny-sdxl-meanstd/chelsea_60x44.safetensors"),
                           "pipeline folder");
    encoded_free(&r);
    ld_model_free(m);
    unlink(path);
    rmdir(dir);
    free(dir);
    ld_image_free(&img);
}
END_TEST

static Suite *golden_suite(void)
{
    Suite *s = suite_create("golden");
    TCase *tc = tcase_create("fixtures");
    tcase_set_timeout(tc, 900);
    tcase_add_loop_test(tc, every_image_matches_diffusers, 0, N_MODELS);
    tcase_add_loop_test(tc, batch_of_three_matches_at_every_split, 0, N_MODELS);
    tcase_add_loop_test(tc, every_kernel_matches_diffusers, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_test(tc, memory_limit_halves_the_chunk);
    tcase_add_test(tc, progress_callback_can_cancel);
    tcase_add_test(tc, heartbeat_counts_every_layer);
    tcase_add_test(tc, cancel_flag_stops_within_one_layer);
    tcase_add_test(tc, caller_pool_of_any_size_matches);
    tcase_add_test(tc, moments_are_unclamped);
    tcase_add_test(tc, sampling_is_seeded_and_standard_normal);
    tcase_add_test(tc, no_center_takes_input_as_given);
    tcase_add_test(tc, other_layouts_load);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return run_suite(golden_suite());
}
