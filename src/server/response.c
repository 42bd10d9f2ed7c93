/* Rendering results and errors; see response.h. */
#include "response.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "latentd/base64.h"
#include "latentd/npy.h"
#include "latentd/safetensors.h"
#include "utf8.h"

static const char *const kind_names[] = {"latents", "mean", "logvar", "moments"};
#define N_KINDS 4

/* One kind of tensor for images [first, first+count), stacked. */
typedef struct {
    int kind;     /* index into kind_names */
    int64_t shape[4];
    float *data;  /* malloc'd */
} tensor;

static const float *item_slice(const srv_item_result *it, int kind)
{
    const float *slices[] = {it->latents, it->mean, it->logvar, it->moments};
    return slices[kind];
}

static int gather(const ld_model *model, const srv_results *res, int first, int count, int kind,
                  tensor *t)
{
    const srv_item_result *it = &res->items[first];
    const int channels = ld_model_config(model)->latent_channels * (kind == 3 ? 2 : 1);
    const size_t per = (size_t)channels * it->lh * it->lw;
    t->kind = kind;
    t->shape[0] = count;
    t->shape[1] = channels;
    t->shape[2] = it->lh;
    t->shape[3] = it->lw;
    t->data = malloc((size_t)count * per * sizeof(float));
    if (!t->data)
        return LD_ENOMEM;
    for (int i = 0; i < count; i++)
        memcpy(t->data + i * per, item_slice(&res->items[first + i], kind), per * sizeof(float));
    return LD_OK;
}

static size_t tensor_numel(const tensor *t)
{
    return (size_t)(t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3]);
}

static bool same_size(const srv_results *res)
{
    if (res->n_items < 2)
        return true;
    const srv_item_result *a = &res->items[0];
    for (int i = 1; i < res->n_items; i++) {
        const srv_item_result *b = &res->items[i];
        if (b->lh != a->lh || b->lw != a->lw || b->width != a->width || b->height != a->height)
            return false;
    }
    return true;
}

/* jansson's integers are signed 64-bit: a seed from 2^63 up goes out as a
 * decimal string, which the request side accepts back as well. */
static json_t *seed_json(uint64_t seed)
{
    if (seed <= (uint64_t)INT64_MAX)
        return json_integer((json_int_t)seed);
    char text[24];
    snprintf(text, sizeof text, "%" PRIu64, seed);
    return json_string(text);
}

static json_t *shape_json(const int64_t shape[4])
{
    return json_pack("[IIII]", (json_int_t)shape[0], (json_int_t)shape[1], (json_int_t)shape[2],
                     (json_int_t)shape[3]);
}

