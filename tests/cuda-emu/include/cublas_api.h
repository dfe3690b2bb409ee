/* cublas.h -- see cublas_v2.h (CUDA emulator, test code). */
#include "cublas_v2.h"
