// model.h: the model definition shared by every backend and mode: a decoder-only transformer over tokens
// whose FFNs are MoE layers (every moe_every-th layer after the first private_layers) or dense SwiGLU FFNs.
// The Hugging Face MoE models (Mixtral, OLMoE, Qwen3-MoE) are instances of it.
//   x = embed[tokens]
//   per layer: x += Attn(RMSNorm(x)) ; x += FFN(RMSNorm(x))
//     Attn: causal grouped-query attention (n_heads query heads, n_kv_heads key/value heads of head_dim), RoPE,
//           optionally QK-norm (RMSNorm of q and k before RoPE, over the whole projection or per head), no biases
//   logits = RMSNorm(x) @ lm_head^T                                (lm_head may be embed itself: tied)
//   loss = CE + aux_loss_coef * sum_moe_layers aux + z_loss_coef * sum_moe_layers z
#ifndef PCMOE_MODEL_H
#define PCMOE_MODEL_H

#include <stddef.h> // size_t
#include <stdint.h> // uint8_t, uint64_t

#include "token.h"  // Token
#include "config.h"   // Config
#include "moe.h"      // MoeActs, MoeScratch
#include "rng.h"      // Rng

typedef struct {
    int vocab, d, n_layers, n_heads, head_dim, seq_len, d_ff, n_experts, top_k, expert_ff, moe_every;
    int n_kv_heads;     // key/value heads (grouped-query attention): divides n_heads
    int qk_norm;        // QkNorm (config.h)
    int tie_embeddings; // 1: the LM head is the embedding matrix (one tensor, "embed")
    int router_renorm;  // 1: the chosen experts' probabilities are renormalised to sum to 1 (norm_topk_prob)
    int private_layers; // the first private_layers layers have dense FFNs (never MoE): their rows never leave the party
    float aux_coef, z_coef, rope_theta, norm_eps, init_std;
    int recompute_experts; // local experts' hidden activations: one buffer for all layers, recomputed in the backward
    int recompute_attention; // the attention sub-block's activations and the FFN norm's: one set for all layers,
                             // recomputed in the backward from the layer's input
    int logits_rows;         // the LM head and cross-entropy take at most this many rows at a time (0: all rows)
} ModelConfig;

typedef enum {
    T_EMBED, T_FINAL_NORM, T_LM_HEAD,                           // backbone, model level
    T_ATTN_NORM, T_WQKV, T_WO, T_FFN_NORM,                      // backbone, every layer
    T_Q_NORM, T_K_NORM,                                         // backbone, every layer with QK-norm
    T_FFN_GATE, T_FFN_UP, T_FFN_DOWN,                           // backbone, dense layers
    T_ROUTER,                                                   // backbone, MoE layers
    T_EXP_GATE, T_EXP_UP, T_EXP_DOWN                            // the shared expert pool
} TensorKind;

// One parameter tensor: where it lives in the flat buffers and what it is.
typedef struct {
    char name[64];   // stable name, e.g. "layer_1/attn_wqkv" or "layer_1/expert_3/w_gate"
    TensorKind kind;
    int layer;       // -1 for embed, final_norm, lm_head
    int expert;      // global expert id; -1 for backbone tensors
    int rows, cols;  // shape (rows, cols); vectors have cols == 1
    size_t offset;   // into params / grads / adam_m / adam_v
    size_t numel;
    int decay;       // AdamW weight decay applies (matrices yes, norms no)
} ParamTensor;

typedef struct {
    float *attn_norm; // (d)
    float *wqkv;      // (qkv, d)    qkv = (n_heads + 2 n_kv_heads) head_dim: rows of q, then k, then v
    float *wo;        // (d, q)      q = n_heads head_dim
    float *q_norm;    // (q) or (head_dim) QK-norm only (full or per head)
    float *k_norm;    // (kv) or (head_dim)   kv = n_kv_heads head_dim
    float *ffn_norm;  // (d)
    float *ffn_gate;  // (d_ff, d)   dense layers only
    float *ffn_up;    // (d_ff, d)
    float *ffn_down;  // (d, d_ff)
    float *router;    // (m, d)      MoE layers only
    float **exp_gate; // m pointers to (f, d); NULL for an expert this party does not hold
    float **exp_up;   // m x (f, d)
    float **exp_down; // m x (d, f)
} LayerWeights;

