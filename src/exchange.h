// exchange.h: the PC-MoE expert exchange, the heart of pcmoe.
//
// Expert e of every MoE layer lives on party e % N (pool.h), and inside it on one of its R ranks
// (parties.ranks_per_party). The exchange's peers are the N R ranks of the pool: rows for expert e go straight
// to the rank that holds it, be it in another party or in the sender's own. At each MoE layer every rank calls
// exchange_forward, and later exchange_backward, in the same order, whether or not it has a batch of its own
// (below, "party" is a rank of it; with R = 1 the two are the same):
//
//   sender (has tokens)                           owner (holds experts)
//   router, top-k, pack rows by expert, grouped
//   by owner, shuffled privately        ---- (expert id, row count) pairs (MSG_ROUTING_COUNTS) --->
//                                             checks: ids it owns, counts within bounds
//                                       ---- rows for the owner's experts (MSG_EXPERT_ROWS) --->
//                                             runs each of its experts on all rows it got
//                                             (its own party's rows too, copied, never sent),
//                                             in passes of at most EXCHANGE_PASS_ROWS rows (grouped calls)
//                                       <--- expert outputs (MSG_EXPERT_OUTPUTS) ----
//                                             (with privacy.check_finite every received row, either way,
//                                              is checked to be finite)
//   combines them with its gate weights,
//   which never leave it
//   backward: d loss / d outputs        ---- (MSG_OUTPUT_GRADS) --->
//                                             accumulates its experts' weight gradients
//                                             (recomputing their hidden activations first
//                                             with model.recompute_experts)
//                                       <--- d loss / d inputs (MSG_INPUT_GRADS) ----
//
// Nothing else crosses: no token ids, labels, gate weights, router or backbone tensors. Anything wrong
// in what a peer sends stops the job (MPI_Abort) with a message naming that party (and its rank). Rows between
// two ranks of one party stay inside the party: --audit counts them apart, and the DP defence leaves them be.
//
// On a device (run.device = cuda) rows, expert activations and gradients stay in device memory; only
// the rows that cross parties leave it. MPI gets them one of two ways (run.cuda_aware_mpi):
//   staged: the sender copies each peer's block of packed rows into a page-locked host buffer (stage),
//           MPI moves host memory, and the receiver copies the blocks back into device memory;
//   direct: MPI is CUDA-aware and is handed the device buffers themselves.
// Either way the same rows cross in the same order, so --audit and the study's recorder (record.h) see the
// same bytes.
#ifndef PCMOE_EXCHANGE_H
#define PCMOE_EXCHANGE_H

#include <stddef.h> // size_t

#include "moe.h"    // MoeActs, MoeScratch, ExpertSet
#include "rng.h"    // Rng

struct Backend;     // backend.h
struct Recorder;    // record.h
struct Comm;        // comm.h: the exchange is the only module below the commands that talks MPI

// Owner-side state of one MoE layer, from its forward to its backward. Rows are expert-major: local
// expert j's rows first, and within them peer 0's rows, then peer 1's, and so on.
// Buffers marked [backend] come from the backend's alloc_device (device memory on cuda), [transit] from
// alloc_device when MPI can read them (cpu, or direct), else from alloc_pinned, [host] from malloc.
typedef struct {
    int rows;          // rows served in the last forward
    int *from;         // [host] (P, max_local) rows from peer q for local expert j
    size_t at;         // its first row in the exchange's inputs (and hidden) arenas
} ServeLayer;

