/* What Python pipelines send instead of picture files: float tensors as
 * .npy, safetensors or raw bytes, and diffusers' remote-encode calls.  The
 * truth is the fixtures' expected values (diffusers on the same pixels) and,
 * for half-precision inputs, the float32 request of the same rounded values. */
#include <check.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"
#include "latentd/image.h"
#include "latentd/safetensors.h"
#include "latentd/tensor_input.h"
#include "testutil.h"

/* The pixels of fixture images as one [n, 3, H, W] float32 batch. */
static float *pixels(const char *const *names, int n, int *height, int *width)
{
    float *batch = NULL;
    size_t per = 0;
    for (int i = 0; i < n; i++) {
        ld_image img;
        char err[LD_ERR_LEN];
        ck_assert_msg(ld_image_load_file(fixture("images/%s.png", names[i]), NULL, &img, err) ==
                          LD_OK, "%s", err);
        if (!batch) {
            *height = img.height;
            *width = img.width;
            per = (size_t)3 * img.height * img.width;
            batch = malloc((size_t)n * per * sizeof(float));
            ck_assert_ptr_nonnull(batch);
        }
        ck_assert(img.height == *height && img.width == *width);
        memcpy(batch + i * per, img.rgb, per * sizeof(float));
        ld_image_free(&img);
    }
    return batch;
}

/* A version 1.0 .npy of float32 or float16 elements, as numpy.save writes it. */
static uint8_t *npy(const void *elements, const char *descr, int n, int h, int w, size_t *len)
{
    char header[128];
    int hl = snprintf(header, sizeof header, "{'descr': '%s', 'fortran_order': False, "
                      "'shape': (%d, 3, %d, %d), }", descr, n, h, w);
    const int total = (10 + hl + 1 + 63) / 64 * 64; /* padded with spaces, ends in \n */
    const size_t bytes = (size_t)n * 3 * h * w * (size_t)(descr[2] - '0');
    uint8_t *out = malloc((size_t)total + bytes);
    ck_assert_ptr_nonnull(out);
    memcpy(out, "\x93NUMPY\x01\x00", 8);
    out[8] = (uint8_t)((total - 10) & 0xff);
    out[9] = (uint8_t)((total - 10) >> 8);
    memset(out + 10, ' ', (size_t)total - 10);
    memcpy(out + 10, header, (size_t)hl);
    out[total - 1] = '\n';
    memcpy(out + total, elements, bytes);
    *len = (size_t)total + bytes;
    return out;
}

/* The one array of an npy answer. */
static const float *npy_data(const reply *r, size_t *count)
{
    ck_assert_msg(r->status == 200, "%ld: %s", r->status, r->body);
    ck_assert(r->len > 10 && !memcmp(r->body, "\x93NUMPY", 6));
    const size_t header = 10 + (size_t)((uint8_t)r->body[8] | (uint8_t)r->body[9] << 8);
    *count = (r->len - header) / sizeof(float);
    return (const float *)(r->body + header);
}

static const char *const pair[] = {"astronaut_64", "chelsea_64"};

