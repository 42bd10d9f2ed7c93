#include "http.h"

#include <arpa/inet.h>
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "head.h"
#include "latentd/tensor_input.h"
#include "log.h"
#include "request.h"
#include "response.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result_t;
#else
typedef enum MHD_Result MHD_Result_t;
#endif

typedef enum {
    ROUTE_NONE,
    ROUTE_ENCODE,
    ROUTE_REMOTE, /* diffusers' remote_encode: raw tensor bytes in and out */
    ROUTE_HEALTH,
    ROUTE_READY,
    ROUTE_METRICS,
    ROUTE_MODEL,
    ROUTE_MODELS
} route;
typedef enum { BODY_NONE, BODY_JSON, BODY_MULTIPART, BODY_RAW } body_kind;
/* A raw body's container, as its media type names it (ANY: tell by its bytes). */
typedef enum { CONTAINER_ANY, CONTAINER_NPY, CONTAINER_SAFETENSORS } body_container;

/* ---------------- errors: one table from what went wrong to the answer ---------------- */

typedef enum {
    E_NONE,
    E_BAD_REQUEST,
    E_BAD_FRAMING,
    E_NO_IMAGE,
    E_BAD_IMAGE,
    E_UNAUTHORIZED,
    E_NOT_FOUND,
    E_UNKNOWN_MODEL,
    E_METHOD,
    E_URI_TOO_LONG,
    E_HEADERS_TOO_LARGE,
    E_BODY_TOO_LARGE,
    E_TOO_MANY_IMAGES,
    E_IMAGE_TOO_LARGE,
    E_OVER_BUDGET,
    E_MEDIA_TYPE,
    E_TRANSFER_CODING,
    E_IMAGE_SIZE,
    E_FORMAT_UNSUITABLE,
    E_QUEUE_FULL,
    E_BUSY,
    E_DRAINING,
    E_NOT_READY,
    E_TIMEOUT,
    E_ENCODE_FAILED,
    E_INTERNAL,
} answer_error;

static const struct {
    int status;
    const char *code;
    bool retry; /* Retry-After: come back later, it may work then */
    bool close; /* the connection cannot be trusted or kept */
} errors[] = {
    [E_BAD_REQUEST] = {400, "bad-request", false, false},
    [E_BAD_FRAMING] = {400, "bad-framing", false, true},
    [E_NO_IMAGE] = {400, "no-image", false, false},
    [E_BAD_IMAGE] = {400, "bad-image", false, false},
    [E_UNAUTHORIZED] = {401, "unauthorized", false, false},
    [E_NOT_FOUND] = {404, "not-found", false, false},
    [E_UNKNOWN_MODEL] = {404, "unknown-model", false, false},
    [E_METHOD] = {405, "method-not-allowed", false, false},
    [E_URI_TOO_LONG] = {414, "uri-too-long", false, true},
    [E_HEADERS_TOO_LARGE] = {431, "header-too-large", false, true},
    [E_BODY_TOO_LARGE] = {413, "body-too-large", false, true},
    [E_TOO_MANY_IMAGES] = {413, "too-many-images", false, false},
    [E_IMAGE_TOO_LARGE] = {413, "image-too-large", false, false},
    [E_OVER_BUDGET] = {413, "too-large-for-memory", false, false},
    [E_MEDIA_TYPE] = {415, "unsupported-media-type", false, false},
    [E_TRANSFER_CODING] = {501, "not-implemented", false, true},
    [E_IMAGE_SIZE] = {422, "bad-image-size", false, false},
    [E_FORMAT_UNSUITABLE] = {422, "format-unsuitable", false, false},
    [E_QUEUE_FULL] = {503, "queue-full", true, false},
    [E_BUSY] = {503, "busy", true, false},
    [E_DRAINING] = {503, "shutting-down", true, true},
    [E_NOT_READY] = {503, "not-ready", true, false},
    [E_TIMEOUT] = {504, "timeout", false, false},
    [E_ENCODE_FAILED] = {500, "encode-failed", false, false},
    [E_INTERNAL] = {500, "internal", false, false},
};

/* What an image's decoding or encoding failure means for the client. */
static answer_error error_for_status(int status)
{
    switch (status) {
    case LD_ETOOLARGE: return E_IMAGE_TOO_LARGE;
    case LD_EUNSUPPORTED: return E_MEDIA_TYPE;
    case LD_ENOMEM: return E_BUSY;
    case LD_EFORMAT:
    case LD_EINVAL: return E_BAD_IMAGE;
    default: return E_ENCODE_FAILED;
    }
}

/* ---------------- one request ---------------- */

typedef struct {
    bool begun;               /* its headers are in and begin_request has run */
    bool settled;             /* its body is in and libmicrohttpd has polled it once since */
    srv_target_problem_kind target; /* what the target looked like as sent */
    srv_state *st;
    struct MHD_Connection *connection;
    srv_conn *conn;           /* the connection's table entry */
    route route;
    body_kind kind;
    char *body;               /* JSON and raw bodies */
    size_t body_len, body_cap;
    size_t received;
    size_t reserved;          /* budget held by the request until its job takes it */
    bool chunked;             /* no Content-Length: reserve as the body arrives */
    bool body_pending;        /* a body was announced and is not all in yet */
    bool discard_body;        /* refused at its headers; its body is read and dropped */
    size_t declared;          /* its Content-Length */
    struct MHD_PostProcessor *pp;
    srv_blobs blobs;
    srv_options from_body;    /* JSON fields or form fields */
    srv_options opts;         /* all sources merged, once the body is in */
    char field_key[64];       /* a multipart text field arriving in pieces */
    char field_value[1024];
    size_t field_len;
    bool in_field;
    answer_error failed;      /* the first failure: answered once the body is in */
    char fail_msg[LD_ERR_LEN];
    double started;
    int images;
    bool counted;             /* counted in in_flight: accepted at its headers */
    srv_model *model;         /* the model it was accepted for (a reference), from admission */
    srv_job *job;
    body_container container; /* what the Content-Type says a raw body is */
    srv_tensor_input tensor;  /* the body was a tensor: its images' dtype and size */
} request;

static bool is_encode(const request *rq)
{
    return rq->route == ROUTE_ENCODE || rq->route == ROUTE_REMOTE;
}

static void fail(request *rq, answer_error e, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void fail(request *rq, answer_error e, const char *fmt, ...)
{
    if (rq->failed)
        return; /* the first reason is the one reported */
    rq->failed = e;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rq->fail_msg, sizeof rq->fail_msg, fmt, ap);
    va_end(ap);
}

static bool reserve(request *rq, size_t bytes)
{
    if (!srv_budget_take(&rq->st->budget, bytes)) {
        srv_metrics_event(&rq->st->metrics, EV_REFUSED_MEMORY);
        return false;
    }
    rq->reserved += bytes;
    return true;
}

static void release_reservation(request *rq)
{
    srv_budget_give(&rq->st->budget, rq->reserved);
    rq->reserved = 0;
}

/* ---------------- answering ---------------- */

