#include "models.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct srv_model {
    atomic_int refs;
    char name[SRV_MODEL_NAME_LEN];
    char *path;
    ld_model *weights;
};

int srv_model_load(const char *name, const char *path, srv_model **out, char *err)
{
    *out = NULL;
    srv_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return ld_fail(err, LD_ENOMEM, "out of memory");
    }
    int rc = ld_model_load(path, NULL, &m->weights, err);
    if (rc != LD_OK) {
        free(m->path);
        free(m);
        return rc;
    }
    atomic_init(&m->refs, 1);
    snprintf(m->name, sizeof m->name, "%s", name);
    *out = m;
    return LD_OK;
}

void srv_model_ref(srv_model *m) { atomic_fetch_add(&m->refs, 1); }

void srv_model_unref(srv_model *m)
{
    if (!m || atomic_fetch_sub(&m->refs, 1) != 1)
        return;
    srv_log(LOG_INFO, "model %s (%s) unloaded: its last job is done", m->name, m->path);
    ld_model_free(m->weights);
    free(m->path);
    free(m);
}

const ld_model *srv_model_weights(const srv_model *m) { return m->weights; }
const char *srv_model_name(const srv_model *m) { return m->name; }
const char *srv_model_path(const srv_model *m) { return m->path; }

srv_model *srv_model_set_find(const srv_model_set *s, const char *name)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->models[i]->name, name) == 0)
            return s->models[i];
    return NULL;
}

void srv_model_set_release(srv_model_set *s)
{
    for (int i = 0; i < s->n; i++)
        srv_model_unref(s->models[i]);
    memset(s, 0, sizeof *s);
}

struct srv_models {
    pthread_mutex_t lock; /* guards current: held for a lookup or a swap, never for a load */
    srv_model_set current;
};

int srv_models_new(srv_model_set *set, srv_models **out, char *err)
{
    *out = NULL;
    srv_models *r = calloc(1, sizeof *r);
    if (!r)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    pthread_mutex_init(&r->lock, NULL);
    r->current = *set;
    memset(set, 0, sizeof *set);
    *out = r;
    return LD_OK;
}

void srv_models_free(srv_models *r)
{
    if (!r)
        return;
    srv_model_set_release(&r->current);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

srv_model *srv_models_get(srv_models *r, const char *name)
{
    pthread_mutex_lock(&r->lock);
    const srv_model_set *s = &r->current;
    srv_model *m = name && *name ? srv_model_set_find(s, name)
                                 : s->n ? s->models[s->default_index] : NULL;
    if (m)
        srv_model_ref(m);
    pthread_mutex_unlock(&r->lock);
    return m;
}

void srv_models_snapshot(srv_models *r, srv_model_set *out)
{
    pthread_mutex_lock(&r->lock);
    *out = r->current;
    for (int i = 0; i < out->n; i++)
        srv_model_ref(out->models[i]);
    pthread_mutex_unlock(&r->lock);
}

void srv_models_swap(srv_models *r, srv_model_set *set)
{
    pthread_mutex_lock(&r->lock);
    srv_model_set old = r->current;
    r->current = *set;
    pthread_mutex_unlock(&r->lock);
    memset(set, 0, sizeof *set);
    srv_model_set_release(&old);
}
