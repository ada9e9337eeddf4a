/* Internal: the hardware cost model (cost.c); the API is in blockq.h. */
#ifndef BQ_COST_H
#define BQ_COST_H
#include "core.h"
#endif
