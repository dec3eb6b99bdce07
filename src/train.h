// train.h: a training run: parties, modes (pcmoe, centralized, local, fedavg), schedules, evaluation,
// metrics.
#ifndef PCMOE_TRAIN_H
#define PCMOE_TRAIN_H

#include "comm.h"   // Comm
#include "config.h" // Config
#include "data.h"   // Dataset
#include "generate.h" // GenerateOptions
#include "model.h"  // Model
#include "optim.h"  // OptimConfig

typedef struct {
    int force;              // overwrite an existing run directory
    int simulate;           // compute all parties' math in this one process (the equivalence harness)
    const char *audit_path; // write the traffic audit here (NULL: no audit)
    int resume;             // continue from the newest complete checkpoint in RUN/checkpoints
    int stop_after;         // stop (with a checkpoint) after this step, as a preempted job would (0: no)
    const char *eval_dir;   // pcmoe eval (and bench): load this checkpoint directory, report, stop
    const char *bench_task; // pcmoe bench: score this multiple-choice task file (bench.h) instead
    const char *bench_json; // pcmoe bench: also write the results here (NULL: no)
    const GenerateOptions *gen; // pcmoe generate: sample text from the checkpoint eval_dir (NULL: not generate)
    const char *fault;      // test hook: "counts", "foreign" or "nan": the last party misbehaves as a peer
} TrainOptions;

#define TRAIN_EXIT_PREEMPTED 3 // stopped by SIGUSR1/SIGTERM after writing a checkpoint: --resume continues

// Trains as configured. `comm` is attached to MPI_COMM_WORLD. Writes RUN/config.ini, metrics.jsonl and
// summary.json. Returns the process exit status (errors that need the whole job to stop end it).
int train_run(const Config *c, Comm *comm, const TrainOptions *opt);

// One optimizer step of a single model on one batch: zero grads, forward, backward, global-norm clip,
// AdamW at the schedule's learning rate for (0-based) `step`. Returns the gradient norm before
// clipping; *lr_out gets the learning rate. Fails (naming step and party) on a non-finite loss or gradient.
double train_step(Model *m, const OptimConfig *oc, const uint8_t *tokens, const uint8_t *targets, int step,
                  int party, float *lr_out);

// Mean cross-entropy of the model over the party's n_batches validation batches.
double train_evaluate(Model *m, const Dataset *ds, int n_batches, uint8_t *tokens, uint8_t *targets);

#endif
