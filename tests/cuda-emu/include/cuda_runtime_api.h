/* cuda_runtime_api.h -- the CUDA emulator's stand-in (test code): see cuda_emu.h. */
#include "cuda_emu.h"
