// metrics.h: what a run writes: RUN/config.ini (the resolved config), RUN/metrics.jsonl (one JSON object
// per logged step), RUN/summary.json (at the end), and a one-line progress display on the terminal.
#ifndef PCMOE_METRICS_H
#define PCMOE_METRICS_H

#include <stdio.h>  // FILE

#include "config.h" // Config
#include "model.h"  // MemStats

typedef struct {
    int step;             // 1-based step just finished (0: before training)
    int party;
    int has_train;        // train_* fields valid
    double train_loss;    // total loss of the step's batch (ce + aux terms)
    double ce, aux, z;    // its parts
    float lr;
    double grad_norm;     // before clipping
    double tokens_per_s;  // training tokens per second of this step
    double flops;         // FLOPs of this step (GEMMs + attention)
    int has_val;          // val_loss valid
    double val_loss;      // mean cross-entropy on the validation split (nats per byte)
} StepStats;

typedef struct {
    char run_dir[CONFIG_PATH_LEN];
    FILE *jsonl;          // RUN/metrics.jsonl
    int tty;              // progress is redrawn in place (stderr is a terminal)
    double t_start;
} Metrics;

// Creates the run directory, writes config.ini and opens metrics.jsonl. Refuses (exit 2) to overwrite
// an existing metrics.jsonl unless `force`.
void metrics_open(Metrics *mt, const Config *c, int force);
void metrics_log(Metrics *mt, const StepStats *s);
// Progress line: "step 120/500 | loss 2.3100 | val 2.41 (3.48 bpb) | 12.3k tok/s | ETA 0:41".
void metrics_progress(Metrics *mt, const StepStats *s, int total_steps, int print_plain);
void metrics_summary(Metrics *mt, const StepStats *last, double best_val, int steps, double tokens,
                     size_t n_params, MemStats mem);
void metrics_close(Metrics *mt);

#endif