static MHD_Result_t send_body(request *rq, const char *method, const char *url, int status,
                              srv_body *body, bool retry, bool close)
{
    srv_state *st = rq->st;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(body->len, body->data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body->data);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, body->content_type);
    if (body->tensor_dtype) { /* a bare tensor: what diffusers' remote client reads */
        MHD_add_response_header(r, "shape", body->tensor_shape);
        MHD_add_response_header(r, "dtype", body->tensor_dtype);
    }
    if (retry)
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (status == 405) /* RFC 9110 15.5.6: what the resource does take */
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, is_encode(rq) ? "POST" : "GET, HEAD");
    /* answered before its body is in: the rest of it is not worth reading */
    if (close || rq->body_pending || atomic_load(&st->draining) ||
        (rq->conn && srv_conn_requests(rq->conn) >= st->cfg->max_requests_per_connection))
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close");
    if (rq->conn)
        srv_conn_enter(st->conns, rq->conn, CONN_SEND);
    MHD_Result_t ok = MHD_queue_response(rq->connection, (unsigned)status, r);
    MHD_destroy_response(r);
    srv_metrics_request(&st->metrics, status);
    if (is_encode(rq) || status >= 400) {
        double queue_wait = 0, encode_seconds = 0;
        if (rq->job)
            srv_job_times(rq->job, &queue_wait, &encode_seconds);
        srv_log(LOG_INFO, "%s %.256s %d images=%d bytes_in=%zu bytes_out=%zu queue_wait_ms=%.1f "
                "encode_ms=%.1f total_ms=%.1f", method, url, status, rq->images, rq->received,
                body->len, queue_wait * 1e3, encode_seconds * 1e3,
                (ld_now_seconds() - rq->started) * 1e3);
    }
    return ok;
}

static MHD_Result_t send_error(request *rq, const char *method, const char *url, answer_error e,
                               const char *message)
{
    srv_body body;
    if (srv_render_error(errors[e].code, message, &body) != LD_OK)
        return MHD_NO;
    return send_body(rq, method, url, errors[e].status, &body, errors[e].retry, errors[e].close);
}

static MHD_Result_t send_failure(request *rq, const char *method, const char *url)
{
    return send_error(rq, method, url, rq->failed, rq->fail_msg);
}

static MHD_Result_t send_text(request *rq, const char *method, const char *url, char *text,
                              const char *type)
{
    if (!text)
        return send_error(rq, method, url, E_INTERNAL, "out of memory");
    srv_body body = {.data = text, .len = strlen(text), .content_type = type};
    return send_body(rq, method, url, 200, &body, false, false);
}

/* ---------------- GET endpoints ---------------- */

/* A model as GET /v1/model shows it, under the name requests use. */
static json_t *model_json(const srv_model *model)
{
    const ld_model *m = srv_model_weights(model);
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
                     "name", srv_model_name(model), "path", ld_model_path(m), "layout",
                     ld_model_layout(m), "scaling", ld_model_scaling(m), "config",
                     "block_out_channels", blocks, "layers_per_block", cfg->layers_per_block,
                     "latent_channels", cfg->latent_channels, "norm_num_groups",
                     cfg->norm_num_groups, "use_quant_conv", cfg->use_quant_conv,
                     "mid_block_add_attention", cfg->mid_attention, "scaling_factor",
                     (double)cfg->scaling_factor, "shift_factor",
                     cfg->has_shift_factor ? json_real(cfg->shift_factor) : json_null(),
                     "latents_mean", mean, "latents_std", std);
}

/* Why the daemon would refuse work now, or NULL when it is ready. */
static const char *not_ready_reason(srv_state *st)
{
    if (atomic_load(&st->draining))
        return "shutting down";
    if (atomic_load(&st->workers_stalled) > 0)
        return "a worker is stalled (no progress for stall_timeout_ms)";
    if (srv_queue_depth(st->queue) >= srv_queue_capacity(st->queue))
        return "the queue is full";
    const size_t fixed = atomic_load(&st->budget_fixed);
    const size_t for_requests = st->budget.limit - fixed;
    if (srv_budget_used(&st->budget) - fixed >= for_requests / 10 * 9)
        return "the memory budget is nearly spent";
    return NULL;
}

static srv_gauges gauges(srv_state *st)
{
    return (srv_gauges){
        .queue_depth = srv_queue_depth(st->queue),
        .queue_capacity = srv_queue_capacity(st->queue),
        .in_flight = atomic_load(&st->in_flight),
        .connections = srv_conns_count(st->conns),
        .workers_stalled = atomic_load(&st->workers_stalled),
        .memory_used = srv_budget_used(&st->budget),
        .memory_limit = st->budget.limit,
        .memory_peak = srv_budget_peak(&st->budget),
    };
}

static MHD_Result_t answer_get(request *rq, const char *method, const char *url)
{
    srv_state *st = rq->st;
    if (rq->route == ROUTE_HEALTH)
        return send_text(rq, method, url, strdup("{\"status\":\"ok\"}"), "application/json");
    if (rq->route == ROUTE_READY) {
        const char *why = not_ready_reason(st);
        if (why)
            return send_error(rq, method, url, E_NOT_READY, why);
        return send_text(rq, method, url, strdup("{\"status\":\"ready\"}"), "application/json");
    }
    if (rq->route == ROUTE_METRICS) {
        const srv_gauges g = gauges(st);
        return send_text(rq, method, url, srv_metrics_render(&st->metrics, &g),
                         "text/plain; version=0.0.4");
    }
    srv_body body;
    if (rq->route == ROUTE_MODELS) {
        srv_model_set set;
        srv_models_snapshot(st->models, &set);
        json_t *list = json_array();
        for (int i = 0; i < set.n; i++) {
            json_t *one = model_json(set.models[i]);
            json_object_set_new(one, "default", json_boolean(i == set.default_index));
            json_array_append_new(list, one);
        }
        json_t *root = json_pack("{s:s, s:o}", "default",
                                 srv_model_name(set.models[set.default_index]), "models", list);
        srv_model_set_release(&set);
        if (srv_render_json(root, &body) != LD_OK)
            return send_error(rq, method, url, E_INTERNAL, "out of memory");
        return send_body(rq, method, url, 200, &body, false, false);
    }
    /* /v1/model: the default, or ?model=NAME */
    const char *name = MHD_lookup_connection_value(rq->connection, MHD_GET_ARGUMENT_KIND, "model");
    srv_model *model = srv_models_get(st->models, name);
    if (!model)
        return send_error(rq, method, url, E_UNKNOWN_MODEL,
                          "no model of that name here (see GET /v1/models)");
    const int rc = srv_render_json(model_json(model), &body);
    srv_model_unref(model);
    if (rc != LD_OK)
        return send_error(rq, method, url, E_INTERNAL, "out of memory");
    return send_body(rq, method, url, 200, &body, false, false);
}

/* ---------------- receiving an encode request ---------------- */

static bool is_image_field(const char *key, const char *filename)
{
    return filename != NULL || !strcmp(key, "image") || !strcmp(key, "images") ||
           !strcmp(key, "image[]") || !strcmp(key, "images[]");
}

/* A text field is complete: apply it to the body's options. */
static void flush_field(request *rq)
{
    if (!rq->in_field)
        return;
    rq->in_field = false;
    rq->field_value[rq->field_len] = '\0';
    char err[LD_ERR_LEN];
    if (srv_options_set(&rq->from_body, rq->field_key, rq->field_value, err) != LD_OK)
        fail(rq, E_BAD_REQUEST, "%s", err);
}

