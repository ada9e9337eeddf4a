// The CUDA simulator's stand-in for <cuda_bf16.h> (tests/cusim/cusim.h).
#include "cusim.h"
