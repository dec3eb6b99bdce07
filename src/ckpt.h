// ckpt.h: per-rank HDF5 checkpoints. Each rank writes one file of RUN/checkpoints/step_NNNNNNNN with
// everything it needs to resume and nothing it must not share (docs/checkpoints.md, the schema): party P's
// rank 0 writes party_P.h5, its rank L > 0 (parties.ranks_per_party > 1) party_P.rank_L.h5:
//   /meta                          attributes: format_version, step, party, n_parties, local_rank, mode,
//                                  schedule, config (the resolved config text), blake2b (its checksum)
//   /backbone/<tensor>             rank 0: the party's backbone, e.g. /backbone/layer_0/attn_wqkv (rows, cols)
//   /experts/layer_L/expert_E/w_*  the experts this rank holds (global ids)
//   /optim/adam_m/..., /optim/adam_v/...   AdamW moments, same paths as the weights; attribute `steps`
//                                  (int) on each adam_m dataset: that tensor's AdamW step count
//   /data/rng_party_N              rank 0: (4) uint64 state of party N's batch sampler
//   /data/shuffle_rng              (4) uint64 state of this rank's private row shuffle (pcmoe)
// Every dataset carries attribute `blake2b`, the BLAKE2b-256 of its path, shape, bytes (and `steps`), verified
// on every read; files of format 1 (before checksums) have none and load unverified, the callers warn.
// A file is written under a temporary name and renamed; a step directory is complete only when its
// COMPLETE marker exists, written by rank 0 after every rank's file is in place.
#ifndef PCMOE_CKPT_H
#define PCMOE_CKPT_H

#include <stddef.h> // size_t

#include "config.h" // Config
#include "model.h"  // Model
#include "rng.h"    // Rng

#define CKPT_FORMAT_VERSION 2 // written now: checksummed
#define CKPT_FORMAT_OLDEST 1  // still read: format 1, written before checksums (loaded unverified)
#define CKPT_MARKER "COMPLETE"

// What /meta says of a checkpoint file.
typedef struct {
    int version;        // format_version
    int step;           // optimizer steps taken
    int party, local;   // whose file it is: its party, the writing rank's index in the party
    int parties, ranks; // its run's parties.count, parties.ranks_per_party (ranks: set by the loads only)
} CkptMeta;

typedef struct {
    int step;              // optimizer steps taken
    int party;             // whose file this is
    int local;             // the writing rank's index in its party (0: it writes the backbone and samplers too);
                           // ckpt_load_party: the reading rank's, whose private shuffle it takes
    int stored_parties;    // set by the loads: parties.count and parties.ranks_per_party of the run that wrote
    int stored_ranks;      // the checkpoint
    int joined;            // set by ckpt_load_party: the party was not in that run (it joins now)
    int version;           // set by the loads: the files' format (1: no checksums, nothing was verified)
    long verified;         // set by the loads: datasets (and /meta groups) whose checksums were verified
    int damaged;           // set by a load that failed: the failure was damage (a checksum, unreadable HDF5)
    const Config *c;       // the run's resolved config (written as text)
    Model *m;              // weights, AdamW state
    Rng *data_rng;         // (n_data) batch samplers of parties first_data .. first_data + n_data - 1
    int first_data, n_data;
    Rng *shuffle;          // the private shuffle RNG, or NULL
} CkptState;

// Writes `path` (through path.tmp and a rename). Returns 0, or 1 with a message in err.
int ckpt_save(const char *path, const CkptState *s, char *err, size_t len);
// Reads the one file `path` into s: what it holds of s's model (the model must have its layout: the party's
// backbone only in a rank-0 file) and its samplers. Everything read is validated: format, party, party count,
// mode, the model keys of the stored config against s->c, every dataset's presence, type and shape. Returns 0,
// or 2 with a one-line message naming the file and what is wrong.
int ckpt_load(const char *path, CkptState *s, char *err, size_t len);
// Reads party s->party's state from step directory dir, whatever layout wrote it: the backbone and samplers
// from party_P.h5, each expert the model holds from the file of the rank that held it (pcmoe re-shards the pool
// when the party count or the ranks per party changed), the private shuffle from the file of rank s->local
// when there is one (else s's is kept). A pcmoe party beyond the checkpoint's parties joins: it reads only its
// experts (s->joined). Every file it opens is validated as ckpt_load does, and must hold the step and layout of
// party_0.h5; a missing file (an expert's owner that took its files away) is an error naming it. Returns 0 or
// 2, as ckpt_load.
int ckpt_load_party(const char *dir, CkptState *s, char *err, size_t len);
// Reads only /meta of a checkpoint file (its checksum verified): the stored config text and meta (ranks: 0).
// Returns 0 or 2.
int ckpt_peek(const char *path, char *config_text, size_t text_len, CkptMeta *meta, char *err, size_t len);
// Verifies every dataset of a checkpoint file, and /meta, against their checksums, each read whole.
// *verified (when not NULL): how many; *version: the file's format (1: nothing to verify). Returns 0, or 2
// with a one-line message naming the file and the first dataset that does not verify.
int ckpt_verify(const char *path, long *verified, int *version, char *err, size_t len);
// 1 when a file name in a step directory is a checkpoint file's (party_*.h5), else 0.
int ckpt_is_file_name(const char *name);
// ckpt_verify on every party_*.h5 of step directory dir. Returns 0, or 2 naming the first that fails.
int ckpt_verify_dir(const char *dir, char *err, size_t len);
// The newest complete checkpoint of run_dir before step `below` whose files (those in its directory) all
// verify; -1 when none does.
int ckpt_newest_verified(const char *run_dir, int below);

// Reads the weights of every tensor model m holds from checkpoint step directory dir, one dataset at a
// time into m's own buffers: backbone tensors (unless experts_only) from DIR/party_<backbone_party>.h5,
// expert e from the file of the rank that held it when the pool was sharded over expert_parties parties of
// expert_ranks ranks (pool_owner_rank; 1, 1: every expert in party_0.h5). Returns 0, or 2 with the file and
// dataset named in err. Each file it reads from is opened once and verified whole first (as ckpt_verify).
int ckpt_read_weights(Model *m, const char *dir, int backbone_party, int experts_only, int expert_parties,
                      int expert_ranks, char *err, size_t len);

// The paths of a checkpoint, built here only:
// RUN/checkpoints/step_NNNNNNNN
void ckpt_step_dir(char *out, size_t len, const char *run_dir, int step);
// DIR/party_R.h5: party R's file in step directory DIR (its rank 0's)
void ckpt_party_file(char *out, size_t len, const char *dir, int party);
// DIR/party_P.h5 (local 0) or DIR/party_P.rank_L.h5: the file of party P's rank L
void ckpt_rank_file(char *out, size_t len, const char *dir, int party, int local);
// Removes every file of party P in DIR (party_P.h5, party_P.rank_*.h5: of any ranks per party).
void ckpt_remove_party(const char *dir, int party);
// DIR/COMPLETE: the marker rank 0 writes once every party's file is in place
void ckpt_marker_file(char *out, size_t len, const char *dir);
// 1 when step directory DIR holds its marker (a complete checkpoint)
int ckpt_is_complete(const char *dir);
// The newest complete checkpoint step under RUN/checkpoints (-1: none). Newer incomplete directories
// are listed in `ignored` (comma-separated) when not NULL.
int ckpt_latest(const char *run_dir, char *ignored, size_t ignored_len);
// Complete checkpoint steps, ascending, into steps (at most max); returns how many there are.
int ckpt_list(const char *run_dir, int *steps, int max);

#endif
