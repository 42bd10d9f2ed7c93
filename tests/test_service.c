/* The daemon as its clients use it: the real latentd on a loopback port with a
 * fixture model, driven over HTTP with libcurl.  Answers are checked against
 * the fixtures' expected values. */
#include "latentd/base64.h"
#include "latentd/nn.h"
#include "latentd/safetensors.h"
#include "progjpeg.h"
#include "samplefix.h"
#include "testutil.h"

#include <check.h>
#include <curl/curl.h>
#include <jansson.h>
#include <inttypes.h>
#include <math.h>
#include <png.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon.h"

/* ---------------- tests ---------------- */

START_TEST(json_in_json_out)
{
    daemon_t d = start_daemon("models/tiny-sdxl-meanstd", NULL);
    static const char *const names[] = {"coffee_64", "astronaut_64_palette", "chelsea_64"};
    reply r = post_json(&d, "/v1/encode", names, 3, NULL);
    ck_assert_msg(r.status == 200, "%s", r.body);
    ck_assert_ptr_nonnull(strstr(r.headers, "application/json"));
    json_t *root = parse(&r);
    ck_assert_str_eq(json_string_value(json_object_get(root, "model")), "tiny-sdxl-meanstd");
    static const char *const kinds[] = {"latents", "mean", "logvar"};
    for (int k = 0; k < 3; k++) {
        size_t n;
        float *v = tensor_from_json(json_object_get(root, kinds[k]), &n);
        for (int i = 0; i < 3; i++)
            assert_slice(v, n, 3, i, "tiny-sdxl-meanstd", names[i], kinds[k]);
        free(v);
    }
    ck_assert_ptr_null(json_object_get(root, "moments")); /* not asked for */
    json_decref(root);
    free(r.body);
    /* a single "image", a data: URL, tensor_encoding=list */
    char *b64 = image_b64("rocket_128");
    char *body = malloc(strlen(b64) + 200);
    sprintf(body, "{\"image\": \"data:image/png;base64,%s\", \"tensor_encoding\": \"list\", "
                  "\"outputs\": [\"mean\"]}", b64);
    r = http(&d, "/v1/encode", "application/json", body, strlen(body), NULL, NULL);
    ck_assert_msg(r.status == 200, "%s", r.body);
    root = parse(&r);
    json_t *mean = json_object_get(json_object_get(root, "mean"), "data");
    ck_assert_int_eq(json_array_size(mean), 1);
    json_t *plane = json_array_get(json_array_get(mean, 0), 2);
    ck_assert_int_eq(json_array_size(plane), 16); /* 128 / 8 rows */
    ck_assert_ptr_null(json_object_get(root, "latents"));
    json_decref(root);
    free(r.body);
    free(body);
    free(b64);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* kernel = NAME: every matrix kernel this CPU runs (_i, an ld_kernel) serves
 * the fixtures' answers; the start-up line names it */
START_TEST(every_kernel_serves_the_fixtures)
{
    const char *name = ld_kernel_name((ld_kernel)_i);
    char setting[64];
    if (!ld_kernel_available((ld_kernel)_i)) {
        /* no daemon for it: under valgrind this process lacks AVX-512 while
         * a daemon it starts (run natively by the shell) has it; test_nn
         * checks the refusal in-process */
        fprintf(stderr, "test_service: no %s kernel on this CPU: not tested here\n", name);
        return;
    }
    snprintf(setting, sizeof setting, "kernel=%s", name);
    const char *const extra[] = {"--set", setting, NULL};
    daemon_t d = start_daemon("models/tiny-sd", extra);
    static const char *const names[] = {"chelsea_60x44"};
    reply r = post_json(&d, "/v1/encode", names, 1, NULL);
    ck_assert_msg(r.status == 200, "%s", r.body);
    json_t *root = parse(&r);
    size_t n;
    float *v = tensor_from_json(json_object_get(root, "latents"), &n);
    assert_slice(v, n, 1, 0, "tiny-sd", names[0], "latents");
    free(v);
    json_decref(root);
    free(r.body);
    char said[64];
    snprintf(said, sizeof said, "%s kernel,", name);
    ck_assert_msg(log_contains(&d, said), "the start-up line does not name the %s kernel", name);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(multipart_and_raw_bodies)
{
    daemon_t d = start_daemon("models/tiny-flux16", NULL);
    CURL *c = curl_easy_init();
    curl_mime *form = curl_mime_init(c);
    curl_mimepart *p = curl_mime_addpart(form);
    curl_mime_name(p, "image");
    curl_mime_filedata(p, fixture("images/astronaut_64_rgb16.png"));
    p = curl_mime_addpart(form);
    curl_mime_name(p, "image");
    curl_mime_filedata(p, fixture("images/chelsea_64.png"));
    p = curl_mime_addpart(form);
    curl_mime_name(p, "outputs");
    curl_mime_data(p, "latents,moments", CURL_ZERO_TERMINATED);
    p = curl_mime_addpart(form);
    curl_mime_name(p, "format");
    curl_mime_data(p, "safetensors", CURL_ZERO_TERMINATED);
    reply r = http(&d, "/v1/encode", NULL, NULL, 0, form, NULL);
    curl_mime_free(form);
    curl_easy_cleanup(c);
    ck_assert_msg(r.status == 200, "%s", r.body);
    char path[4300], err[LD_ERR_LEN];
    snprintf(path, sizeof path, "%s/out.safetensors", d.dir);
    write_all(path, r.body, r.len);
    ld_st_file *f;
    ck_assert_msg(ld_st_open(path, &f, err) == LD_OK, "%s", err);
    ck_assert_ptr_null(ld_st_find(f, "mean"));
    ck_assert_int_eq(ld_st_find(f, "moments")->shape[1], 32);
    ld_st_close(f);
    size_t n;
    float *lat = read_tensor(path, "latents", &n, NULL);
    assert_slice(lat, n, 2, 0, "tiny-flux16", "astronaut_64_rgb16", "latents");
    assert_slice(lat, n, 2, 1, "tiny-flux16", "chelsea_64", "latents");
    free(lat);
    free(r.body);

    /* raw PNG body, options in the query, npy out */
    size_t len;
    uint8_t *png = read_all(fixture("images/coffee_96x128.png"), &len);
    r = http(&d, "/v1/encode?format=npy", "image/png", png, len, NULL, NULL);
    ck_assert_msg(r.status == 200, "%s", r.body);
    ck_assert(r.len > 128 && !memcmp(r.body, "\x93NUMPY\x01\x00", 8));
    const size_t header = 10 + (size_t)((uint8_t)r.body[8] | (uint8_t)r.body[9] << 8);
    ck_assert_uint_eq(header % 64, 0);
    ck_assert_ptr_nonnull(strstr(r.body + 10, "'shape': (1, 16, 12, 16)"));
    assert_slice((float *)(r.body + header), (r.len - header) / 4, 1, 0, "tiny-flux16",
                 "coffee_96x128", "latents");
    free(r.body);
    /* JPEG, as browsers upload it (tests/fixtures/images/astronaut_64.jpg is
     * astronaut_64.png saved by Pillow at quality 95): near the PNG's latents */
    size_t jpg_len;
    uint8_t *jpg = read_all(fixture("images/astronaut_64.jpg"), &jpg_len);
    r = http(&d, "/v1/encode?format=safetensors", "image/jpeg", jpg, jpg_len, NULL, NULL);
    ck_assert_msg(r.status == 200, "%s", r.body);
    snprintf(path, sizeof path, "%s/jpeg.safetensors", d.dir);
    write_all(path, r.body, r.len);
    float *from_jpeg = read_tensor(path, "mean", &n, NULL);
    float *from_png = read_tensor(fixture("expected/tiny-flux16/astronaut_64.safetensors"), "mean", NULL, NULL);
    double diff = 0, norm = 0; /* relative L2 distance */
    for (size_t i = 0; i < n; i++) {
        diff += (double)(from_jpeg[i] - from_png[i]) * (from_jpeg[i] - from_png[i]);
        norm += (double)from_png[i] * from_png[i];
    }
    /* the random-weight model amplifies the JPEG's 4% input difference to about
     * 26%; another picture lands near 100% */
    ck_assert_msg(sqrt(diff / norm) < 0.5, "JPEG latents differ by %g", sqrt(diff / norm));
    free(from_jpeg);
    free(from_png);
    free(jpg);
    free(r.body);
    /* Accept: application/octet-stream asks for safetensors too */
    r = http(&d, "/v1/encode", "application/octet-stream", png, len, NULL,
             "Accept: application/octet-stream");
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body + 8, "\"latents\""));
    free(r.body);
    free(png);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(mixed_sizes_answer_per_image)
{
    daemon_t d = start_daemon("models/tiny-noattn", NULL);
    static const char *const names[] = {"chelsea_60x44", "coffee_64", "coffee_96x128"};
    reply r = post_json(&d, "/v1/encode", names, 3, NULL);
    ck_assert_msg(r.status == 200, "%s", r.body);
    json_t *root = parse(&r);
    json_t *results = json_object_get(root, "results");
    ck_assert_int_eq(json_array_size(results), 3);
    for (int i = 0; i < 3; i++) {
        size_t n;
        float *v = tensor_from_json(json_object_get(json_array_get(results, (size_t)i), "latents"), &n);
        assert_slice(v, n, 1, 0, "tiny-noattn", names[i], "latents");
        free(v);
    }
    json_decref(root);
    free(r.body);
    r = post_json(&d, "/v1/encode?format=safetensors", names, 3, NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body + 8, "\"latents.2\""));
    free(r.body);
    r = post_json(&d, "/v1/encode?format=npy", names, 3, NULL);
    assert_error(&r, 422, "format-unsuitable");
    free(r.body);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* a w×h gray PNG written with libpng's simplified API */
static void *tiny_png(int w, int h, size_t *len)
{
    png_image img = {.version = PNG_IMAGE_VERSION, .width = (png_uint_32)w,
                     .height = (png_uint_32)h, .format = PNG_FORMAT_GRAY};
    uint8_t pixels[64 * 64] = {0};
    png_alloc_size_t size = 0;
    ck_assert(png_image_write_to_memory(&img, NULL, &size, 0, pixels, 0, NULL));
    void *buf = malloc(size);
    ck_assert(png_image_write_to_memory(&img, buf, &size, 0, pixels, 0, NULL));
    *len = size;
    return buf;
}

/* A client that sends an oversized body whole, without waiting for an
 * answer (as Python's requests does), still reads its 413: the daemon reads
 * the body and drops it rather than close on unread data, whose reset would
 * destroy the answer.  The body is larger than the loopback's buffers, so
 * the send itself fails if the daemon stops reading.  A chunked body is
 * read on once it passes the limit; bodies not worth reading are still
 * refused at their headers. */
START_TEST(an_oversized_body_sent_whole_gets_its_413)
{
    static const char *const flags[] = {"--set", "max_body_bytes=4M", "--set",
                                        "body_timeout_ms=600000", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    const size_t body_len = 6u << 20; /* past the limit, within twice it */
    char *body = calloc(1, body_len);
    ck_assert_ptr_nonnull(body);
    char head[256];
    const int hl = snprintf(head, sizeof head, "POST /v1/encode HTTP/1.1\r\nHost: x\r\n"
                            "Content-Type: image/png\r\nContent-Length: %zu\r\n\r\n", body_len);
    const int fd = raw_connect(&d);
    raw_send(fd, head, (size_t)hl);
    raw_send(fd, body, body_len);
    char *answer = raw_read_all(fd, NULL);
    ck_assert_int_eq(raw_status(answer), 413);
    ck_assert_ptr_nonnull(strstr(answer, "\"body-too-large\""));
    free(answer);
    close(fd);
    /* the same body chunked: its length is known only as it passes the limit */
    const int chunked = raw_connect(&d);
    static const char chunked_head[] = "POST /v1/encode HTTP/1.1\r\nHost: x\r\n"
                                       "Content-Type: image/png\r\n"
                                       "Transfer-Encoding: chunked\r\n\r\n";
    raw_send(chunked, chunked_head, strlen(chunked_head));
    for (int i = 0; i < 6; i++) { /* six chunks of 1 MiB */
        static const char size_line[] = "100000\r\n";
        raw_send(chunked, size_line, strlen(size_line));
        raw_send(chunked, body, 1u << 20);
        raw_send(chunked, "\r\n", 2);
    }
    raw_send(chunked, "0\r\n\r\n", 5);
    answer = raw_read_all(chunked, NULL);
    ck_assert_int_eq(raw_status(answer), 413);
    ck_assert_ptr_nonnull(strstr(answer, "\"body-too-large\""));
    free(answer);
    close(chunked);
    free(body);
    /* past twice the limit, or from a client that waits for "100 Continue":
     * answered at the headers, the body never awaited (were it awaited, the
     * answer would take body_timeout_ms) */
    static const char *const heads[] = {
        "POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        "Content-Length: 8388609\r\n\r\n",
        "POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        "Expect: 100-continue\r\nContent-Length: 6291456\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        const int at_once = raw_connect(&d);
        const double t0 = ld_now_seconds();
        raw_send(at_once, heads[i], strlen(heads[i]));
        answer = raw_read_all(at_once, NULL);
        ck_assert_msg(ld_now_seconds() - t0 < 30 * test_time_scale(), "request %zu waited %.1f s",
                      i, ld_now_seconds() - t0);
        ck_assert_int_eq(raw_status(answer), 413);
        ck_assert_ptr_nonnull(strstr(answer, "\"body-too-large\""));
        ck_assert_ptr_null(strstr(answer, "100 Continue"));
        free(answer);
        close(at_once);
    }
    /* the daemon serves on */
    reply r = http(&d, "/healthz", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(bad_requests_get_clear_errors)
{
    static const char *const flags[] = {"--set", "max_body_bytes=60000", "--set",
                                        "max_image_pixels=10000", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    reply r = http(&d, "/v1/encode", "application/json", "{\"images\": [\"@@@\"]}", 19, NULL, NULL);
    assert_error(&r, 400, "bad-request");
    free(r.body);
    r = http(&d, "/v1/encode", "application/json", "{\"images\": [", 12, NULL, NULL);
    assert_error(&r, 400, "bad-request");
    free(r.body);
    r = http(&d, "/v1/encode", "application/json", "{\"images\": [], \"seed\": -1}", 26, NULL, NULL);
    assert_error(&r, 400, "bad-request");
    free(r.body);
    r = http(&d, "/v1/encode", "application/json", "{\"images\": []}", 14, NULL, NULL);
    assert_error(&r, 400, "no-image");
    free(r.body);
    r = http(&d, "/v1/encode", "text/plain", "hello", 5, NULL, NULL);
    assert_error(&r, 415, "unsupported-media-type");
    free(r.body);
    /* a broken PNG (cut in half) and a non-image */
    size_t len;
    uint8_t *png = read_all(fixture("images/coffee_64.png"), &len);
    r = http(&d, "/v1/encode", "image/png", png, len / 2, NULL, NULL);
    assert_error(&r, 400, "bad-image");
    free(r.body);
    r = http(&d, "/v1/encode", "image/png", "GIF89a", 6, NULL, NULL);
    assert_error(&r, 400, "bad-image");
    free(r.body);
    /* over the pixel limit (128x96 > 10000) and over the body limit */
    uint8_t *big = read_all(fixture("images/coffee_96x128.png"), &len);
    r = http(&d, "/v1/encode", "image/png", big, len, NULL, NULL);
    assert_error(&r, 413, "image-too-large");
    free(r.body);
    free(big);
    big = read_all(fixture("images/astronaut_256.png"), &len);
    r = http(&d, "/v1/encode", "image/png", big, len, NULL, NULL);
    assert_error(&r, 413, "body-too-large");
    free(r.body);
    free(big);
    /* too small for three downsamples */
    void *tiny = tiny_png(4, 16, &len);
    r = http(&d, "/v1/encode", "image/png", tiny, len, NULL, NULL);
    assert_error(&r, 422, "bad-image-size");
    free(r.body);
    free(tiny);
    /* multipart cut short: the closing boundary never comes */
    const char *mp = "--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                     "Content-Type: image/png\r\n\r\n";
    size_t mplen = strlen(mp);
    char *trunc = malloc(mplen + 200);
    memcpy(trunc, mp, mplen);
    memcpy(trunc + mplen, png, 200);
    r = http(&d, "/v1/encode", "multipart/form-data; boundary=XyZ", trunc, mplen + 200, NULL, NULL);
    assert_error(&r, 400, "bad-request");
    free(r.body);
    free(trunc);
    free(png);
    /* unknown option, unknown path, wrong method */
    r = http(&d, "/v1/encode?colour=blue", "image/png", "x", 1, NULL, NULL);
    assert_error(&r, 400, "bad-request");
    free(r.body);
    r = http(&d, "/v2/encode", NULL, NULL, 0, NULL, NULL);
    assert_error(&r, 404, "not-found");
    free(r.body);
    r = http(&d, "/v1/encode", NULL, NULL, 0, NULL, NULL);
    assert_error(&r, 405, "method-not-allowed");
    free(r.body);
    /* and the daemon is still fine */
    r = http(&d, "/healthz", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(queue_limit_timeout_and_auth)
{
    char keyfile[4300];
    char *dir = make_temp_dir();
    snprintf(keyfile, sizeof keyfile, "%s/key", dir);
    write_all(keyfile, "s3cret-key-123\n", 15);
    static const char *flags[] = {"--max-queue", "2", "--max-batch-delay-ms", "300",
                                  "--set", "request_timeout_ms=50", "--api-key-file", NULL, NULL};
    flags[7] = keyfile;
    daemon_t d = start_daemon("models/tiny-sd", flags);
    static const char *const three[] = {"coffee_64", "coffee_64", "coffee_64"};
    char *body = json_request(three, 3, NULL);
    reply r = http(&d, "/v1/encode", "application/json", body, strlen(body), NULL, NULL);
    assert_error(&r, 401, "unauthorized");
    free(r.body);
    r = http(&d, "/v1/encode", "application/json", body, strlen(body), NULL,
             "Authorization: Bearer wrong-key-1234");
    assert_error(&r, 401, "unauthorized");
    free(r.body);
    /* three images never fit a queue of two: 413, and no Retry-After (a retry
     * could never succeed) */
    r = http(&d, "/v1/encode", "application/json", body, strlen(body), NULL,
             "Authorization: Bearer s3cret-key-123");
    assert_error(&r, 413, "too-many-images");
    ck_assert_ptr_null(strcasestr(r.headers, "Retry-After"));
    free(r.body);
    free(body);
    /* one image waits 300 ms for a batch to fill: past its 50 ms deadline */
    static const char *const one[] = {"coffee_64"};
    body = json_request(one, 1, NULL);
    r = http(&d, "/v1/encode", "application/json", body, strlen(body), NULL,
             "X-API-Key: s3cret-key-123");
    assert_error(&r, 504, "timeout");
    free(r.body);
    free(body);
    r = http(&d, "/metrics", NULL, NULL, 0, NULL, NULL); /* open without a key */
    ck_assert_int_eq(r.status, 200);
    ck_assert_ptr_nonnull(strstr(r.body, "latentd_requests_total{status=\"413\"} 1"));
    ck_assert_ptr_nonnull(strstr(r.body, "latentd_requests_total{status=\"504\"} 1"));
    ck_assert_ptr_nonnull(strstr(r.body, "latentd_requests_cancelled_total{reason=\"timeout\"} 1"));
    free(r.body);
    ck_assert_int_eq(stop_daemon(&d), 0);
    unlink(keyfile);
    rmdir(dir);
    free(dir);
}
END_TEST

/* ---- many clients at once ---- */

static const char *const pool[] = {"astronaut_64", "chelsea_64", "coffee_64"};
enum { POOL = 3 };

/* The fixture latents of the pool's images, read before any client starts:
 * a client thread may not ck_assert, which read_tensor does. */
typedef struct {
    float *latents[POOL];
    size_t count; /* floats in each */
} pool_expected;

static pool_expected pool_expected_load(void)
{
    pool_expected e;
    for (int i = 0; i < POOL; i++)
        e.latents[i] = read_tensor(fixture("expected/tiny-sd/%s.safetensors", pool[i]),
                                   "latents", &e.count, NULL);
    return e;
}

static void pool_expected_free(pool_expected *e)
{
    for (int i = 0; i < POOL; i++)
        free(e->latents[i]);
}

typedef struct {
    const daemon_t *d;
    const pool_expected *want; /* client_main's */
    int id;
    int failures;
    char why[256];
} client;

/* Client k sends 3 requests, each of 1 or 2 images of the pool, and checks
 * that every answer holds the fixture latents of its images in order. */
static void *client_main(void *arg)
{
    client *cl = arg;
    const size_t m = cl->want->count;
    for (int round = 0; round < 3; round++) {
        const int n = 1 + (cl->id + round) % 2;
        const int which[2] = {(cl->id + round) % POOL, (cl->id + round + 1) % POOL};
        const char *names[2] = {pool[which[0]], pool[which[1]]};
        /* no ck_assert in a client thread: a failed transfer is counted, not thrown */
        char *body = json_request(names, n, NULL);
        reply r = http_try(cl->d, "/v1/encode", "application/json", body, strlen(body), NULL, NULL);
        free(body);
        if (r.status != 200) {
            cl->failures++;
            snprintf(cl->why, sizeof cl->why, "status %ld: %.200s", r.status, r.body);
            free(r.body);
            continue;
        }
        json_t *root = json_loadb(r.body, r.len, 0, NULL);
        size_t cnt;
        float *v = tensor_from_json(json_object_get(root, "latents"), &cnt);
        for (int i = 0; i < n; i++) {
            if (!v || cnt != m * (size_t)n) {
                cl->failures++;
                snprintf(cl->why, sizeof cl->why, "client %d: %zu floats for %d images", cl->id,
                         v ? cnt : 0, n);
                break;
            }
            const double error = rel_error(v + m * (size_t)i, cl->want->latents[which[i]], m);
            if (error > 1e-4) {
                cl->failures++;
                snprintf(cl->why, sizeof cl->why, "client %d: image %d (%s) mixed up: error %.3g",
                         cl->id, i, names[i], error);
            }
        }
        free(v);
        json_decref(root);
        free(r.body);
    }
    return NULL;
}

START_TEST(concurrent_clients_batch_without_mixups)
{
    static const char *const flags[] = {"--vae-split", "4", "--max-batch-delay-ms", "30",
                                        "--max-queue", "256", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    pool_expected want = pool_expected_load();
    enum { CLIENTS = 16 };
    pthread_t threads[CLIENTS];
    client clients[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        clients[i] = (client){&d, &want, i, 0, ""};
        pthread_create(&threads[i], NULL, client_main, &clients[i]);
    }
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(threads[i], NULL);
        ck_assert_msg(clients[i].failures == 0, "%s", clients[i].why);
    }
    pool_expected_free(&want);
    reply r = http(&d, "/metrics", NULL, NULL, 0, NULL, NULL);
    const char *ones = strstr(r.body, "latentd_batch_size_bucket{le=\"1\"} ");
    const char *all = strstr(r.body, "latentd_batch_size_count ");
    ck_assert(ones && all);
    long single = atol(ones + strlen("latentd_batch_size_bucket{le=\"1\"} "));
    long batches = atol(all + strlen("latentd_batch_size_count "));
    ck_assert_msg(single < batches, "no batch larger than one formed (%ld of %ld)", single, batches);
    ck_assert_ptr_nonnull(strstr(r.body, "latentd_images_encoded_total{model=\"tiny-sd\"} 72"));
    free(r.body);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

typedef struct {
    const daemon_t *d;
    const void *jpeg;
    size_t len;
    long status;
} jpeg_poster;

static void *post_jpeg(void *arg)
{
    jpeg_poster *p = arg;
    reply r = http_try(p->d, "/v1/encode?format=npy", "image/jpeg", p->jpeg, p->len, NULL, NULL);
    p->status = r.status;
    free(r.body);
    return NULL;
}

/* Requests that arrive together reach the queue one decode apart: a batch
 * that is not full waits for images of its size that are still being decoded
 * (here with no batch delay at all, so only they can hold it). */
START_TEST(a_batch_waits_for_images_being_decoded)
{
    static const char *const flags[] = {"--vae-split", "2", "--max-batch-delay-ms", "0",
                                        "--set", "max_jpeg_scans=100000",
                                        "--set", "decode_timeout_ms=600000", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    /* a 256x256 JPEG of 90,000 scans takes about a second to decode (a pass
     * over the image per scan), long enough for the PNG to be admitted behind it */
    jpeg_poster slow = {&d, NULL, 0, 0};
    slow.jpeg = progjpeg_repeated(256, 256, 90000, &slow.len);
    size_t png_len;
    uint8_t *png = read_all(fixture("images/astronaut_256.png"), &png_len);
    pthread_t t;
    pthread_create(&t, NULL, post_jpeg, &slow);
    ck_assert(wait_for_metric(&d, "latentd_queue_depth", 1, 30)); /* admitted, decoding */
    reply r = http(&d, "/v1/encode?format=npy", "image/png", png, png_len, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    pthread_join(t, NULL);
    ck_assert_int_eq(slow.status, 200);
    /* one pass of both, not the JPEG alone and then the PNG */
    ck_assert_double_eq(metric_value(&d, "latentd_batch_size_count"), 1);
    ck_assert_double_eq(metric_value(&d, "latentd_batch_size_sum"), 2);
    free((void *)slow.jpeg);
    free(png);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

static json_t *sample_request(const daemon_t *d, const char *const *names, int n, const char *opts)
{
    reply r = post_json(d, "/v1/encode", names, n, opts);
    ck_assert_msg(r.status == 200, "%s", r.body);
    json_t *root = parse(&r);
    free(r.body);
    return root;
}

/* Sampling draws each request's noise from its own seed: the answer is the
 * same whoever shares the batch. */
START_TEST(sampling_depends_on_the_seed_only)
{
    static const char *const flags[] = {"--max-batch-delay-ms", "50", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    static const char *const two[] = {"astronaut_64", "chelsea_64"};
    json_t *a = sample_request(&d, two, 2, "\"deterministic\": false, \"seed\": 77");
    ck_assert_int_eq(json_integer_value(json_object_get(a, "seed")), 77);
    json_t *b = sample_request(&d, two, 2, "\"deterministic\": false, \"seed\": 77");
    json_t *c = sample_request(&d, two, 2, "\"deterministic\": false, \"seed\": 78");
    json_t *fresh = sample_request(&d, two, 2, "\"deterministic\": false");
    /* a drawn seed is any 64-bit value: an integer below 2^63, a decimal string above */
    json_t *drawn = json_object_get(fresh, "seed");
    ck_assert((json_is_integer(drawn) && json_integer_value(drawn) >= 0) ||
              (json_is_string(drawn) && strspn(json_string_value(drawn), "0123456789") ==
                                            strlen(json_string_value(drawn))));
    size_t n;
    float *va = tensor_from_json(json_object_get(a, "latents"), &n);
    float *vb = tensor_from_json(json_object_get(b, "latents"), &n);
    float *vc = tensor_from_json(json_object_get(c, "latents"), &n);
    ck_assert_mem_eq(va, vb, n * sizeof(float));
    ck_assert_int_ne(memcmp(va, vc, n * sizeof(float)), 0);
    /* the same seed answers the same while other requests share its batch */
    pthread_t noise[4];
    client others[4];
    pool_expected want = pool_expected_load();
    for (int i = 0; i < 4; i++) {
        others[i] = (client){&d, &want, i, 0, ""};
        pthread_create(&noise[i], NULL, client_main, &others[i]);
    }
    json_t *busy = sample_request(&d, two, 2, "\"deterministic\": false, \"seed\": 77");
    for (int i = 0; i < 4; i++) { /* the deterministic neighbours get their own answers too */
        pthread_join(noise[i], NULL);
        ck_assert_msg(others[i].failures == 0, "%s", others[i].why);
    }
    pool_expected_free(&want);
    float *vbusy = tensor_from_json(json_object_get(busy, "latents"), &n);
    ck_assert_mem_eq(va, vbusy, n * sizeof(float));
    free(va);
    free(vb);
    free(vc);
    free(vbusy);
    json_decref(a);
    json_decref(b);
    json_decref(c);
    json_decref(fresh);
    json_decref(busy);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* One sampled request for a fixture's images with seed S = its first seed:
 * the answer must be diffusers' sample, image K drawn with seed S+K. */
static void check_sample_fixture(const daemon_t *d, const sample_fixture *fx)
{
    char opts[96];
    /* a JSON integer when it fits jansson's int64, else a decimal string */
    snprintf(opts, sizeof opts, "\"deterministic\": false, \"seed\": %s%" PRIu64 "%s",
             fx->seeds[0] > INT64_MAX ? "\"" : "", fx->seeds[0],
             fx->seeds[0] > INT64_MAX ? "\"" : "");
    const char *names[SAMPLEFIX_MAX_IMAGES];
    for (int k = 0; k < fx->n; k++)
        names[k] = fx->images[k];
    json_t *root = sample_request(d, names, fx->n, opts);
    json_t *seed = json_object_get(root, "seed");
    ck_assert_uint_eq(json_is_string(seed) ? parse_u64(json_string_value(seed))
                                           : (uint64_t)json_integer_value(seed),
                      fx->seeds[0]);
    size_t n;
    float *got = tensor_from_json(json_object_get(root, "latents"), &n);
    ck_assert_uint_eq(n, fx->per_image * (size_t)fx->n);
    const double e = rel_error(got, fx->latents, n);
    ck_assert_msg(e <= 1e-4, "%s/%s through the daemon: off by %g", fx->model, fx->name, e);
    free(got);
    json_decref(root);
}

/* A request without a seed answers the seed it drew; sent back, that seed
 * gives the same latents to the bit. */
static void check_drawn_seed(const daemon_t *d, const sample_fixture *fx)
{
    const char *names[SAMPLEFIX_MAX_IMAGES];
    for (int k = 0; k < fx->n; k++)
        names[k] = fx->images[k];
    json_t *fresh = sample_request(d, names, fx->n, "\"deterministic\": false");
    json_t *drawn = json_object_get(fresh, "seed");
    ck_assert(json_is_integer(drawn) || json_is_string(drawn));
    char opts[96];
    if (json_is_integer(drawn))
        snprintf(opts, sizeof opts, "\"deterministic\": false, \"seed\": %" JSON_INTEGER_FORMAT,
                 json_integer_value(drawn));
    else
        snprintf(opts, sizeof opts, "\"deterministic\": false, \"seed\": \"%s\"",
                 json_string_value(drawn));
    json_t *again = sample_request(d, names, fx->n, opts);
    size_t n, m;
    float *a = tensor_from_json(json_object_get(fresh, "latents"), &n);
    float *b = tensor_from_json(json_object_get(again, "latents"), &m);
    ck_assert_uint_eq(n, m);
    ck_assert_mem_eq(a, b, n * sizeof(float));
    free(a);
    free(b);
    json_decref(fresh);
    json_decref(again);
}

/* The daemon samples what diffusers samples: every sample fixture whose
 * seeds run S, S+1, ..., each model in a daemon of its own (chunks of 2). */
START_TEST(sampled_requests_match_diffusers)
{
    static const char *const flags[] = {"--vae-split", "2", NULL};
    int count, checked = 0;
    sample_fixture *all = sample_fixtures_load(&count);
    for (int f = 0; f < count; f++) {
        if (f > 0 && !strcmp(all[f].model, all[f - 1].model))
            continue; /* this model's daemon has run (the fixtures come sorted) */
        char model[96];
        snprintf(model, sizeof model, "models/%s", all[f].model);
        daemon_t d = start_daemon(model, flags);
        for (int g = f; g < count && !strcmp(all[g].model, all[f].model); g++) {
            if (!sample_fixture_consecutive(&all[g]))
                continue;
            check_sample_fixture(&d, &all[g]);
            checked++;
        }
        check_drawn_seed(&d, &all[f]);
        ck_assert_int_eq(stop_daemon(&d), 0);
    }
    ck_assert_int_gt(checked, 0);
    sample_fixtures_free(all, count);
}
END_TEST

static void *slow_request(void *arg)
{
    client *cl = arg;
    static const char *const one[] = {"astronaut_256"};
    char *body = json_request(one, 1, NULL);
    reply r = http_try(cl->d, "/v1/encode", "application/json", body, strlen(body), NULL, NULL);
    free(body);
    cl->failures = r.status != 200;
    snprintf(cl->why, sizeof cl->why, "status %ld %s", r.status, r.status ? "" : r.headers);
    free(r.body);
    return NULL;
}

START_TEST(sigterm_drains_accepted_requests)
{
    static const char *const flags[] = {"--max-batch-delay-ms", "400", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    reply r = http(&d, "/readyz", NULL, NULL, 0, NULL, NULL);
    ck_assert_int_eq(r.status, 200);
    free(r.body);
    r = http(&d, "/v1/model", NULL, NULL, 0, NULL, NULL);
    ck_assert_ptr_nonnull(strstr(r.body, "\"latent_channels\":4"));
    free(r.body);
    client cl = {&d, NULL, 0, 0, ""};
    pthread_t t;
    pthread_create(&t, NULL, slow_request, &cl);
    /* accepted, waiting for its batch */
    ck_assert(wait_for_metric(&d, "latentd_requests_in_flight", 1, 30));
    kill(d.pid, SIGTERM);
    ck_assert_int_eq(daemon_wait_notify(&d, "STOPPING=1"), 0);
    pthread_join(t, NULL);
    ck_assert_msg(cl.failures == 0, "the accepted request was lost: %s", cl.why);
    int status;
    ck_assert_int_eq(waitpid(d.pid, &status, 0), d.pid);
    ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    FILE *fp = fopen(d.log, "r");
    char line[1024];
    int stopped = 0;
    while (fgets(line, sizeof line, fp))
        stopped |= strstr(line, " stopped") != NULL;
    fclose(fp);
    ck_assert(stopped);
    daemon_cleanup(&d);
}
END_TEST

static Suite *service_suite(void)
{
    Suite *s = suite_create("latentd");
    TCase *tc = tcase_create("http");
    tcase_set_timeout(tc, 900);
    tcase_add_test(tc, json_in_json_out);
    tcase_add_loop_test(tc, every_kernel_serves_the_fixtures, LD_KERNEL_AVX512, LD_KERNEL_COUNT);
    tcase_add_test(tc, multipart_and_raw_bodies);
    tcase_add_test(tc, mixed_sizes_answer_per_image);
    tcase_add_test(tc, bad_requests_get_clear_errors);
    tcase_add_test(tc, an_oversized_body_sent_whole_gets_its_413);
    tcase_add_test(tc, queue_limit_timeout_and_auth);
    tcase_add_test(tc, concurrent_clients_batch_without_mixups);
    tcase_add_test(tc, a_batch_waits_for_images_being_decoded);
    tcase_add_test(tc, sampling_depends_on_the_seed_only);
    tcase_add_test(tc, sampled_requests_match_diffusers);
    tcase_add_test(tc, sigterm_drains_accepted_requests);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int status = run_suite(service_suite());
    curl_global_cleanup();
    return status;
}
