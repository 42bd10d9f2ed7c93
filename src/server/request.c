#include "request.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "latentd/base64.h"
#include "latentd/tensor_input.h"

void srv_options_defaults(srv_options *o)
{
    memset(o, 0, sizeof *o);
    o->set = OPT_DETERMINISTIC | OPT_CENTER | OPT_OUTPUTS | OPT_FORMAT | OPT_ENCODING;
    o->deterministic = true;
    o->center = true;
    o->outputs = OUT_LATENTS | OUT_MEAN | OUT_LOGVAR;
    o->format = LD_OUT_JSON;
}

void srv_options_clear(srv_options *o) { memset(o, 0, sizeof *o); }

void srv_options_merge(srv_options *dst, const srv_options *src)
{
    if (src->set & OPT_DETERMINISTIC)
        dst->deterministic = src->deterministic;
    if (src->set & OPT_SEED)
        dst->seed = src->seed;
    if (src->set & OPT_CENTER)
        dst->center = src->center;
    if (src->set & OPT_OUTPUTS)
        dst->outputs = src->outputs;
    if (src->set & OPT_FORMAT)
        dst->format = src->format;
    if (src->set & OPT_ENCODING)
        dst->list_encoding = src->list_encoding;
    if (src->set & OPT_SHAPE) {
        memcpy(dst->shape, src->shape, sizeof dst->shape);
        dst->shape_ndim = src->shape_ndim;
    }
    if (src->set & OPT_DTYPE)
        dst->dtype = src->dtype;
    if (src->set & OPT_SCALING)
        dst->scaling_factor = src->scaling_factor;
    if (src->set & OPT_SHIFT)
        dst->shift_factor = src->shift_factor;
    if (src->set & OPT_MODEL)
        memcpy(dst->model, src->model, sizeof dst->model);
    dst->set |= src->set;
}

static int parse_bool(const char *key, const char *value, bool *out, char *err)
{
    if (!strcasecmp(value, "true") || !strcmp(value, "1") || !strcasecmp(value, "yes"))
        *out = true;
    else if (!strcasecmp(value, "false") || !strcmp(value, "0") || !strcasecmp(value, "no"))
        *out = false;
    else
        return ld_fail(err, LD_EINVAL, "%s: want true or false, got '%.40s'", key, value);
    return LD_OK;
}

static int output_bit(const char *name, size_t len, unsigned *bit)
{
    static const struct {
        const char *name;
        unsigned bit;
    } names[] = {{"latents", OUT_LATENTS}, {"mean", OUT_MEAN}, {"logvar", OUT_LOGVAR},
                 {"moments", OUT_MOMENTS}};
    for (size_t i = 0; i < 4; i++)
        if (strlen(names[i].name) == len && !strncmp(names[i].name, name, len)) {
            *bit = names[i].bit;
            return 0;
        }
    return -1;
}

/* "latents,mean" */
static int parse_outputs(const char *value, unsigned *out, char *err)
{
    unsigned bits = 0;
    const char *p = value;
    while (*p) {
        size_t len = strcspn(p, ", ");
        unsigned bit;
        if (len && output_bit(p, len, &bit) != 0)
            return ld_fail(err, LD_EINVAL, "outputs: unknown '%.*s' (latents, mean, logvar, "
                           "moments)", (int)(len > 40 ? 40 : len), p);
        if (len)
            bits |= bit;
        p += len;
        p += strspn(p, ", ");
    }
    if (!bits)
        return ld_fail(err, LD_EINVAL, "outputs: name at least one of latents, mean, logvar, "
                       "moments");
    *out = bits;
    return LD_OK;
}

int srv_parse_seed(const char *text, uint64_t *out, char *err)
{
    return ld_parse_seed(text, out, err); /* the CLI takes seeds the same way */
}

/* Dimensions appended to o->shape: "64", "1,3,64,64" or "[1, 3, 64, 64]"
 * (integers separated by commas, blanks around them, brackets both or
 * neither). */