typedef struct Exchange {
    const struct Backend *be; // where the experts run and their buffers live
    int staged;            // rows cross through page-locked host buffers (a device backend, MPI not CUDA-aware)
    int recompute;         // model.recompute_experts: layers keep only x; h, u, a are recomputed in the backward
    struct Comm *comm;
    int N, R;              // parties, and ranks per party
    int P, peer;           // peers (the pool's N R ranks), and this rank's index among them
    int m, d, f, n_layers;
    int n_local;           // experts this rank owns
    int *local;            // (n_local) their global ids (pool_rank_expert)
    int max_local;         // the most experts a rank owns: width of one count message
    int *order;            // (m) packing order for senders: experts grouped by owner rank, rank 0 first
    int max_rows;          // most rows one party can route in one pass: B*T*k
    int check_finite;      // check received rows and gradients for NaN / Inf
    float noise_std;       // Gaussian noise on every row sent to another party (privacy.noise_std)
    float clip_norm;       // the DP defence (privacy.h): rows sent are clipped to this L2 norm (0: off) ...
    float grad_clip_norm;  // ... output-gradient rows sent to this one ...
    float noise_multiplier; // ... and get Gaussian noise of std noise_multiplier x their clip norm
    Rng noise;             // its private RNG
    struct Recorder *tap;  // study only (privacy.record_received): the recorder the exchange taps (record.h), or NULL
    int fault;             // test hook: 0 none, 1 bad counts, 2 foreign expert id, 3 NaN rows
    int fault_party;       // the peer that misbehaves
    int *send_counts, *recv_counts; // (P, 2 * max_local) per peer: expert ids, then row counts
    int *within;           // (P, max_local)
    int *send_rows, *send_offs, *recv_rows, *recv_offs; // (P)
    int *stage_offs;       // (P) staged: where peer p's block starts in stage
    float *work;           // [transit] (work_cap, d) rows from / to the other parties, one block per peer: the
                           // layer's inputs, replaced pass by pass by their outputs (forward); the outputs'
                           // gradients, replaced by the inputs' (backward)
    size_t work_cap;
    float *stage;          // [pinned] staged: (stage_cap, d) this rank's own rows on their way out or back
    size_t stage_cap;
    float *inputs;         // [backend] (arena_cap, d) the rows every MoE layer served in this step's forward, kept
                           // for its backward: layer after layer, layer l's from row layers[l].at
    float *hidden[3];      // [backend] (arena_cap, f) without recompute: their expert activations h, u, a
    size_t arena_cap;      // rows the arenas hold: the most one step has needed so far
    // With recompute, experts run pass by pass (an expert's rows, at most EXCHANGE_PASS_ROWS at a time), the
    // passes of several experts packed into one grouped call while they fit EXCHANGE_PASS_ROWS rows in all:
    float *h, *u, *a;      // [backend] (expert_cap, f) the hidden activations of one pack
    float *yp;             // [backend] (expert_cap, d) one pack's outputs (forward), or their gradients replaced by
                           // the inputs' (backward), on their way to / from where the rows came from
    float *dh, *du, *da;   // [backend] (expert_cap, f) backward scratch of one pack
    size_t expert_cap;     // rows of the largest pack
    // Without, every owned expert runs on all its rows at once (one grouped call: ffn_forward_groups), its
    // backward's hidden gradients in place of its activations in the arenas:
    float *outputs;        // [backend] (outputs_cap, d) a layer's outputs in the serve layout (forward), or their
                           // gradients replaced by the inputs' (backward)
    size_t outputs_cap;
    ServeLayer *layers;    // (n_layers); unused for dense layers
    size_t bytes, peak;    // exchange buffer bytes now, and the most ever held (device and host)
} Exchange;

// An owner runs each expert on its rows in passes of at most this many rows, so the hidden-width scratch
// stays small however unbalanced the routing (at initialisation one expert may get several times its share).
#define EXCHANGE_PASS_ROWS 128

// be: the backend of this party's model; direct: hand MPI the backend's buffers even when they are
// device memory (run.cuda_aware_mpi resolved to on). Ignored on cpu.
// recompute: model.recompute_experts.
void exchange_create(Exchange *ex, const struct Backend *be, int direct, struct Comm *comm, int m, int d, int f,
                     int n_layers, int max_rows, int check_finite, int recompute);
// The bytes an exchange holds (pcmoe plan) when its party owns experts of m among P parties and, in each of
// its n_moe MoE layers (of n_layers), serves `served` rows (its own among them), receives in_transit from
// the other parties and sends going_out away.
size_t exchange_plan_bytes(int P, int m, int d, int f, int n_layers, int n_moe, size_t served, size_t in_transit,
                           size_t going_out, int staged, int recompute);
// Test hook (--inject-fault): peer `party` sends "counts" beyond bounds, a "foreign" expert id, or
// "nan" rows. Fails on an unknown kind.
void exchange_set_fault(Exchange *ex, const char *kind, int party);
void exchange_free(Exchange *ex);

// Forward of MoE layer `layer`: fills a->ye for every packed row (a may be NULL when this party has no
// batch and only serves). w: this party's experts (non-NULL for the ones it owns).
void exchange_forward(Exchange *ex, int layer, MoeActs *a, ExpertSet w, double *flops);
// Backward of the same layer: fills s->dxe for every packed row from s->dye (a, s NULL when only
// serving) and accumulates the owned experts' weight gradients into dw.
void exchange_backward(Exchange *ex, int layer, const MoeActs *a, MoeScratch *s, ExpertSet w, ExpertSet dw,
                       double *flops);
// A party of several ranks: layer a's routing counts and probability sums, summed over the party's ranks (traffic
// inside the party), into a->party_counts and a->party_rows, and a->aux becomes the party batch's aux loss.
void exchange_party_route(Exchange *ex, MoeActs *a);
// Rows owned expert e processed in `layer`'s last forward, from all parties (0 if not held by this rank).
int exchange_expert_rows(const Exchange *ex, int layer, int e);

#endif
