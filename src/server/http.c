#include "http.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <unistd.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"
#include "request.h"
#include "response.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result_t;
#else
typedef enum MHD_Result MHD_Result_t;
#endif

typedef enum { ROUTE_NONE, ROUTE_ENCODE, ROUTE_HEALTH, ROUTE_READY, ROUTE_METRICS, ROUTE_MODEL } route;
typedef enum { BODY_NONE, BODY_JSON, BODY_MULTIPART, BODY_RAW } body_kind;

/* Everything one request accumulates while its body arrives. */
typedef struct {
    route route;
    body_kind kind;
    char *body;
    size_t body_len, body_cap;
    size_t received;
    struct MHD_PostProcessor *pp;
    srv_blobs blobs;
    srv_options opts;
    bool failed; /* answer with fail_* once the body is over */
    int fail_status;
    const char *fail_code;
    char fail_msg[LD_ERR_LEN];
    double started;
    int images;
    double queue_wait, encode_seconds;
    bool counted_in_flight;
} conn_ctx;

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void fail(conn_ctx *ctx, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(conn_ctx *ctx, int status, const char *code, const char *fmt, ...)
{
    if (ctx->failed)
        return; /* the first reason is the one reported */
    ctx->failed = true;
    ctx->fail_status = status;
    ctx->fail_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx->fail_msg, sizeof ctx->fail_msg, fmt, ap);
    va_end(ap);
}

/* ---------------- answering ---------------- */

static MHD_Result_t send_body(srv_state *st, struct MHD_Connection *c, conn_ctx *ctx,
                              const char *method, const char *url, int status, srv_body *body,
                              int retry_after)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(body->len, body->data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body->data);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, body->content_type);
    if (retry_after > 0) {
        char seconds[16];
        snprintf(seconds, sizeof seconds, "%d", retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, seconds);
    }
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    MHD_Result_t ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    srv_metrics_request(&st->metrics, status);
    if (ctx->route == ROUTE_ENCODE || status >= 400)
        srv_log(LOG_INFO, "%s %s %d images=%d bytes_in=%zu bytes_out=%zu queue_wait_ms=%.1f "
                "encode_ms=%.1f total_ms=%.1f", method, url, status, ctx->images, ctx->received,
                body->len, ctx->queue_wait * 1e3, ctx->encode_seconds * 1e3,
                (now_seconds() - ctx->started) * 1e3);
    return ok;
}

static MHD_Result_t send_error(srv_state *st, struct MHD_Connection *c, conn_ctx *ctx,
                               const char *method, const char *url, int status, const char *code,
                               const char *message)
{
    srv_body body;
    if (srv_render_error(code, message, &body) != LD_OK)
        return MHD_NO;
    int retry = status == 503 || status == 429 ? 1 : 0;
    return send_body(st, c, ctx, method, url, status, &body, retry);
}

static MHD_Result_t send_text(srv_state *st, struct MHD_Connection *c, conn_ctx *ctx,
                              const char *method, const char *url, int status, char *text,
                              const char *type)
{
    if (!text)
        return send_error(st, c, ctx, method, url, 500, "internal", "out of memory");
    srv_body body = {text, strlen(text), type};
    return send_body(st, c, ctx, method, url, status, &body, 0);
}

/* ---------------- GET endpoints ---------------- */

static json_t *model_json(const ld_model *m)
{
    const ld_vae_config *cfg = ld_model_config(m);
    json_t *blocks = json_array(), *mean = json_null(), *std = json_null();
    for (int i = 0; i < cfg->n_levels; i++)
        json_array_append_new(blocks, json_integer(cfg->block_out_channels[i]));
    if (cfg->has_latents_stats) {
        mean = json_array();
        std = json_array();
        for (int i = 0; i < cfg->latent_channels; i++) {
            json_array_append_new(mean, json_real(cfg->latents_mean[i]));
            json_array_append_new(std, json_real(cfg->latents_std[i]));
        }
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:{s:o, s:i, s:i, s:i, s:b, s:b, s:f, s:o, s:o, s:o}}",
                     "name", ld_model_name(m), "path", ld_model_path(m), "layout",
                     ld_model_layout(m), "scaling", ld_model_scaling(m), "config",
                     "block_out_channels", blocks, "layers_per_block", cfg->layers_per_block,
                     "latent_channels", cfg->latent_channels, "norm_num_groups",
                     cfg->norm_num_groups, "use_quant_conv", cfg->use_quant_conv,
                     "mid_block_add_attention", cfg->mid_attention, "scaling_factor",
                     (double)cfg->scaling_factor, "shift_factor",
                     cfg->has_shift_factor ? json_real(cfg->shift_factor) : json_null(),
                     "latents_mean", mean, "latents_std", std);
}

