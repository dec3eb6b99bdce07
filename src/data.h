// data.h: a party's private corpus: a text file (or every file in a directory, in name order, each a document)
// as tokens (a byte-level model: its bytes; with a tokenizer: its ids, documents joined by EOS), split into a
// training part and the held-out last val_fraction, with a seeded batch sampler.
#ifndef PCMOE_DATA_H
#define PCMOE_DATA_H

#include <stddef.h> // size_t
#include <stdint.h> // uint64_t

#include "rng.h"       // Rng
#include "token.h"     // Token
#include "tokenizer.h" // Tokenizer

typedef struct {
    Token *tokens;      // (n_tokens) the whole corpus
    size_t n_tokens;
    size_t n_train;     // tokens [0, n_train) train; [n_train, n_tokens) validate
    size_t n_bytes;     // bytes of text
    double val_bytes_per_token; // bytes of text per token in the validation split (1 for bytes): for bits per byte
    int n_files;
    Rng rng;            // draws training windows
} Dataset;

// Loads `path`: with tok NULL as bytes; else tokenized, a document a file, eos (>= 0) between documents. A window
// of T+1 tokens must fit in both splits. Returns 0, or 2 with a one-line message naming the path (missing,
// unreadable, empty, binary or not UTF-8, too short) in err.
int data_load(Dataset *ds, const char *path, double val_fraction, int T, uint64_t seed, Tokenizer *tok, int eos,
              char *err, size_t err_len);
void data_free(Dataset *ds);
// Fills tokens, targets (B, T) with B random training windows: targets are tokens shifted by one.
void data_train_batch(Dataset *ds, Token *tokens, Token *targets, int B, int T);
// Validation batch `i` of `n_batches`: B*n_batches windows spread evenly over the validation split, the
// same every time.
void data_val_batch(const Dataset *ds, Token *tokens, Token *targets, int B, int T, int i, int n_batches);

#endif
