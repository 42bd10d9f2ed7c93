#include "auth.h"

#include <stdio.h>
#include <string.h>

void srv_auth_init(srv_auth *a, const char *key)
{
    pthread_mutex_init(&a->lock, NULL);
    snprintf(a->key, sizeof a->key, "%s", key);
    a->ready = true;
}

void srv_auth_destroy(srv_auth *a)
{
    if (a->ready)
        pthread_mutex_destroy(&a->lock);
    a->ready = false;
}

void srv_auth_set(srv_auth *a, const char *key)
{
    pthread_mutex_lock(&a->lock);
    snprintf(a->key, sizeof a->key, "%s", key);
    pthread_mutex_unlock(&a->lock);
}

bool srv_auth_accepts(srv_auth *a, const char *given)
{
    pthread_mutex_lock(&a->lock);
    const char *key = a->key;
    bool ok = !key[0];
    if (!ok && given && strlen(given) == strlen(key)) {
        unsigned char diff = 0; /* compare in constant time */
        for (size_t i = 0; key[i]; i++)
            diff |= (unsigned char)(key[i] ^ given[i]);
        ok = diff == 0;
    }
    pthread_mutex_unlock(&a->lock);
    return ok;
}
