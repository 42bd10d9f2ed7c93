#include "conns.h"

#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"

struct srv_conn {
    srv_conn *prev, *next;
    int fd;
    struct sockaddr_storage addr;
    srv_conn_phase phase;
    double deadline;      /* the phase's, monotonic seconds; 0: none */
    int requests;
    srv_job *job;         /* while waiting: one reference */
    double wait_deadline;
    int poll_slot;        /* its index in the last poll set, or -1 */
};

struct srv_conns {
    pthread_mutex_t lock;
    srv_conn *head;
    int count;
    srv_conns_params params;
    srv_metrics *metrics;
    int wake_fd;          /* eventfd: the table changed, or stop */
    bool stopping;
    pthread_t thread;
    bool started;
    double refusal_logged; /* when a refusal was last logged (at most one per 10 s) */
};

static void wake(srv_conns *t)
{
    const uint64_t one = 1;
    ssize_t n = write(t->wake_fd, &one, sizeof one);
    (void)n; /* a full counter already wakes the thread */
}

/* ---------------- admission ---------------- */

static bool same_client(const struct sockaddr_storage *a, const struct sockaddr *b)
{
    if (a->ss_family != b->sa_family)
        return false;
    if (b->sa_family == AF_INET)
        return ((const struct sockaddr_in *)a)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    if (b->sa_family == AF_INET6)
        return !memcmp(&((const struct sockaddr_in6 *)a)->sin6_addr,
                       &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr));
    return true; /* unix sockets: one client */
}

static int count_client_locked(const srv_conns *t, const struct sockaddr *addr)
{
    int n = 0;
    for (const srv_conn *c = t->head; c; c = c->next)
        n += same_client(&c->addr, addr);
    return n;
}

static void log_refusal_locked(srv_conns *t, const char *why)
{
    const double now = ld_now_seconds();
    if (now - t->refusal_logged < 10.0 && t->refusal_logged > 0)
        return;
    t->refusal_logged = now;
    srv_log(LOG_WARN, "refusing connections: %s (%d open)", why, t->count);
}

bool srv_conns_admit(srv_conns *t, const struct sockaddr *addr)
{
    srv_event refused = EV_COUNT;
    pthread_mutex_lock(&t->lock);
    if (t->count >= t->params.max_connections) {
        refused = EV_REFUSED_LIMIT;
        log_refusal_locked(t, "max_connections reached");
    } else if (t->params.max_per_client > 0 && addr &&
               count_client_locked(t, addr) >= t->params.max_per_client) {
        refused = EV_REFUSED_PER_CLIENT;
        log_refusal_locked(t, "a client reached max_connections_per_client");
    }
    pthread_mutex_unlock(&t->lock);
    if (refused != EV_COUNT)
        srv_metrics_event(t->metrics, refused);
    return refused == EV_COUNT;
}

/* ---------------- the table ---------------- */

static double phase_deadline(const srv_conns *t, srv_conn_phase phase, double now)
{
    switch (phase) {
    case CONN_HEADERS: return now + t->params.header_timeout_ms / 1000.0;
    case CONN_IDLE: return now + t->params.idle_timeout_ms / 1000.0;
    case CONN_BODY:
    case CONN_SEND: return now + t->params.body_timeout_ms / 1000.0;
    default: return 0;
    }
}

srv_conn *srv_conns_open(srv_conns *t, int fd, const struct sockaddr *addr)
{
    srv_conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->fd = fd;
    if (addr)
        memcpy(&c->addr, addr, addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                            : sizeof(struct sockaddr_in));
    c->phase = CONN_HEADERS;
    c->deadline = phase_deadline(t, CONN_HEADERS, ld_now_seconds());
    c->poll_slot = -1;
    pthread_mutex_lock(&t->lock);
    c->next = t->head;
    if (t->head)
        t->head->prev = c;
    t->head = c;
    t->count++;
    pthread_mutex_unlock(&t->lock);
    wake(t);
    return c;
}

void srv_conns_close(srv_conns *t, srv_conn *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&t->lock);
    if (c->prev)
        c->prev->next = c->next;
    else
        t->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    t->count--;
    srv_job *job = c->job;
    pthread_mutex_unlock(&t->lock);
    srv_job_unref(job);
    free(c);
}

int srv_conns_count(srv_conns *t)
{
    pthread_mutex_lock(&t->lock);
    const int n = t->count;
    pthread_mutex_unlock(&t->lock);
    return n;
}

