/* fuzz_safetensors.c -- libFuzzer harness for cel_safetensors_parse and cel_config_parse.
 *
 * The first byte picks the parser. Safetensors: any image that validates must
 * give tensors whose data lies inside the image and whose byte size matches
 * dtype x shape, and every float tensor must convert. Config: whatever parses
 * must satisfy the shape invariants the engine relies on.
 * Guard-page mode (guard.h): each input ends right before an unreadable page.
 * `make fuzz` runs it over tests/fuzz/corpus/safetensors/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "guard.h"
#include "../../model/config.h"
#include "../../model/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if (data[0] & 1) {
        cel_config_t c;
        if (cel_config_parse((const char *)data + 1, size - 1, &c, NULL) == CEL_OK) {
            if (c.NH % c.NKV != 0 || c.HS % 2 != 0 || c.V < 1 || c.L < 1 ||
                cel_config_param_count(&c) > CEL_CONFIG_MAX_PARAMS)
                __builtin_trap();
        }
        return 0;
    }
    cel_safetensors_t *st = NULL;
    if (cel_safetensors_parse(data + 1, size - 1, &st, NULL) != CEL_OK) {
        if (st) __builtin_trap();
        return 0;
    }
    for (int i = 0; i < cel_safetensors_count(st); i++) {
        const cel_st_tensor_t *t = cel_safetensors_at(st, i);
        if (t->nbytes != t->numel * cel_safetensors_dtype_size(t->dtype) || t->nbytes > size)
            __builtin_trap();
        if (cel_safetensors_find(st, t->name) != t) __builtin_trap();
        if (t->dtype == CEL_ST_F32 || t->dtype == CEL_ST_F16 || t->dtype == CEL_ST_BF16) {
            float *dst = malloc(t->numel * sizeof(float) + 1);
            if (cel_safetensors_read_f32(st, t->name, t->ndim, t->shape, dst, NULL) != CEL_OK)
                __builtin_trap();
            free(dst);
        }
    }
    cel_safetensors_free(st);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