static void add_field_bytes(request *rq, const char *key, const char *data, uint64_t off,
                            size_t size)
{
    /* libmicrohttpd hands a value over in pieces, each at its offset; it may
     * also announce a field with an empty piece at 0 and then send it at 0 */
    const bool continues = rq->in_field && off == rq->field_len && !strcmp(key, rq->field_key);
    if (!continues) { /* a new field starts */
        flush_field(rq);
        if (strlen(key) >= sizeof rq->field_key) {
            fail(rq, E_BAD_REQUEST, "unknown form field '%.40s'", key);
            return;
        }
        snprintf(rq->field_key, sizeof rq->field_key, "%s", key);
        rq->field_len = 0;
        rq->in_field = true;
    }
    if (!rq->in_field)
        return;
    if (rq->field_len + size >= sizeof rq->field_value) {
        fail(rq, E_BAD_REQUEST, "form field '%.40s' is too long", key);
        rq->in_field = false;
        return;
    }
    memcpy(rq->field_value + rq->field_len, data, size);
    rq->field_len += size;
}

static MHD_Result_t on_form_part(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *filename, const char *content_type,
                                 const char *transfer_encoding, const char *data, uint64_t off,
                                 size_t size)
{
    request *rq = cls;
    (void)kind;
    (void)content_type;
    (void)transfer_encoding;
    if (rq->failed)
        return MHD_YES;
    if (!key) {
        fail(rq, E_BAD_REQUEST, "a multipart part has no name");
        return MHD_YES;
    }
    if (!is_image_field(key, filename)) {
        add_field_bytes(rq, key, data, off, size);
        return MHD_YES;
    }
    flush_field(rq);
    if (size == 0)
        return MHD_YES; /* libmicrohttpd announces a part's start with an empty piece at 0 */
    if (off == 0 && rq->blobs.count >= rq->st->cfg->max_images_per_request) {
        fail(rq, E_TOO_MANY_IMAGES, "more than %d images; at most %d per request",
             rq->st->cfg->max_images_per_request, rq->st->cfg->max_images_per_request);
        return MHD_YES;
    }
    int rc = off == 0 ? srv_blobs_add(&rq->blobs, (const uint8_t *)data, size)
                      : srv_blobs_append(&rq->blobs, (const uint8_t *)data, size);
    if (rc != LD_OK)
        fail(rq, E_BUSY, "out of memory receiving the images");
    return MHD_YES;
}

/* The media type alone, compared whole: "image/pngx" is not "image/png". */
static bool media_type_is(const char *type, const char *want)
{
    if (!type)
        return false;
    while (*type == ' ' || *type == '\t')
        type++;
    size_t len = strcspn(type, ";");
    while (len > 0 && (type[len - 1] == ' ' || type[len - 1] == '\t'))
        len--;
    return len == strlen(want) && !strncasecmp(type, want, len);
}

static body_kind classify_body(const char *type)
{
    if (media_type_is(type, "application/json"))
        return BODY_JSON;
    if (media_type_is(type, "multipart/form-data"))
        return BODY_MULTIPART;
    static const char *const raw[] = {"image/png", "image/jpeg", "image/jpg", "image/webp",
                                      "application/octet-stream", "application/x-npy",
                                      "application/safetensors"};
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++)
        if (media_type_is(type, raw[i]))
            return BODY_RAW;
    return BODY_NONE;
}

/* How many bytes of budget a body of len bytes takes until it is parsed: JSON
 * is held as text, as jansson's strings and as the decoded images at once. */
static size_t body_cost(body_kind kind, size_t len)
{
    return kind == BODY_JSON ? 3 * len : len;
}

static bool authorised(srv_state *st, struct MHD_Connection *c)
{
    const char *given = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-API-Key");
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!given && auth && !strncasecmp(auth, "Bearer ", 7))
        given = auth + 7;
    return srv_auth_accepts(&st->auth, given);
}

/* ---------------- framing: what a proxy and latentd must read alike ---------------- */

typedef struct {
    int lengths;          /* Content-Length headers */
    bool lengths_differ, length_bad;
    unsigned long long length;
    int codings;          /* Transfer-Encoding headers */
    bool coding_bad;      /* anything but exactly "chunked" */
} framing;

static bool all_digits(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!isdigit((unsigned char)*s))
            return false;
    return true;
}

static MHD_Result_t on_header(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value)
{
    framing *f = cls;
    (void)kind;
    value = value ? value : "";
    if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
        if (!all_digits(value) || strlen(value) > 19) {
            f->length_bad = true;
        } else {
            const unsigned long long v = strtoull(value, NULL, 10);
            if (f->lengths && v != f->length)
                f->lengths_differ = true;
            f->length = v;
        }
        f->lengths++;
    } else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        f->codings++;
        if (strcasecmp(value, "chunked") != 0)
            f->coding_bad = true;
    }
    return MHD_YES;
}

/* The head's fields, as check_head sees them. */
typedef struct {
    bool bad_name;        /* not a token: whitespace before the colon, or worse */
    bool bad_value;       /* a control character (a bare CR) in a value */
    bool folded;          /* an obs-fold continuation line */
    int hosts;            /* Host headers */
    size_t bytes;         /* names and values */
    char name[48];        /* the first bad name, for the message */
} head_fields;

/* Leading whitespace libmicrohttpd skips after a colon, at most: more is
 * taken for a fold (no client sends it). */
enum { MAX_FIELD_GAP = 256 };

static MHD_Result_t on_head_field(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    head_fields *h = cls;
    (void)kind;
    h->bytes += strlen(key) + (value ? strlen(value) : 0);
    if (!srv_field_name_ok(key)) {
        if (!h->bad_name) /* printable ASCII only: it goes into the answer */
            for (size_t i = 0; key[i] && i + 1 < sizeof h->name; i++)
                h->name[i] = key[i] >= ' ' && key[i] < 0x7f ? key[i] : '?';
        h->bad_name = true;
    } else if (value && srv_field_folded(key, value, MAX_FIELD_GAP)) {
        h->folded = true;
    }
    if (value && !srv_field_value_ok(value))
        h->bad_value = true;
    if (!strcasecmp(key, MHD_HTTP_HEADER_HOST))
        h->hosts++;
    return MHD_YES;
}

/* RFC 9112 2.2, 3.2 and 5: a head a proxy in front might read differently is
 * refused before any phase reads it, and the connection closed.
 * libmicrohttpd 0.9 would pass a name with a space before its colon under
 * that name ("Content-Length ") and join a folded line onto the name before
 * it, so "Content-Length : 76" or a folded Transfer-Encoding would frame the
 * body as none, and a body that is itself a request would run as the next. */
static answer_error check_head(request *rq, struct MHD_Connection *c, const char *version)
{
    const srv_config *cfg = rq->st->cfg;
    if (rq->target == TARGET_TOO_LONG) {
        fail(rq, E_URI_TOO_LONG, "the request target is longer than %zu bytes",
             cfg->max_uri_bytes);
        return E_URI_TOO_LONG;
    }
    if (rq->target != TARGET_OK) {
        fail(rq, E_BAD_REQUEST, "the request target holds %s",
             rq->target == TARGET_NUL ? "an encoded NUL (%00)" : "whitespace or a control character");
        return E_BAD_REQUEST;
    }
    head_fields h = {.bad_name = false};
    MHD_get_connection_values(c, MHD_HEADER_KIND, on_head_field, &h);
    if (h.bytes > cfg->max_header_bytes) {
        fail(rq, E_HEADERS_TOO_LARGE, "the header fields are larger than %zu bytes",
             cfg->max_header_bytes);
        return E_HEADERS_TOO_LARGE;
    }
    if (h.bad_name) {
        fail(rq, E_BAD_FRAMING, "'%s' is not a field name (whitespace before its colon, or "
             "a line folded onto it)", h.name);
        return E_BAD_FRAMING;
    }
    if (h.folded) {
        fail(rq, E_BAD_FRAMING, "a header field is folded onto a second line (obs-fold)");
        return E_BAD_FRAMING;
    }
    if (h.bad_value) {
        fail(rq, E_BAD_FRAMING, "a header field's value holds a control character");
        return E_BAD_FRAMING;
    }
    /* HTTP/1.1 and the 1.x after it need a Host (libmicrohttpd takes 1.2-1.9
     * for 1.1); HTTP/1.0 and an empty version do not */
    const bool needs_host = strncmp(version, "HTTP/1.", 7) == 0 && version[7] != '0';
    if (h.hosts > 1 || (h.hosts == 0 && needs_host)) {
        fail(rq, E_BAD_FRAMING, "an HTTP/1.1 request has exactly one Host header");
        return E_BAD_FRAMING;
    }
    return E_NONE;
}

