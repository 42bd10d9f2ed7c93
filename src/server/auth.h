/* The API key requests must present: read by the HTTP threads, replaced by a
 * reload (SIGHUP), so a leaked key is revoked without a restart.  A lock
 * guards the copy; the comparison takes the same time for every wrong key
 * of the right length. */
#ifndef LATENTD_SERVER_AUTH_H
#define LATENTD_SERVER_AUTH_H

#include <pthread.h>
#include <stdbool.h>

typedef struct {
    pthread_mutex_t lock;
    char key[256]; /* empty: no key is asked for */
    bool ready;    /* initialised (srv_auth_destroy of a zeroed one does nothing) */
} srv_auth;

void srv_auth_init(srv_auth *a, const char *key);
void srv_auth_destroy(srv_auth *a);
/* The key from now on (a reload). */
void srv_auth_set(srv_auth *a, const char *key);
/* Whether a request that presents `given` (NULL: none) may go on. */
bool srv_auth_accepts(srv_auth *a, const char *given);

#endif