static int parse_shape(const char *value, srv_options *o, char *err)
{
    static const char want[] = "shape: want [N, 3, H, W] or [3, H, W] as integers";
    const char *p = value + strspn(value, " ");
    const bool bracketed = *p == '[';
    p += bracketed;
    for (;;) {
        p += strspn(p, " ");
        if (*p < '0' || *p > '9' || o->shape_ndim == SRV_MAX_SHAPE)
            return ld_fail(err, LD_EINVAL, want);
        int64_t dim = 0;
        while (*p >= '0' && *p <= '9') {
            if (dim > (INT64_C(1) << 40))
                return ld_fail(err, LD_EINVAL, "shape: a dimension is too large");
            dim = dim * 10 + (*p++ - '0');
        }
        o->shape[o->shape_ndim++] = dim;
        p += strspn(p, " ");
        if (*p != ',')
            break;
        p++;
    }
    if (bracketed && *p++ != ']')
        return ld_fail(err, LD_EINVAL, want);
    p += strspn(p, " ");
    return *p ? ld_fail(err, LD_EINVAL, want) : LD_OK;
}

/* The remote client's scaling_factor and shift_factor: real factors are
 * below 10 (SD1 0.18215, FLUX 0.3611, SD3 1.5305); beyond 1e6 the latents
 * would overflow float32. */
static int parse_factor(const char *key, const char *value, double *out, char *err)
{
    char *end;
    const double v = strtod(value, &end);
    if (!*value || *end || !(fabs(v) <= 1e6))
        return ld_fail(err, LD_EINVAL, "%s: want a number within +-1e6, got '%.40s'", key,
                       value);
    *out = v;
    return LD_OK;
}

static unsigned option_bit(const char *key);
static int set_one(srv_options *o, const char *key, const char *value, char *err);

int srv_options_set(srv_options *o, const char *key, const char *value, char *err)
{
    int rc = set_one(o, key, value, err);
    if (rc == LD_OK)
        o->set |= option_bit(key);
    return rc;
}

static unsigned option_bit(const char *key)
{
    static const struct {
        const char *key;
        unsigned bit;
    } bits[] = {{"deterministic", OPT_DETERMINISTIC}, {"seed", OPT_SEED},
                {"center_input_sample", OPT_CENTER}, {"outputs", OPT_OUTPUTS},
                {"format", OPT_FORMAT},               {"tensor_encoding", OPT_ENCODING},
                {"shape", OPT_SHAPE},                 {"dtype", OPT_DTYPE},
                {"scaling_factor", OPT_SCALING},      {"shift_factor", OPT_SHIFT},
                {"model", OPT_MODEL}};
    for (size_t i = 0; i < sizeof bits / sizeof bits[0]; i++)
        if (!strcmp(key, bits[i].key))
            return bits[i].bit;
    return 0;
}

static int set_one(srv_options *o, const char *key, const char *value, char *err)
{
    if (!strcmp(key, "deterministic"))
        return parse_bool(key, value, &o->deterministic, err);
    if (!strcmp(key, "center_input_sample"))
        return parse_bool(key, value, &o->center, err);
    if (!strcmp(key, "seed"))
        return srv_parse_seed(value, &o->seed, err);
    if (!strcmp(key, "outputs"))
        return parse_outputs(value, &o->outputs, err);
    if (!strcmp(key, "format"))
        return ld_out_format_parse(value, &o->format, err);
    if (!strcmp(key, "tensor_encoding")) {
        if (strcmp(value, "list") && strcmp(value, "base64"))
            return ld_fail(err, LD_EINVAL, "tensor_encoding: want base64 or list");
        o->list_encoding = !strcmp(value, "list");
        return LD_OK;
    }
    if (!strcmp(key, "shape"))
        return parse_shape(value, o, err);
    if (!strcmp(key, "dtype"))
        return ld_dtype_from_name(value, &o->dtype, err);
    if (!strcmp(key, "scaling_factor"))
        return parse_factor(key, value, &o->scaling_factor, err);
    if (!strcmp(key, "shift_factor"))
        return parse_factor(key, value, &o->shift_factor, err);
    if (!strcmp(key, "model")) { /* whether one is so named is the daemon's to say */
        if (!*value || strlen(value) >= sizeof o->model)
            return ld_fail(err, LD_EINVAL, "model: want a model's name (see GET /v1/models)");
        memcpy(o->model, value, strlen(value) + 1);
        return LD_OK;
    }
    return ld_fail(err, LD_EINVAL, "unknown option '%.40s'", key);
}

