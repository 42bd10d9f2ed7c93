/* The daemon at the protocol's edge, against the real binary on a loopback
 * port (and the request-head rules it uses, as functions):
 * - a head a proxy in front could frame otherwise (whitespace before a colon,
 *   a folded line, no Host, two Hosts) gets one JSON 400 and a closed
 *   connection: a body that is itself a request never runs (RFC 9112 2.2,
 *   3.2, 5.1);
 * - a target with %00, a space, or past max_uri_bytes, and header fields past
 *   max_header_bytes, get latentd's JSON 400, 414 and 431, exactly once;
 * - an absolute-form target is served (RFC 9112 3.2.2);
 * - a chunked body is priced within what start-up sets aside for one body,
 *   so it is served where the same body with a Content-Length is;
 * - SIGHUP reads the API key file again: the old key stops working;
 * - a client that shuts down its sending half after its request is answered. */
#include "daemon.h"

#include "../src/server/head.h"

#include <check.h>
#include <ctype.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How many responses a raw answer holds: its status lines ("HTTP/1.1 400 "). */
static int count_responses(const char *answer)
{
    int n = 0;
    for (const char *p = answer; (p = strstr(p, "HTTP/1.")) != NULL; p += 7)
        n += p[8] == ' ' && isdigit((unsigned char)p[9]) && isdigit((unsigned char)p[10]) &&
             isdigit((unsigned char)p[11]) && p[12] == ' ';
    return n;
}

/* The raw exchange's one answer: its status and error code, checked. */
static void assert_one_json_error(const char *request, size_t len, long status, const char *code,
                                  const daemon_t *d)
{
    char *answer = raw_exchange(d, request, len);
    ck_assert_msg(count_responses(answer) == 1, "%d answers to %.80s: %.400s",
                  count_responses(answer), request, answer);
    ck_assert_msg(raw_status(answer) == status, "%.80s: %.300s", request, answer);
    ck_assert_msg(strstr(answer, "Content-Type: application/json") != NULL, "not JSON: %.300s",
                  answer);
    char want[96];
    snprintf(want, sizeof want, "{\"error\":{\"code\":\"%s\"", code);
    ck_assert_msg(strstr(answer, want) != NULL, "%.80s: %.300s", request, answer);
    free(answer);
}

/* ---------------- the rules, as functions ---------------- */

START_TEST(field_names_are_tokens)
{
    ck_assert(srv_field_name_ok("Content-Length"));
    ck_assert(srv_field_name_ok("X-Weird!#$%&'*+-.^_`|~09"));
    ck_assert(!srv_field_name_ok("Content-Length "));
    ck_assert(!srv_field_name_ok("Transfer-Encoding\t"));
    ck_assert(!srv_field_name_ok("X-PadContent-Length: 76"));
    ck_assert(!srv_field_name_ok(""));
    ck_assert(!srv_field_name_ok("a\"b"));
    ck_assert(!srv_field_name_ok("a(b)"));
    ck_assert(!srv_field_name_ok("\x80"));
}
END_TEST

START_TEST(field_values_hold_no_control_characters)
{
    ck_assert(srv_field_value_ok(""));
    ck_assert(srv_field_value_ok("a\tb c!~\x80\xff"));
    ck_assert(!srv_field_value_ok("a\rContent-Length: 5"));
    ck_assert(!srv_field_value_ok("a\nb"));
    ck_assert(!srv_field_value_ok("\x01"));
    ck_assert(!srv_field_value_ok("a\x7f"));
}
END_TEST

START_TEST(folded_fields_are_told_from_unfolded)
{
    /* in place, as libmicrohttpd leaves "Name: value": the colon a NUL */
    char line[] = "Name\0 \t value";
    ck_assert(!srv_field_folded(line, line + 8, 256));
    char bare[] = "Name\0value";
    ck_assert(!srv_field_folded(bare, bare + 5, 256));
    /* a name moved away from its value (a fold joined onto it) */
    char moved[] = "NameFolded";
    ck_assert(srv_field_folded(moved, bare + 5, 256));
    /* something other than whitespace between them */
    char other[] = "Name\0x value";
    ck_assert(srv_field_folded(other, other + 8, 256));
    /* too far apart */
    ck_assert(srv_field_folded(line, line + 8, 2));
}
END_TEST

