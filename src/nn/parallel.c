/* latentd's compute threads: a fixed team per pool that runs parallel loops.
 *
 * Why not OpenMP: libgomp's idle threads spin (GOMP_SPINCOUNT) before they
 * sleep, so between two loops a worker burns a core that a daemon's I/O
 * threads want, and the team size lives in hidden per-thread state.  Here an
 * idle thread sleeps on a condition variable until the next loop (after a
 * short poll that yields its core, below), and the team is an object the
 * caller owns and passes to every kernel.
 *
 * One loop runs at a time.  The caller publishes the loop, bumps
 * `generation` and wakes the workers; each runs its share and the last one
 * to finish wakes the caller, which has done its own share meanwhile.
 *
 * Before it sleeps, a waiting thread (a worker between loops, the caller for
 * the last share) polls for up to the pool's spin time, about a millisecond,
 * yielding its core at every poll.  A 512x512 pass runs about 1200 loops,
 * and waking a sleeping thread costs tens of microseconds (more where an
 * idle virtual CPU halts): the polls gave 4 to 5 % of the pass at the same
 * CPU time (measured).  They yield rather than spin so that any other
 * thread ready on that core (the daemon's I/O, a decoder) runs first; and
 * within a millisecond of the last loop the threads sleep. */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "latentd/nn.h"
#include "blas.h"
#include "gemm.h"

#include <assert.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_THREADS 1024

typedef struct {
    ld_pool *pool;
    int index; /* 1 .. threads-1; the caller is 0 */
} worker_arg;

struct ld_pool {
    int threads; /* the caller included */
    int started; /* workers running */
    pthread_t *workers;
    worker_arg *args;
    bool blas_reserved;
    const ld_gemm_kernel *gemm; /* the matrix kernel every loop's products use */
    float *arena;               /* ld_pool_arena's block, kept between calls */
    size_t arena_floats;
    pthread_mutex_t turn; /* held by the thread whose loop is running */
    /* A sleeper tests its condition under `lock`; whoever changes what it
     * waits for (generation, stopping, pending) does so before it takes
     * `lock` to broadcast or signal, so no wake-up is lost.  A polling
     * thread reads them without the lock. */
    pthread_mutex_t lock;
    pthread_cond_t wake;     /* workers: a new loop, or stop */
    pthread_cond_t done;     /* the caller: every worker finished its share */
    atomic_ulong generation; /* moves (release) once a loop is published */
    atomic_int pending;      /* workers still in the current loop */
    atomic_bool stopping;
    _Atomic int64_t spin_ns; /* how long a waiting thread polls before it sleeps */
    /* the current loop: written by the caller before `generation` moves and
     * published by that release, read by the workers once they see it move */
    ld_pool_fn fn;
    void *ctx;
    int n;
    int grain;        /* 0: static schedule */
    atomic_int next;  /* dynamic schedule: the first index not yet taken */
};

/* Which pool's loop this thread is running, and as which thread: a loop
 * started from inside a loop of the same pool must not wait for the team it
 * is part of. */
static _Thread_local const ld_pool *running_pool;
static _Thread_local int running_thread;

static void run_share(ld_pool *p, int thread)
{
    const ld_pool *outer_pool = running_pool;
    const int outer_thread = running_thread;
    running_pool = p;
    running_thread = thread;
    if (p->grain == 0) {
        const int begin = (int)((long)p->n * thread / p->threads);
        const int end = (int)((long)p->n * (thread + 1) / p->threads);
        if (end > begin)
            p->fn(p->ctx, begin, end, thread);
    } else {
        for (;;) {
            const int begin = atomic_fetch_add_explicit(&p->next, p->grain, memory_order_relaxed);
            if (begin >= p->n)
                break;
            p->fn(p->ctx, begin, p->n - begin < p->grain ? p->n : begin + p->grain, thread);
        }
    }
    running_pool = outer_pool;
    running_thread = outer_thread;
}

