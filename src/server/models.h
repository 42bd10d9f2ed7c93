/* The models one daemon serves, by name, and their swap at a reload.
 *
 * A model is reference-counted: the registry holds one reference to each
 * model of its current set, and every job another to the model it was
 * accepted for, so a reload that drops or replaces a model frees its weights
 * only once the last job encoded with it is gone.
 *
 *     srv_model *m = srv_models_get(models, name);  // a reference, or NULL
 *     ... srv_job_new(m, ...) takes its own ...
 *     srv_model_unref(m);
 *
 * A reload builds a whole new set beside the old one (loading what is new or
 * changed, sharing what is not) and swaps it in under the registry's lock:
 * a request sees either the old set or the new, never a mix. */
#ifndef LATENTD_SERVER_MODELS_H
#define LATENTD_SERVER_MODELS_H

#include <stdbool.h>
#include <stddef.h>

#include "latentd/encoder.h"
#include "settings.h"

typedef struct srv_model srv_model;

/* Load path's weights as the model called name.  One reference. */
int srv_model_load(const char *name, const char *path, srv_model **out, char *err);
void srv_model_ref(srv_model *m);
/* The last reference frees the weights. Accepts NULL. */
void srv_model_unref(srv_model *m);
const ld_model *srv_model_weights(const srv_model *m);
/* The name requests use, and the path as the config gave it. */
const char *srv_model_name(const srv_model *m);
const char *srv_model_path(const srv_model *m);

/* A set of models: each entry is one reference, owned by the set. */
typedef struct {
    srv_model *models[SRV_MAX_MODELS];
    int n;
    int default_index;
} srv_model_set;

/* The entry named name, or NULL (no reference taken). */
srv_model *srv_model_set_find(const srv_model_set *s, const char *name);
/* Drop the set's references; s is empty afterwards. */
void srv_model_set_release(srv_model_set *s);

typedef struct srv_models srv_models;

/* A registry that takes set over (set is left empty). */
int srv_models_new(srv_model_set *set, srv_models **out, char *err);
/* Frees the registry and drops its set's references. Accepts NULL. */
void srv_models_free(srv_models *r);
/* A reference to the model called name (NULL or "": the default), or NULL
 * when the current set has none of that name. */
srv_model *srv_models_get(srv_models *r, const char *name);
/* A copy of the current set, every entry referenced (release it). */
void srv_models_snapshot(srv_models *r, srv_model_set *out);
/* Make set current (taken over: left empty); the old set's references are
 * dropped once the lock is let go. */
void srv_models_swap(srv_models *r, srv_model_set *set);

#endif