typedef struct {
    float *embed;        // (V, d)
    float *final_norm;   // (d)
    float *lm_head;      // (V, d) (tied: embed)
    LayerWeights *layer; // (L)
} Weights;

// Activations kept for the backward pass, per layer. N = B*T rows. With recompute_attention, ln1 to rstd2
// are one set shared by all layers, filled again from the layer's input at the start of its backward.
typedef struct {
    float *ln1;      // (N, d) RMSNorm before attention
    float *rstd1;    // (N)
    float *qkv;      // (N, qkv) q and k after RoPE (and QK-norm)
    float *qk_raw;   // (N, q + kv) QK-norm only: q and k before the norm
    float *qk_rstd;  // (N, n_heads + n_kv_heads) QK-norm only: the norms' 1/rms
    float *att;      // what attention keeps for its backward: be->attention_saved_floats(B, T, n_heads)
    float *atty;     // (N, q) attention output before wo
    float *x_mid;    // (N, d) residual stream after the attention sub-block (in the layer's backward, once read,
                     // its buffer takes d loss / d atty)
    float *ln2;      // (N, d) RMSNorm before the FFN
    float *rstd2;    // (N)
    float *ffn_h, *ffn_u, *ffn_a; // (N, d_ff) dense layers only
    MoeActs moe;     // MoE layers only
} LayerActs;

// Bytes held, by category (reported in metrics; the basis of the memory claims).
typedef struct {
    size_t params, grads, optim, acts;
    size_t buffers; // exchange buffers (pcmoe): peak bytes
} MemStats;

struct Backend;  // backend.h
struct Exchange; // exchange.h
struct Recorder; // record.h

