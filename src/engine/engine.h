/* The float32 transformer engine (forward.c); its API is in blockq.h. */
#ifndef BQ_ENGINE_H
#define BQ_ENGINE_H
#include "model.h"
#endif