/* RFC 9112 6.3: a message a proxy in front might read differently is refused. */
static answer_error check_framing(request *rq, struct MHD_Connection *c, framing *f)
{
    memset(f, 0, sizeof *f);
    MHD_get_connection_values(c, MHD_HEADER_KIND, on_header, f);
    if (f->length_bad || f->lengths_differ) {
        fail(rq, E_BAD_FRAMING, "Content-Length must be one decimal number");
        return E_BAD_FRAMING;
    }
    if (f->codings && f->lengths) {
        fail(rq, E_BAD_FRAMING, "Content-Length and Transfer-Encoding together");
        return E_BAD_FRAMING;
    }
    if (f->codings > 1 || f->coding_bad) {
        fail(rq, E_TRANSFER_CODING, "only Transfer-Encoding: chunked is supported");
        return E_TRANSFER_CODING;
    }
    return E_NONE;
}

/* Bodies refused for their size that are read and dropped at once, at
 * most: reading costs no memory, but each such client takes bandwidth. */
enum { MAX_BODIES_DISCARDED = 8 };

/* One of the MAX_BODIES_DISCARDED slots, if one is free (given back in
 * on_completed) */
static bool take_discard_slot(srv_state *st)
{
    int now = atomic_load(&st->discarding);
    do {
        if (now >= MAX_BODIES_DISCARDED)
            return false;
    } while (!atomic_compare_exchange_weak(&st->discarding, &now, now + 1));
    return true;
}

/* Whether a body refused for its size (length > max_body_bytes) is read and
 * dropped before the 413 goes out.  Closing a socket with unread data makes
 * the kernel send a reset, which can destroy the answer at the client before
 * it is read: a client that sends its body without waiting (no "Expect:
 * 100-continue", as Python's requests) would see "connection reset" instead
 * of the 413.  Reading costs bandwidth, never memory, and body_timeout_ms
 * bounds it (a client too slow for it is cut without an answer, as is one
 * still sending when the daemon shuts down).  A body past twice
 * max_body_bytes is not worth it, nor is one past MAX_BODIES_DISCARDED at
 * once: those are answered at once.  True takes a slot of st->discarding. */
static bool body_worth_discarding(srv_state *st, struct MHD_Connection *c, const char *version,
                                  uint64_t length)
{
    const size_t limit = st->cfg->max_body_bytes;
    assert(length > limit);
    if (length - limit > limit)
        return false;
    /* libmicrohttpd's own test for when it sends "100 Continue" */
    const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_EXPECT);
    if (!strcmp(version, MHD_HTTP_VERSION_1_1) && expect && !strcasecmp(expect, "100-continue"))
        return false; /* the client waits for our word before it sends the body */
    return take_discard_slot(st);
}

/* Headers are in: decide what can be decided before the body. */
static void start_encode(request *rq, struct MHD_Connection *c, const char *version,
                         const framing *f)
{
    srv_state *st = rq->st;
    srv_options_clear(&rq->from_body);
    if (!authorised(st, c)) {
        fail(rq, E_UNAUTHORIZED, "missing or wrong API key");
        return;
    }
    if (atomic_load(&st->draining)) {
        fail(rq, E_DRAINING, "shutting down");
        return;
    }
    if (srv_queue_depth(st->queue) >= srv_queue_capacity(st->queue)) {
        /* overloaded: refuse before reading a byte of the body */
        fail(rq, E_QUEUE_FULL, "the queue is full");
        return;
    }
    if (f->lengths && f->length > st->cfg->max_body_bytes) {
        fail(rq, E_BODY_TOO_LARGE, "the body is larger than %zu bytes", st->cfg->max_body_bytes);
        rq->discard_body = body_worth_discarding(st, c, version, f->length);
        return;
    }
    const char *type = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    rq->kind = classify_body(type);
    rq->container = media_type_is(type, "application/x-npy")          ? CONTAINER_NPY
                    : media_type_is(type, "application/safetensors") ? CONTAINER_SAFETENSORS
                                                                     : CONTAINER_ANY;
    if (rq->kind == BODY_NONE && !type && rq->route == ROUTE_REMOTE)
        rq->kind = BODY_RAW; /* diffusers' client sends its bytes without a type */
    if (rq->kind == BODY_NONE) {
        fail(rq, E_MEDIA_TYPE, "Content-Type must be application/json, multipart/form-data, "
             "image/png, image/jpeg, image/webp, application/x-npy, application/safetensors "
             "or application/octet-stream");
        return;
    }
    rq->chunked = f->lengths == 0;
    rq->declared = (size_t)f->length;
    if (!rq->chunked && !reserve(rq, body_cost(rq->kind, (size_t)f->length))) {
        fail(rq, E_BUSY, "the memory budget is spent; try again shortly");
        return;
    }
    if (rq->kind == BODY_MULTIPART) {
        rq->pp = MHD_create_post_processor(c, 64 * 1024, on_form_part, rq);
        if (!rq->pp) {
            fail(rq, E_BAD_REQUEST, "malformed multipart/form-data header");
            return;
        }
    }
    /* accepted: a drain waits for it, from its upload to its answer */
    rq->counted = true;
    atomic_fetch_add(&st->in_flight, 1);
}

/* Room for `need` bytes of a JSON or raw body.  A declared length was
 * reserved at the headers and is allocated at once; a chunked body reserves
 * each doubling of its buffer before it allocates it, never past
 * max_body_bytes (receive() refuses a body past it before it gets here), so
 * it never asks more of the budget than start-up set aside for one body. */
static bool grow_body(request *rq, size_t need)
{
    const size_t limit = rq->st->cfg->max_body_bytes;
    size_t cap = rq->body_cap ? rq->body_cap : 64 * 1024;
    if (!rq->chunked)
        cap = rq->declared; /* more than declared: libmicrohttpd never passes it */
    while (cap < need)
        cap *= 2;
    if (rq->chunked && cap > limit)
        cap = need > limit ? need : limit;
    if (rq->chunked && !reserve(rq, body_cost(rq->kind, cap - rq->body_cap))) {
        fail(rq, E_BUSY, "the memory budget is spent; try again shortly");
        return false;
    }
    char *grown = realloc(rq->body, cap);
    if (!grown) {
        fail(rq, E_BUSY, "out of memory receiving the body");
        return false;
    }
    rq->body = grown;
    rq->body_cap = cap;
    return true;
}

/* A piece of the body.  False: the connection must be dropped (a failure in
 * mid-body cannot be answered before the body is over, and reading on would
 * let the client go on spending our time). */
