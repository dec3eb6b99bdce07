// fuzz_safetensors: libFuzzer harness for the safetensors reader: arbitrary bytes as a .safetensors file
// (header length, JSON header, data), then every tensor it accepts read as fp32. Must never crash, leak or
// read out of bounds: an accepted header's offsets lie inside the bytes.
#include <stdint.h> // uint8_t
#include <stdlib.h> // malloc

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    StModel s;
    char err[2048];
    if (st_open_bytes(&s, data, size, "fuzz.safetensors", err, sizeof err)) return 0;
    for (int i = 0; i < s.n; i++) {
        int64_t n = st_numel(&s.t[i]);
        if (n > (1 << 20)) continue;
        float *out = malloc(sizeof(float) * (size_t)(n ? n : 1));
        st_read_f32(&s, &s.t[i], out, err, sizeof err);
        free(out);
    }
    st_close(&s);
    return 0;
}