START_TEST(targets_are_checked_as_sent)
{
    ck_assert_int_eq(srv_target_problem("/v1/encode?format=npy", 100), TARGET_OK);
    ck_assert_int_eq(srv_target_problem("/metrics%00junk", 100), TARGET_NUL);
    ck_assert_int_eq(srv_target_problem("/v1/model?model=a%00b", 100), TARGET_NUL);
    ck_assert_int_eq(srv_target_problem("/a%%00", 100), TARGET_NUL);
    ck_assert_int_eq(srv_target_problem("/a b", 100), TARGET_BAD_CHAR);
    ck_assert_int_eq(srv_target_problem("/a\tb", 100), TARGET_BAD_CHAR);
    ck_assert_int_eq(srv_target_problem("/a\x7f", 100), TARGET_BAD_CHAR);
    ck_assert_int_eq(srv_target_problem("/abcd", 4), TARGET_TOO_LONG);
    ck_assert_int_eq(srv_target_problem("/abc", 4), TARGET_OK);
    ck_assert_str_eq(srv_origin_path("http://host:8787/healthz"), "/healthz");
    ck_assert_str_eq(srv_origin_path("HTTPS://h/v1/encode"), "/v1/encode");
    ck_assert_str_eq(srv_origin_path("http://host"), "/");
    ck_assert_str_eq(srv_origin_path("/healthz"), "/healthz");
    ck_assert_str_eq(srv_origin_path("*"), "*");
}
END_TEST

/* ---------------- the daemon ---------------- */

/* The smuggled request: were it run, a second answer (200) would follow. */
#define SMUGGLED "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

START_TEST(heads_a_proxy_could_frame_otherwise_are_refused)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    char len[16];
    snprintf(len, sizeof len, "%zu", strlen(SMUGGLED));
    const char *const heads[] = {
        "Content-Length : ",     /* a space before the colon */
        "Content-Length\t: ",    /* a tab */
        "X-Pad: a\r\n Content-Length: ", /* obs-fold */
        "X-Pad: a\r\n\tContent-Length: ",
    };
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++) {
        char request[512];
        const int n = snprintf(request, sizeof request,
                               "POST /v1/encode HTTP/1.1\r\nHost: x\r\n"
                               "Content-Type: application/json\r\n%s%s\r\n\r\n%s",
                               heads[i], len, SMUGGLED);
        assert_one_json_error(request, (size_t)n, 400, "bad-framing", &d);
    }
    /* a folded Transfer-Encoding: a proxy that unfolds it reads a chunked body */
    static const char *const folded_te[] = {
        "POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n" SMUGGLED,
        "POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" SMUGGLED,
        /* a bare CR in a value: a proxy may take it for a line's end */
        "POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "X-A: a\rContent-Length: 40\r\n\r\n" SMUGGLED,
        /* no Host, or two, in HTTP/1.1 (and 1.2, which libmicrohttpd takes for 1.1) */
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.2\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof folded_te / sizeof folded_te[0]; i++)
        assert_one_json_error(folded_te[i], strlen(folded_te[i]), 400, "bad-framing", &d);
    /* the same requests well formed are served */
    static const char *const fine[] = {
        "GET /healthz HTTP/1.0\r\n\r\n", /* HTTP/1.0 needs no Host */
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad:  \t a\r\nConnection: close\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++) {
        char *answer = raw_exchange(&d, fine[i], strlen(fine[i]));
        ck_assert_msg(raw_status(answer) == 200 && count_responses(answer) == 1, "%s: %.300s",
                      fine[i], answer);
        free(answer);
    }
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

