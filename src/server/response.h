/* Turning a finished request's results into an HTTP body, through the
 * library's renderer (latentd/output.h), and errors into JSON.  Knows
 * nothing of the queue: whoever finished the request fills an srv_results
 * and keeps it alive for the call. */
#ifndef LATENTD_SERVER_RESPONSE_H
#define LATENTD_SERVER_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "latentd/encoder.h"
#include "latentd/result.h"
#include "request.h"

typedef struct {
    int n_items;
    const ld_result *items;
    bool deterministic, center;
    uint64_t seed;
} srv_results;

typedef struct {
    char *data; /* malloc'd */
    size_t len;
    const char *content_type;
    /* a bare tensor (LD_OUT_RAW): its shape as a JSON list, and its dtype, for
     * the "shape" and "dtype" headers; tensor_dtype is NULL otherwise */
    char tensor_shape[96];
    const char *tensor_dtype;
} srv_body;

/* The outputs that o names, in o's format.  npy holds one array: the first
 * of latents, mean, logvar, moments that o->outputs names.  LD_EUNSUPPORTED
 * when the format cannot express the results (npy of mixed sizes), else
 * LD_ENOMEM.  A sampled request's seed is a JSON integer below 2^63 and a
 * decimal string from there (jansson's integers are signed 64-bit). */
int srv_render_result(const ld_model *model, const srv_results *res, const srv_options *o,
                      srv_body *body, char *err);
/* {"error": {"code": ..., "message": ...}}.  Invalid UTF-8 and control
 * characters (which a message may echo from a client) become U+FFFD, so the
 * body is always valid JSON: fails only for lack of memory. */
int srv_render_error(const char *code, const char *message, srv_body *body);
/* Any jansson value as a compact JSON body (takes the reference). */
int srv_render_json(void *json_value, srv_body *body);

#endif
