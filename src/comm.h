// comm.h: who talks to whom, and the audit of everything that crosses a party boundary.
//
// Ranks map to parties as party = rank / R, R = parties.ranks_per_party: party p is ranks [p R, (p + 1) R), and a
// rank's index in its party is its local rank. Expert traffic runs on `expert`, every rank of the pool, where
// rank s is party s / R's local rank s % R (with R = 1, rank i is party i). `leaders` holds each party's local
// rank 0 (rank i is party i): metrics, fedavg and export go there. `party_comm` is the party's own ranks, for
// its data-parallel backbone. Every message goes through the functions below, and each of them records its
// bytes in one place, comm_account(): per (kind, peer party) when it crosses a party line, per kind when it
// stays inside the party. --audit writes those totals.
#ifndef PCMOE_COMM_H
#define PCMOE_COMM_H

#include <mpi.h>    // MPI_Comm
#include <stddef.h> // size_t
#include <stdint.h> // uint64_t

#include "config.h" // CONFIG_MAX_PARTIES

typedef enum {
    MSG_ROUTING_COUNTS, // rows per expert, sender -> expert owner
    MSG_EXPERT_ROWS,    // hidden rows routed to a remote expert, sender -> owner
    MSG_EXPERT_OUTPUTS, // the expert's outputs for them, owner -> sender
    MSG_OUTPUT_GRADS,   // d loss / d expert output, sender -> owner
    MSG_INPUT_GRADS,    // d loss / d expert input, owner -> sender
    MSG_METRICS,        // scalar metrics, party -> rank 0 (privacy.share_metrics)
    MSG_FEDAVG_WEIGHTS, // fedavg only: every weight, averaged across parties
    MSG_CONTROL,        // agreements of one or two ints: did every rank start cleanly; did any get a stop signal
    MSG_AUDIT,          // the audit totals themselves, gathered to rank 0 for --audit
    MSG_EXPORT_EXPERTS, // pcmoe export only: an owner's expert weights, owner -> the exporting party
    MSG_BACKBONE_GRADS, // inside a party only: its ranks' backbone gradients, summed (ranks_per_party > 1)
    MSG_PARTY_STATS,    // inside a party only: its ranks' routing counts, losses and expert gradient norms, summed
    MSG_KIND_COUNT
} MsgKind;
extern const char *const MSG_KIND_NAMES[]; // "routing_counts", "expert_rows", ...

#define COMM_COLLECTIVE CONFIG_MAX_PARTIES // peer index for reductions, whose peers are all parties

typedef struct Comm {
    MPI_Comm world;        // every rank of the job
    MPI_Comm expert;       // every rank of the pool; rank s is party s / R, local rank s % R (MPI_COMM_NULL before
                           // comm_setup)
    MPI_Comm leaders;      // local rank 0 of every party; rank i is party i (MPI_COMM_NULL on the other ranks)
    MPI_Comm party_comm;   // the ranks of this rank's party; rank i is local rank i
    MPI_Comm met;          // parties that started their own jobs (meet.h): every rank met, in arrival order
                           // (world is it, ordered by party); MPI_COMM_NULL under one mpirun
    int rank, size;        // in world
    int party, n_parties;  // this rank's party and the number of parties (1 in a one-process run)
    int ranks_per_party;   // R
    int local;             // this rank's index in its party
    double sent[MSG_KIND_COUNT][CONFIG_MAX_PARTIES + 1]; // bytes sent per (kind, peer party) across party lines
    double recv[MSG_KIND_COUNT][CONFIG_MAX_PARTIES + 1]; // bytes received per (kind, peer party)
    double intra_sent[MSG_KIND_COUNT], intra_recv[MSG_KIND_COUNT]; // bytes to / from the party's own ranks
    double rows_routed[CONFIG_MAX_PARTIES];              // rows this rank's routers sent to each other party
    int *counts;           // (4, n_peers) scratch of comm_alltoallv_rows: element counts, offsets
    double peer_timeout;   // parties.peer_timeout: seconds a wait may last before silent ranks stop the job (0: none)
    int watch_token;       // what a ping and its answer carry
    MPI_Request *pongs;    // (size) comm_wait: the answer awaited from each rank (MPI_REQUEST_NULL: none)
    int *pong_values;      // (size)
    struct Seal *seal;     // parties.keys: the pairs' session keys (seal.h); NULL: everything travels in the clear
    uint64_t *seq_out, *seq_in; // (size) messages sealed for / opened from each world rank (their nonces)
    int step, layer;       // the training step and MoE layer the messages sealed now belong to (-1: none)
    unsigned char *scratch[2];  // sealing's send and receive buffers, grown as needed
    size_t scratch_len[2];
    double seal_sent[MSG_KIND_COUNT], seal_recv[MSG_KIND_COUNT]; // bytes sealing added (tags), per kind
} Comm;

