/* What a POST /v1/encode asks for, whichever form it came in. */
#ifndef LATENTD_SERVER_REQUEST_H
#define LATENTD_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"
#include "latentd/image.h"
#include "latentd/output.h"
#include "latentd/safetensors.h"

/* One bit per ld_kind (latentd/result.h), as the renderer takes them. */
enum {
    OUT_LATENTS = 1u << LD_KIND_LATENTS,
    OUT_MEAN = 1u << LD_KIND_MEAN,
    OUT_LOGVAR = 1u << LD_KIND_LOGVAR,
    OUT_MOMENTS = 1u << LD_KIND_MOMENTS
};

/* Which fields of an srv_options a source set (for merging). */
enum {
    OPT_DETERMINISTIC = 1,
    OPT_SEED = 2,
    OPT_CENTER = 4,
    OPT_OUTPUTS = 8,
    OPT_FORMAT = 16,
    OPT_ENCODING = 32,
    OPT_SHAPE = 64,     /* a raw tensor body's shape and dtype */
    OPT_DTYPE = 128,
    OPT_SCALING = 256,  /* /v1/remote/encode's own scaling of the latents */
    OPT_SHIFT = 512,
    OPT_MODEL = 1024    /* which of the daemon's models */
};

#define SRV_OPTION_MODEL_LEN 64 /* SRV_MODEL_NAME_LEN */

#define SRV_MAX_SHAPE 4

typedef struct {
    unsigned set;       /* OPT_* bits: the fields this source gave */
    bool deterministic;
    uint64_t seed;      /* meaningful when set & OPT_SEED */
    bool center;
    unsigned outputs;   /* OUT_* bits */
    ld_out_format format; /* LD_OUT_RAW only for /v1/remote/encode */
    bool list_encoding; /* tensor_encoding=list */
    int64_t shape[SRV_MAX_SHAPE]; /* shape=1&shape=3&... (as Python's requests sends a
                                   * list) or shape=[1,3,64,64]: dimensions append */
    int shape_ndim;
    ld_dtype dtype;
    double scaling_factor, shift_factor;
    char model[SRV_OPTION_MODEL_LEN]; /* a model's name; empty: the default */
} srv_options;

/* A request whose body was a float tensor: its blobs are one image's
 * elements each, in this dtype and size, rather than picture files. */
typedef struct {
    bool active;
    ld_dtype dtype;
    int width, height;
} srv_tensor_input;

/* Raw image bytes gathered from the request, before decoding. */
typedef struct {
    uint8_t **data;
    size_t *len;
    int count, cap;
} srv_blobs;

/* The defaults: every field set. */
void srv_options_defaults(srv_options *o);
/* An empty source: no field set. */
void srv_options_clear(srv_options *o);
/* One option from a query string or a multipart text field. */
int srv_options_set(srv_options *o, const char *key, const char *value, char *err);
/* The format an Accept header asks for, if any. */
void srv_options_from_accept(srv_options *o, const char *accept);
/* Lay the fields src set over dst.  The daemon merges once, in this order:
 * defaults < Accept header < query string < body (JSON fields or form fields). */
void srv_options_merge(srv_options *dst, const srv_options *src);
/* A seed: decimal digits only, 0 to 2^64-1 (out of range: LD_EINVAL). */
int srv_parse_seed(const char *text, uint64_t *out, char *err);

int srv_blobs_add(srv_blobs *b, const uint8_t *data, size_t len);
/* Take ownership of a malloc'd buffer instead of copying it. */
int srv_blobs_adopt(srv_blobs *b, uint8_t *data, size_t len);
size_t srv_blobs_bytes(const srv_blobs *b);
/* Append to the last blob (multipart parts arrive in pieces). */
int srv_blobs_append(srv_blobs *b, const uint8_t *data, size_t len);
void srv_blobs_free(srv_blobs *b);

/* {"images": [...]} or {"image": "..."} plus options; base64 with an optional
 * data: URL prefix.  Fills only the options the body names (o->set).  A body
 * of more than SRV_MAX_JSON_VALUES values is refused before it is parsed. */
#define SRV_MAX_JSON_VALUES 4096
int srv_parse_json(const char *body, size_t len, srv_blobs *blobs, srv_options *o, char *err);

#endif