static bool receive(request *rq, const char *data, size_t size)
{
    srv_state *st = rq->st;
    const size_t limit = st->cfg->max_body_bytes;
    rq->received += size;
    if (rq->discard_body) /* dropped: the 413 goes out once it is all read */
        return rq->received - limit <= limit || rq->received <= limit;
    if (rq->received > limit) {
        /* a chunked body has just passed the limit: like a declared one, it
         * is read on (to twice the limit) for its 413 to be read, if a slot
         * is free.  What it holds stays reserved until the answer. */
        if (!rq->chunked || rq->received - limit > limit || !take_discard_slot(st))
            return false;
        fail(rq, E_BODY_TOO_LARGE, "the body is larger than %zu bytes", limit);
        rq->discard_body = true;
        return true;
    }
    if (rq->failed)
        return true; /* refused: the rest is read and dropped, nothing kept */
    if (rq->kind == BODY_MULTIPART) {
        if (rq->chunked && !reserve(rq, size)) {
            fail(rq, E_BUSY, "the memory budget is spent; try again shortly");
            return true;
        }
        if (MHD_post_process(rq->pp, data, size) != MHD_YES)
            fail(rq, E_BAD_REQUEST, "malformed multipart/form-data body");
        return true;
    }
    if (rq->body_len + size > rq->body_cap && !grow_body(rq, rq->body_len + size))
        return true; /* failed: answered once the body is over */
    memcpy(rq->body + rq->body_len, data, size);
    rq->body_len += size;
    return true;
}

typedef struct {
    srv_options opts;
    bool failed;
    char err[LD_ERR_LEN];
} query_parse;

static MHD_Result_t on_query(void *cls, enum MHD_ValueKind kind, const char *key,
                             const char *value)
{
    query_parse *q = cls;
    (void)kind;
    if (!q->failed && srv_options_set(&q->opts, key, value ? value : "", q->err) != LD_OK)
        q->failed = true;
    return MHD_YES;
}

enum { NOT_A_TENSOR = 1, NEEDS_BOTH = 2 };

/* The tensor a raw body holds, if it is one: by its media type, by the shape
 * and dtype parameters (bare elements), or by the .npy or safetensors
 * signature.  NOT_A_TENSOR for anything else (a picture file). */
static int describe_tensor(request *rq, ld_tensor_batch *batch, char *err)
{
    const uint8_t *data = (const uint8_t *)rq->body;
    const srv_options *o = &rq->opts;
    if (rq->container == CONTAINER_NPY)
        return ld_tensor_from_npy(data, rq->body_len, batch, err);
    if (rq->container == CONTAINER_SAFETENSORS)
        return ld_tensor_from_safetensors(data, rq->body_len, batch, err);
    if (o->set & (OPT_SHAPE | OPT_DTYPE)) {
        if ((o->set & (OPT_SHAPE | OPT_DTYPE)) != (OPT_SHAPE | OPT_DTYPE))
            return NEEDS_BOTH;
        return ld_tensor_from_raw(data, rq->body_len, o->shape, o->shape_ndim, o->dtype, batch,
                                  err);
    }
    if (ld_tensor_is_npy(data, rq->body_len))
        return ld_tensor_from_npy(data, rq->body_len, batch, err);
    if (ld_image_sniff(data, rq->body_len) == LD_IMG_UNKNOWN &&
        ld_tensor_is_safetensors(data, rq->body_len))
        return ld_tensor_from_safetensors(data, rq->body_len, batch, err);
    return NOT_A_TENSOR;
}

/* A tensor body becomes one blob per image (each converted by a decoder,
 * like a picture); anything else is one picture file.  The copies are
 * reserved before they are made, so a tensor costs no more than priced. */
static void take_raw_body(request *rq)
{
    char err[LD_ERR_LEN];
    ld_tensor_batch batch;
    const int rc = rq->body_len ? describe_tensor(rq, &batch, err) : NOT_A_TENSOR;
    if (rc == NOT_A_TENSOR) {
        if (rq->body_len && srv_blobs_adopt(&rq->blobs, (uint8_t *)rq->body, rq->body_len) == LD_OK)
            rq->body = NULL; /* the blob owns it now */
        else if (rq->body_len)
            fail(rq, E_BUSY, "out of memory");
        return;
    }
    if (rc == NEEDS_BOTH) {
        fail(rq, E_BAD_REQUEST, "a raw tensor needs both shape and dtype");
        return;
    }
    if (rc != LD_OK) {
        fail(rq, error_for_status(rc), "%s", err);
        return;
    }
    if (batch.n > rq->st->cfg->max_images_per_request) {
        fail(rq, E_TOO_MANY_IMAGES, "%d images; at most %d per request", batch.n,
             rq->st->cfg->max_images_per_request);
        return;
    }
    const size_t per_image = ld_tensor_image_bytes(&batch);
    if (!reserve(rq, per_image * (size_t)batch.n)) {
        fail(rq, E_BUSY, "the memory budget is spent; try again shortly");
        return;
    }
    for (int i = 0; i < batch.n; i++)
        if (srv_blobs_add(&rq->blobs, batch.data + (size_t)i * per_image, per_image) != LD_OK) {
            fail(rq, E_BUSY, "out of memory");
            return;
        }
    rq->tensor = (srv_tensor_input){.active = true, .dtype = batch.dtype,
                                    .width = batch.width, .height = batch.height};
}

/* diffusers' remote_encode wants the mode as one bare float32 tensor. */
static void remote_options(request *rq)
{
    rq->opts.deterministic = true;
    rq->opts.outputs = OUT_LATENTS;
    rq->opts.format = LD_OUT_RAW;
}

/* Body complete: the images' bytes and every option, merged once:
 * defaults < Accept < query string < body. */
static void finish_body(request *rq, struct MHD_Connection *c)
{
    char err[LD_ERR_LEN];
    if (rq->kind == BODY_MULTIPART) {
        MHD_Result_t complete = MHD_destroy_post_processor(rq->pp);
        rq->pp = NULL;
        flush_field(rq);
        if (complete != MHD_YES)
            fail(rq, E_BAD_REQUEST, "truncated or malformed multipart/form-data body");
    } else if (rq->kind == BODY_JSON) {
        if (srv_parse_json(rq->body ? rq->body : "", rq->body_len, &rq->blobs, &rq->from_body,
                           err) != LD_OK)
            fail(rq, E_BAD_REQUEST, "%s", err);
    }
    if (rq->failed) {
        free(rq->body);
        rq->body = NULL;
        return;
    }
    srv_options accept, query_default;
    srv_options_clear(&accept);
    srv_options_from_accept(&accept, MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                                 MHD_HTTP_HEADER_ACCEPT));
    query_parse query = {.failed = false};
    srv_options_clear(&query.opts);
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, on_query, &query);
    if (query.failed) {
        fail(rq, E_BAD_REQUEST, "%s", query.err);
        return;
    }
    srv_options_defaults(&query_default);
    rq->opts = query_default;
    srv_options_merge(&rq->opts, &accept);
    srv_options_merge(&rq->opts, &query.opts);
    srv_options_merge(&rq->opts, &rq->from_body);
    if (rq->route == ROUTE_REMOTE)
        remote_options(rq);
    else if (rq->opts.set & (OPT_SCALING | OPT_SHIFT))
        fail(rq, E_BAD_REQUEST, "scaling_factor and shift_factor belong to /v1/remote/encode; "
             "/v1/encode scales the latents as the model's config says");
    if (rq->kind == BODY_RAW && !rq->failed)
        take_raw_body(rq);
    free(rq->body);
    rq->body = NULL;
}

/* ---------------- admission: decide before doing any work ---------------- */

/* Bytes an answer may take while it is made: the gathered tensors, and for
 * JSON the text twice (jansson's string and the dump); nested lists hold a
 * jansson number per float. */
