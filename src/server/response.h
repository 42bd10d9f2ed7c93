/* Turning a finished job into an HTTP body: JSON, safetensors or .npy. */
#ifndef LATENTD_SERVER_RESPONSE_H
#define LATENTD_SERVER_RESPONSE_H

#include "latentd/encoder.h"
#include "queue.h"
#include "request.h"

typedef struct {
    char *data; /* malloc'd */
    size_t len;
    const char *content_type;
} srv_body;

/* LD_EUNSUPPORTED: the format cannot express this job (npy of mixed sizes). */
int srv_render_result(const ld_model *model, const srv_job *job, const srv_options *o,
                      srv_body *body, char *err);
/* {"error": {"code": ..., "message": ...}} */
int srv_render_error(const char *code, const char *message, srv_body *body);
/* Any jansson value as a compact JSON body (takes the reference). */
int srv_render_json(void *json_value, srv_body *body);

#endif
