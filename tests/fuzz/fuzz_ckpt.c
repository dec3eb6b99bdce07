// fuzz_ckpt: libFuzzer harness for the checkpoint loader: arbitrary bytes as a party file, read with
// ckpt_peek, verified whole with ckpt_verify and loaded with ckpt_load into a small model (every check of a
// real resume). Must never crash, leak or read out of bounds, whatever the file holds. FUZZ_VERBOSE=1 prints why an input is refused.
#include <stdint.h> // uint8_t
#include <stdio.h>  // FILE
#include <stdlib.h> // mkstemp
#include <unistd.h> // unlink

#include "ckpt.h"
#include "config.h"
#include "model.h"

static const char *CONFIG =
    "[parties]\ncount = 1\n[model]\nd_model = 16\nn_layers = 2\nn_heads = 2\nseq_len = 16\nd_ff = 32\n"
    "n_experts = 4\ntop_k = 2\nexpert_ff = 16\nmoe_every = 2\n[data]\n0 = x\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static Config c;
    static Model m;
    static int ready = 0;
    char err[2048];
    if (!ready) {
        if (config_load_text(&c, CONFIG, err, sizeof err)) { fprintf(stderr, "%s\n", err); return 0; }
        ModelConfig mc = model_config_from(&c);
        model_create(&m, &mc, NULL, 1, 1, c.seq_len);
        ready = 1;
    }
    char path[] = "/tmp/pcmoe-fuzz-ckpt-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return 0;
    FILE *f = fdopen(fd, "wb");
    fwrite(data, 1, size, f);
    fclose(f);
    static char text[1 << 16];
    CkptMeta meta;
    ckpt_peek(path, text, sizeof text, &meta, err, sizeof err);
    ckpt_verify(path, NULL, NULL, err, sizeof err);
    Rng rng;
    CkptState s = {.party = 0, .c = &c, .m = &m, .data_rng = &rng, .first_data = 0, .n_data = 1};
    if (ckpt_load(path, &s, err, sizeof err) && getenv("FUZZ_VERBOSE")) fprintf(stderr, "%s\n", err);
    unlink(path);
    return 0;
}