static size_t answer_cost(const srv_options *o, size_t result_floats)
{
    return o->list_encoding ? result_floats * 96 : result_floats * sizeof(float) * 4;
}

/* Probe every image's size and price the whole request. */
static int price_images(request *rq, uint32_t (*sizes)[2], size_t *cost)
{
    srv_state *st = rq->st;
    const ld_model *model = srv_model_weights(rq->model);
    const int channels = ld_model_config(model)->latent_channels;
    size_t floats = 0, results = 0;
    for (int i = 0; i < rq->blobs.count; i++) {
        char err[LD_ERR_LEN];
        ld_image_format format;
        int rc = LD_OK;
        if (rq->tensor.active) {
            sizes[i][0] = (uint32_t)rq->tensor.width;
            sizes[i][1] = (uint32_t)rq->tensor.height;
        } else {
            rc = ld_image_probe(rq->blobs.data[i], rq->blobs.len[i], &format, &sizes[i][0],
                                &sizes[i][1], err);
        }
        if (rc != LD_OK) {
            fail(rq, error_for_status(rc), "image %d: %s", i, err);
            return rc;
        }
        const uint64_t pixels = (uint64_t)sizes[i][0] * sizes[i][1];
        if (pixels > st->cfg->max_image_pixels) {
            fail(rq, E_IMAGE_TOO_LARGE, "image %d: %ux%u is more than %llu pixels", i,
                 sizes[i][0], sizes[i][1], (unsigned long long)st->cfg->max_image_pixels);
            return LD_ETOOLARGE;
        }
        int lh, lw;
        if (ld_model_latent_size(model, (int)sizes[i][1], (int)sizes[i][0], &lh, &lw, err) !=
            LD_OK) {
            fail(rq, E_IMAGE_SIZE, "image %d: %s", i, err);
            return LD_EINVAL;
        }
        size_t need, limit;
        if (!srv_queue_image_fits(st->queue, model, (int)sizes[i][1], (int)sizes[i][0], &need,
                                  &limit)) {
            fail(rq, E_OVER_BUDGET, "image %d: encoding one %ux%u image needs %zu MiB of "
                 "working memory, more than the %zu MiB a worker has (sized for a square image "
                 "of max_image_pixels); send it smaller or nearer square", i, sizes[i][0],
                 sizes[i][1], need >> 20, limit >> 20);
            return LD_ETOOLARGE;
        }
        floats += (size_t)3 * pixels;
        results += (size_t)5 * channels * lh * lw;
    }
    *cost = srv_blobs_bytes(&rq->blobs) + (floats + results) * sizeof(float) +
            answer_cost(&rq->opts, results);
    return LD_OK;
}

/* npy, comfyui, png and the remote tensor hold one array: images of
 * different sizes are refused now, before any of them is encoded. */
static bool one_array_fits(request *rq, const uint32_t (*sizes)[2])
{
    const ld_out_format f = rq->opts.format;
    if (f == LD_OUT_JSON || f == LD_OUT_SAFETENSORS)
        return true;
    for (int i = 1; i < rq->blobs.count; i++)
        if (sizes[i][0] != sizes[0][0] || sizes[i][1] != sizes[0][1]) {
            fail(rq, E_FORMAT_UNSUITABLE, "format=%s holds one array: send images of one size, "
                 "or ask for json or safetensors", ld_out_format_name(f));
            return false;
        }
    return true;
}

/* The reservation becomes exactly `cost` (bodies were priced before parsing). */
static bool settle_reservation(request *rq, size_t cost)
{
    if (cost > rq->reserved)
        return reserve(rq, cost - rq->reserved);
    srv_budget_give(&rq->st->budget, rq->reserved - cost);
    rq->reserved = cost;
    return true;
}

static void on_job_done(void *cls)
{
    request *rq = cls;
    srv_state *st = rq->st;
    if (srv_job_outcome(rq->job, NULL, NULL, 0) != JOB_DONE)
        srv_queue_job_stopped(st->queue); /* drop its images wherever they wait */
    MHD_resume_connection(rq->connection);
    /* rq may be gone from here on: the connection can complete at once */
    if (atomic_fetch_sub(&st->suspended, 1) == 1) {
        pthread_mutex_lock(&st->idle_lock);
        pthread_cond_broadcast(&st->idle);
        pthread_mutex_unlock(&st->idle_lock);
    }
}

static uint64_t draw_seed(void)
{
    /* below 2^53: exact in every JSON parser, JavaScript's included */
    uint64_t seed;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        seed = (uint64_t)time(NULL) * 6364136223846793005ULL;
    return seed >> 11;
}

/* Admit the parsed request and hand it to the decoders; false: answer now. */
static bool admit(request *rq)
{
    srv_state *st = rq->st;
    const srv_config *cfg = st->cfg;
    const int n = rq->blobs.count;
    if (n == 0) {
        fail(rq, E_NO_IMAGE, "the request holds no image");
        return false;
    }
    if (atomic_load(&st->closing)) { /* past the drain: nothing new is suspended */
        fail(rq, E_DRAINING, "shutting down");
        return false;
    }
    if (n > cfg->max_images_per_request || n > srv_queue_capacity(st->queue)) {
        fail(rq, E_TOO_MANY_IMAGES, "%d images; at most %d per request", n,
             cfg->max_images_per_request < srv_queue_capacity(st->queue)
                 ? cfg->max_images_per_request : srv_queue_capacity(st->queue));
        return false;
    }
    /* the model is fixed now: a reload from here on does not change it for this request */
    rq->model = srv_models_get(st->models, rq->opts.model);
    if (!rq->model) {
        fail(rq, E_UNKNOWN_MODEL, "no model is called '%s' here (see GET /v1/models)",
             rq->opts.model);
        return false;
    }
    rq->images = n;
    uint32_t(*sizes)[2] = calloc((size_t)n, sizeof *sizes);
    size_t cost = 0;
    if (!sizes) {
        fail(rq, E_BUSY, "out of memory");
        return false;
    }
    if (price_images(rq, sizes, &cost) != LD_OK) {
        free(sizes);
        return false;
    }
    if (!one_array_fits(rq, (const uint32_t(*)[2])sizes)) {
        free(sizes);
        return false;
    }
    const size_t for_requests = st->budget.limit - atomic_load(&st->budget_fixed);
    if (cost > for_requests) {
        free(sizes);
        fail(rq, E_OVER_BUDGET, "decoded, these images need %zu MiB: more than the %zu MiB "
             "memory_budget_bytes leaves for requests; send fewer or smaller images",
             cost >> 20, for_requests >> 20);
        return false;
    }
    if (!settle_reservation(rq, cost)) {
        free(sizes);
        fail(rq, E_BUSY, "the memory budget is spent; try again shortly");
        return false;
    }
    char err[LD_ERR_LEN];
    if (srv_queue_admit(st->queue, n, err) != LD_OK) {
        free(sizes);
        fail(rq, atomic_load(&st->draining) ? E_DRAINING : E_QUEUE_FULL, "%s", err);
        return false;
    }
    srv_job_params params = {
        .deterministic = rq->opts.deterministic,
        .center = rq->opts.center,
        .seed = (rq->opts.set & OPT_SEED) ? rq->opts.seed : draw_seed(),
        .limits = {.max_pixels = cfg->max_image_pixels,
                   .max_scans = cfg->max_jpeg_scans,
                   .max_decode_ms = cfg->decode_timeout_ms},
        .tensor = rq->tensor,
        .on_done = on_job_done,
        .on_done_ctx = rq,
    };
    int rc = srv_job_new(rq->model, &rq->blobs, (const uint32_t(*)[2])sizes, &params,
                         &st->budget, rq->reserved, &rq->job, err);
    free(sizes);
    if (rc != LD_OK) {
        srv_queue_unadmit(st->queue, n);
        fail(rq, rc == LD_ENOMEM ? E_BUSY : E_IMAGE_SIZE, "%s", err);
        return false;
    }
    rq->reserved = 0; /* the job holds it now */
    return true;
}