/* What a waiting thread waits for; true once it has come. */
typedef bool (*wait_over_fn)(const ld_pool *p, unsigned long seen);

/* A worker: a loop after generation `seen`, or the pool stops. */
static bool loop_published(const ld_pool *p, unsigned long seen)
{
    return atomic_load_explicit(&p->generation, memory_order_acquire) != seen ||
           atomic_load_explicit(&p->stopping, memory_order_relaxed);
}

/* The caller: every worker has done its share (acquire: and written it). */
static bool shares_done(const ld_pool *p, unsigned long unused)
{
    (void)unused;
    return atomic_load_explicit(&p->pending, memory_order_acquire) == 0;
}

/* Until over(): polled for up to the pool's spin time, yielding the core
 * between polls, then asleep on cond. */
static void await(ld_pool *p, wait_over_fn over, unsigned long seen, pthread_cond_t *cond)
{
    const int64_t spin_ns = atomic_load_explicit(&p->spin_ns, memory_order_relaxed);
    if (spin_ns > 0) {
        const double give_up = ld_now_seconds() + (double)spin_ns * 1e-9;
        do {
            if (over(p, seen))
                return;
            sched_yield();
        } while (ld_now_seconds() < give_up);
    }
    pthread_mutex_lock(&p->lock);
    while (!over(p, seen))
        pthread_cond_wait(cond, &p->lock);
    pthread_mutex_unlock(&p->lock);
}

