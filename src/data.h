// data.h: a party's private corpus: bytes of a text file (or of every file in a directory, in name
// order), split into a training part and the held-out last val_fraction, with a seeded batch sampler.
#ifndef PCMOE_DATA_H
#define PCMOE_DATA_H

#include <stddef.h> // size_t
#include <stdint.h> // uint8_t

#include "token.h"  // Token
#include "rng.h"    // Rng

typedef struct {
    uint8_t *bytes;     // (n_bytes) the whole corpus
    size_t n_bytes;
    size_t n_train;     // bytes [0, n_train) train; [n_train, n_bytes) validate
    int n_files;
    Rng rng;            // draws training windows
} Dataset;

// Loads `path`. A window of T+1 bytes must fit in both splits. Returns 0, or 2 with a one-line message
// naming the path (missing, unreadable, empty, too short) in err.
int data_load(Dataset *ds, const char *path, double val_fraction, int T, uint64_t seed, char *err, size_t err_len);
void data_free(Dataset *ds);
// Fills tokens, targets (B, T) with B random training windows: targets are tokens shifted by one.
void data_train_batch(Dataset *ds, Token *tokens, Token *targets, int B, int T);
// Validation batch `i` of `n_batches`: B*n_batches windows spread evenly over the validation split, the
// same every time.
void data_val_batch(const Dataset *ds, Token *tokens, Token *targets, int B, int T, int i, int n_batches);

#endif