static MHD_Result_t answer_get(srv_state *st, struct MHD_Connection *c, conn_ctx *ctx,
                               const char *method, const char *url)
{
    if (ctx->route == ROUTE_HEALTH)
        return send_text(st, c, ctx, method, url, 200, strdup("{\"status\":\"ok\"}"),
                         "application/json");
    if (ctx->route == ROUTE_READY) {
        const bool full = srv_queue_depth(st->queue) >= srv_queue_capacity(st->queue);
        if (atomic_load(&st->draining) || full)
            return send_error(st, c, ctx, method, url, 503, "not-ready",
                              full ? "the queue is full" : "shutting down");
        return send_text(st, c, ctx, method, url, 200, strdup("{\"status\":\"ready\"}"),
                         "application/json");
    }
    if (ctx->route == ROUTE_METRICS)
        return send_text(st, c, ctx, method, url, 200,
                         srv_metrics_render(&st->metrics, srv_queue_depth(st->queue),
                                            srv_queue_capacity(st->queue),
                                            atomic_load(&st->in_flight)),
                         "text/plain; version=0.0.4");
    srv_body body;
    if (srv_render_json(model_json(st->model), &body) != LD_OK)
        return send_error(st, c, ctx, method, url, 500, "internal", "out of memory");
    return send_body(st, c, ctx, method, url, 200, &body, 0);
}

/* ---------------- receiving an encode request ---------------- */

static bool is_image_field(const char *key, const char *filename)
{
    return filename != NULL || !strcmp(key, "image") || !strcmp(key, "images") ||
           !strcmp(key, "image[]") || !strcmp(key, "images[]");
}

static MHD_Result_t on_form_part(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *filename, const char *content_type,
                                 const char *transfer_encoding, const char *data, uint64_t off,
                                 size_t size)
{
    conn_ctx *ctx = cls;
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    if (ctx->failed)
        return MHD_YES;
    if (is_image_field(key, filename)) {
        int rc = off == 0 ? srv_blobs_add(&ctx->blobs, (const uint8_t *)data, size)
                          : srv_blobs_append(&ctx->blobs, (const uint8_t *)data, size);
        if (rc != LD_OK)
            fail(ctx, 503, "out-of-memory", "out of memory receiving the images");
        return MHD_YES;
    }
    if (off != 0) { /* option values are short; a long one is not an option */
        fail(ctx, 400, "bad-request", "form field '%.40s' is too long", key);
        return MHD_YES;
    }
    char value[1024], err[LD_ERR_LEN];
    snprintf(value, sizeof value, "%.*s", (int)(size < sizeof value ? size : sizeof value - 1), data);
    if (srv_options_set(&ctx->opts, key, value, err) != LD_OK)
        fail(ctx, 400, "bad-request", "%s", err);
    return MHD_YES;
}

static bool content_type_is(const char *type, const char *want)
{
    return type && !strncasecmp(type, want, strlen(want));
}

static body_kind classify_body(const char *type)
{
    if (content_type_is(type, "application/json"))
        return BODY_JSON;
    if (content_type_is(type, "multipart/form-data"))
        return BODY_MULTIPART;
    if (content_type_is(type, "image/png") || content_type_is(type, "image/jpeg") ||
        content_type_is(type, "application/octet-stream"))
        return BODY_RAW;
    return BODY_NONE;
}

static bool authorised(const srv_state *st, struct MHD_Connection *c)
{
    const char *key = st->cfg->api_key;
    if (!key[0])
        return true;
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!given && auth && !strncasecmp(auth, "Bearer ", 7))
        given = auth + 7;
    if (!given || strlen(given) != strlen(key))
        return false;
    unsigned char diff = 0; /* compare in constant time */
    for (size_t i = 0; key[i]; i++)
        diff |= (unsigned char)(key[i] ^ given[i]);
    return diff == 0;
}

