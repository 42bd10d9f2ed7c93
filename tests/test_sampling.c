/* Sampling against torch and diffusers: the noise of torch's CPU generator bit
 * for bit (fixtures sampling/noise: raw torch.randn outputs), and the
 * encoder's seeded samples against diffusers' (sampling/sample), whatever the
 * chunking, the batch-mates and the threads. */
#include "latentd/encoder.h"
#include "latentd/image.h"
#include "samplefix.h"
#include "testutil.h"
#include "vae_internal.h" /* ld_rng */

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOLERANCE 1e-4 /* the fixtures README: f32 vs their f64 values */

/* Elements of got that differ from want in any bit; *first the first one. */
static size_t bit_mismatches(const float *got, const float *want, size_t n, size_t *first)
{
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ == 0)
            *first = i;
    return bad;
}

/* The element count a metadata shape such as "[1, 4, 5, 5]" gives. */
static size_t shape_numel(const char *text)
{
    json_t *shape = json_loads(text, 0, NULL);
    ck_assert_msg(json_is_array(shape), "shape %s", text);
    size_t numel = 1;
    for (size_t i = 0; i < json_array_size(shape); i++)
        numel *= (size_t)json_integer_value(json_array_get(shape, i));
    json_decref(shape);
    return numel;
}

/* One file: `noise` is torch.randn(shape, generator=manual_seed(seed)). */
static size_t check_noise_file(const char *name)
{
    const char *path = fixture("sampling/noise/%s", name);
    char err[LD_ERR_LEN];
    ld_st_file *f;
    ck_assert_msg(ld_st_open(path, &f, err) == LD_OK, "%s", err);
    ck_assert_ptr_nonnull(ld_st_metadata(f, "seed"));
    ck_assert_ptr_nonnull(ld_st_metadata(f, "shape"));
    const uint64_t seed = parse_u64(ld_st_metadata(f, "seed"));
    const size_t numel = shape_numel(ld_st_metadata(f, "shape"));
    ld_st_close(f);
    size_t n;
    float *want = read_tensor(path, "noise", &n, NULL);
    ck_assert_uint_eq(n, numel);
    float *got = malloc(n * sizeof(float));
    ck_assert_ptr_nonnull(got);
    ld_rng rng;
    ld_rng_seed(&rng, seed);
    ld_rng_randn(&rng, got, n);
    size_t first = 0;
    const size_t bad = bit_mismatches(got, want, n, &first);
    ck_assert_msg(bad == 0, "%s: %zu of %zu values differ, first [%zu] %.9g want %.9g", name,
                  bad, n, first, got[first], want[first]);
    free(got);
    free(want);
    return n;
}

/* Every raw noise fixture: fewer than 16 elements (the double path), a
 * multiple of 16, a tail redrawn, seeds past 2^32 and 2^64-1, one generator
 * drawing a batch at once. */
START_TEST(noise_is_torch_bit_for_bit)
{
    int count;
    char **names = dir_entries(fixture("sampling/noise"), &count);
    ck_assert_int_gt(count, 0);
    size_t values = 0;
    for (int i = 0; i < count; i++)
        values += check_noise_file(names[i]);
    printf("sampling: %d noise fixtures, %zu values, all bit-exact\n", count, values);
    dir_entries_free(names, count);
}
END_TEST

/* ---- the encoder's samples ---- */

typedef struct {
    const sample_fixture *fx;
    int k; /* the image's index in its fixture */
} row;

static ld_image load_image(const char *name)
{
    char err[LD_ERR_LEN];
    ld_image img;
    int rc = ld_image_load_file(fixture("images/%s.png", name), NULL, &img, err);
    ck_assert_msg(rc == LD_OK, "%s", err);
    return img;
}

/* Encode rows[0..n) (all of one size) as one sampled batch; the latents. */
static float *encode_rows(const ld_model *m, const row *rows, int n, int vae_split, int threads)
{
    ld_image first = load_image(rows[0].fx->images[rows[0].k]);
    const int h = first.height, w = first.width;
    const size_t each = (size_t)3 * h * w;
    float *batch = malloc((size_t)n * each * sizeof(float));
    uint64_t *seeds = malloc((size_t)n * sizeof *seeds);
    ck_assert(batch && seeds);
    for (int i = 0; i < n; i++) {
        ld_image img = i == 0 ? first : load_image(rows[i].fx->images[rows[i].k]);
        ck_assert(img.height == h && img.width == w);
        memcpy(batch + (size_t)i * each, img.rgb, each * sizeof(float));
        ld_image_free(&img);
        seeds[i] = rows[i].fx->seeds[rows[i].k];
    }
    const size_t per = rows[0].fx->per_image;
    float *latents = malloc((size_t)n * per * sizeof(float));
    ck_assert_ptr_nonnull(latents);
    ld_encode_opts opts;
    ld_encode_opts_init(&opts);
    opts.deterministic = false;
    opts.seeds = seeds;
    opts.vae_split = vae_split;
    opts.threads = threads;
    ld_encode_out out = {.latents = latents};
    char err[LD_ERR_LEN];
    ck_assert_msg(ld_encode(m, batch, n, h, w, &opts, &out, err) == LD_OK, "%s", err);
    free(batch);
    free(seeds);
    return latents;
}

