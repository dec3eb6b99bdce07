// moe.h: the Mixture-of-Experts layer on one party: router, top-k gating, packing token rows by expert,
// running the experts on their rows only, combining the outputs, and the backward of all of it.
// Expert cost scales with top_k: each expert runs one GEMM chain on exactly the rows routed to it.
#ifndef PCMOE_MOE_H
#define PCMOE_MOE_H

#include <stddef.h> // size_t
#include <stdint.h> // uint8_t

#include "rng.h"    // Rng

// Shapes: N token rows, d model width, m experts, k experts per token, f expert hidden width.
// A "choice" is one (token n, rank j) pair, indexed n*k + j; a "packed row" is a row of the expert
// buffers, where each expert's rows are contiguous: expert e owns rows [offsets[e], offsets[e] + counts[e]).
// Experts are laid out in a given order (pcmoe: grouped by owner party, so each owner's rows are one
// contiguous block to send).
typedef struct {
    int N, d, m, k, f;
    float *logits;     // (N, m) router logits: probs' buffer (each row's softmax is taken in place)
    float *probs;      // (N, m) softmax of the logits
    float *lse;        // (N) logsumexp of the logits (z-loss)
    int *topk;         // (N, k) chosen experts, most probable first
    int renorm;        // 1: the gates are the chosen probabilities renormalised to sum to 1 (HF's norm_topk_prob);
                       // 0: the chosen probabilities themselves (moe_acts_alloc sets 1)
    float *gates;      // (N, k) the chosen experts' weights
    float *gate_sum;   // (N) sum of the chosen probabilities (the renormaliser; 1 without renorm)
    int *counts;       // (m) rows routed to each expert (host memory)
    int *offsets;      // (m) first packed row of each expert (host memory)
    int *dev_index;    // (2m) counts then offsets in the backend's memory: the device's own (cuda's)
    int *row_choice;   // (N*k) packed row -> choice
    int *choice_row;   // (N*k) choice -> packed row
    int *perm;         // (N*k) the private shuffle's permutation (scratch of moe_route; host memory)
    int *fill;         // (m) scratch of moe_route's counting sort (host memory)
    float *xe;         // (N*k, d) packed expert inputs (a pcmoe party: ye's buffer, see moe_acts_alloc)
    float *he, *ue;    // (N*k, f) expert gate / up projections
    float *ae;         // (N*k, f) silu(he) * ue
    float *ye;         // (N*k, d) packed expert outputs
    const float *inp;  // (N, d) the rows routed (the FFN norm's output; read by the DP defence's clipping backward)
    double *psum;      // (m) sum over the rows of probs[n, e] (host memory; the aux loss's mean probabilities)
    int *party_counts; // (m) a party of several ranks: counts summed over its ranks (host memory; set by the
    int party_rows;    // exchange, with party_rows their rows: the aux loss is the party batch's). 0: one rank
    double aux;        // Switch load-balancing loss of this layer: m * sum_e frac_e * meanprob_e
    double z;          // router z-loss of this layer: mean_n lse_n^2
} MoeActs;

// Backward scratch, shared by all MoE layers.
typedef struct {
    float *dye;        // (N*k, d) not allocated here: the caller points it at the layer's ye before
                       // moe_combine_backward, which overwrites each output row with its gradient
    float *dxe;        // (N*k, d) (a pcmoe party: not allocated here, see moe_scratch_alloc)
    int dxe_owned;     // 1: dxe was allocated with this scratch
    float *dhe, *due, *dae; // (N*k, f)
    float *dgates;     // (N, k)
    float *dlogits;    // (N, m)
    float *aux_grad;   // (m) scratch of moe_route_backward (host memory)
} MoeScratch;

// The experts of one layer: m pointers each, NULL for an expert whose weights live elsewhere.
typedef struct {
    float *const *gate; // m x (f, d)
    float *const *up;   // m x (f, d)
    float *const *down; // m x (d, f)
} ExpertSet;

