// record.h: the reconstruction study's recorder (privacy.record_received; STUDY ONLY, never with real
// private data). One tap on the exchange: at four points of every MoE layer's exchange it appends what
// crossed to the party's record files in DIR, and the truth behind it, which `pcmoe attack` scores against:
//   received_party_R.bin         the rows owner R received (forward)
//   truth_party_R.bin            the true input byte of every row sender R sent (forward)
//   received_grads_party_R.bin   the output-gradient rows owner R received (backward)
//   truth_grads_party_R.bin      the true target byte (the byte after each row's) of every gradient row R sent
//   received_experts_party_R.bin the expert (global id, int32) each row owner R received reached
// Each file is a sequence of blocks: int32 layer, int32 peer, int32 rows, int32 width (d_model; 1 for truth
// and experts), then rows*width float32 (rows), uint8 (truth) or int32 (experts), in the order the rows
// travelled. Rows are recorded as they crossed, after the sender's defence (clipping, noise).
#ifndef PCMOE_RECORD_H
#define PCMOE_RECORD_H

#include <stddef.h> // size_t

#include "token.h"  // Token

struct Exchange; // exchange.h

// Where the exchange calls the tap.
typedef enum {
    TAP_ROWS_SENT,      // forward, before this party's rows leave: the true byte of each row, per owner
    TAP_ROWS_RECEIVED,  // forward, at the owner: the rows from each peer, and the expert each reached
    TAP_GRADS_SENT,     // backward, before the output-gradient rows leave: each row's target byte, per owner
    TAP_GRADS_RECEIVED, // backward, at the owner: the output-gradient rows from each peer
} TapPoint;

typedef struct Recorder Recorder;

// Creates DIR and party `party`'s five record files (truncated). Ends the job when it cannot.
Recorder *record_open(const char *dir, int party);
// The bytes of the batch the next forward and backward passes compute: tokens, targets (N rows of the
// model's batch). The truth of the rows sent; the model tells it at the start of each forward.
void record_batch(Recorder *r, const Token *tokens, const Token *targets);
// The tap: what crossed at `at` of `layer`'s exchange (ex's layouts as they are at that point), in host
// memory: row_choice (N*k), this party's packed row -> choice of the batch (NULL when it only serves), with
// its k; received, the rows in ex's work buffer (the *_RECEIVED points). A failed write is kept for
// record_commit.
void record_tap(Recorder *r, TapPoint at, const struct Exchange *ex, int layer, const int *row_choice, int k,
                const float *received);
// Ends a step of recording. Returns 0 when every record file was written whole; otherwise 1 with
// "privacy.record_received: FILE: cannot write: why" in err, every file cut back to the end of the last
// committed step (so the received rows and their true bytes stay aligned block for block).
int record_commit(Recorder *r, char *err, size_t len);
void record_close(Recorder *r);

#endif
