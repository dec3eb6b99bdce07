// train.h: the training run of one party: the step loop, evaluation, metrics.
#ifndef PCMOE_TRAIN_H
#define PCMOE_TRAIN_H

#include "config.h" // Config
#include "data.h"   // Dataset
#include "model.h"  // Model
#include "optim.h"  // OptimConfig

// Trains as configured, writing RUN/config.ini, metrics.jsonl and summary.json. `force` allows
// overwriting an existing run directory's metrics. Returns 0 on success (errors end the process).
int train_run(const Config *c, int force);

// One optimizer step on one batch: zero grads, forward, backward, global-norm clip, AdamW at the
// schedule's learning rate for (0-based) `step`. Returns the gradient norm before clipping; *lr_out gets
// the learning rate used. Fails (naming step and party) on a non-finite loss or gradient.
double train_step(Model *m, const OptimConfig *oc, const uint8_t *tokens, const uint8_t *targets, int step,
                  int party, float *lr_out);

// Mean cross-entropy of the model over the first n_batches validation batches.
double train_evaluate(Model *m, const Dataset *ds, int n_batches, uint8_t *tokens, uint8_t *targets);

#endif