START_TEST(npy_safetensors_and_raw_bodies_equal_the_fixtures)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    int h, w;
    float *x = pixels(pair, 2, &h, &w);
    const size_t numel = (size_t)2 * 3 * h * w;
    size_t len, count;
    /* .npy, by its media type */
    uint8_t *body = npy(x, "<f4", 2, h, w, &len);
    reply r = http(&d, "/v1/encode?format=npy&outputs=mean", "application/x-npy", body, len,
                   NULL, NULL);
    const float *mean = npy_data(&r, &count);
    assert_slice(mean, count, 2, 0, "tiny-sd", "astronaut_64", "mean");
    assert_slice(mean, count, 2, 1, "tiny-sd", "chelsea_64", "mean");
    free(r.body);
    /* numpy's default float64 */
    double *x64 = malloc(numel * sizeof *x64);
    ck_assert_ptr_nonnull(x64);
    for (size_t i = 0; i < numel; i++)
        x64[i] = x[i];
    size_t len64;
    uint8_t *body64 = npy(x64, "<f8", 2, h, w, &len64);
    free(x64);
    r = http(&d, "/v1/encode?format=npy&outputs=mean", "application/x-npy", body64, len64, NULL,
             NULL);
    mean = npy_data(&r, &count);
    assert_slice(mean, count, 2, 1, "tiny-sd", "chelsea_64", "mean");
    free(r.body);
    free(body64);
    /* the same bytes as application/octet-stream: known by their signature */
    r = http(&d, "/v1/encode?format=npy&outputs=latents", "application/octet-stream", body, len,
             NULL, NULL);
    mean = npy_data(&r, &count);
    assert_slice(mean, count, 2, 1, "tiny-sd", "chelsea_64", "latents");
    free(r.body);
    free(body);
    /* safetensors with a tensor "images" */
    ld_st_out t = {"images", 4, {2, 3, h, w}, x};
    char err[LD_ERR_LEN];
    ck_assert(ld_st_serialize(&t, 1, NULL, 0, &body, &len, err) == LD_OK);
    r = http(&d, "/v1/encode?format=npy&outputs=mean", "application/safetensors", body, len,
             NULL, NULL);
    mean = npy_data(&r, &count);
    assert_slice(mean, count, 2, 0, "tiny-sd", "astronaut_64", "mean");
    free(r.body);
    free(body);
    /* raw elements: the shape as Python's requests sends a list, and as one value */
    const char *const shapes[] = {"shape=2&shape=3&shape=64&shape=64", "shape=%5B2,3,64,64%5D"};
    for (int i = 0; i < 2; i++) {
        char path[160];
        snprintf(path, sizeof path, "/v1/encode?format=npy&outputs=mean&dtype=float32&%s",
                 shapes[i]);
        r = http(&d, path, "application/octet-stream", x, numel * sizeof(float), NULL, NULL);
        mean = npy_data(&r, &count);
        assert_slice(mean, count, 2, 1, "tiny-sd", "chelsea_64", "mean");
        free(r.body);
    }
    free(x);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

static uint16_t to_bf16(float v) /* truncation: any bf16 value will do */
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    return (uint16_t)(bits >> 16);
}

static uint16_t to_f16(float v) /* normal numbers in [2^-14, 65504), rounded down */
{
    uint32_t bits;
    memcpy(&bits, &v, sizeof bits);
    const int exponent = (int)((bits >> 23) & 0xff) - 127 + 15;
    if (exponent <= 0)
        return (uint16_t)((bits >> 16) & 0x8000); /* tiny: a signed zero */
    return (uint16_t)(((bits >> 16) & 0x8000) | exponent << 10 | (bits >> 13 & 0x3ff));
}

