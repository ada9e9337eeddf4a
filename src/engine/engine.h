/* The float32 transformer engine (forward.c); its API is in blockq.h. */
#ifndef BQ_ENGINE_H
#define BQ_ENGINE_H
#include "model.h"

/* Device memory a context holds (weights, cache, buffers): 0 on the CPU. */
size_t bq_ctx_device_bytes(const bq_ctx *c);
#endif
