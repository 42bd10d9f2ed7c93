/* BLAS from the compute threads.
 *
 * Threads: BLAS runs one thread per call (ld_nn_init), so the pools' threads
 * are the only ones that share the cores; OpenBLAS's own threads, which spin
 * between calls, stay asleep.
 *
 * Memory: every OpenBLAS sgemm takes its work buffer from one process-wide
 * table (blas_memory_alloc, driver/others/memory.c; 0.3.21 as Debian builds
 * it, without USE_TLS).  A call takes the first slot not in use; a slot is
 * mapped on first use (BUFFER_SIZE: 128 MiB of address space in that build)
 * and stays mapped for good: blas_memory_free only clears its `used` flag.
 * When the mapping fails, blas_memory_alloc retries mmap and malloc forever,
 * so a product that needs a slot nobody used before, under an address-space
 * limit or strict overcommit, never returns.  Hence: when a pool is created,
 * every slot its threads can ever need is taken and released once.  With k
 * threads in sgemm at the same time, first fit never goes past slot k-1, and
 * k counts every live pool's threads, since pools (one per daemon worker)
 * compute at the same time.  That count is process-wide like OpenBLAS's table,
 * so it lives here, under a lock, not in any pool.  Before a slot that may be
 * new is taken, a mapping a little larger than BUFFER_SIZE is tried and given
 * back, so that pool creation fails with LD_ENOMEM where OpenBLAS would spin.
 * (Builds with OpenBLAS's warm-up first try twice BUFFER_SIZE and trim it;
 * when that fails they fall back to malloc of BUFFER_SIZE, which the probe
 * covered.)
 *
 * Not covered: builds with USE_TLS keep one table per thread, where each
 * thread's warm-up product below maps its own slot without the probe; and
 * OpenBLAS's own server threads, which map a slot each when the library is
 * loaded, before main (OPENBLAS_NUM_THREADS=1 starts none). */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#include "blas.h"

#include <cblas.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/mman.h>

#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
void openblas_set_num_threads(int);
#endif
#ifdef HAVE_BLAS_MEMORY_ALLOC
void *blas_memory_alloc(int procpos);
void blas_memory_free(void *buffer);
#endif

/* BUFFER_SIZE in Debian's x86-64 build (32 << 22), and 1 MiB for malloc's
 * overhead in the fallback */
#define SLOT_PROBE_BYTES ((size_t)129 << 20)

static pthread_mutex_t reserve_lock = PTHREAD_MUTEX_INITIALIZER;
static int live_callers; /* threads of the live pools */
static int slots_mapped; /* slots known to be mapped: this many were once held at once */

void ld_nn_init(void)
{
#ifdef HAVE_OPENBLAS_SET_NUM_THREADS
    openblas_set_num_threads(1);
#endif
}

#ifdef HAVE_BLAS_MEMORY_ALLOC
/* Whether `bytes` of fresh private memory can be mapped now, as OpenBLAS maps
 * its buffers.  Nothing is touched, so nothing becomes resident. */
static bool can_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return false;
    munmap(p, bytes);
    return true;
}

/* Hold `total` slots at once, then give them back.  Threads of other pools
 * (`others`) may hold slots meanwhile, so hold i lands at most at slot
 * others + i: only from there may a slot be new. */
static int map_slots(int total, int others, char *err)
{
    void **held = calloc((size_t)total, sizeof *held);
    if (!held)
        return ld_fail(err, LD_ENOMEM, "out of memory reserving BLAS buffers");
    int rc = LD_OK, got = 0;
    for (; got < total; got++) {
        if (others + got >= slots_mapped && !can_map(SLOT_PROBE_BYTES)) {
            rc = ld_fail(err, LD_ENOMEM, "cannot map OpenBLAS's work buffers for %d compute "
                         "threads (%zu MiB of address space each)", total,
                         SLOT_PROBE_BYTES >> 20);
            break;
        }
        held[got] = blas_memory_alloc(0);
        if (!held[got]) {
            rc = ld_fail(err, LD_ENOMEM, "OpenBLAS has no work buffer left for %d compute "
                         "threads (it was built for fewer)", total);
            break;
        }
    }
    for (int i = 0; i < got; i++)
        blas_memory_free(held[i]);
    free(held);
    return rc;
}
#endif

static void warm_up(void *ctx, int begin, int end, int thread)
{
    (void)ctx;
    (void)begin;
    (void)end;
    (void)thread;
    const float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1};
    float c[4];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c,
                2);
}

int ld_blas_reserve(ld_pool *pool, char *err)
{
    const int threads = ld_pool_threads(pool);
    int rc = LD_OK;
    pthread_mutex_lock(&reserve_lock);
    const int total = live_callers + threads;
#ifdef HAVE_BLAS_MEMORY_ALLOC
    if (total > slots_mapped) {
        rc = map_slots(total, live_callers, err);
        if (rc == LD_OK)
            slots_mapped = total;
    }
#endif
    if (rc == LD_OK)
        live_callers = total;
    pthread_mutex_unlock(&reserve_lock);
    if (rc == LD_OK)
        ld_pool_for(pool, threads, warm_up, NULL); /* one index per thread */
    return rc;
}

void ld_blas_unreserve(const ld_pool *pool)
{
    pthread_mutex_lock(&reserve_lock);
    live_callers -= ld_pool_threads(pool);
    pthread_mutex_unlock(&reserve_lock);
}
