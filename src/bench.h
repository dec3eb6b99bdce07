// bench.h: multiple-choice benchmarks (pcmoe bench). Each choice is scored by the log-likelihood of its
// tokens (a byte-level model's bytes; model.tokenizer's ids) given the question, as lm-evaluation-harness
// scores multiple-choice tasks:
//   context      = query                      (the task's text, e.g. "Question: ...?")
//   continuation = " " + choice               (one space, then the choice)
//   loglik       = sum over the continuation's tokens of log p(token | everything before it)
// The model sees the last seq_len + 1 tokens of context + continuation (longer texts lose the start of
// the question; a continuation longer than seq_len is scored on its last seq_len tokens).
//   acc      = share of items whose highest-loglik choice is the gold one
//   acc_norm = the same with loglik divided by the continuation's length in bytes
// Ties go to the lower choice index.
#ifndef PCMOE_BENCH_H
#define PCMOE_BENCH_H

#include <stddef.h> // size_t
#include <stdint.h> // uint8_t

#include "comm.h"   // Comm
#include "config.h" // Config
#include "model.h"  // Model
#include "run.h"    // RunOptions

// A task file: JSON lines {"query": "...", "choices": ["...", ...], "gold": i} (other keys ignored).
typedef struct {
    int n_items, n_pairs; // questions, and (question, choice) pairs
    int *gold;            // (n_items) index of the right choice
    int *first;           // (n_items + 1) item i's pairs are first[i] .. first[i + 1] - 1
    Token **text;         // (n_pairs) context + continuation as tokens (a byte-level model: their bytes)
    int *text_len;        // (n_pairs)
    int *cont_len;        // (n_pairs) tokens of the continuation (the last cont_len tokens of text)
    int *cont_bytes;      // (n_pairs) bytes of the continuation (acc_norm's length)
} BenchTask;

// Reads a task file; with tok, each pair's tokens as lm-evaluation-harness splits them: the continuation is
// what encoding context + continuation adds to the context's own ids. Returns 0, or 2 with "FILE:LINE: what is
// wrong" in err.
int bench_load(BenchTask *t, const char *path, Tokenizer *tok, char *err, size_t len);
void bench_free(BenchTask *t);
// loglik (n_pairs) of every pair under model m, m->B sequences per forward pass (a pass for every
// m->B pairs: parties in pcmoe over MPI run the same number of passes). tok, tgt: (m->B, m->T) scratch.
void bench_score(Model *m, const BenchTask *t, Token *tok, Token *tgt, double *loglik);
// acc and acc_norm (see above) from the pairs' log-likelihoods.
void bench_accuracy(const BenchTask *t, const double *loglik, double *acc, double *acc_norm);

// pcmoe bench's own options.
typedef struct {
    const char *task; // --task FILE.jsonl
    const char *json; // --json OUT (NULL: none)
} BenchOptions;

// pcmoe bench CONFIG --checkpoint DIR --task FILE: every party of the job scores the task with its model
// (pcmoe over MPI: through the exchange, every party making the same passes); rank 0 prints each party's
// acc and acc_norm and, with --json, writes them with the log-likelihood of every (item, choice) of the
// parties in its process. Returns the exit status.
int bench_run(const Config *c, Comm *comm, const RunOptions *ro, const BenchOptions *o);

#endif