/* Headers are in: decide what can be decided before the body. */
static void start_encode(srv_state *st, struct MHD_Connection *c, conn_ctx *ctx)
{
    srv_options_defaults(&ctx->opts);
    if (!authorised(st, c)) {
        fail(ctx, 401, "unauthorized", "missing or wrong API key");
        return;
    }
    const char *length = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length && strtoull(length, NULL, 10) > st->cfg->max_body_bytes) {
        fail(ctx, 413, "body-too-large", "the body is larger than %zu bytes", st->cfg->max_body_bytes);
        return;
    }
    const char *type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    ctx->kind = classify_body(type);
    if (ctx->kind == BODY_NONE) {
        fail(ctx, 415, "unsupported-media-type", "Content-Type must be application/json, "
             "multipart/form-data, image/png, image/jpeg or application/octet-stream");
        return;
    }
    if (ctx->kind == BODY_MULTIPART) {
        ctx->pp = MHD_create_post_processor(c, 64 * 1024, on_form_part, ctx);
        if (!ctx->pp)
            fail(ctx, 400, "bad-request", "malformed multipart/form-data header");
    }
}

static void receive(srv_state *st, conn_ctx *ctx, const char *data, size_t size)
{
    ctx->received += size;
    if (ctx->failed)
        return; /* discard the rest of a refused body */
    if (ctx->received > st->cfg->max_body_bytes) {
        fail(ctx, 413, "body-too-large", "the body is larger than %zu bytes", st->cfg->max_body_bytes);
        return;
    }
    if (ctx->kind == BODY_MULTIPART) {
        if (MHD_post_process(ctx->pp, data, size) != MHD_YES)
            fail(ctx, 400, "bad-request", "malformed multipart/form-data body");
        return;
    }
    if (ctx->body_len + size > ctx->body_cap) {
        size_t cap = ctx->body_cap ? ctx->body_cap : 64 * 1024;
        while (cap < ctx->body_len + size)
            cap *= 2;
        char *grown = realloc(ctx->body, cap);
        if (!grown) {
            fail(ctx, 503, "out-of-memory", "out of memory receiving the body");
            return;
        }
        ctx->body = grown;
        ctx->body_cap = cap;
    }
    memcpy(ctx->body + ctx->body_len, data, size);
    ctx->body_len += size;
}

static MHD_Result_t on_query_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    conn_ctx *ctx = cls;
    (void)kind;
    char err[LD_ERR_LEN];
    if (!ctx->failed && srv_options_set(&ctx->opts, key, value ? value : "", err) != LD_OK)
        fail(ctx, 400, "bad-request", "%s", err);
    return MHD_YES;
}

/* Body complete: the images' bytes and every option, whatever the form. */
static void finish_body(struct MHD_Connection *c, conn_ctx *ctx)
{
    srv_options_from_accept(&ctx->opts, MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT));
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, on_query_arg, ctx);
    if (ctx->failed)
        return;
    char err[LD_ERR_LEN];
    if (ctx->kind == BODY_MULTIPART) {
        MHD_Result_t complete = MHD_destroy_post_processor(ctx->pp);
        ctx->pp = NULL;
        if (complete != MHD_YES)
            fail(ctx, 400, "bad-request", "truncated or malformed multipart/form-data body");
    } else if (ctx->kind == BODY_JSON) {
        if (srv_parse_json(ctx->body ? ctx->body : "", ctx->body_len, &ctx->blobs, &ctx->opts, err) != LD_OK)
            fail(ctx, 400, "bad-request", "%s", err);
    } else if (ctx->body_len && srv_blobs_add(&ctx->blobs, (uint8_t *)ctx->body, ctx->body_len) != LD_OK) {
        fail(ctx, 503, "out-of-memory", "out of memory");
    }
}

static int status_for(int rc)
{
    switch (rc) {
    case LD_ETOOLARGE: return 413;
    case LD_EUNSUPPORTED: return 415;
    case LD_ENOMEM: return 503;
    default: return 400;
    }
}

