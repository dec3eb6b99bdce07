// run.h: the party session. Every command that computes with the models (train, eval, bench, generate)
// opens one: the parties this process computes for, their private corpora and models, the backend they
// run on, the expert exchange between them; then loads a checkpoint, resumes or starts from init_from, sets
// the DP defence up, validates, writes checkpoints, and closes it.
//
// Modes: pcmoe over MPI runs each party on R ranks (parties.ranks_per_party; each rank a replica of the
// party's backbone and a share of its experts; the other ranks' experts through the exchange); --simulate
// computes every pcmoe party in one process, with the pool's experts shared; centralized runs one model on
// every party's data in one process; local and fedavg one whole model per rank. Each party keeps its corpus,
// its samplers and its private shuffle.
#ifndef PCMOE_RUN_H
#define PCMOE_RUN_H

#include <stdint.h>   // uint8_t

#include "tokenizer.h"  // Tokenizer
#include "token.h"  // Token
#include "backend.h"  // Backend
#include "comm.h"     // Comm
#include "config.h"   // Config
#include "data.h"     // Dataset
#include "exchange.h" // Exchange
#include "metrics.h"  // StepStats, MemStats
#include "model.h"    // Model
#include "optim.h"    // OptimConfig

// What the command line says of the session.
typedef struct {
    int simulate;           // --simulate: every pcmoe party in this one process (the equivalence harness)
    const char *checkpoint; // eval, bench, generate: --checkpoint DIR, the complete checkpoint to load
    const char *audit_path; // train, generate: --audit FILE, the traffic audit written at the end (NULL: none)
    const char *fault;      // --inject-fault (test hook): "counts", "foreign" or "nan" (the last party misbehaves
                            // as a peer) or "nan-grad" (its gradient turns NaN in step 6); NULL: none
} RunOptions;

typedef struct {
    int party;
    Dataset data;              // the party's private corpus
    Model model;               // pcmoe: its backbone and expert shard; local, fedavg: a whole model
    Token *tokens, *targets; // (R B, T) the step's batches of the party's ranks
    StepStats s;               // metrics of the current step
    double dp_noise;           // the DP defence (privacy.h): this party's noise multiplier
    double dp_p;               // the chance that a random training window holds a given byte of its corpus
    long dp_windows;           // training windows it has drawn so far
} Party;

typedef struct {
    const Config *c;
    Comm *comm;
    int simulate;
    int P;                     // parties in the job
    int R, local;              // pcmoe over MPI: ranks per party (parties.ranks_per_party), this rank's index in its
                               // party: each step the party draws R batches, and this rank computes batch `local`
    int n;                     // parties computed in this process: 1, or P (simulate, centralized)
    int one_process;           // every party computed here (centralized, --simulate)
    Party *party;              // (n)
    Model pool;                // simulate: every expert, shared by the parties' models
    Model central;             // centralized: the one model, batch P*B
    Token *ctok, *ctgt;      // centralized: (P*B, T)
    Exchange ex;               // pcmoe over MPI
    int exchanged;             // the exchange is in use (pcmoe over MPI, more than one party)
    int *sim_rows;             // simulate: (L, m) rows each expert processed in the step, all parties
    double *sim_seconds;       // simulate: (n) each party's step time
    const Backend *be;         // run.device: where the models live and run
    Tokenizer *tok;            // model.tokenizer (corpora are tokenized when read), or NULL: bytes
    OptimConfig oc;
    int nan_grad_step;         // test hook (--inject-fault nan-grad): the last party's gradient turns NaN here
    int dp;                    // the DP defence is on: rows crossing parties are clipped and noised (privacy.h)
    long dp_releases;          // rows one appearance of a byte can send: 2 x top_k x MoE layers
    float *party_grads;        // R > 1: (party_floats) the backbone's gradients on the host, summed in the party,
    float *party_scratch;      // and (party_floats) the sum's scratch; allocated at the first step
    size_t party_floats;
} Run;

// Opens the session for config c on the ranks of comm: threads, the job's ranks checked against the mode
// (every rank says the same), the expert communicator, the backend (run.device), each party's corpus (unless
// read_data is 0), the models at their random initialisation, and the exchange. Ends the job on every rank
// when anything fails.
void run_open(Run *r, const Config *c, Comm *comm, const RunOptions *o, int read_data);
// The job's ranks against the mode: one per party, or one for a one-process run (centralized, --simulate).
// Every rank sees the same counts, so rank 0 alone says what is wrong; the job ends with status 2.
void run_check_ranks(const Config *c, const Comm *comm, int simulate);
void run_close(Run *r);

// The model party q of this process computes with, ready for passes of batch_size sequences, and its
// (batch_size, seq_len) batch buffers (this rank's of the party's R); centralized: the one model
// (run_party_done gives back its full batch).
Model *run_party_model(Run *r, int q, Token **tokens, Token **targets);
void run_party_done(Run *r, Model *m);

// eval, bench, generate: loads the complete checkpoint o->checkpoint and sets the DP defence up. Returns the
// step the checkpoint holds; any failure ends the job on every rank.
int run_load_checkpoint(Run *r, const char *dir);
// train: the complete checkpoint of run.dir of step resume_step (resume; -1: the newest; newer ones are set
// aside), else train.init_from's weights, else the random start; then the DP defence. Returns the step to
// start from; any failure ends the job on every rank.
int run_start(Run *r, int resume, int resume_step);
// Writes this step's checkpoint on every rank; rank 0 marks it complete; then the oldest beyond
// checkpoint.keep are deleted. A failure ends the job on every rank, earlier checkpoints intact.
void run_checkpoint_write(Run *r, int step_done);

// Validation loss of every party of this process on its own held-out split (s.has_val, s.val_loss). In
// pcmoe over MPI every party validates at once, so the exchange calls of their passes line up.
void run_validate(Run *r);
// The DP accountant after a step: party q's epsilon so far into its stats (s.epsilon; nothing when the
// defence is off).
void run_dp_account(Run *r, int q);
// rows (P, width): this process's parties have written theirs at rows 0 .. n-1; with one party per rank, rank 0
// then gathers every party's (a collective of every rank). After it, rank 0 holds all P rows.
void run_gather_rows(Run *r, double *rows, int width);
// Memory of party q as held in this process (bytes by category; exchange buffers at their peak).
MemStats run_party_mem(const Run *r, int q);

// pcmoe: whether `party` trains on a batch of its own in `step` (concurrent: always; sequential: on its
// turn, rounds of P steps in an order every party draws from the shared seed without talking).
int run_party_trains(const Config *c, int step, int party);
// The sequential schedule's party of `step`.
int run_turn_of(const Config *c, int step);

// pcmoe eval CONFIG --checkpoint DIR: every party's validation loss, printed by rank 0. Returns the exit status.
int run_eval(const Config *c, Comm *comm, const RunOptions *o);

#endif