static void wait_for_job(request *rq)
{
    srv_state *st = rq->st;
    /* suspend first: the job may finish (and resume us) as soon as it is submitted */
    atomic_fetch_add(&st->suspended, 1);
    MHD_suspend_connection(rq->connection);
    srv_conn_wait(st->conns, rq->conn, rq->job, ld_now_seconds() + st->cfg->request_timeout_ms / 1000.0);
    srv_queue_submit(st->queue, rq->job);
}

static MHD_Result_t answer_job(request *rq, const char *method, const char *url)
{
    srv_state *st = rq->st;
    srv_conn_unwait(st->conns, rq->conn);
    int status;
    char message[LD_ERR_LEN], err[LD_ERR_LEN];
    switch (srv_job_outcome(rq->job, &status, message, sizeof message)) {
    case JOB_DONE: break;
    case JOB_FAILED: return send_error(rq, method, url, error_for_status(status), message);
    case JOB_TIMED_OUT: return send_error(rq, method, url, E_TIMEOUT, message);
    case JOB_SHUTDOWN: return send_error(rq, method, url, E_DRAINING, message);
    default: return MHD_NO; /* the client is gone: nobody to answer */
    }
    srv_body body;
    int rc = srv_render_result(srv_model_weights(srv_job_model(rq->job)), srv_job_results(rq->job),
                               &rq->opts, &body, err);
    if (rc == LD_EUNSUPPORTED)
        return send_error(rq, method, url, E_FORMAT_UNSUITABLE, err);
    if (rc != LD_OK)
        return send_error(rq, method, url, E_BUSY, "out of memory");
    return send_body(rq, method, url, 200, &body, false, false);
}

/* ---------------- routing ---------------- */