static void *worker_main(void *arg)
{
    const worker_arg *w = arg;
    ld_pool *p = w->pool;
    unsigned long seen = 0;
    for (;;) {
        await(p, loop_published, seen, &p->wake);
        if (atomic_load_explicit(&p->stopping, memory_order_relaxed))
            break;
        /* it cannot move again before this worker's share is done */
        seen = atomic_load_explicit(&p->generation, memory_order_acquire);
        run_share(p, w->index);
        /* release: the share's writes come before the caller sees 0 */
        if (atomic_fetch_sub_explicit(&p->pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_signal(&p->done);
            pthread_mutex_unlock(&p->lock);
        }
    }
    return NULL;
}

static void run(ld_pool *p, int n, int grain, ld_pool_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (!p || p->threads == 1 || n == 1) {
        fn(ctx, 0, n, 0);
        return;
    }
    if (running_pool == p) { /* nested: this thread alone, as the thread it already is */
        fn(ctx, 0, n, running_thread);
        return;
    }
    pthread_mutex_lock(&p->turn);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->grain = grain;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    /* no worker reads pending before the generation moves, and the release
     * there publishes it with the loop */
    atomic_store_explicit(&p->pending, p->threads - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->lock);
    atomic_fetch_add_explicit(&p->generation, 1, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    run_share(p, 0);
    await(p, shares_done, 0, &p->done);
    pthread_mutex_unlock(&p->turn);
}

void ld_pool_for(ld_pool *p, int n, ld_pool_fn fn, void *ctx)
{
    run(p, n, 0, fn, ctx);
}

void ld_pool_for_dynamic(ld_pool *p, int n, int grain, ld_pool_fn fn, void *ctx)
{
    run(p, n, grain > 0 ? grain : 1, fn, ctx);
}

void ld_pool_set_spin(ld_pool *p, int microseconds)
{
    if (!p) /* a pool of one never waits */
        return;
    /* atomic: idle workers read it as they wait for the next loop */
    atomic_store_explicit(&p->spin_ns, microseconds > 0 ? (int64_t)microseconds * 1000 : 0,
                          memory_order_relaxed);
}

int ld_pool_set_kernel(ld_pool *p, ld_kernel kind, char *err)
{
    if (kind == LD_KERNEL_AUTO)
        kind = ld_kernel_best();
    const ld_gemm_kernel *k = ld_gemm_kernel_get(kind);
    if (!k)
        return ld_fail(err, LD_EUNSUPPORTED, "this CPU or build has no %s kernel",
                       ld_kernel_name(kind));
    p->gemm = k;
    return LD_OK;
}

const ld_gemm_kernel *ld_pool_gemm(const ld_pool *p)
{
    return p ? p->gemm : ld_gemm_kernel_get(ld_kernel_best());
}

ld_kernel ld_pool_kernel(const ld_pool *p)
{
    return ld_pool_gemm(p)->kind;
}

int ld_pool_threads(const ld_pool *p)
{
    return p ? p->threads : 1;
}

/* The affinity mask, as OpenMP counted cores. */
int ld_cores(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* Workers start with every signal blocked, so a program's signals reach its
 * own threads and never interrupt (or get handled on) a compute thread. */
static int start_workers(ld_pool *p, char *err)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = LD_OK;
    for (int i = 1; i < p->threads && rc == LD_OK; i++) {
        p->args[i - 1] = (worker_arg){p, i};
        if (pthread_create(&p->workers[i - 1], NULL, worker_main, &p->args[i - 1]) != 0)
            rc = ld_fail(err, LD_ENOMEM, "cannot start compute thread %d of %d", i + 1,
                         p->threads);
        else
            p->started++;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

int ld_pool_new(int threads, ld_pool **out, char *err)
{
    *out = NULL;
    if (threads <= 0)
        threads = ld_cores();
    if (threads > MAX_THREADS)
        return ld_fail(err, LD_EINVAL, "%d compute threads requested; at most %d", threads,
                       MAX_THREADS);
    ld_pool *p = calloc(1, sizeof *p);
    if (!p)
        return ld_fail(err, LD_ENOMEM, "out of memory for a thread pool");
    p->threads = threads;
    p->gemm = ld_gemm_kernel_get(ld_kernel_best());
    atomic_init(&p->generation, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->spin_ns, 0);
    atomic_init(&p->stopping, false);
    /* more threads than cores: the thread awaited may need the poller's core */
    ld_pool_set_spin(p, threads <= ld_cores() ? LD_POOL_SPIN_US : 0);
    pthread_mutex_init(&p->turn, NULL);
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    pthread_cond_init(&p->done, NULL);
    p->workers = calloc((size_t)threads, sizeof *p->workers);
    p->args = calloc((size_t)threads, sizeof *p->args);
    int rc = p->workers && p->args ? start_workers(p, err)
                                   : ld_fail(err, LD_ENOMEM, "out of memory for a thread pool");
    if (rc == LD_OK) {
        rc = ld_blas_reserve(p, err);
        p->blas_reserved = rc == LD_OK;
    }
    if (rc != LD_OK) {
        ld_pool_free(p);
        return rc;
    }
    *out = p;
    return LD_OK;
}

void ld_pool_free(ld_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    assert(atomic_load(&p->pending) == 0); /* no loop is running on it */
    atomic_store(&p->stopping, true); /* pollers see it too, and stop polling */
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->started; i++)
        pthread_join(p->workers[i], NULL);
    if (p->blas_reserved)
        ld_blas_unreserve(p);
    pthread_mutex_destroy(&p->turn);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
    pthread_cond_destroy(&p->done);
    ld_free_aligned(p->arena);
    free(p->workers);
    free(p->args);
    free(p);
}

float *ld_pool_arena(ld_pool *p, size_t floats)
{
    if (p->arena && p->arena_floats >= floats)
        return p->arena;
    ld_free_aligned(p->arena); /* never hold the old block and a larger one at once */
    p->arena = ld_alloc_huge(floats, sizeof(float));
    p->arena_floats = p->arena ? floats : 0;
    return p->arena;
}

void ld_pool_arena_release(ld_pool *p)
{
    ld_free_aligned(p->arena);
    p->arena = NULL;
    p->arena_floats = 0;
}

size_t ld_pool_arena_floats(const ld_pool *p)
{
    return p ? p->arena_floats : 0;
}
