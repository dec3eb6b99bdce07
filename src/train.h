// train.h: pcmoe train: the step loop of every mode (pcmoe, centralized, local, fedavg) and schedule, with
// validation, metrics, checkpoints and preemption. The party session it runs on is run.h's.
#ifndef PCMOE_TRAIN_H
#define PCMOE_TRAIN_H

#include <stdint.h> // uint8_t

#include "token.h"  // Token
#include "comm.h"   // Comm
#include "config.h" // Config
#include "model.h"  // Model
#include "optim.h"  // OptimConfig
#include "run.h"    // RunOptions

// pcmoe train's own options.
typedef struct {
    int force;       // --force: overwrite an existing run directory
    int resume;      // --resume: continue from the newest complete checkpoint in RUN/checkpoints
    int resume_step; // --resume=STEP: from that one (-1: the newest)
    int stop_after;  // --stop-after S: stop (with a checkpoint) after step S, as a preempted job would (0: no)
} TrainOptions;

#define TRAIN_EXIT_PREEMPTED 3 // stopped by SIGUSR1/SIGTERM after writing a checkpoint: --resume continues

// Trains as configured. `comm` is attached to MPI_COMM_WORLD. Writes RUN/config.ini, metrics.jsonl and
// summary.json (and the audit, ro->audit_path). Returns the process exit status (errors that need the
// whole job to stop end it).
int train_run(const Config *c, Comm *comm, const RunOptions *ro, const TrainOptions *o);

// One optimizer step of a single model on one batch: zero grads, forward, backward, global-norm clip,
// AdamW at the schedule's learning rate for (0-based) `step`. Returns the gradient norm before
// clipping; *lr_out gets the learning rate. Fails (naming step and party) on a non-finite loss or gradient.
double train_step(Model *m, const OptimConfig *oc, const Token *tokens, const Token *targets, int step,
                  int party, float *lr_out);

#endif