/* Each row's latents against its fixture's; the worst error. */
static double check_rows(const float *latents, const row *rows, int n, const char *how)
{
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const size_t per = rows[i].fx->per_image;
        const double e = rel_error(latents + (size_t)i * per,
                                   rows[i].fx->latents + (size_t)rows[i].k * per, per);
        ck_assert_msg(e <= TOLERANCE, "%s/%s image %d (%s): off by %g", rows[i].fx->model,
                      rows[i].fx->name, rows[i].k, how, e);
        worst = e > worst ? e : worst;
    }
    return worst;
}

static ld_model *load_model(const char *name)
{
    char err[LD_ERR_LEN];
    ld_model *m = NULL;
    ck_assert_msg(ld_model_load(fixture("models/%s", name), NULL, &m, err) == LD_OK, "%s", err);
    return m;
}

/* Each fixture as diffusers drew it: its batch, one generator per image, at
 * several vae_split values; each image's noise also drawn alone, bit-exact. */
START_TEST(samples_match_diffusers)
{
    int count;
    sample_fixture *all = sample_fixtures_load(&count);
    double worst = 0;
    int images = 0;
    for (int f = 0; f < count; f++) {
        const sample_fixture *fx = &all[f];
        ld_model *m = load_model(fx->model);
        row rows[SAMPLEFIX_MAX_IMAGES];
        for (int k = 0; k < fx->n; k++) {
            rows[k] = (row){fx, k};
            float *noise = malloc(fx->per_image * sizeof(float));
            ck_assert_ptr_nonnull(noise);
            ld_rng rng;
            ld_rng_seed(&rng, fx->seeds[k]);
            ld_rng_randn(&rng, noise, fx->per_image);
            size_t first = 0;
            ck_assert_msg(bit_mismatches(noise, fx->noise + (size_t)k * fx->per_image,
                                         fx->per_image, &first) == 0,
                          "%s/%s image %d: noise differs at %zu", fx->model, fx->name, k, first);
            free(noise);
        }
        static const int splits[] = {0, 1, 2};
        for (int s = 0; s < 3; s++) {
            char how[32];
            snprintf(how, sizeof how, "vae_split %d", splits[s]);
            float *lat = encode_rows(m, rows, fx->n, splits[s], 0);
            const double e = check_rows(lat, rows, fx->n, how);
            worst = e > worst ? e : worst;
            free(lat);
        }
        images += fx->n;
        ld_model_free(m);
    }
    printf("sampling: %d sample fixtures (%d images), worst error %.3g (tolerance %g)\n", count,
           images, worst, TOLERANCE);
    sample_fixtures_free(all, count);
}
END_TEST

/* The rows of all fixtures of one model and image size, gathered in reverse:
 * batch-mates from other requests, in another order. */
static int gather_rows(const sample_fixture *all, int count, const sample_fixture *like,
                       row *rows, int max)
{
    int n = 0;
    for (int f = count - 1; f >= 0; f--) {
        const sample_fixture *fx = &all[f];
        if (strcmp(fx->model, like->model) || fx->lh != like->lh || fx->lw != like->lw)
            continue;
        for (int k = fx->n - 1; k >= 0 && n < max; k--)
            rows[n++] = (row){fx, k};
    }
    return n;
}

/* An image's sample depends on its seed alone: not on the images beside it,
 * how they are chunked, or how many threads compute. */
START_TEST(noise_ignores_batch_mates_chunks_and_threads)
{
    int count;
    sample_fixture *all = sample_fixtures_load(&count);
    int mixed = 0;
    for (int f = 0; f < count; f++) {
        const sample_fixture *fx = &all[f];
        row rows[4 * SAMPLEFIX_MAX_IMAGES];
        const int n = gather_rows(all, count, fx, rows, 4 * SAMPLEFIX_MAX_IMAGES);
        if (rows[0].fx != fx) /* each group once: from its last fixture */
            continue;
        ld_model *m = load_model(fx->model);
        float *lat = encode_rows(m, rows, n, 3, 1);
        check_rows(lat, rows, n, "gathered, vae_split 3, 1 thread");
        free(lat);
        for (int i = 0; i < n; i++) {
            lat = encode_rows(m, &rows[i], 1, 0, 2);
            check_rows(lat, &rows[i], 1, "alone, 2 threads");
            free(lat);
        }
        mixed += n > 1;
        ld_model_free(m);
    }
    ck_assert_int_gt(mixed, 0); /* some group had images from several fixtures */
    sample_fixtures_free(all, count);
}
END_TEST

/* Seeds that differ only above bit 31 draw the same noise, as torch's do;
 * seeds that differ below do not. */
START_TEST(only_the_low_32_bits_seed_the_generator)
{
    float a[64], b[64], c[64];
    ld_rng rng;
    ld_rng_seed(&rng, 5);
    ld_rng_randn(&rng, a, 64);
    ld_rng_seed(&rng, (UINT64_C(1) << 32) + 5);
    ld_rng_randn(&rng, b, 64);
    ld_rng_seed(&rng, 6);
    ld_rng_randn(&rng, c, 64);
    ck_assert_mem_eq(a, b, sizeof a);
    ck_assert_int_ne(memcmp(a, c, sizeof a), 0);
}
END_TEST

static Suite *sampling_suite(void)
{
    Suite *s = suite_create("sampling");
    TCase *tc = tcase_create("torch");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, noise_is_torch_bit_for_bit);
    tcase_add_test(tc, only_the_low_32_bits_seed_the_generator);
    tcase_add_test(tc, samples_match_diffusers);
    tcase_add_test(tc, noise_ignores_batch_mates_chunks_and_threads);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    ld_encoder_init();
    return run_suite(sampling_suite());
}