// expert_acts = 0 leaves out he, ue, ae (and the scratch's dhe, due, dae): a pcmoe party whose experts run
// at their owners through the exchange never fills them. xe_in_ye = 1: the packed inputs are ye's buffer
// (a pcmoe party: every input row has been sent, or copied to its owner's side, before any output comes
// back to the same rows).
// alloc (zero-filled memory; NULL: the host's) and release (NULL: free) are the backend's.
void moe_acts_alloc(MoeActs *a, int N, int d, int m, int k, int f, int expert_acts, int xe_in_ye, size_t *bytes,
                    void *(*alloc)(size_t));
void moe_acts_free(MoeActs *a, void (*release)(void *));
// with_dxe = 0 leaves dxe out: the caller points it at the layer's ye before the backward (a pcmoe party:
// the exchange writes each row's input gradient where its output gradient was, after that has been read).
void moe_scratch_alloc(MoeScratch *s, int N, int d, int m, int k, int f, int expert_acts, int with_dxe, size_t *bytes,
                       void *(*alloc)(size_t));
void moe_scratch_free(MoeScratch *s, void (*release)(void *));

// Router forward and dispatch: logits, probs, top-k, gates, aux and z losses, per-expert counts, and the
// packed inputs xe. inp (N, d), router (m, d). order (m, host memory): the experts in packing order
// (NULL: 0..m-1).
// shuffle: when not NULL, each expert's rows are put in a random order drawn from this private RNG
// (otherwise they keep token order, which would tell an expert's owner where each token sat).
void moe_route(MoeActs *a, const float *inp, const float *router, const int *order, Rng *shuffle);
// The aux loss m * sum_e (counts_e / (rows k)) * (psum_e / rows) of counts and probability sums over `rows` rows
// (in expert order, double: the same bits everywhere).
double moe_aux_loss(const int *counts, const double *psum, int rows, int m, int k);
// The aux loss's d / d probs[n, e] (the same for every row n): aux_coef * m * counts_e / (rows k) / rows, with
// the fractions held constant (Switch). out: (m).
void moe_aux_grad(float *out, const int *counts, int rows, int m, int k, float aux_coef);
// The private shuffle of each expert's rows as a permutation: the rows of expert e, packed at
// [offsets[e], offsets[e] + counts[e]), are reordered so that packed row offsets[e] + i takes the choice
// that was at offsets[e] + perm[offsets[e] + i]. Draws from `shuffle` (Fisher-Yates, experts in id
// order), the same draws whichever backend applies it. perm: (N*k).
void moe_shuffle_permutation(int *perm, const int *counts, const int *offsets, int m, Rng *shuffle);
// Runs every expert present in `w` on its packed rows: xe -> he, ue, ae, ye.
void moe_experts_forward(MoeActs *a, ExpertSet w);
// out (N, d) = sum_j gates[n, j] * ye[choice_row[n*k + j]]   (overwritten)
void moe_combine(float *out, const MoeActs *a);

// Backward of moe_combine: dgates (N, k) and dye (N*k, d) from dout (N, d). s->dye may be a->ye (each row of
// ye is read before its gradient is written over it).
void moe_combine_backward(MoeScratch *s, const float *dout, const MoeActs *a);
// Backward of the experts present in `w`: dxe (N*k, d) = d loss / d xe; expert weight grads +=.
void moe_experts_backward(MoeScratch *s, const MoeActs *a, ExpertSet w, ExpertSet dw);
// Backward of moe_route: dinp (N, d) += through the unpacking of dxe and through the router;
// drouter (m, d) +=. aux_coef and z_coef weight this layer's aux and z terms in the total loss. With
// party_rows, the aux loss's fractions are those of party_counts over party_rows rows.
void moe_route_backward(float *dinp, float *drouter, MoeScratch *s, const MoeActs *a, const float *inp,
                        const float *router, float aux_coef, float z_coef);

#endif