typedef struct {
    ModelConfig cfg;
    const struct Backend *be; // the device its buffers live on and its ops run on (backend.h)
    int B, T;                 // batch shape of the next pass
    int B_alloc;              // batch size the activation buffers are sized for
    int dp_ranks;             // a party of several ranks (parties.ranks_per_party): the losses are the means over
                              // their batches, so each rank's gradients are its 1 / dp_ranks share (1: alone)
    int n_tensors;
    ParamTensor *tensors;     // (n_tensors) this party's tensors, in buffer order
    size_t n_params;          // floats in each flat buffer
    float *params;            // (n_params)
    float *grads;             // (n_params)
    float *adam_m, *adam_v;   // (n_params)
    // What the host reads and writes of params, adam_m, adam_v (initialisation, checkpoints, Hugging Face
    // import, fedavg): on a device backend, whose buffers the host never touches, a pinned copy that
    // model_state_to_host fills and model_state_to_device sends back; on cpu the buffers themselves. Current
    // after model_init (which writes it first) until a step changes the device's state.
    float *host_params, *host_adam_m, *host_adam_v; // (n_params each)
    int *adam_steps;          // (n_tensors) AdamW steps each tensor has taken (its bias-correction count)
    unsigned char *active;    // (n_tensors) 1 if the tensor received gradient in the last backward: always
                              // for the backbone; for an expert, only if tokens were routed to it
    unsigned char *selected;  // (n_tensors) scratch: the tensors one optimizer update covers
    Weights w, g;             // views of params and grads
    int *owned;               // (m) 1 where this party holds expert e
    int *expert_order;        // (m) order of experts in the packed rows (grouped by owner in pcmoe)
    Rng shuffle;              // private RNG shuffling each expert's rows (used when shuffle_on)
    int shuffle_on;
    struct Exchange *ex;      // pcmoe: experts are reached through the exchange; NULL: all experts local
    struct Recorder *tap;     // study only (privacy.record_received): told each forward's batch bytes; else NULL
    // forward activations
    float *resid;             // (L+1, N, d) residual stream entering layer l; [L] is the final one
    LayerActs *acts;          // (L)
    float *lnf, *rstdf;       // (N, d), (N) final RMSNorm (lnf: dresid's buffer, see model_create)
    int head_rows;            // rows of the LM head and cross-entropy at a time (logits_chunk_mb): N when the
                              // logits fit in one chunk, which then keeps them for the backward
    int head_done;            // the last forward was model_forward_train's: the head's backward is done
    int loss_pending;         // loss and ce wait for model_finish_loss
    float *logits;            // (head_rows, V) logits; softmax probabilities once the loss is computed
    float *losses;            // (N) per-token cross-entropy (the backend's memory)
    float *row_losses;        // (N) the same in pinned host memory, copied after the head; the host reads them
                              // after model_finish_loss
    float *cos_t, *sin_t;     // (T, head_dim/2) RoPE tables
    // backward scratch
    float *dresid;            // (N, d) gradient of the residual stream
    float *dln;               // (N, d) gradient of a RMSNorm output
    float *dqkv;              // (N, qkv)
    float *datty;             // (N, q) d loss / d atty: x_mid's buffer of the layer when q <= d, else its own
    float *dlogits;           // (head_rows, V) the logits' buffer: the probabilities become their gradients
    float *dffn_h, *dffn_u, *dffn_a; // (N, d_ff)
    float *tmp;               // (N, d) a sub-block's output before it is added to the residual: dln's buffer
                              // (in the backward, tmp is used only by recompute_attention, before dln)
    float *att_work;          // (att_work_floats) attention's scratch
    size_t att_work_floats;
    MoeScratch moe_scratch;
    float *moe_he, *moe_ue, *moe_ae; // recompute_experts with local experts: (N*k, f) the hidden activations of
                                     // the MoE layer being computed, shared by all layers (their he, ue, ae)
    // results of the last forward
    double loss, ce, aux, z;  // total = ce + aux_coef * aux + z_coef * z (aux, z summed over MoE layers)
    double flops;             // floating-point operations executed since the last reset (GEMMs + attention)
    MemStats mem;
} Model;

ModelConfig model_config_from(const Config *c);
// A party's model config as a run builds it: with `exchanged` (a pcmoe party over MPI) recompute_attention = auto
// becomes on.
ModelConfig model_config_party(const Config *c, int exchanged);
// Expert `expert`'s tensor of kind T_EXP_GATE, T_EXP_UP or T_EXP_DOWN in layer `layer`, as the layout names and
// shapes it (its offset aside): a description of an expert that a party need not hold.
ParamTensor model_expert_tensor(const ModelConfig *c, int layer, int expert, TensorKind kind);
int model_layer_is_moe(const ModelConfig *c, int layer);
// Widths of the attention's projections: q = n_heads head_dim, kv = n_kv_heads head_dim, qkv = q + 2 kv.
int model_q_dim(const ModelConfig *c);
int model_kv_dim(const ModelConfig *c);
int model_qkv_dim(const ModelConfig *c);
// Rows of the LM head computed at a time for a batch of N rows (c->logits_rows; N when they fit).
int model_head_rows(const ModelConfig *c, int N);

// Allocates a model for batches of B sequences of T tokens. owned (m): which experts this party holds
// (NULL: all of them). local_experts: 1 if this model runs the experts on its own rows itself (0 in
// pcmoe over MPI, where each expert runs at its owner and the per-expert hidden activations are the
// owner's). Weights are not initialised.
void model_create(Model *m, const ModelConfig *c, const int *owned, int local_experts, int B, int T);
// The same on a given backend (model_create: the CPU's).
void model_create_on(Model *m, const struct Backend *be, const ModelConfig *c, const int *owned, int local_experts,
                     int B, int T);