void srv_conn_enter(srv_conns *t, srv_conn *c, srv_conn_phase phase)
{
    pthread_mutex_lock(&t->lock);
    c->phase = phase;
    c->deadline = phase_deadline(t, phase, ld_now_seconds());
    if (phase == CONN_BODY)
        c->requests++;
    pthread_mutex_unlock(&t->lock);
    wake(t);
}

int srv_conn_requests(const srv_conn *c) { return c->requests; }

void srv_conn_wait(srv_conns *t, srv_conn *c, srv_job *job, double deadline)
{
    srv_job_ref(job);
    pthread_mutex_lock(&t->lock);
    c->phase = CONN_WORK;
    c->deadline = 0;
    srv_job *old = c->job;
    c->job = job;
    c->wait_deadline = deadline;
    pthread_mutex_unlock(&t->lock);
    srv_job_unref(old);
    wake(t);
}

void srv_conn_unwait(srv_conns *t, srv_conn *c)
{
    pthread_mutex_lock(&t->lock);
    srv_job *job = c->job;
    c->job = NULL;
    pthread_mutex_unlock(&t->lock);
    srv_job_unref(job);
}

/* Cancel the jobs collected under the lock, outside it (on_done takes other locks). */
typedef struct {
    srv_job **jobs;
    srv_job_state *why;
    int n;
} cancel_list;

static void cancel_collected(srv_conns *t, cancel_list *l)
{
    static const srv_event events[] = {[JOB_TIMED_OUT] = EV_CANCEL_TIMEOUT,
                                       [JOB_CLIENT_GONE] = EV_CANCEL_CLIENT_GONE,
                                       [JOB_SHUTDOWN] = EV_CANCEL_SHUTDOWN};
    for (int i = 0; i < l->n; i++) {
        if (!srv_job_finished(l->jobs[i]))
            srv_metrics_event(t->metrics, events[l->why[i]]);
        srv_job_cancel(l->jobs[i], l->why[i]);
        srv_job_unref(l->jobs[i]);
    }
    free(l->jobs);
    free(l->why);
}

static bool collect_locked(cancel_list *l, int cap, srv_conn *c, srv_job_state why)
{
    if (l->n >= cap)
        return false;
    srv_job_ref(c->job);
    l->jobs[l->n] = c->job;
    l->why[l->n++] = why;
    c->wait_deadline = 0; /* once */
    return true;
}

static bool alloc_list(cancel_list *l, int cap)
{
    l->n = 0;
    l->jobs = malloc((size_t)(cap ? cap : 1) * sizeof *l->jobs);
    l->why = malloc((size_t)(cap ? cap : 1) * sizeof *l->why);
    return l->jobs && l->why;
}

void srv_conns_cancel_all(srv_conns *t, srv_job_state why)
{
    cancel_list l;
    pthread_mutex_lock(&t->lock);
    const int cap = t->count;
    if (alloc_list(&l, cap))
        for (srv_conn *c = t->head; c; c = c->next)
            if (c->job && !srv_job_finished(c->job))
                collect_locked(&l, cap, c, why);
    pthread_mutex_unlock(&t->lock);
    cancel_collected(t, &l);
}

/* ---------------- the thread ---------------- */

/* The poll set: the wake fd, then every waiting connection's socket. */
static int build_poll_locked(srv_conns *t, struct pollfd *fds, int cap, double *next)
{
    int n = 1;
    fds[0] = (struct pollfd){.fd = t->wake_fd, .events = POLLIN};
    for (srv_conn *c = t->head; c; c = c->next) {
        c->poll_slot = -1;
        if (c->deadline > 0 && c->deadline < *next)
            *next = c->deadline;
        if (!c->job)
            continue;
        if (c->wait_deadline > 0 && c->wait_deadline < *next)
            *next = c->wait_deadline;
        if (n < cap) {
            /* no events asked: poll() reports POLLHUP and POLLERR (a reset)
             * anyway, and a pipelined request's bytes must not wake us.  Not
             * POLLRDHUP: a client that shuts down its sending half after its
             * request is still reading, and is answered; one that closed its
             * socket is told from it only when a write fails */
            fds[n] = (struct pollfd){.fd = c->fd, .events = 0};
            c->poll_slot = n++;
        }
    }
    return n;
}

static const srv_event timeout_events[] = {
    [CONN_HEADERS] = EV_TIMEOUT_HEADERS, [CONN_IDLE] = EV_TIMEOUT_IDLE,
    [CONN_BODY] = EV_TIMEOUT_BODY,       [CONN_SEND] = EV_TIMEOUT_SEND};