START_TEST(half_precision_inputs_equal_their_float32_values)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    int h, w;
    float *x = pixels(pair, 1, &h, &w);
    const size_t numel = (size_t)3 * h * w;
    uint16_t *half = malloc(numel * sizeof *half);
    float *widened = malloc(numel * sizeof *widened);
    ck_assert(half && widened);
    for (int variant = 0; variant < 2; variant++) {
        for (size_t i = 0; i < numel; i++) {
            half[i] = variant ? to_bf16(x[i]) : to_f16(x[i]);
            widened[i] = variant ? ld_bf16_to_f32(half[i]) : ld_f16_to_f32(half[i]);
        }
        char path[160];
        snprintf(path, sizeof path, "/v1/encode?format=npy&outputs=mean&dtype=%s&shape=3,%d,%d",
                 variant ? "bfloat16" : "float16", h, w);
        reply r16 = http(&d, path, "application/octet-stream", half, numel * 2, NULL, NULL);
        snprintf(path, sizeof path, "/v1/encode?format=npy&outputs=mean&dtype=float32&shape=3,%d,%d",
                 h, w);
        reply r32 = http(&d, path, "application/octet-stream", widened, numel * 4, NULL, NULL);
        size_t n16, n32;
        const float *m16 = npy_data(&r16, &n16), *m32 = npy_data(&r32, &n32);
        ck_assert_uint_eq(n16, n32);
        ck_assert_msg(!memcmp(m16, m32, n16 * sizeof(float)), "%s input differs from its floats",
                      variant ? "bfloat16" : "float16");
        free(r16.body);
        free(r32.body);
    }
    free(half);
    free(widened);
    free(x);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(values_are_taken_as_they_are)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    int h, w;
    float *x = pixels(pair, 1, &h, &w);
    const size_t numel = (size_t)3 * h * w, bytes = numel * sizeof(float);
    char path[160];
    snprintf(path, sizeof path, "/v1/encode?format=npy&outputs=mean&dtype=float32&shape=3,%d,%d",
             h, w);
    /* [-1, 1] with center_input_sample=false is the same input as [0, 1] */
    float *centred = malloc(bytes), *overshoot = malloc(bytes), *clamped = malloc(bytes);
    ck_assert(centred && overshoot && clamped);
    for (size_t i = 0; i < numel; i++) {
        centred[i] = 2.0f * x[i] - 1.0f;
        overshoot[i] = 1.25f * x[i] - 0.125f; /* as bicubic upsampling rings */
        clamped[i] = fminf(fmaxf(overshoot[i], 0.0f), 1.0f);
    }
    char uncentred[200];
    snprintf(uncentred, sizeof uncentred, "%s&center_input_sample=false", path);
    reply r = http(&d, uncentred, "application/octet-stream", centred, bytes, NULL, NULL);
    size_t count;
    const float *mean = npy_data(&r, &count);
    assert_slice(mean, count, 1, 0, "tiny-sd", "astronaut_64", "mean");
    free(r.body);
    /* never clamped: overshooting values give other latents than clamped ones */
    reply a = http(&d, path, "application/octet-stream", overshoot, bytes, NULL, NULL);
    reply b = http(&d, path, "application/octet-stream", clamped, bytes, NULL, NULL);
    size_t na, nb;
    const float *ma = npy_data(&a, &na), *mb = npy_data(&b, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert_double_gt(rel_error(ma, mb, na), 1e-3);
    free(a.body);
    free(b.body);
    free(centred);
    free(overshoot);
    free(clamped);
    free(x);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(bad_tensors_are_refused_with_where)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    int h, w;
    float *x = pixels(pair, 1, &h, &w);
    const size_t numel = (size_t)3 * h * w;
    char path[160];
    snprintf(path, sizeof path, "/v1/encode?dtype=float32&shape=1,3,%d,%d", h, w);
    x[(size_t)2 * h * w + 5 * w + 7] = NAN; /* channel 2, row 5, column 7 */
    reply r = http(&d, path, "application/octet-stream", x, numel * 4, NULL, NULL);
    assert_error(&r, 400, "bad-image");
    ck_assert_msg(strstr(r.body, "NaN at element [0, 2, 5, 7]"), "%s", r.body);
    free(r.body);
    x[(size_t)2 * h * w + 5 * w + 7] = INFINITY;
    r = http(&d, path, "application/octet-stream", x, numel * 4, NULL, NULL);
    ck_assert_msg(r.status == 400 && strstr(r.body, "Inf at element [0, 2, 5, 7]"), "%s", r.body);
    free(r.body);
    x[(size_t)2 * h * w + 5 * w + 7] = 3e30f; /* finite, but would overflow the encoder */
    r = http(&d, path, "application/octet-stream", x, numel * 4, NULL, NULL);
    ck_assert_msg(r.status == 400 && strstr(r.body, "[0, 2, 5, 7]"), "%s", r.body);
    free(r.body);
    x[(size_t)2 * h * w + 5 * w + 7] = 0.5f;
    static const struct {
        const char *query;
        size_t bytes;
        long status;
        const char *says;
    } bad[] = {
        {"dtype=float32&shape=1,3,64,64", 100, 400, "bytes"},       /* length and shape differ */
        {"dtype=float32&shape=1,4,32,32", 4 * 4096, 400, "channels"}, /* not RGB */
        {"dtype=float32&shape=64,64", 4 * 4096, 400, "[N, 3, H, W]"},
        {"dtype=int8&shape=1,3,64,64", 3 * 4096, 400, "dtype"},
        {"shape=1,3,64,64", 4 * 3 * 4096, 400, "both shape and dtype"},
        {"dtype=float32&shape=1,3,x,64", 4 * 3 * 4096, 400, "shape"},
        {"dtype=float32&shape=1%203%2064%2064", 4 * 3 * 4096, 400, "shape"},
        {"dtype=float32&shape=%5B1,3,64,64", 4 * 3 * 4096, 400, "shape"},
        {"shape=1,3,64,64", 4 * 3 * 4096, 400, "bad-request"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        snprintf(path, sizeof path, "/v1/encode?%s", bad[i].query);
        r = http(&d, path, "application/octet-stream", x, bad[i].bytes < numel * 4 ? bad[i].bytes
                                                                                  : numel * 4,
                 NULL, NULL);
        ck_assert_msg(r.status == bad[i].status && strstr(r.body, bad[i].says), "%s: %ld %s",
                      bad[i].query, r.status, r.body);
        free(r.body);
    }
    /* Fortran order and big-endian elements: well-formed, not taken */
    size_t len;
    uint8_t *body = npy(x, "<f4", 1, h, w, &len);
    memcpy(strstr((char *)body + 10, "False"), "True ", 5);
    r = http(&d, "/v1/encode", "application/x-npy", body, len, NULL, NULL);
    ck_assert_msg(r.status == 415 || r.status == 400, "%ld %s", r.status, r.body);
    ck_assert_msg(strstr(r.body, "fortran_order") != NULL, "%s", r.body);
    free(r.body);
    free(body);
    body = npy(x, ">f4", 1, h, w, &len);
    r = http(&d, "/v1/encode", "application/x-npy", body, len, NULL, NULL);
    ck_assert_msg(r.status >= 400 && strstr(r.body, ">f4"), "%ld %s", r.status, r.body);
    free(r.body);
    free(body);
    /* the daemon is fine afterwards */
    r = http(&d, "/healthz", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    free(x);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* diffusers' client: PNG bytes without a Content-Type, factors in the query,
 * the answer's bytes read with the shape and dtype headers. */
START_TEST(remote_encode_answers_a_bare_tensor)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    size_t len;
    uint8_t *png = read_all(fixture("images/astronaut_64.png"), &len);
    /* "Content-Type:" with no value makes curl send none, as requests does */
    reply r = http(&d, "/v1/remote/encode?scaling_factor=0.5&shift_factor=0.25", NULL, png, len,
                   NULL, "Content-Type:");
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
    ck_assert_ptr_nonnull(strcasestr(r.headers, "\nshape: [1, 4, 8, 8]"));
    ck_assert_ptr_nonnull(strcasestr(r.headers, "\ndtype: float32"));
    ck_assert_uint_eq(r.len, 4 * 64 * sizeof(float));
    size_t n;
    float *mean = read_tensor(fixture("expected/tiny-sd/astronaut_64.safetensors"), "mean", &n,
                              NULL);
    for (size_t i = 0; i < n; i++)
        mean[i] = (mean[i] - 0.25f) * 0.5f;
    ck_assert_double_le(rel_error((const float *)r.body, mean, n), 1e-4);
    free(mean);
    free(r.body);
    /* no factors: the model's own scaling, which is its latents' */
    r = http(&d, "/v1/remote/encode", NULL, png, len, NULL, "Content-Type:");
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
    assert_slice((const float *)r.body, r.len / sizeof(float), 1, 0, "tiny-sd", "astronaut_64",
                 "latents");
    free(r.body);
    /* an error is JSON, which the client reads with response.json() */
    r = http(&d, "/v1/remote/encode?shape=1,3,64,64&dtype=float32", NULL, png, len, NULL,
             "Content-Type:");
    assert_error(&r, 400, "bad-image"); /* PNG bytes are not the tensor the shape says */
    free(r.body);
    /* the factors are the remote route's: /v1/encode scales as the config says */
    r = http(&d, "/v1/encode?scaling_factor=2", "image/png", png, len, NULL, NULL);
    assert_error(&r, 400, "bad-request");
    free(r.body);
    free(png);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(names_other_tools_use)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    reply r = http(&d, "/v2/health/live", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    r = http(&d, "/v2/health/ready", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    /* a wrong method is told what the route takes (RFC 9110's Allow) */
    r = http(&d, "/v1/encode", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strcasestr(r.headers, "\nAllow: POST\r\n"));
    free(r.body);
    r = http(&d, "/v2/health/live", "text/plain", "x", 1, NULL, NULL);
    ck_assert_int_eq(r.status, 405);
    ck_assert_ptr_nonnull(strcasestr(r.headers, "\nAllow: GET, HEAD\r\n"));
    free(r.body);
    size_t len;
    uint8_t *jpg = read_all(fixture("images/astronaut_64.jpg"), &len);
    r = http(&d, "/v1/encode", "image/jpg", jpg, len, NULL, NULL); /* a common misspelling */
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
    free(r.body);
    free(jpg);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* Requests whose decoding fails (a NaN) beside ones that succeed, from
 * several clients at once: a failed job ends while workers hold batches,
 * which once let the queue read a batch entry its worker had freed. */
typedef struct {
    const daemon_t *d;
    const uint8_t *good, *bad;
    size_t good_len, bad_len;
    int wrong; /* answers other than 200 for good and 400 for bad */
} mixer;

static void *mix_requests(void *arg)
{
    mixer *m = arg;
    for (int i = 0; i < 24; i++) {
        const bool bad = i % 2;
        reply r = http_try(m->d, "/v1/encode?format=npy", "application/x-npy",
                           bad ? m->bad : m->good, bad ? m->bad_len : m->good_len, NULL, NULL);
        m->wrong += r.status != (bad ? 400 : 200);
        free(r.body);
    }
    return NULL;
}

START_TEST(failing_and_good_tensors_side_by_side)
{
    static const char *const flags[] = {"--workers", "2", "--vae-split", "4", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    enum { SIDE = 16, THREADS = 6 };
    float one[3 * SIDE * SIDE], three[3][3 * SIDE * SIDE];
    for (int i = 0; i < 3 * SIDE * SIDE; i++)
        one[i] = three[0][i] = three[1][i] = three[2][i] = (float)(i % 97) / 97.0f;
    three[2][100] = NAN; /* the third image of the bad request fails to convert */
    size_t good_len, bad_len;
    uint8_t *good = npy(one, "<f4", 1, SIDE, SIDE, &good_len);
    uint8_t *bad = npy(three, "<f4", 3, SIDE, SIDE, &bad_len);
    mixer m[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        m[i] = (mixer){&d, good, bad, good_len, bad_len, 0};
        pthread_create(&t[i], NULL, mix_requests, &m[i]);
    }
    int wrong = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        wrong += m[i].wrong;
    }
    ck_assert_int_eq(wrong, 0);
    free(good);
    free(bad);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* The fixture's mean and logvar, one after the other: [2C, h, w]. */
static float *fixture_moments(const char *image, size_t *count)
{
    size_t n;
    float *mean = read_tensor(fixture("expected/tiny-sd/%s.safetensors", image), "mean", &n, NULL);
    float *logvar = read_tensor(fixture("expected/tiny-sd/%s.safetensors", image), "logvar", NULL,
                                NULL);
    float *both = malloc(2 * n * sizeof(float));
    ck_assert_ptr_nonnull(both);
    memcpy(both, mean, n * sizeof(float));
    memcpy(both + n, logvar, n * sizeof(float)); /* within the clamp here: the same */
    free(mean);
    free(logvar);
    *count = 2 * n;
    return both;
}

START_TEST(invsr_and_comfyui_files)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    size_t len, count;
    uint8_t *png = read_all(fixture("images/astronaut_64.png"), &len);
    /* InvSR's {stem}.npy: one image's moments, [2C, h, w], no batch axis */
    reply r = http(&d, "/v1/encode?format=npy&outputs=moments", "image/png", png, len, NULL, NULL);
    const float *moments = npy_data(&r, &count);
    ck_assert_msg(strstr(r.body + 10, "'shape': (8, 8, 8)") != NULL, "%.120s", r.body + 10);
    size_t want_n;
    float *want = fixture_moments("astronaut_64", &want_n);
    ck_assert_uint_eq(count, want_n);
    ck_assert_double_le(rel_error(moments, want, count), 1e-4);
    free(want);
    free(r.body);
    /* ComfyUI's .latent: the unscaled latents and the format marker */
    r = http(&d, "/v1/encode?format=comfyui", "image/png", png, len, NULL, NULL);
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
    char path[4300], err[LD_ERR_LEN];
    snprintf(path, sizeof path, "%s/x.latent", d.dir);
    write_all(path, r.body, r.len);
    ld_st_file *f;
    ck_assert_msg(ld_st_open(path, &f, err) == LD_OK, "%s", err);
    const ld_st_tensor *marker = ld_st_find(f, "latent_format_version_0");
    ck_assert(marker && marker->ndim == 1 && marker->shape[0] == 0);
    ck_assert_int_eq(ld_st_find(f, "latent_tensor")->ndim, 4);
    ld_st_close(f);
    size_t n;
    float *z = read_tensor(path, "latent_tensor", &n, NULL);
    assert_slice(z, n, 1, 0, "tiny-sd", "astronaut_64", "mean"); /* the mode, unscaled */
    free(z);
    free(r.body);
    /* a sample: unscaled, it is the sample's latents with the scaling undone */
    r = http(&d, "/v1/encode?format=comfyui&deterministic=false&seed=7", "image/png", png, len,
             NULL, NULL);
    write_all(path, r.body, r.len);
    free(r.body);
    z = read_tensor(path, "latent_tensor", &n, NULL);
    r = http(&d, "/v1/encode?format=npy&deterministic=false&seed=7", "image/png", png, len, NULL,
             NULL);
    const float *latents = npy_data(&r, &count);
    ck_assert_uint_eq(count, n);
    const double scaling = 0.18215; /* tiny-sd's config.json */
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(z[i] * scaling - latents[i]) <= 1e-5 * (1 + fabs(latents[i])),
                      "element %zu: %g vs %g", i, z[i] * scaling, latents[i]);
    free(z);
    free(r.body);
    free(png);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* ComfyUI's latent-to-RGB factors for SD1's latent space, as
 * comfy/latent_formats.py publishes them (tiny-sd scales as SD1 does). */
static const float sd1_rgb[4][3] = {{0.3512f, 0.2297f, 0.3227f}, {0.3250f, 0.4974f, 0.2350f},
                                    {-0.2829f, 0.1762f, 0.2721f}, {-0.2120f, -0.2616f, -0.7177f}};

START_TEST(png_preview_is_comfyuis_picture)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    char *body = json_request(pair, 2, "\"format\": \"png\"");
    reply r = http(&d, "/v1/encode", "application/json", body, strlen(body), NULL, NULL);
    free(body);
    ck_assert_msg(r.status == 200, "%ld %s", r.status, r.body);
    ck_assert_ptr_nonnull(strcasestr(r.headers, "Content-Type: image/png"));
    ld_image pic;
    char err[LD_ERR_LEN];
    ck_assert_msg(ld_image_decode((const uint8_t *)r.body, r.len, NULL, &pic, err) == LD_OK, "%s",
                  err);
    ck_assert_int_eq(pic.width, 16); /* two 8x8 latents side by side */
    ck_assert_int_eq(pic.height, 8);
    for (int img = 0; img < 2; img++) {
        size_t n;
        float *lat = read_tensor(fixture("expected/tiny-sd/%s.safetensors", pair[img]), "latents",
                                 &n, NULL);
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                for (int c = 0; c < 3; c++) {
                    float v = 0;
                    for (int k = 0; k < 4; k++)
                        v += lat[k * 64 + y * 8 + x] * sd1_rgb[k][c];
                    const float want = fminf(fmaxf((v + 1) / 2, 0), 1); /* then * 255, floored */
                    const float got = pic.rgb[c * 128 + y * 16 + img * 8 + x];
                    ck_assert_msg(fabsf(got - want) <= 1.5f / 255, "image %d (%d,%d,%d): %g vs %g",
                                  img, x, y, c, got, want);
                }
        free(lat);
    }
    ld_image_free(&pic);
    free(r.body);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("latentd");
    TCase *tc = tcase_create("dropin");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, npy_safetensors_and_raw_bodies_equal_the_fixtures);
    tcase_add_test(tc, half_precision_inputs_equal_their_float32_values);
    tcase_add_test(tc, values_are_taken_as_they_are);
    tcase_add_test(tc, bad_tensors_are_refused_with_where);
    tcase_add_test(tc, remote_encode_answers_a_bare_tensor);
    tcase_add_test(tc, names_other_tools_use);
    tcase_add_test(tc, failing_and_good_tensors_side_by_side);
    tcase_add_test(tc, invsr_and_comfyui_files);
    tcase_add_test(tc, png_preview_is_comfyuis_picture);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