START_TEST(targets_and_heads_past_the_limits_get_json)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    static const char *const bad[] = {
        "GET /metrics%00junk HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /v1/model?model=tiny-sd%00x HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_one_json_error(bad[i], strlen(bad[i]), 400, "bad-request", &d);
    /* 20 kB of target, then of one header field: past max_uri_bytes (8K)
     * and max_header_bytes (16K), within what libmicrohttpd holds (32K) */
    const size_t big = 20 * 1000;
    char *request = malloc(big + 256);
    int n = sprintf(request, "GET /healthz?");
    memset(request + n, 'a', big);
    n += (int)big;
    n += sprintf(request + n, " HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_one_json_error(request, (size_t)n, 414, "uri-too-long", &d);
    n = sprintf(request, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(request + n, 'a', big);
    n += (int)big;
    n += sprintf(request + n, "\r\n\r\n");
    assert_one_json_error(request, (size_t)n, 431, "header-too-large", &d);
    free(request);
    /* RFC 9112 3.2.2: the absolute form is served like the origin form */
    static const char *const absolute = "GET http://localhost/healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    char *answer = raw_exchange(&d, absolute, strlen(absolute));
    ck_assert_msg(raw_status(answer) == 200 && strstr(answer, "{\"status\":\"ok\"}"), "%.300s",
                  answer);
    free(answer);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* A JSON body of about `size` bytes (one image, the rest whitespace), sent
 * chunked in 64 kB chunks; the answer's status. */
static long post_chunked_json(const daemon_t *d, size_t size)
{
    char *b64 = image_b64("astronaut_64");
    char *json = malloc(size + strlen(b64) + 64);
    size_t used = (size_t)sprintf(json, "{\"format\": \"npy\", ");
    memset(json + used, ' ', size);
    used += size;
    used += (size_t)sprintf(json + used, "\"images\": [\"%s\"]}", b64);
    free(b64);
    int fd = raw_connect(d);
    static const char head[] = "POST /v1/encode HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                               "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    raw_send(fd, head, strlen(head));
    for (size_t at = 0; at < used; at += 65536) {
        const size_t piece = used - at < 65536 ? used - at : 65536;
        char size_line[32];
        const int sl = snprintf(size_line, sizeof size_line, "%zx\r\n", piece);
        raw_send(fd, size_line, (size_t)sl);
        raw_send(fd, json + at, piece);
        raw_send(fd, "\r\n", 2);
    }
    raw_send(fd, "0\r\n\r\n", 5);
    char *answer = raw_read_all(fd, NULL);
    close(fd);
    const long status = raw_status(answer);
    ck_assert_msg(status == 200, "%.300s", answer);
    free(answer);
    free(json);
    return status;
}

START_TEST(a_chunked_body_costs_no_more_than_a_declared_one)
{
    /* start-up sets aside 3 x max_body_bytes for one body: a 17 MB chunked
     * body used to reserve 3 x its doubled buffer (96 MiB) and get 503 for ever */
    static const char *const flags[] = {"--set", "memory_budget_bytes=96M", "--set",
                                        "max_image_pixels=65536", "--set",
                                        "max_body_bytes=20M", NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    ck_assert_int_eq(post_chunked_json(&d, 17u << 20), 200);
    ck_assert_int_eq(post_chunked_json(&d, 1u << 20), 200);
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

/* A raw POST of n copies of a PNG as multipart; the socket. */
static int post_images(const daemon_t *d, const char *image, int n)
{
    size_t png_len;
    uint8_t *png = read_all(fixture(image), &png_len);
    char *body = malloc(n * (png_len + 256) + 64);
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        used += (size_t)sprintf(body + used, "--bb\r\nContent-Disposition: form-data; "
                                "name=\"image\"; filename=\"%d.png\"\r\nContent-Type: "
                                "image/png\r\n\r\n", i);
        memcpy(body + used, png, png_len);
        used += png_len;
        used += (size_t)sprintf(body + used, "\r\n");
    }
    used += (size_t)sprintf(body + used, "--bb--\r\n");
    char head[256];
    const int hl = snprintf(head, sizeof head, "POST /v1/encode?format=npy HTTP/1.1\r\n"
                            "Host: x\r\nContent-Type: multipart/form-data; boundary=bb\r\n"
                            "Content-Length: %zu\r\n\r\n", used);
    int fd = raw_connect(d);
    raw_send(fd, head, (size_t)hl);
    raw_send(fd, body, used);
    free(body);
    free(png);
    return fd;
}

/* The answer after the client shut down its sending half: one 200. */
static void assert_answered(int fd, const char *when)
{
    char *answer = raw_read_all(fd, NULL);
    close(fd);
    ck_assert_msg(raw_status(answer) == 200 && count_responses(answer) == 1, "half-closed %s: %.300s",
                  when, answer);
    free(answer);
}

START_TEST(a_client_that_half_closes_is_answered)
{
    daemon_t d = start_daemon("models/tiny-sd", NULL);
    /* at once after the request, as netcat-like clients do */
    int fd = post_images(&d, "images/astronaut_64.png", 1);
    shutdown(fd, SHUT_WR);
    assert_answered(fd, "after the request");
    /* while its images wait for the encoder */
    fd = post_images(&d, "images/astronaut_256.png", 8);
    ck_assert(wait_for_metric(&d, "latentd_requests_in_flight", 1, 30));
    shutdown(fd, SHUT_WR);
    assert_answered(fd, "while waiting");
    ck_assert_double_eq(metric_value(&d, "latentd_requests_cancelled_total{reason=\"client_gone\"}"), 0);
    ck_assert(log_contains(&d, "POST /v1/encode?format=npy 200 images=8") ||
              log_contains(&d, "POST /v1/encode 200 images=8"));
    ck_assert_int_eq(stop_daemon(&d), 0);
}
END_TEST

static void write_key(const char *path, const char *key)
{
    FILE *fp = fopen(path, "w");
    ck_assert_ptr_nonnull(fp);
    ck_assert_int_ge(fprintf(fp, "%s\n", key), 0);
    ck_assert_int_eq(fclose(fp), 0);
}

static long get_models(const daemon_t *d, const char *key)
{
    char header[128];
    snprintf(header, sizeof header, "X-API-Key: %s", key);
    reply r = http(d, "/v1/models", NULL, NULL, 0, NULL, header);
    const long status = r.status;
    free(r.body);
    return status;
}

START_TEST(a_rotated_key_applies_on_sighup)
{
    char *dir = make_temp_dir();
    char path[4300];
    snprintf(path, sizeof path, "%s/key", dir);
    write_key(path, "old-key-0123456789");
    const char *const flags[] = {"--api-key-file", path, NULL};
    daemon_t d = start_daemon("models/tiny-sd", flags);
    ck_assert_int_eq(get_models(&d, "old-key-0123456789"), 200);
    ck_assert_int_eq(get_models(&d, "new-key-9876543210"), 401);
    write_key(path, "new-key-9876543210");
    ck_assert_int_eq(kill(d.pid, SIGHUP), 0);
    ck_assert_int_eq(daemon_wait_notify(&d, "READY=1"), 0);
    ck_assert_int_eq(get_models(&d, "old-key-0123456789"), 401);
    ck_assert_int_eq(get_models(&d, "new-key-9876543210"), 200);
    ck_assert(!log_contains(&d, "take a restart: api_key_file"));
    ck_assert_int_eq(stop_daemon(&d), 0);
    unlink(path);
    rmdir(dir);
    free(dir);
}
END_TEST

static Suite *protocol_suite(void)
{
    Suite *s = suite_create("protocol");
    TCase *rules = tcase_create("rules");
    tcase_add_test(rules, field_names_are_tokens);
    tcase_add_test(rules, field_values_hold_no_control_characters);
    tcase_add_test(rules, folded_fields_are_told_from_unfolded);
    tcase_add_test(rules, targets_are_checked_as_sent);
    suite_add_tcase(s, rules);
    TCase *tc = tcase_create("daemon");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, heads_a_proxy_could_frame_otherwise_are_refused);
    tcase_add_test(tc, targets_and_heads_past_the_limits_get_json);
    tcase_add_test(tc, a_chunked_body_costs_no_more_than_a_declared_one);
    tcase_add_test(tc, a_rotated_key_applies_on_sighup);
    tcase_add_test(tc, a_client_that_half_closes_is_answered);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int status = run_suite(protocol_suite());
    curl_global_cleanup();
    return status;
}
