/* Rendering results and errors; see response.h. */
#include "response.h"

#include <assert.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

int srv_render_result(const ld_model *model, const srv_results *res, const srv_options *o,
                      srv_body *body, char *err)
{
    assert(res->n_items > 0 && res->items);
    memset(body, 0, sizeof *body);
    const bool rescale = o->format == LD_OUT_RAW && (o->set & (OPT_SCALING | OPT_SHIFT));
    const ld_out_opts out_opts = {
        .format = o->format,
        .kinds = o->outputs, /* OUT_* are the ld_kind bits */
        .list_encoding = o->list_encoding,
        .deterministic = res->deterministic,
        .center = res->center,
        .seed = res->seed,
        /* a factor the client left out does nothing: scaling 1, shift 0 */
        .rescale = rescale,
        .scaling_factor = (o->set & OPT_SCALING) ? o->scaling_factor : 1.0,
        .shift_factor = (o->set & OPT_SHIFT) ? o->shift_factor : 0.0,
    };
    ld_out_blob blob;
    int rc = ld_render(model, res->items, res->n_items, &out_opts, &blob, err);
    if (rc != LD_OK)
        return rc;
    body->data = (char *)blob.data;
    body->len = blob.len;
    body->content_type = blob.media_type;
    if (o->format == LD_OUT_RAW) {
        snprintf(body->tensor_shape, sizeof body->tensor_shape,
                 "[%" PRId64 ", %" PRId64 ", %" PRId64 ", %" PRId64 "]", blob.shape[0],
                 blob.shape[1], blob.shape[2], blob.shape[3]);
        body->tensor_dtype = "float32";
    }
    return LD_OK;
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
