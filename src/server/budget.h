/* The daemon's memory budget: one number that bounds what clients can make it
 * hold.  Request bodies, decoded images, results and answers, and the
 * encoder's working memory are all taken from it before they are allocated;
 * what cannot be had is refused (503 + Retry-After), never waited for.
 *
 *     srv_budget b;
 *     srv_budget_init(&b, 2u << 30);
 *     if (!srv_budget_take(&b, n)) return refuse();
 *     ... allocate at most n bytes, use them, free them ...
 *     srv_budget_give(&b, n);
 */
#ifndef LATENTD_SERVER_BUDGET_H
#define LATENTD_SERVER_BUDGET_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct {
    size_t limit;
    atomic_size_t used;
    atomic_size_t peak;
} srv_budget;

void srv_budget_init(srv_budget *b, size_t limit);
/* All of bytes or nothing: false when they would pass the limit. */
bool srv_budget_take(srv_budget *b, size_t bytes);
void srv_budget_give(srv_budget *b, size_t bytes);
size_t srv_budget_used(const srv_budget *b);
size_t srv_budget_peak(const srv_budget *b);

#endif