void model_free(Model *m);
// Initialises every tensor from (seed, tensor name): backbone tensors from backbone_seed, experts from
// expert_seed, so an expert's values do not depend on which party holds it. Matrices ~ N(0, init_std)
// (wo and FFN down-projections scaled by 1/sqrt(2L)), norm weights 1. Adam state is zeroed.
void model_init(Model *m, uint64_t backbone_seed, uint64_t expert_seed);

// Runs later passes on batches of B <= the allocated B sequences (evaluation with a smaller batch).
void model_set_batch(Model *m, int B);

// Forward pass on tokens, targets (B, T); returns the total loss and fills loss/ce/aux/z.
double model_forward(Model *m, const Token *tokens, const Token *targets);
// The forward pass of a training step (after model_zero_grad, before model_backward): model_forward, with the
// LM head's backward run chunk by chunk while each chunk's logits are at hand, so that a head in chunks
// computes its logits once. The model_backward that follows starts below the head. The losses stay on the
// device (loss and ce are NaN) until model_finish_loss, which a training step calls after the wait for its
// gradient norm, so that a step waits once.
void model_forward_train(Model *m, const Token *tokens, const Token *targets);
// loss and ce from the forward's per-row losses (waits for the device if the step has not yet); nothing
// when they are already there.
void model_finish_loss(Model *m);
// After a forward (until the backward): the logits (V) of row `row` of the batch. m->logits holds whole
// probabilities only for the last chunk of head_rows rows.
void model_head_logits(Model *m, int row, float *logits);
// Zeros the gradient buffer.
void model_zero_grad(Model *m);
// The host's copies of the parameters (and with optim the AdamW moments): filled from the device (a wait), or
// sent to it (waits until they are there, so the host may write them again). Nothing to do on cpu.
void model_state_to_host(Model *m, int optim);
void model_state_to_device(Model *m, int optim);

// Backward pass of the last forward: accumulates d loss / d params into grads.
void model_backward(Model *m, const Token *tokens, const Token *targets);

// pcmoe: a party without a batch this step still serves its experts, through the same exchange calls
// as a forward / backward pass (every MoE layer, in the same order).
void model_serve_forward(Model *m);
void model_serve_backward(Model *m);
// Sets `active` from the last forward: backbone tensors always; a held expert's tensors when it
// processed rows (its own party's or, in pcmoe, any party's).
void model_mark_active(Model *m);

// Generation (pcmoe generate): the keys (after RoPE) and values of every layer for the positions seen so
// far, so that each new byte costs one position instead of its whole context. Host memory: generation
// runs on the CPU backend. Positions 0 .. len-1 are held, at most cap = seq_len.
typedef struct {
    int len, cap;
    float *k, *v;            // (L, cap, kv) per layer: row p is position p's key / value (all key/value heads)
    float *x, *xm;           // (cap, d) residual stream of the rows being computed, and after attention
    float *ln, *rstd;        // (cap, d), (cap) a RMSNorm's output
    float *qkv;              // (cap, qkv)
    float *qk_raw, *qk_rstd; // (cap, q + kv), (cap, n_heads + n_kv_heads) QK-norm only
    float *atty;             // (cap, q) attention output before wo
    float *tmp;              // (cap, d) a sub-block's output
    float *h, *u, *a;        // (cap, d_ff) dense FFN layers only (else NULL)
    float *scores;           // (threads, cap) one row of attention scores per OpenMP thread
} KvCache;

void model_cache_create(KvCache *kv, const Model *m);
void model_cache_free(KvCache *kv);
// The forward of tokens (n) at positions kv->len .. kv->len + n - 1, attending to the cached positions and
// to each other causally; appends their keys and values to the cache and writes the logits (V) of the
// last one. The same layers as model_forward (MoE layers route, and in pcmoe reach their experts through
// the exchange, every party calling it as model_serve_forward); equal to model_forward's logits at
// those positions up to fp32 rounding. kv->len + n <= kv->cap.
void model_forward_cached(Model *m, KvCache *kv, const Token *tokens, int n, float *logits);

// Finds a tensor by name; NULL if absent.
const ParamTensor *model_find_tensor(const Model *m, const char *name);

#endif
