/* The float32 transformer engine (forward.c); its API is in blockq.h. */
#ifndef BQ_ENGINE_H
#define BQ_ENGINE_H
#include "model.h"

/* Calibration: fn(arg, layer, role, x, n, in) sees each linear's input (n rows of
 * in floats, before its activation format) on a CPU context; layer -1 for the
 * model's own linears, role as backend.h's lin_role. NULL stops it. */
typedef void (*bq_observer)(void *arg, int layer, int role, const float *x, int n, int in);
bq_status bq_ctx_set_observer(bq_ctx *c, bq_observer fn, void *arg);

/* Device memory a context holds (weights, cache, buffers): 0 on the CPU. */
size_t bq_ctx_device_bytes(const bq_ctx *c);
#endif