/* Decode every image into a new job; NULL (and ctx failed) on any error. */
static srv_job *build_job(srv_state *st, conn_ctx *ctx)
{
    const int n = ctx->blobs.count;
    if (n == 0) {
        fail(ctx, 400, "no-image", "the request holds no image");
        return NULL;
    }
    if (n > st->cfg->max_images_per_request) {
        fail(ctx, 413, "too-many-images", "%d images; at most %d per request", n,
             st->cfg->max_images_per_request);
        return NULL;
    }
    srv_job *job = srv_job_new(n);
    if (!job) {
        fail(ctx, 503, "out-of-memory", "out of memory");
        return NULL;
    }
    const ld_image_limits limits = {.max_pixels = st->cfg->max_image_pixels};
    char err[LD_ERR_LEN];
    for (int i = 0; i < n; i++) {
        int rc = ld_image_decode(ctx->blobs.data[i], ctx->blobs.len[i], &limits, &job->items[i].image, err);
        if (rc != LD_OK) {
            fail(ctx, status_for(rc), rc == LD_ETOOLARGE ? "image-too-large" : "bad-image",
                 "image %d: %s", i, err);
            srv_job_unref(job);
            return NULL;
        }
    }
    int rc = srv_job_alloc_results(job, st->model, err);
    if (rc != LD_OK) {
        fail(ctx, rc == LD_EINVAL ? 422 : 503, rc == LD_EINVAL ? "bad-image-size" : "out-of-memory",
             "%s", err);
        srv_job_unref(job);
        return NULL;
    }
    job->deterministic = ctx->opts.deterministic;
    job->center = ctx->opts.center;
    job->seed = ctx->opts.seed;
    if (!job->deterministic && !ctx->opts.has_seed &&
        getrandom(&job->seed, sizeof job->seed, 0) != (ssize_t)sizeof job->seed)
        job->seed = (uint64_t)time(NULL) * 6364136223846793005ULL;
    return job;
}

static void deadline_after(int ms, struct timespec *ts)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* TEMP adapter: renders an old srv_job through the new srv_results; drop it
 * when the rewritten http.c/queue.c land. */
static int render_job_TEMP(const ld_model *model, const srv_job *job, const srv_options *o,
                           srv_body *body, char *err)
{
    srv_item_result *items = calloc((size_t)job->n_items, sizeof *items);
    if (!items)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    for (int i = 0; i < job->n_items; i++) {
        const srv_item *it = &job->items[i];
        items[i] = (srv_item_result){it->image.width, it->image.height, it->lh, it->lw,
                                     it->latents, it->mean, it->logvar, it->moments};
    }
    const srv_results res = {job->n_items, items, job->deterministic, job->center, job->seed};
    int rc = srv_render_result(model, &res, o, body, err);
    free(items);
    return rc;
}

static MHD_Result_t answer_encode(srv_state *st, struct MHD_Connection *c, conn_ctx *ctx,
                                  const char *method, const char *url)
{
    finish_body(c, ctx);
    srv_job *job = ctx->failed ? NULL : build_job(st, ctx);
    if (ctx->failed)
        return send_error(st, c, ctx, method, url, ctx->fail_status, ctx->fail_code, ctx->fail_msg);
    ctx->images = job->n_items;
    char err[LD_ERR_LEN];
    int rc = atomic_load(&st->draining) ? ld_fail(err, LD_ECANCELLED, "shutting down")
                                        : srv_queue_submit(st->queue, job, err);
    if (rc != LD_OK) {
        srv_job_unref(job);
        return send_error(st, c, ctx, method, url, 503,
                          rc == LD_ETOOLARGE ? "queue-full" : "unavailable", err);
    }
    struct timespec deadline;
    deadline_after(st->cfg->request_timeout_ms, &deadline);
    if (!srv_job_wait(job, &deadline)) {
        atomic_store(&job->abandoned, true); /* the workers drop what is still queued */
        srv_job_unref(job);
        return send_error(st, c, ctx, method, url, 504, "timeout",
                          "the request waited past its deadline");
    }
    ctx->queue_wait = job->queue_wait_max;
    ctx->encode_seconds = job->encode_seconds;
    MHD_Result_t ret;
    srv_body body;
    if (job->status != LD_OK) {
        ret = send_error(st, c, ctx, method, url, job->status == LD_ENOMEM ? 503 : 500,
                         "encode-failed", job->err);
    } else if ((rc = render_job_TEMP(st->model, job, &ctx->opts, &body, err)) != LD_OK) {
        ret = rc == LD_EUNSUPPORTED
                  ? send_error(st, c, ctx, method, url, 422, "format-unsuitable", err)
                  : send_error(st, c, ctx, method, url, 503, "out-of-memory", "out of memory");
    } else {
        ret = send_body(st, c, ctx, method, url, 200, &body, 0);
    }
    srv_job_unref(job);
    return ret;
}

