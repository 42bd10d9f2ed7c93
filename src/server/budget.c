#include "budget.h"

#include <assert.h>

void srv_budget_init(srv_budget *b, size_t limit)
{
    b->limit = limit;
    atomic_init(&b->used, 0);
    atomic_init(&b->peak, 0);
}

static void note_peak(srv_budget *b, size_t used)
{
    size_t peak = atomic_load(&b->peak);
    while (used > peak && !atomic_compare_exchange_weak(&b->peak, &peak, used))
        ;
}

bool srv_budget_take(srv_budget *b, size_t bytes)
{
    size_t used = atomic_load(&b->used);
    do {
        if (bytes > b->limit || used > b->limit - bytes)
            return false;
    } while (!atomic_compare_exchange_weak(&b->used, &used, used + bytes));
    note_peak(b, used + bytes);
    return true;
}

void srv_budget_give(srv_budget *b, size_t bytes)
{
    size_t before = atomic_fetch_sub(&b->used, bytes);
    assert(before >= bytes); /* giving back more than was taken is a bookkeeping bug */
    (void)before;
}

size_t srv_budget_used(const srv_budget *b) { return atomic_load(&b->used); }

size_t srv_budget_peak(const srv_budget *b) { return atomic_load(&b->peak); }
