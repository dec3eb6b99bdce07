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
    double val_loss;      // mean cross-entropy on the validation split (nats per token; byte-level: per byte)
    double val_bpb;       // the same in bits per byte of text (val_loss / ln 2 / the split's bytes per token)
    double bytes_sent;    // bytes this party sent to other parties during the step
    double bytes_recv;    // and received
    MemStats mem;         // bytes by category (buffers: peak exchange buffers)
    double rss_peak;      // peak resident set size of the process, bytes
    double device_peak;   // run.device = cuda: the most device memory the process's backend held, bytes (else 0)
    int has_dp;           // the DP defence is on (privacy.clip_norm): the fields below are valid
    double epsilon;       // the party's epsilon so far (at privacy.delta; privacy.h), over the steps it trained
    double noise_multiplier; // its noise multiplier (privacy.noise_multiplier, or chosen for privacy.target_epsilon)
} StepStats;

// StepStats <-> a fixed array of doubles (what a party sends to rank 0 with privacy.share_metrics)
#define STEP_STATS_DOUBLES 26
void step_stats_pack(const StepStats *s, double *out);
void step_stats_unpack(StepStats *s, const double *in);

typedef struct {
    char run_dir[CONFIG_PATH_LEN];
    char suffix[32];      // "" for the job's files, ".party_N" for one party's own (share_metrics = false)
    char jsonl_path[CONFIG_PATH_LEN + 64];
    FILE *jsonl;          // RUN/metrics<suffix>.jsonl
    long jsonl_good;      // its length up to the last line known to be written (a failed write is cut back to it)
    int tty;              // progress is redrawn in place (stderr is a terminal)
    double t_start;
} Metrics;

// Creates the run directory and opens RUN/metrics<suffix>.jsonl; with write_config also writes
// RUN/config.ini. Returns 0; 2 with a one-line message in err when the run directory is not usable (an
// existing metrics file is never overwritten unless `force`); 1 when a file could not be written (disk
// full, quota, I/O error).
// resume_step >= 0: continue an existing file, dropping lines of steps after resume_step (written
// after the checkpoint the run resumes from).
int metrics_open(Metrics *mt, const Config *c, const char *suffix, int force, int write_config, int resume_step,
                 char *err, size_t len);
// One JSON line for one party's step. Returns 0, or 1 with the message in err when the line could not be
// written; the file is then cut back to its last complete line.
int metrics_log(Metrics *mt, const StepStats *s, char *err, size_t len);
// The job's progress line over n parties' stats of this step (mean train and validation loss of the
// parties that have them, summed tokens/s): "step 120/500 | loss 2.31 | val 2.41 (3.48 bpb) | 12.3k tok/s | ETA 0:41".
void metrics_progress(Metrics *mt, const StepStats *s, int n, int total_steps, int print_plain);
// RUN/summary<suffix>.json: run totals and, per party, its last stats and best validation loss. Written
// whole or not at all (through a temporary file). Returns 0, or 1 with the message in err.
int metrics_summary(Metrics *mt, const Config *c, const StepStats *last, const double *best_val, int n, int steps,
                    double tokens, char *err, size_t len);
// Closes the metrics file. Returns 0, or 1 with the message in err.
int metrics_close(Metrics *mt, char *err, size_t len);

#endif