static route find_route(const char *url, const char *method, bool *method_ok)
{
    static const struct {
        const char *path, *method;
        route r;
    } routes[] = {
        {"/v1/encode", "POST", ROUTE_ENCODE}, {"/v1/remote/encode", "POST", ROUTE_REMOTE},
        {"/healthz", "GET", ROUTE_HEALTH},    {"/readyz", "GET", ROUTE_READY},
        {"/metrics", "GET", ROUTE_METRICS},   {"/v1/model", "GET", ROUTE_MODEL},
        {"/v1/models", "GET", ROUTE_MODELS},
        /* KServe / Open Inference Protocol names for the same probes */
        {"/v2/health/live", "GET", ROUTE_HEALTH}, {"/v2/health/ready", "GET", ROUTE_READY},
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

static srv_conn *conn_of(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? info->socket_context : NULL;
}

/* libmicrohttpd shows the request target as it was sent, before it decodes
 * it, only here: where a %00 that would cut the decoded path can be seen.
 * The request starts here, to carry what was seen to begin_request. */
static void *on_target(void *cls, const char *uri, struct MHD_Connection *c)
{
    srv_state *st = cls;
    (void)c;
    request *rq = calloc(1, sizeof *rq);
    if (rq) { /* on_completed frees it, begun or not */
        rq->st = st;
        rq->target = srv_target_problem(uri, st->cfg->max_uri_bytes);
    }
    return rq;
}

/* The first call for a request: its headers are in. */
static MHD_Result_t begin_request(srv_state *st, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, void **con_cls)
{
    /* no request from on_target: it found no memory, and its check of the
     * target was not made */
    const bool target_unchecked = *con_cls == NULL;
    request *rq = *con_cls ? *con_cls : calloc(1, sizeof *rq);
    if (!rq)
        return MHD_NO;
    *con_cls = rq;
    rq->begun = true;
    rq->st = st;
    rq->connection = c;
    rq->conn = conn_of(c);
    rq->started = ld_now_seconds();
    if (!rq->conn || target_unchecked) /* no deadline could be kept, or no check made */
        fail(rq, E_BUSY, "out of memory");
    else
        srv_conn_enter(st->conns, rq->conn, CONN_BODY);
    framing f;
    bool method_ok;
    rq->route = find_route(srv_origin_path(url), method, &method_ok);
    const answer_error head_error = check_head(rq, c, version);
    const answer_error framing_error = check_framing(rq, c, &f);
    rq->body_pending = f.codings > 0 || (f.lengths && f.length > 0);
    if (rq->failed || head_error != E_NONE || framing_error != E_NONE)
        ; /* answered below */
    else if (rq->route == ROUTE_NONE)
        fail(rq, E_NOT_FOUND, "no such endpoint");
    else if (!method_ok)
        fail(rq, E_METHOD, "this method is not allowed here");
    else if (is_encode(rq))
        start_encode(rq, c, version, &f);
    else if (rq->body_pending) /* nothing reads it: it would be bytes for nothing */
        fail(rq, E_BAD_REQUEST, "%s %s takes no body", method, url);
    else if ((rq->route == ROUTE_MODEL || rq->route == ROUTE_MODELS) && !authorised(st, c))
        fail(rq, E_UNAUTHORIZED, "missing or wrong API key");
    /* refused from its headers alone: answer now, before any body is sent
     * (unless its body is read first: see body_worth_discarding) */
    if (rq->failed && !rq->discard_body)
        return send_failure(rq, method, url);
    return MHD_YES;
}

static MHD_Result_t on_request(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_size, void **con_cls)
{
    srv_state *st = cls;
    request *rq = *con_cls;
    if (!rq || !rq->begun)
        return begin_request(st, c, url, method, version, con_cls);
    if (*upload_size) { /* only an encode reaches here with a body (begin_request) */
        const bool keep = is_encode(rq) && receive(rq, upload_data, *upload_size);
        *upload_size = 0;
        return keep ? MHD_YES : MHD_NO;
    }
    rq->body_pending = false;
    if (!is_encode(rq))
        return answer_get(rq, method, url);
    if (rq->job)
        return answer_job(rq, method, url); /* resumed: the job has finished */
    if (!rq->settled) {
        /* libmicrohttpd 0.9.75 keeps no record of a connection's state while
         * it is suspended: resumed, it is polled as it was last recorded.
         * Suspended now, that record says "reading the body", and a client
         * that shut down its sending half (still reading, waiting for the
         * answer) would be read at its end of stream and closed unanswered.
         * Returning without an answer lets libmicrohttpd record "request
         * complete" (nothing to read) and call again at once (it polls a
         * connection in that state with no wait). */
        rq->settled = true;
        return MHD_YES;
    }
    if (!rq->failed)
        finish_body(rq, c);
    if (rq->failed || !admit(rq)) {
        release_reservation(rq);
        return send_failure(rq, method, url);
    }
    wait_for_job(rq);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    srv_state *st = cls;
    request *rq = *con_cls;
    (void)why;
    if (!rq)
        return;
    if (rq->pp)
        MHD_destroy_post_processor(rq->pp);
    srv_conn *conn = conn_of(c);
    if (conn) {
        if (rq->job)
            srv_conn_unwait(st->conns, conn);
        srv_conn_enter(st->conns, conn, CONN_IDLE);
    }
    srv_blobs_free(&rq->blobs);
    free(rq->body);
    release_reservation(rq);
    srv_job_unref(rq->job); /* gives the job's reservation back once the workers let go */
    srv_model_unref(rq->model); /* the job holds its own while the workers have it */
    if (rq->discard_body)
        atomic_fetch_sub(&st->discarding, 1);
    if (rq->counted && atomic_fetch_sub(&st->in_flight, 1) == 1) {
        pthread_mutex_lock(&st->idle_lock);
        pthread_cond_broadcast(&st->idle);
        pthread_mutex_unlock(&st->idle_lock);
    }
    free(rq);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    srv_state *st = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *fd = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        const union MHD_ConnectionInfo *addr = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        *socket_context = fd ? srv_conns_open(st->conns, fd->connect_fd,
                                              addr ? addr->client_addr : NULL)
                             : NULL;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        srv_conns_close(st->conns, *socket_context);
        *socket_context = NULL;
    }
}

static MHD_Result_t on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    srv_state *st = cls;
    (void)addrlen;
    return srv_conns_admit(st->conns, addr) ? MHD_YES : MHD_NO;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof line, fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    srv_log(LOG_DEBUG, "http: %s", line);
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

/* libmicrohttpd's memory per connection, at least (its own default), and
 * what it needs beyond a head for its records of the fields. */
enum { MIN_CONNECTION_MEMORY = 32 * 1024, HEAD_SLACK = 8 * 1024 };

int srv_http_start(srv_state *st, char *err)
{
    const srv_config *cfg = st->cfg;
    struct sockaddr_storage addr = {0};
    socklen_t addr_len = sizeof addr;
    int rc = LD_OK;
    if (st->passed_fd <= 0)
        rc = resolve(cfg, &addr, err);
    else if (getsockname(st->passed_fd, (struct sockaddr *)&addr, &addr_len) != 0)
        rc = ld_fail(err, LD_EIO, "the socket systemd passed: %s", strerror(errno));
    if (rc != LD_OK)
        return rc;
    srv_auth_init(&st->auth, cfg->api_key);
    pthread_mutex_init(&st->idle_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&st->idle, &attr);
    pthread_condattr_destroy(&attr);
    const srv_conns_params cp = {cfg->max_connections, cfg->max_connections_per_client,
                                 cfg->header_timeout_ms, cfg->body_timeout_ms,
                                 cfg->idle_timeout_ms};
    rc = srv_conns_new(&cp, &st->metrics, &st->conns, err);
    if (rc != LD_OK)
        return rc;
    /* poll(), not epoll: libmicrohttpd 0.9.75's epoll mode is edge-triggered
     * and, with connections suspended and resumed on the same thread, was seen
     * to stop reading a body halfway (the rest already in the socket, so no
     * new edge) and to leave closed sockets in CLOSE-WAIT until its timeout.
     * Level-triggered poll() has neither problem; it is still event-driven
     * (a few threads, none per connection), at O(connections) per wake-up. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* libmicrohttpd's own limits stand behind the table's (which counts and
     * logs), a little higher: its threads may accept one each at once */
    const unsigned backstop = (unsigned)cfg->http_threads + 1;
    /* socket activation: libmicrohttpd serves the socket systemd listens on
     * (and keeps listening on across restarts); otherwise it binds its own */
    struct MHD_OptionItem listen_on[] = {
        {MHD_OPTION_SOCK_ADDR, 0, &addr},
        {MHD_OPTION_END, 0, NULL},
    };
    if (st->passed_fd > 0)
        listen_on[0] = (struct MHD_OptionItem){MHD_OPTION_LISTEN_SOCKET, st->passed_fd, NULL};
    /* a connection's memory holds its head: the daemon's own limits and
     * room to spare, so a head a little past them reaches check_head and
     * gets the JSON 414 or 431 (libmicrohttpd answers larger ones itself).
     * Not more at the defaults: a pool over 32K is mmap'd per connection,
     * and its munmap on every close interrupts the workers' cores (the load
     * test's overload throughput fell from 0.9-1.0 of unloaded to 0.7-0.86
     * at 128K) */
    size_t head_room = cfg->max_uri_bytes + cfg->max_header_bytes + HEAD_SLACK;
    if (head_room < MIN_CONNECTION_MEMORY)
        head_room = MIN_CONNECTION_MEMORY;
    st->mhd = MHD_start_daemon(
        flags, 0, on_accept, st, on_request, st, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL,
        MHD_OPTION_URI_LOG_CALLBACK, on_target, st,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, head_room,
        MHD_OPTION_ARRAY, listen_on,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)cfg->http_threads,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections + backstop,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        cfg->max_connections_per_client ? (unsigned)cfg->max_connections_per_client + backstop : 0u,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((cfg->idle_timeout_ms + 999) / 1000),
        /* not 1: at 1, libmicrohttpd 0.9.75 answers a missing Host itself,
         * with its header block twice; check_head refuses it instead */
        MHD_OPTION_STRICT_FOR_CLIENT, 0,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, st,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, st, MHD_OPTION_END);
    if (!st->mhd && st->passed_fd > 0)
        return ld_fail(err, LD_EIO, "cannot serve the socket systemd passed");
    if (!st->mhd)
        return ld_fail(err, LD_EIO, "cannot listen on %s:%d (in use, or not permitted)",
                       cfg->listen_host, cfg->port);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(st->mhd, MHD_DAEMON_INFO_BIND_PORT);
    st->port = info ? info->port : cfg->port;
    return LD_OK;
}

bool srv_http_wait_idle(srv_state *st, const struct timespec *deadline)
{
    pthread_mutex_lock(&st->idle_lock);
    int rc = 0;
    while (atomic_load(&st->in_flight) > 0 && rc == 0)
        rc = pthread_cond_timedwait(&st->idle, &st->idle_lock, deadline);
    const bool idle = atomic_load(&st->in_flight) == 0;
    pthread_mutex_unlock(&st->idle_lock);
    return idle;
}

/* libmicrohttpd must not be stopped with a connection suspended: cancel every
 * waiting job (each resumes its connection) until none is left, for at most
 * a second — a request suspended just as the sweep ran is caught by the next. */
static void resume_all(srv_state *st)
{
    atomic_store(&st->closing, true);
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += 1;
    for (;;) {
        srv_conns_cancel_all(st->conns, JOB_SHUTDOWN);
        struct timespec tick;
        clock_gettime(CLOCK_MONOTONIC, &tick);
        if (tick.tv_sec > until.tv_sec ||
            (tick.tv_sec == until.tv_sec && tick.tv_nsec >= until.tv_nsec))
            break;
        tick.tv_nsec += 50 * 1000 * 1000;
        if (tick.tv_nsec >= 1000000000L) {
            tick.tv_sec++;
            tick.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&st->idle_lock);
        if (atomic_load(&st->suspended) > 0)
            pthread_cond_timedwait(&st->idle, &st->idle_lock, &tick);
        const bool none = atomic_load(&st->suspended) == 0;
        pthread_mutex_unlock(&st->idle_lock);
        if (none)
            break;
    }
    if (atomic_load(&st->suspended) > 0)
        srv_log(LOG_ERROR, "%d connections still suspended at stop", atomic_load(&st->suspended));
}

void srv_http_stop(srv_state *st)
{
    if (st->conns && st->mhd)
        resume_all(st);
    if (st->mhd)
        MHD_stop_daemon(st->mhd);
    st->mhd = NULL;
    srv_conns_free(st->conns);
    st->conns = NULL;
    srv_auth_destroy(&st->auth);
}