/* nested lists [N][C][h][w] */
static json_t *nested_list(const float *data, const int64_t *shape, int ndim)
{
    json_t *arr = json_array();
    size_t stride = 1;
    for (int d = 1; d < ndim; d++)
        stride *= (size_t)shape[d];
    for (int64_t i = 0; arr && i < shape[0]; i++) {
        json_t *v = ndim == 1 ? json_real(data[i]) : nested_list(data + i * stride, shape + 1, ndim - 1);
        if (json_array_append_new(arr, v) != 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *tensor_json(const tensor *t, bool list)
{
    json_t *data;
    if (list) {
        data = nested_list(t->data, t->shape, 4);
    } else {
        /* little-endian float32: x86 and arm64 hosts are LE already */
        char *b64 = ld_base64_encode((const uint8_t *)t->data, tensor_numel(t) * sizeof(float), NULL);
        data = b64 ? json_string(b64) : NULL;
        free(b64);
    }
    if (!data)
        return NULL;
    return json_pack("{s:o, s:s, s:o}", "shape", shape_json(t->shape), "dtype", "float32", "data",
                     data);
}

/* the requested tensors of images [first, first+count) into obj */
static int add_tensors(json_t *obj, const ld_model *model, const srv_results *res, int first,
                       int count, const srv_options *o)
{
    for (int k = 0; k < N_KINDS; k++) {
        if (!(o->outputs & (1u << k)))
            continue;
        tensor t;
        if (gather(model, res, first, count, k, &t) != LD_OK)
            return LD_ENOMEM;
        json_t *tj = tensor_json(&t, o->list_encoding);
        if (!json_object_get(obj, "shape") && k != 3)
            json_object_set_new(obj, "shape", shape_json(t.shape));
        free(t.data);
        if (!tj || json_object_set_new(obj, kind_names[k], tj) != 0)
            return LD_ENOMEM;
    }
    return LD_OK;
}

/* Images of one size stack into one tensor per output; else "results" holds
 * one object per image. */
static int add_all_tensors(json_t *root, const ld_model *model, const srv_results *res,
                           const srv_options *o)
{
    if (same_size(res))
        return add_tensors(root, model, res, 0, res->n_items, o);
    json_t *results = json_array();
    if (json_object_set_new(root, "results", results) != 0)
        return LD_ENOMEM;
    for (int i = 0; i < res->n_items; i++) {
        json_t *one = json_object();
        if (json_array_append_new(results, one) != 0)
            return LD_ENOMEM;
        int rc = add_tensors(one, model, res, i, 1, o);
        if (rc != LD_OK)
            return rc;
    }
    return LD_OK;
}

static int render_json(const ld_model *model, const srv_results *res, const srv_options *o,
                       srv_body *body)
{
    json_t *root = json_pack("{s:s, s:s, s:i, s:b, s:b, s:s}", "model", ld_model_name(model),
                             "scaling", ld_model_scaling(model), "latent_channels",
                             ld_model_config(model)->latent_channels, "deterministic",
                             res->deterministic, "center_input_sample", res->center, "dtype",
                             "float32");
    if (!root)
        return LD_ENOMEM;
    int rc = LD_OK;
    if (!res->deterministic && json_object_set_new(root, "seed", seed_json(res->seed)) != 0)
        rc = LD_ENOMEM;
    if (rc == LD_OK)
        rc = add_all_tensors(root, model, res, o);
    if (rc != LD_OK) {
        json_decref(root);
        return rc;
    }
    return srv_render_json(root, body);
}

static int render_safetensors(const ld_model *model, const srv_results *res,
                              const srv_options *o, srv_body *body, char *err)
{
    const bool stacked = same_size(res);
    const int sets = stacked ? 1 : res->n_items;
    tensor *ts = calloc((size_t)sets * N_KINDS, sizeof *ts);
    ld_st_out *outs = calloc((size_t)sets * N_KINDS, sizeof *outs);
    char(*names)[32] = calloc((size_t)sets * N_KINDS, sizeof *names);
    int rc = ts && outs && names ? LD_OK : LD_ENOMEM, n = 0;
    for (int s = 0; rc == LD_OK && s < sets; s++)
        for (int k = 0; rc == LD_OK && k < N_KINDS; k++) {
            if (!(o->outputs & (1u << k)))
                continue;
            rc = gather(model, res, stacked ? 0 : s, stacked ? res->n_items : 1, k, &ts[n]);
            if (stacked)
                snprintf(names[n], sizeof names[n], "%s", kind_names[k]);
            else
                snprintf(names[n], sizeof names[n], "%s.%d", kind_names[k], s);
            outs[n] = (ld_st_out){names[n], 4, {0}, ts[n].data};
            memcpy(outs[n].shape, ts[n].shape, sizeof ts[n].shape);
            n++;
        }
    char seed[32];
    snprintf(seed, sizeof seed, "%" PRIu64, res->seed);
    const ld_st_meta meta[] = {
        {"format", "pt"},
        {"model", ld_model_name(model)},
        {"scaling", ld_model_scaling(model)},
        {"latents", res->deterministic ? "mode" : "sample"},
        {"seed", res->deterministic ? "none" : seed},
    };
    uint8_t *buf = NULL;
    if (rc != LD_OK)
        ld_fail(err, rc, "out of memory");
    else
        rc = ld_st_serialize(outs, (size_t)n, meta, 5, &buf, &body->len, err);
    for (int i = 0; ts && i < n; i++)
        free(ts[i].data);
    free(ts);
    free(outs);
    free(names);
    body->data = (char *)buf;
    body->content_type = "application/octet-stream";
    return rc;
}

/* npy holds one array: the first output named, in kind_names' order (so the
 * latents when they are among them, as by default). */
static int npy_kind(unsigned outputs)
{
    for (int k = 0; k < N_KINDS; k++)
        if (outputs & (1u << k))
            return k;
    return 0;
}

/* NumPy .npy version 1.0 (latentd/npy.h): the header, then the raw LE data */
static int render_npy(const ld_model *model, const srv_results *res, const srv_options *o,
                      srv_body *body)
{
    tensor t;
    if (gather(model, res, 0, res->n_items, npy_kind(o->outputs), &t) != LD_OK)
        return LD_ENOMEM;
    uint8_t header[LD_NPY_HEADER_MAX];
    const size_t total_header = ld_npy_header(4, t.shape, header);
    size_t data_bytes = tensor_numel(&t) * sizeof(float);
    char *buf = malloc(total_header + data_bytes);
    if (!buf) {
        free(t.data);
        return LD_ENOMEM;
    }
    memcpy(buf, header, total_header);
    memcpy(buf + total_header, t.data, data_bytes);
    free(t.data);
    body->data = buf;
    body->len = total_header + data_bytes;
    body->content_type = "application/x-npy";
    return LD_OK;
}

/* diffusers' remote_encode reads the bytes as one tensor [N, C, h, w] whose
 * shape and dtype come in headers.  The mode, scaled (z - shift) * scaling
 * with the factors the client gave (shift 0 and scaling 1 for one it left
 * out), or as the model's config scales it when it gave neither. */
static int render_remote(const ld_model *model, const srv_results *res, const srv_options *o,
                         srv_body *body)
{
    const bool own_scaling = (o->set & (OPT_SCALING | OPT_SHIFT)) != 0;
    const double scaling = (o->set & OPT_SCALING) ? o->scaling_factor : 1.0;
    const double shift = (o->set & OPT_SHIFT) ? o->shift_factor : 0.0;
    tensor t;
    /* the mean is the mode; latents is the mode scaled by the config */
    if (gather(model, res, 0, res->n_items, own_scaling ? 1 : 0, &t) != LD_OK)
        return LD_ENOMEM;
    const size_t n = tensor_numel(&t);
    if (own_scaling)
        for (size_t i = 0; i < n; i++)
            t.data[i] = (float)(((double)t.data[i] - shift) * scaling);
    body->data = (char *)t.data;
    body->len = n * sizeof(float);
    body->content_type = "application/octet-stream";
    snprintf(body->tensor_shape, sizeof body->tensor_shape, "[%" PRId64 ", %" PRId64 ", %" PRId64
             ", %" PRId64 "]", t.shape[0], t.shape[1], t.shape[2], t.shape[3]);
    body->tensor_dtype = "float32";
    return LD_OK;
}

int srv_render_result(const ld_model *model, const srv_results *res, const srv_options *o,
                      srv_body *body, char *err)
{
    assert(res->n_items > 0 && res->items);
    memset(body, 0, sizeof *body);
    switch (o->format) {
    case FMT_SAFETENSORS:
        return render_safetensors(model, res, o, body, err);
    case FMT_NPY:
        if (!same_size(res))
            return ld_fail(err, LD_EUNSUPPORTED, "format=npy holds one array: send images of "
                           "one size, or ask for json or safetensors");
        return render_npy(model, res, o, body) == LD_OK ? LD_OK
                                                        : ld_fail(err, LD_ENOMEM, "out of memory");
    case FMT_REMOTE:
        if (!same_size(res))
            return ld_fail(err, LD_EUNSUPPORTED, "the remote encoder answers one tensor: send "
                           "images of one size");
        return render_remote(model, res, o, body) == LD_OK
                   ? LD_OK : ld_fail(err, LD_ENOMEM, "out of memory");
    default:
        return render_json(model, res, o, body) == LD_OK ? LD_OK
                                                         : ld_fail(err, LD_ENOMEM, "out of memory");
    }
}

int srv_render_json(void *value, srv_body *body)
{
    json_t *root = value;
    memset(body, 0, sizeof *body);
    body->data = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!body->data)
        return LD_ENOMEM;
    body->len = strlen(body->data);
    body->content_type = "application/json";
    return LD_OK;
}

/* A malloc'd copy of text with each byte that is not part of a well-formed
 * UTF-8 character, and each control character, replaced by U+FFFD: jansson
 * refuses invalid UTF-8, and a message may echo a client's bytes. */
static char *json_safe_copy(const char *text)
{
    static const char replacement[] = "\xef\xbf\xbd";
    const unsigned char *s = (const unsigned char *)(text ? text : "");
    const size_t n = strlen((const char *)s);
    char *out = malloc(3 * n + 1), *w = out;
    for (size_t i = 0; out && i < n;) {
        const int len = srv_utf8_char_len(s + i, n - i);
        if (len == 0 || s[i] < 0x20 || s[i] == 0x7f) {
            memcpy(w, replacement, 3);
            w += 3;
            i++;
        } else {
            memcpy(w, s + i, (size_t)len);
            w += len;
            i += (size_t)len;
        }
    }
    if (out)
        *w = '\0';
    return out;
}

int srv_render_error(const char *code, const char *message, srv_body *body)
{
    memset(body, 0, sizeof *body);
    char *safe_code = json_safe_copy(code), *safe_message = json_safe_copy(message);
    json_t *root = safe_code && safe_message ? json_pack("{s:{s:s, s:s}}", "error", "code",
                                                         safe_code, "message", safe_message)
                                             : NULL;
    free(safe_code);
    free(safe_message);
    return srv_render_json(root, body);
}
