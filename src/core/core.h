/* Internal helpers shared by every module. */
#ifndef BQ_CORE_H
#define BQ_CORE_H
#include "blockq.h"
#include <stddef.h>

/* Set this thread's error message and return s. */
bq_status bq_fail(bq_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run fn(arg, i) for i in [0, n) over up to `threads` workers (0 = all cores).
 * Work is split into contiguous ranges, so results never depend on the count. */
typedef void (*bq_range_fn)(void *arg, size_t begin, size_t end);
void bq_parallel_for(size_t n, int threads, bq_range_fn fn, void *arg);
int bq_ncores(void);

#endif
