/* cuda_runtime.h -- the CUDA emulator's stand-in (test code): everything is in cuda_emu.h. */
#include "cuda_emu.h"
