/* What a POST /v1/encode asks for, whichever form it came in. */
#ifndef LATENTD_SERVER_REQUEST_H
#define LATENTD_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/common.h"
#include "latentd/image.h"

enum { OUT_LATENTS = 1, OUT_MEAN = 2, OUT_LOGVAR = 4, OUT_MOMENTS = 8 };
typedef enum { FMT_JSON, FMT_SAFETENSORS, FMT_NPY } srv_format;

typedef struct {
    bool deterministic;
    bool has_seed;
    uint64_t seed;
    bool center;
    unsigned outputs;   /* OUT_* bits */
    srv_format format;
    bool list_encoding; /* tensor_encoding=list */
} srv_options;

/* Raw image bytes gathered from the request, before decoding. */
typedef struct {
    uint8_t **data;
    size_t *len;
    int count, cap;
} srv_blobs;

void srv_options_defaults(srv_options *o);
/* One option from a query string or a multipart text field. */
int srv_options_set(srv_options *o, const char *key, const char *value, char *err);
/* format= wins; else Accept. */
void srv_options_from_accept(srv_options *o, const char *accept);

int srv_blobs_add(srv_blobs *b, const uint8_t *data, size_t len);
/* Append to the last blob (multipart parts arrive in pieces). */
int srv_blobs_append(srv_blobs *b, const uint8_t *data, size_t len);
void srv_blobs_free(srv_blobs *b);

/* {"images": [...]} or {"image": "..."} plus options; base64 with an optional
 * data: URL prefix. */
int srv_parse_json(const char *body, size_t len, srv_blobs *blobs, srv_options *o, char *err);

#endif
