/* Internal helpers shared by every module. */
#ifndef BQ_CORE_H
#define BQ_CORE_H
#include "blockq.h"
#include <stddef.h>
#include <stdint.h>

/* Set this thread's error message and return s. */
bq_status bq_fail(bq_status s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run fn(arg, i) for i in [0, n) over up to `threads` workers (0 = all cores).
 * Work is split into contiguous ranges, so results never depend on the count. */
typedef void (*bq_range_fn)(void *arg, size_t begin, size_t end);
void bq_parallel_for(size_t n, int threads, bq_range_fn fn, void *arg);
int bq_ncores(void);
void bq_parallel_copy(void *dst, const void *src, size_t n);  /* memcpy over all cores */

/* A persistent set of workers for the same ranges without a thread start per call
 * (decoding runs ~100 products a token): workers spin briefly after each job, then
 * sleep. bq_pool_for splits [0,n) exactly as bq_parallel_for does for the same count,
 * so the bits match it. A NULL pool runs bq_parallel_for. One caller at a time. */
typedef struct bq_pool bq_pool;
bq_pool *bq_pool_new(int threads);  /* threads in all, the caller's included; NULL if <= 1 or on failure */
void bq_pool_for(bq_pool *p, size_t n, int threads, bq_range_fn fn, void *arg);
int bq_pool_threads(const bq_pool *p);  /* 1 for NULL */
void bq_pool_free(bq_pool *p);

/* log softmax(row)[tok] over V logits, the exponentials summed in double (ppl.c);
 * *is_argmax (may be NULL): tok is the first largest logit. */
double log_softmax_at(const float *row, int V, int tok, int *is_argmax);

/* SplitMix64: the next value of a seeded sequence (adapter initialisation, window
 * order, test vectors); *s advances. */
static inline uint64_t bq_splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Seconds on a monotonic clock (for durations). */
double bq_now(void);

/* The rounding modes' names, indexed by bq_round (files and configs spell them so). */
extern const char *const BQ_ROUND_NAMES[4];

/* Writing a file piece by piece under a temporary name: open, write (errors are
 * kept and reported by commit), then commit renames it into place or abort removes it. */
typedef struct bq_afile bq_afile;
bq_status bq_afile_open(const char *path, bq_afile **out);
void bq_afile_write(bq_afile *f, const void *data, size_t size);
bq_status bq_afile_commit(bq_afile *f);  /* frees f */
void bq_afile_abort(bq_afile *f);        /* frees f */

#endif