/* After a poll: cancel waits whose client left or whose deadline passed; cut
 * connections past their phase's deadline. */
static void enforce(srv_conns *t, const struct pollfd *fds, int n_fds)
{
    cancel_list l;
    int cut[EV_COUNT] = {0};
    pthread_mutex_lock(&t->lock);
    const int cap = t->count;
    const bool can_cancel = alloc_list(&l, cap);
    const double now = ld_now_seconds();
    for (srv_conn *c = t->head; c; c = c->next) {
        if (c->job && can_cancel && c->wait_deadline > 0) {
            const bool gone = c->poll_slot > 0 && c->poll_slot < n_fds &&
                              (fds[c->poll_slot].revents & (POLLHUP | POLLERR));
            if (gone)
                collect_locked(&l, cap, c, JOB_CLIENT_GONE);
            else if (now >= c->wait_deadline)
                collect_locked(&l, cap, c, JOB_TIMED_OUT);
        }
        if (c->deadline > 0 && now >= c->deadline) {
            /* libmicrohttpd notices the shut socket and closes the connection;
             * the fd is still its own: it tells us (and waits for this lock)
             * before it closes it */
            shutdown(c->fd, SHUT_RDWR);
            cut[timeout_events[c->phase]]++;
            c->deadline = 0;
        }
    }
    pthread_mutex_unlock(&t->lock);
    for (int e = 0; e < EV_COUNT; e++)
        for (int k = 0; k < cut[e]; k++)
            srv_metrics_event(t->metrics, (srv_event)e);
    if (can_cancel)
        cancel_collected(t, &l);
    else {
        free(l.jobs);
        free(l.why);
    }
}

static void *conns_main(void *arg)
{
    srv_conns *t = arg;
    struct pollfd *fds = NULL;
    int cap = 0;
    for (;;) {
        pthread_mutex_lock(&t->lock);
        if (t->stopping) {
            pthread_mutex_unlock(&t->lock);
            break;
        }
        if (cap < t->count + 1) { /* grow the poll set with the table */
            struct pollfd *grown = realloc(fds, (size_t)(t->count + 64) * sizeof *fds);
            if (grown) {
                fds = grown;
                cap = t->count + 64;
            }
        }
        double next = ld_now_seconds() + 1.0;
        const int n = fds ? build_poll_locked(t, fds, cap, &next) : 0;
        pthread_mutex_unlock(&t->lock);
        int wait_ms = (int)((next - ld_now_seconds()) * 1000.0) + 1;
        if (wait_ms < 0)
            wait_ms = 0;
        if (n == 0) { /* no memory for a poll set: still keep the deadlines */
            struct pollfd one = {.fd = t->wake_fd, .events = POLLIN};
            poll(&one, 1, wait_ms);
        } else if (poll(fds, (nfds_t)n, wait_ms) > 0 && (fds[0].revents & POLLIN)) {
            uint64_t count;
            ssize_t got = read(t->wake_fd, &count, sizeof count);
            (void)got;
        }
        enforce(t, fds, n);
    }
    free(fds);
    return NULL;
}

int srv_conns_new(const srv_conns_params *params, srv_metrics *metrics, srv_conns **out,
                  char *err)
{
    *out = NULL;
    srv_conns *t = calloc(1, sizeof *t);
    if (!t)
        return ld_fail(err, LD_ENOMEM, "out of memory");
    t->params = *params;
    t->metrics = metrics;
    pthread_mutex_init(&t->lock, NULL);
    t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->wake_fd < 0) {
        srv_conns_free(t);
        return ld_fail(err, LD_EIO, "cannot make an eventfd");
    }
    if (pthread_create(&t->thread, NULL, conns_main, t) != 0) {
        srv_conns_free(t);
        return ld_fail(err, LD_ENOMEM, "cannot start the connection thread");
    }
    t->started = true;
    *out = t;
    return LD_OK;
}

void srv_conns_free(srv_conns *t)
{
    if (!t)
        return;
    if (t->started) {
        pthread_mutex_lock(&t->lock);
        t->stopping = true;
        pthread_mutex_unlock(&t->lock);
        wake(t);
        pthread_join(t->thread, NULL);
    }
    while (t->head) /* none should be left; free them all the same */
        srv_conns_close(t, t->head);
    if (t->wake_fd >= 0)
        close(t->wake_fd);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
