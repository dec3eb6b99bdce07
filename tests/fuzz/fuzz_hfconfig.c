// fuzz_hfconfig: libFuzzer harness for Hugging Face config.json reading: arbitrary bytes as DIR/config.json.
// Must never crash, leak or read out of bounds; what it accepts has every key a [model] key needs.
#include <stdint.h> // uint8_t
#include <stdio.h>  // FILE, snprintf
#include <stdlib.h> // mkdtemp
#include <unistd.h> // unlink, rmdir

#include "hf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char dir[] = "/tmp/pcmoe-fuzz-hf-XXXXXX", path[64], err[2048];
    if (!mkdtemp(dir)) return 0;
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(data, 1, size, f);
        fclose(f);
        HfConfig h;
        if (!hf_config_read(&h, dir, err, sizeof err) && h.n_keys < 10) __builtin_trap(); // (accepted: all keys)
    }
    unlink(path);
    rmdir(dir);
    return 0;
}