void srv_options_from_accept(srv_options *o, const char *accept)
{
    if (!accept)
        return;
    if (strstr(accept, "application/octet-stream") || strstr(accept, "application/safetensors"))
        o->format = LD_OUT_SAFETENSORS;
    else if (strstr(accept, "application/x-npy"))
        o->format = LD_OUT_NPY;

    else
        return;
    o->set |= OPT_FORMAT;
}

static int blobs_grow(srv_blobs *b)
{
    if (b->count == b->cap) {
        int cap = b->cap ? b->cap * 2 : 4;
        uint8_t **d = realloc(b->data, (size_t)cap * sizeof *d);
        if (!d)
            return LD_ENOMEM;
        b->data = d;
        size_t *l = realloc(b->len, (size_t)cap * sizeof *l);
        if (!l)
            return LD_ENOMEM;
        b->len = l;
        b->cap = cap;
    }
    return LD_OK;
}

int srv_blobs_adopt(srv_blobs *b, uint8_t *data, size_t len)
{
    if (blobs_grow(b) != LD_OK)
        return LD_ENOMEM;
    b->data[b->count] = data;
    b->len[b->count++] = len;
    return LD_OK;
}

int srv_blobs_add(srv_blobs *b, const uint8_t *data, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return LD_ENOMEM;
    memcpy(copy, data, len);
    if (srv_blobs_adopt(b, copy, len) != LD_OK) {
        free(copy);
        return LD_ENOMEM;
    }
    return LD_OK;
}

size_t srv_blobs_bytes(const srv_blobs *b)
{
    size_t total = 0;
    for (int i = 0; i < b->count; i++)
        total += b->len[i];
    return total;
}

int srv_blobs_append(srv_blobs *b, const uint8_t *data, size_t len)
{
    if (b->count == 0)
        return srv_blobs_add(b, data, len);
    const int last = b->count - 1;
    uint8_t *grown = realloc(b->data[last], b->len[last] + len);
    if (!grown)
        return LD_ENOMEM;
    memcpy(grown + b->len[last], data, len);
    b->data[last] = grown;
    b->len[last] += len;
    return LD_OK;
}

void srv_blobs_free(srv_blobs *b)
{
    for (int i = 0; i < b->count; i++)
        free(b->data[i]);
    free(b->data);
    free(b->len);
    memset(b, 0, sizeof *b);
}

/* "data:image/png;base64,...." → the payload after the comma */
static const char *strip_data_url(const char *s, size_t *len)
{
    if (*len >= 5 && !strncmp(s, "data:", 5)) {
        const char *comma = memchr(s, ',', *len);
        if (comma) {
            *len -= (size_t)(comma + 1 - s);
            return comma + 1;
        }
    }
    return s;
}

static int add_base64(srv_blobs *blobs, json_t *value, int index, char *err)
{
    if (!json_is_string(value))
        return ld_fail(err, LD_EINVAL, "images[%d] is not a base64 string", index);
    size_t len = json_string_length(value);
    const char *text = strip_data_url(json_string_value(value), &len);
    uint8_t *bytes;
    size_t n;
    char inner[LD_ERR_LEN];
    if (ld_base64_decode(text, len, &bytes, &n, inner) != LD_OK)
        return ld_fail(err, LD_EINVAL, "images[%d]: %s", index, inner);
    if (srv_blobs_adopt(blobs, bytes, n) != LD_OK) {
        free(bytes);
        return ld_fail(err, LD_ENOMEM, "out of memory");
    }
    return LD_OK;
}

/* A JSON seed: an integer (jansson holds up to 2^63-1) or a decimal string
 * (any unsigned 64-bit value; what JavaScript clients must send past 2^53). */
