/* A minimal fork-join over pthreads: split [0,n) into equal contiguous ranges. */
#include "core.h"
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

int bq_ncores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

typedef struct { bq_range_fn fn; void *arg; size_t b, e; } job;

static void *run_job(void *p)
{
    job *j = p;
    j->fn(j->arg, j->b, j->e);
    return NULL;
}

void bq_parallel_for(size_t n, int threads, bq_range_fn fn, void *arg)
{
    enum { MAXT = 64 };
    int t = threads > 0 ? threads : bq_ncores();
    if (t > MAXT) t = MAXT;
    if ((size_t)t > n) t = (int)n;
    if (t <= 1) { if (n) fn(arg, 0, n); return; }
    job jobs[MAXT];
    pthread_t tid[MAXT];
    int started[MAXT] = {0};
    for (int i = 0; i < t; i++) {
        jobs[i] = (job){fn, arg, n * (size_t)i / (size_t)t, n * (size_t)(i + 1) / (size_t)t};
        if (i > 0) started[i] = pthread_create(&tid[i], NULL, run_job, &jobs[i]) == 0;
    }
    run_job(&jobs[0]);
    for (int i = 1; i < t; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else run_job(&jobs[i]); /* could not start a thread: do its share here */
    }
}

/* memcpy in pieces over all cores: copying a mapped checkpoint into fresh memory is
 * mostly page faults on both sides, which then happen side by side. */
enum { COPY_PIECE = 4u << 20 };
typedef struct { unsigned char *d; const unsigned char *s; size_t n; } copy_job;

static void copy_range(void *arg, size_t b, size_t e)
{
    const copy_job *j = arg;
    size_t lo = b * COPY_PIECE, hi = e * COPY_PIECE < j->n ? e * COPY_PIECE : j->n;
    memcpy(j->d + lo, j->s + lo, hi - lo);
}

void bq_parallel_copy(void *dst, const void *src, size_t n)
{
    copy_job j = {dst, src, n};
    size_t pieces = (n + COPY_PIECE - 1) / COPY_PIECE;
    bq_parallel_for(pieces, pieces > 1 ? 0 : 1, copy_range, &j);
}

double bq_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ---- the persistent pool ----------------------------------------------------- */
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

enum { SPIN_S_US = 200 };  /* how long an idle worker spins before sleeping */

struct bq_pool {
    int nw;                      /* workers, the caller not counted */
    pthread_t *tid;
    pthread_mutex_t mu;
    pthread_cond_t wake;
    atomic_uint gen;             /* one more per job (and one to stop) */
    atomic_int pending;          /* workers that have not finished this job */
    int sleepers, stop;          /* under mu */
    bq_range_fn fn;              /* the job: written before gen moves */
    void *arg;
    size_t n;
    int t;
};

typedef struct { bq_pool *p; int id; } worker_arg;

/* Spin politely: a pause at first, then give the core away, so that more threads
 * than cores (or a busy machine) do not starve the threads with work. */
static inline void wait_a_little(int spins)
{
    if (spins >= 1000) { sched_yield(); return; }
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Every worker takes part in every job (doing nothing when its id >= t), so a
 * slow worker can never read a later job's fields as an earlier one's. */
static void *pool_worker(void *arg)
{
    bq_pool *p = ((worker_arg *)arg)->p;
    int id = ((worker_arg *)arg)->id;
    free(arg);
    unsigned seen = 0;
    for (;;) {
        unsigned g;
        double t0 = 0;
        for (int spins = 0; (g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen; spins++) {
            wait_a_little(spins);
            if (spins % 256) continue;
            if (t0 == 0) { t0 = bq_now(); continue; }
            if (bq_now() - t0 < SPIN_S_US * 1e-6) continue;
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen) pthread_cond_wait(&p->wake, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            t0 = 0;
        }
        seen = g;
        if (p->stop) return NULL;
        if (id < p->t) p->fn(p->arg, p->n * (size_t)id / (size_t)p->t, p->n * (size_t)(id + 1) / (size_t)p->t);
        atomic_fetch_sub_explicit(&p->pending, 1, memory_order_release);
    }
}

/* Publish a job (or the stop) and wake the sleepers; under the mutex so that a
 * worker about to sleep either sees the new generation or gets the broadcast. */
static void pool_publish(bq_pool *p)
{
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->pending, p->nw, memory_order_relaxed);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->mu);
}

bq_pool *bq_pool_new(int threads)
{
    int t = threads > 0 ? threads : bq_ncores();
    if (t <= 1) return NULL;
    bq_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->tid = calloc((size_t)t - 1, sizeof *p->tid))) { free(p); return NULL; }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->wake, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    for (int i = 1; i < t; i++) {
        worker_arg *a = malloc(sizeof *a);
        if (!a) break;
        *a = (worker_arg){p, i};
        if (pthread_create(&p->tid[p->nw], NULL, pool_worker, a)) { free(a); break; }
        p->nw++;
    }
    if (!p->nw) { bq_pool_free(p); return NULL; }
    return p;
}

int bq_pool_threads(const bq_pool *p) { return p ? p->nw + 1 : 1; }

void bq_pool_for(bq_pool *p, size_t n, int threads, bq_range_fn fn, void *arg)
{
    if (!p) { bq_parallel_for(n, threads, fn, arg); return; }
    int t = threads > 0 ? threads : bq_ncores();
    if (t > p->nw + 1) t = p->nw + 1;
    if ((size_t)t > n) t = (int)n;
    if (t <= 1) { if (n) fn(arg, 0, n); return; }
    p->fn = fn;
    p->arg = arg;
    p->n = n;
    p->t = t;
    pool_publish(p);
    fn(arg, 0, n / (size_t)t);
    for (int spins = 0; atomic_load_explicit(&p->pending, memory_order_acquire); spins++) wait_a_little(spins);
}

void bq_pool_free(bq_pool *p)
{
    if (!p) return;
    p->stop = 1;
    pool_publish(p);
    for (int i = 0; i < p->nw; i++) pthread_join(p->tid[i], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->wake);
    free(p->tid);
    free(p);
}