// Attaches to MPI_COMM_WORLD (after MPI_Init). Accounting starts at zero.
void comm_init(Comm *c);
// Creates the communicators for n_parties parties of ranks_per_party ranks each. The caller has checked
// that the job has n_parties x ranks_per_party ranks.
void comm_setup(Comm *c, int n_parties, int ranks_per_party);
// parties.keys (after comm_setup, on every rank): reads this party's keys file (seal_load), draws the session
// (every rank adds a random share) and checks the keys: every rank seals a message for every rank of the other
// parties, which must open it. From then on everything that crosses a party line is sealed. A bad file or a
// key that does not match ends the job on every rank, the failing ones naming the file or the peer.
void comm_seal_start(Comm *c, const char *keys_path);
void comm_free(Comm *c);

// Records bytes sent to / received from party `peer` (or COMM_COLLECTIVE) under `kind`. The only place
// traffic is counted.
void comm_account(Comm *c, MsgKind kind, int peer, double sent, double recv);
// The same for a peer named by its rank s in `expert`: to its party, or inside this party.
void comm_account_rank(Comm *c, MsgKind kind, int s, double sent, double recv);
// Total bytes sent and received so far, all kinds.
double comm_total_sent(const Comm *c);
double comm_total_recv(const Comm *c);

// Completes the n non-blocking MPI requests req (every wait of this file goes through here): polls them, answers
// the other ranks' pings meanwhile, and when they have not completed within c->peer_timeout seconds (0: no
// limit), ends the job (MPI_Abort) with one line naming the first rank that did not answer a ping: a silent
// peer. `what` names the call ("expert_rows", "an agreement", ...).
void comm_wait(Comm *c, MPI_Request *req, int n, const char *what);
// Agreement on world: returns 1 if `ok` on every rank, else 0, with the lowest failing rank in
// *first_bad and the number of failing ranks in *n_bad (either may be NULL).
int comm_agree(Comm *c, int ok, int *first_bad, int *n_bad);
// This rank's index among the ranks on its node (MPI_COMM_TYPE_SHARED), for choosing its GPU.
int comm_local_rank(Comm *c);
// Whether the MPI library accepts CUDA device buffers, as it says now (Open MPI's MPIX_Query_cuda_support):
// 1 yes, 0 no, -1 it cannot say (an MPI without Open MPI's CUDA extension).
int comm_cuda_support(void);
// Agreement on world: the largest of every rank's `v` (for example a status: 0 go on, 1 stop, 2 failed).
int comm_max_int(Comm *c, int v);
// Ends the job when any rank failed (rc != 0 there: 2 bad input, 1 a file that could not be written),
// every rank with the worst status. A collective: every rank calls it at the same point, so MPI shuts
// down cleanly, without a hang. The failing ranks print their message err; when every rank failed (the
// same cause everywhere), only the lowest does. Returns when no rank failed.
void comm_stop_if_failed(Comm *c, int rc, const char *err);
// All-to-all of `per_peer` ints with every other rank of `expert` (the entry for oneself is copied, not sent).
void comm_alltoall_ints(Comm *c, MsgKind kind, const int *send, int *recv, int per_peer);
// All-to-all-v of rows of `width` floats on `expert`: send_rows[s] rows starting at row send_offs[s] of `send`
// go to rank s, recv_rows[s] rows from rank s land at row recv_offs[s] of `recv`. Entries for oneself
// must be 0: a rank's rows for its own experts never touch MPI.
void comm_alltoallv_rows(Comm *c, MsgKind kind, const float *send, const int *send_rows, const int *send_offs,
                         float *recv, const int *recv_rows, const int *recv_offs, int width);
// In-place sum of n floats over all parties, on `leaders` (fedavg).
void comm_allreduce_floats(Comm *c, MsgKind kind, float *buf, size_t n);
// In-place sum of n floats over the ranks of this party, the same bits on each of them and in every run with
// the same R: every rank sums one slice of buf, its ranks' parts in local-rank order, and the slices are then
// gathered. scratch: n floats.
void comm_party_sum_floats(Comm *c, MsgKind kind, float *buf, size_t n, float *scratch);
// In-place sum of n doubles over the ranks of this party, in local-rank order (the same bits everywhere).
void comm_party_sum_doubles(Comm *c, MsgKind kind, double *buf, int n);
// n floats to party `to` / from party `from` on `leaders` (blocking; a message of at most 2^30 floats at a
// time).
void comm_send_floats(Comm *c, MsgKind kind, int to, const float *buf, size_t n);
void comm_recv_floats(Comm *c, MsgKind kind, int from, float *buf, size_t n);
// Gathers n doubles from every party's leader to rank 0 (recv: n * n_parties doubles on rank 0, else unused).
// The leaders call it; other ranks must not.
void comm_gather_doubles(Comm *c, MsgKind kind, const double *send, int n, double *recv);

// Writes every rank's totals to `path` as JSON (gathered to rank 0, which writes the file whole or not at
// all). Returns 0, or 1 on rank 0 with "PATH: cannot write: why" in err when the file could not be written.
int comm_write_audit(Comm *c, const char *path, char *err, size_t len);

#endif