static int json_seed(srv_options *o, json_t *v, char *err)
{
    if (json_is_null(v))
        return LD_OK;
    if (json_is_string(v)) {
        if (srv_parse_seed(json_string_value(v), &o->seed, err) != LD_OK)
            return LD_EINVAL;
    } else if (json_is_integer(v) && json_integer_value(v) >= 0) {
        o->seed = (uint64_t)json_integer_value(v);
    } else {
        return ld_fail(err, LD_EINVAL, "seed must be an integer from 0 to 2^64-1 (a decimal "
                       "string past 2^63)");
    }
    o->set |= OPT_SEED;
    return LD_OK;
}

static int json_option(srv_options *o, const char *key, json_t *v, char *err)
{
    if (!strcmp(key, "deterministic") || !strcmp(key, "center_input_sample")) {
        if (!json_is_boolean(v))
            return ld_fail(err, LD_EINVAL, "%s must be true or false", key);
        const bool is_det = !strcmp(key, "deterministic");
        *(is_det ? &o->deterministic : &o->center) = json_is_true(v);
        o->set |= is_det ? OPT_DETERMINISTIC : OPT_CENTER;
        return LD_OK;
    }
    if (!strcmp(key, "seed"))
        return json_seed(o, v, err);
    if (!strcmp(key, "outputs")) {
        if (json_is_string(v))
            return srv_options_set(o, key, json_string_value(v), err);
        if (!json_is_array(v) || json_array_size(v) == 0)
            return ld_fail(err, LD_EINVAL, "outputs must be a list of names");
        unsigned bits = 0, bit;
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *name = json_array_get(v, i);
            if (!json_is_string(name) ||
                output_bit(json_string_value(name), json_string_length(name), &bit) != 0)
                return ld_fail(err, LD_EINVAL, "outputs[%zu]: want latents, mean, logvar or "
                               "moments", i);
            bits |= bit;
        }
        o->outputs = bits;
        o->set |= OPT_OUTPUTS;
        return LD_OK;
    }
    if (!strcmp(key, "format") || !strcmp(key, "tensor_encoding") || !strcmp(key, "model")) {
        if (!json_is_string(v))
            return ld_fail(err, LD_EINVAL, "%s must be a string", key);
        return srv_options_set(o, key, json_string_value(v), err);
    }
    return ld_fail(err, LD_EINVAL, "unknown field '%.40s'", key);
}

/* How many values the text holds, at most: one per '[', '{', ',' and ':'
 * outside strings, plus one.  jansson spends some 50 bytes on each value, so
 * a body of a million tiny ones would cost 16 times its size: count first. */
static size_t count_json_values(const char *text, size_t len)
{
    size_t values = 1;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        const char ch = text[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = false;
        } else if (ch == '"') {
            in_string = true;
        } else if (ch == '[' || ch == '{' || ch == ',' || ch == ':') {
            values++;
        }
    }
    return values;
}

int srv_parse_json(const char *body, size_t len, srv_blobs *blobs, srv_options *o, char *err)
{
    /* an encode request is a few dozen values: images, options, outputs */
    if (count_json_values(body, len) > SRV_MAX_JSON_VALUES)
        return ld_fail(err, LD_EINVAL, "the JSON body holds more than %d values",
                       SRV_MAX_JSON_VALUES);
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root)
        return ld_fail(err, LD_EINVAL, "bad JSON at line %d column %d: %s%s", jerr.line,
                       jerr.column, jerr.text,
                       strstr(jerr.text, "too big") ? " (send seeds past 2^63 as strings)" : "");
    int rc = LD_OK;
    if (!json_is_object(root)) {
        rc = ld_fail(err, LD_EINVAL, "the body must be a JSON object");
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (!strcmp(key, "image")) {
            rc = add_base64(blobs, value, blobs->count, err);
        } else if (!strcmp(key, "images")) {
            if (!json_is_array(value)) {
                rc = ld_fail(err, LD_EINVAL, "images must be a list of base64 strings");
                break;
            }
            for (size_t i = 0; rc == LD_OK && i < json_array_size(value); i++)
                rc = add_base64(blobs, json_array_get(value, i), (int)i, err);
        } else {
            rc = json_option(o, key, value, err);
        }
        if (rc != LD_OK)
            break;
    }
done:
    json_decref(root);
    return rc;
}
