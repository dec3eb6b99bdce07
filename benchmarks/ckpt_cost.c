// ckpt_cost: what the checkpoint checksums cost at a config's shape (benchmarks/checkpoint.sh runs it). One
// party holding the whole model (every expert, as parties.count = 1), its weights and AdamW moments random:
// REPEATS times each, and the median of each,
//   write:  ckpt_save of the file (HDF5 image in memory, BLAKE2b of every dataset, write + fsync, rename)
//   read:   ckpt_load of it (every dataset read and verified)
//   verify: ckpt_verify of it (what `pcmoe info` adds: every dataset read whole once more and hashed)
//   hash:   BLAKE2b-256 over the same bytes alone (the work the checksums add to a write and to a read)
// Prints one line: bytes write_s read_s verify_s hash_s.
// usage: ckpt_cost CONFIG.ini DIR [REPEATS]   (the file is written in DIR; default 5 repeats)
#include <sodium.h> // crypto_generichash
#include <stdio.h>  // printf
#include <stdlib.h> // qsort
#include <string.h> // memset
#include <time.h>   // clock_gettime

#include "ckpt.h"   // ckpt_save, ckpt_load, ckpt_verify
#include "config.h" // config_load
#include "model.h"  // model_create
#include "rng.h"    // rng_seed, rng_uniform

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    return (*(const double *)a > *(const double *)b) - (*(const double *)a < *(const double *)b);
}

static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: ckpt_cost CONFIG.ini DIR [REPEATS]\n"); return 2; }
    int R = argc > 3 ? atoi(argv[3]) : 5;
    if (R < 1 || R > 100 || sodium_init() < 0) { fprintf(stderr, "ckpt_cost: bad REPEATS or no libsodium\n"); return 2; }
    static Config c;
    char err[2048], path[4200];
    if (config_load(&c, argv[1], NULL, 0, err, sizeof err)) { fprintf(stderr, "ckpt_cost: %s\n", err); return 2; }
    ModelConfig mc = model_config_from(&c);
    Model m;
    model_create(&m, &mc, NULL, 1, 1, c.seq_len);
    Rng rng;
    rng_seed(&rng, 1);
    size_t n = m.n_params; // (n) params, adam_m, adam_v: random, finite
    for (size_t i = 0; i < n; i++) {
        m.host_params[i] = rng_uniform(&rng) - 0.5f;
        m.host_adam_m[i] = 1e-3f * (rng_uniform(&rng) - 0.5f);
        m.host_adam_v[i] = 1e-6f * rng_uniform(&rng);
    }
    Rng data_rng = rng;
    CkptState s = {.step = 1, .party = 0, .c = &c, .m = &m, .data_rng = &data_rng, .first_data = 0, .n_data = 1};
    snprintf(path, sizeof path, "%s/party_0.h5", argv[2]);
    double t_write[100], t_read[100], t_verify[100], t_hash[100];
    for (int r = 0; r < R; r++) {
        double t0 = now();
        if (ckpt_save(path, &s, err, sizeof err)) { fprintf(stderr, "ckpt_cost: %s\n", err); return 1; }
        double t1 = now();
        if (ckpt_load(path, &s, err, sizeof err)) { fprintf(stderr, "ckpt_cost: %s\n", err); return 1; }
        double t2 = now();
        if (ckpt_verify(path, NULL, NULL, err, sizeof err)) { fprintf(stderr, "ckpt_cost: %s\n", err); return 1; }
        double t3 = now();
        unsigned char h[32];
        const float *bufs[3] = {m.host_params, m.host_adam_m, m.host_adam_v};
        for (int b = 0; b < 3; b++) // (one pass per buffer: the checksums hash each dataset once, as here)
            crypto_generichash(h, sizeof h, (const unsigned char *)bufs[b], sizeof(float) * n, NULL, 0);
        double t4 = now();
        t_write[r] = t1 - t0, t_read[r] = t2 - t1, t_verify[r] = t3 - t2, t_hash[r] = t4 - t3;
    }
    printf("%zu %.6f %.6f %.6f %.6f\n", 3 * sizeof(float) * n, median(t_write, R), median(t_read, R),
           median(t_verify, R), median(t_hash, R));
    model_free(&m);
    return 0;
}
