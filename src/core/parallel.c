/* A minimal fork-join over pthreads: split [0,n) into equal contiguous ranges. */
#include "core.h"
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

double bq_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