/* ---------------- routing ---------------- */

static route find_route(const char *url, const char *method, bool *method_ok)
{
    static const struct {
        const char *path, *method;
        route r;
    } routes[] = {
        {"/v1/encode", "POST", ROUTE_ENCODE}, {"/healthz", "GET", ROUTE_HEALTH},
        {"/readyz", "GET", ROUTE_READY},      {"/metrics", "GET", ROUTE_METRICS},
        {"/v1/model", "GET", ROUTE_MODEL},
    };
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (!strcmp(url, routes[i].path)) {
            *method_ok = !strcmp(method, routes[i].method) ||
                         (!strcmp(method, "HEAD") && !strcmp(routes[i].method, "GET"));
            return routes[i].r;
        }
    *method_ok = true;
    return ROUTE_NONE;
}

static MHD_Result_t on_request(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **con_cls)
{
    srv_state *st = cls;
    conn_ctx *ctx = *con_cls;
    (void)version;
    if (!ctx) {
        ctx = calloc(1, sizeof *ctx);
        if (!ctx)
            return MHD_NO;
        *con_cls = ctx;
        ctx->started = now_seconds();
        bool method_ok;
        ctx->route = find_route(url, method, &method_ok);
        if (ctx->route == ROUTE_NONE)
            fail(ctx, 404, "not-found", "no such endpoint");
        else if (!method_ok)
            fail(ctx, 405, "method-not-allowed", "%s is not allowed here", method);
        else if (ctx->route == ROUTE_ENCODE) {
            atomic_fetch_add(&st->in_flight, 1);
            ctx->counted_in_flight = true;
            start_encode(st, c, ctx);
        } else if (ctx->route == ROUTE_MODEL && !authorised(st, c))
            fail(ctx, 401, "unauthorized", "missing or wrong API key");
        /* refused from its headers alone: answer now, before any body is sent */
        if (ctx->failed)
            return send_error(st, c, ctx, method, url, ctx->fail_status, ctx->fail_code,
                              ctx->fail_msg);
        return MHD_YES;
    }
    if (*upload_size) {
        if (ctx->route == ROUTE_ENCODE)
            receive(st, ctx, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    if (ctx->route == ROUTE_ENCODE)
        return answer_encode(st, c, ctx, method, url);
    return answer_get(st, c, ctx, method, url);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    srv_state *st = cls;
    conn_ctx *ctx = *con_cls;
    (void)c;
    (void)why;
    if (!ctx)
        return;
    if (ctx->pp)
        MHD_destroy_post_processor(ctx->pp);
    if (ctx->counted_in_flight)
        atomic_fetch_sub(&st->in_flight, 1);
    srv_blobs_free(&ctx->blobs);
    free(ctx->body);
    free(ctx);
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    srv_log(LOG_WARN, "http: %s", line);
}

static int resolve(const srv_config *cfg, struct sockaddr_storage *addr, char *err)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res;
    char port[8];
    snprintf(port, sizeof port, "%d", cfg->port);
    int rc = getaddrinfo(cfg->listen_host, port, &hints, &res);
    if (rc != 0)
        return ld_fail(err, LD_EINVAL, "listen: cannot resolve '%s': %s", cfg->listen_host,
                       gai_strerror(rc));
    memcpy(addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    return LD_OK;
}

int srv_http_start(srv_state *st, char *err)
{
    struct sockaddr_storage addr;
    int rc = resolve(st->cfg, &addr, err);
    if (rc != LD_OK)
        return rc;
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    st->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, st, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)st->cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(st->cfg->request_timeout_ms / 1000 + 60),
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, st, MHD_OPTION_END);
    if (!st->mhd)
        return ld_fail(err, LD_EIO, "cannot listen on %s:%d (in use, or not permitted)",
                       st->cfg->listen_host, st->cfg->port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(st->mhd, MHD_DAEMON_INFO_BIND_PORT);
    st->port = info ? info->port : st->cfg->port;
    return LD_OK;
}

void srv_http_quiesce(srv_state *st)
{
    if (st->mhd) {
        MHD_socket s = MHD_quiesce_daemon(st->mhd);
        if (s != MHD_INVALID_SOCKET)
            close(s);
    }
}

void srv_http_stop(srv_state *st)
{
    if (st->mhd)
        MHD_stop_daemon(st->mhd);
    st->mhd = NULL;
}
