/* The float32 transformer engine (forward.c); its API is in blockq.h. */
#ifndef BQ_ENGINE_H
#define BQ_ENGINE_H
#include "model.h"

/* Calibration: fn(arg, b, layer, role, x, n, in) sees each linear's input (n rows
 * of in floats, before its activation format) in the memory of the backend b that
 * runs it (host memory where b->ops->host, else what b's stats ops take); layer -1
 * for the model's own linears, role as backend.h's lin_role. NULL stops it. */
struct be;
typedef void (*bq_observer)(void *arg, struct be *b, int layer, int role, const float *x, int n, int in);
bq_status bq_ctx_set_observer(bq_ctx *c, bq_observer fn, void *arg);

/* Device memory a context holds (weights, cache, buffers): 0 on the CPU. */
size_t bq_ctx_device_bytes(const bq_ctx *c);
#endif
