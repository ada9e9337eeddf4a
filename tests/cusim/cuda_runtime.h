// The CUDA simulator's stand-in for <cuda_runtime.h> (tests/cusim/cusim.h).
#include "cusim.h"
