// model.c: parameter layout, initialisation, forward and backward of the whole model (CPU, fp32).
#include "model.h"

#include <math.h>   // sqrtf, expf, INFINITY
#ifdef _OPENMP
#include <omp.h>    // omp_get_max_threads, omp_get_thread_num
#endif
#include <stdio.h>  // snprintf
#include <stdlib.h> // free
#include <string.h> // memset, memcpy, strcmp

#include "layers.h" // the dense ops
#include "rng.h"    // Rng for initialisation
#include "backend.h" // Backend: where buffers live and ops run
#include "exchange.h" // exchange_forward, exchange_backward, exchange_expert_rows
#include "flops.h"    // flops_matmul, flops_attention, flops_ffn: the FLOPs of each call, counted here
#include "record.h"   // record_batch (the study only)
#include "util.h"   // mallocCheck, fail

// model.logits_chunk_mb as rows of fp32 logits (at least one; 0: every row)
static int logits_rows(const Config *c) {
    if (c->logits_chunk_mb == 0) return 0;
    long rows = ((long)c->logits_chunk_mb << 20) / ((long)sizeof(float) * c->vocab_size);
    return rows < 1 ? 1 : rows > (1 << 30) ? 1 << 30 : (int)rows;
}

ModelConfig model_config_from(const Config *c) {
    ModelConfig m = {
        .vocab = c->vocab_size, .d = c->d_model, .n_layers = c->n_layers, .n_heads = c->n_heads,
        .head_dim = c->head_dim ? c->head_dim : c->d_model / c->n_heads, .seq_len = c->seq_len, .d_ff = c->d_ff,
        .n_kv_heads = c->n_kv_heads ? c->n_kv_heads : c->n_heads, .qk_norm = c->qk_norm,
        .tie_embeddings = c->tie_embeddings, .router_renorm = c->router_renorm,
        .n_experts = c->n_experts, .top_k = c->top_k, .expert_ff = c->expert_ff, .moe_every = c->moe_every,
        .private_layers = c->private_layers,
        .aux_coef = c->aux_loss_coef, .z_coef = c->z_loss_coef, .rope_theta = c->rope_theta,
        .norm_eps = c->norm_eps, .init_std = c->init_std, .recompute_experts = c->recompute_experts == RECOMPUTE_ON,
        .recompute_attention = c->recompute_attention == RECOMPUTE_ON, .logits_rows = logits_rows(c),
    };
    return m;
}

ModelConfig model_config_party(const Config *c, int exchanged) {
    ModelConfig m = model_config_from(c);
    if (exchanged && c->recompute_attention == RECOMPUTE_AUTO) m.recompute_attention = 1; // (memory first)
    return m;
}

int model_layer_is_moe(const ModelConfig *c, int layer) {
    return layer >= c->private_layers && (layer + 1) % c->moe_every == 0;
}

int model_q_dim(const ModelConfig *c) { return c->n_heads * c->head_dim; }
int model_kv_dim(const ModelConfig *c) { return c->n_kv_heads * c->head_dim; }
int model_qkv_dim(const ModelConfig *c) { return model_q_dim(c) + 2 * model_kv_dim(c); }

// A tensor's description, all but its offset.
static ParamTensor tensor_of(const char *name, TensorKind kind, int layer, int expert, int rows, int cols) {
    ParamTensor t = {.kind = kind, .layer = layer, .expert = expert, .rows = rows, .cols = cols,
                     .numel = (size_t)rows * cols, .decay = cols > 1}; // matrices decay; norm weights do not
    snprintf(t.name, sizeof t.name, "%s", name);
    return t;
}

// t as the next tensor of the flat buffers.
static void layout_push(Model *m, ParamTensor t) {
    t.offset = m->n_params;
    m->tensors[m->n_tensors++] = t;
    m->n_params += t.numel;
}

static void layout_add(Model *m, const char *name, TensorKind kind, int layer, int expert, int rows, int cols) {
    layout_push(m, tensor_of(name, kind, layer, expert, rows, cols));
}

ParamTensor model_expert_tensor(const ModelConfig *c, int layer, int expert, TensorKind kind) {
    static const char *const w[] = {"w_gate", "w_up", "w_down"};
    char name[64];
    snprintf(name, sizeof name, "layer_%d/expert_%d/%s", layer, expert, w[kind - T_EXP_GATE]);
    return kind == T_EXP_DOWN ? tensor_of(name, kind, layer, expert, c->d, c->expert_ff)
                              : tensor_of(name, kind, layer, expert, c->expert_ff, c->d);
}

// The order of tensors in the flat buffers: the checkpoint schema follows it.
static void layout_build(Model *m) {
    const ModelConfig *c = &m->cfg;
    int d = c->d, L = c->n_layers, q = model_q_dim(c), kv = model_kv_dim(c), per_head = c->qk_norm == QK_NORM_HEAD;
    m->tensors = mallocCheck(sizeof(ParamTensor) * (3 + (size_t)L * (10 + 3 * (size_t)c->n_experts)));
    m->n_tensors = 0;
    m->n_params = 0;
    char name[64];
    layout_add(m, "embed", T_EMBED, -1, -1, c->vocab, d);
    for (int l = 0; l < L; l++) {
        snprintf(name, sizeof name, "layer_%d/attn_norm", l); layout_add(m, name, T_ATTN_NORM, l, -1, d, 1);
        snprintf(name, sizeof name, "layer_%d/attn_wqkv", l); layout_add(m, name, T_WQKV, l, -1, q + 2 * kv, d);
        if (c->qk_norm != QK_NORM_NONE) {
            snprintf(name, sizeof name, "layer_%d/attn_q_norm", l);
            layout_add(m, name, T_Q_NORM, l, -1, per_head ? c->head_dim : q, 1);
            snprintf(name, sizeof name, "layer_%d/attn_k_norm", l);
            layout_add(m, name, T_K_NORM, l, -1, per_head ? c->head_dim : kv, 1);
        }
        snprintf(name, sizeof name, "layer_%d/attn_wo", l);   layout_add(m, name, T_WO, l, -1, d, q);
        snprintf(name, sizeof name, "layer_%d/ffn_norm", l);  layout_add(m, name, T_FFN_NORM, l, -1, d, 1);
        if (!model_layer_is_moe(c, l)) {
            snprintf(name, sizeof name, "layer_%d/ffn_gate", l); layout_add(m, name, T_FFN_GATE, l, -1, c->d_ff, d);
            snprintf(name, sizeof name, "layer_%d/ffn_up", l);   layout_add(m, name, T_FFN_UP, l, -1, c->d_ff, d);
            snprintf(name, sizeof name, "layer_%d/ffn_down", l); layout_add(m, name, T_FFN_DOWN, l, -1, d, c->d_ff);
            continue;
        }
        snprintf(name, sizeof name, "layer_%d/router", l); layout_add(m, name, T_ROUTER, l, -1, c->n_experts, d);
        for (int e = 0; e < c->n_experts; e++)
            for (TensorKind k = T_EXP_GATE; k <= T_EXP_DOWN && m->owned[e]; k++)
                layout_push(m, model_expert_tensor(c, l, e, k));
    }
    layout_add(m, "final_norm", T_FINAL_NORM, -1, -1, d, 1);
    if (!c->tie_embeddings) layout_add(m, "lm_head", T_LM_HEAD, -1, -1, c->vocab, d);
}

// Points the fields of `w` into `base` (params or grads) following the tensor table.
static void weights_bind(Weights *w, const Model *m, float *base) {
    int L = m->cfg.n_layers, E = m->cfg.n_experts;
    w->layer = callocCheck(L, sizeof(LayerWeights));
    for (int l = 0; l < L; l++) {
        w->layer[l].exp_gate = callocCheck(E, sizeof(float *));
        w->layer[l].exp_up = callocCheck(E, sizeof(float *));
        w->layer[l].exp_down = callocCheck(E, sizeof(float *));
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        float *p = base + t->offset;
        LayerWeights *lw = t->layer >= 0 ? &w->layer[t->layer] : NULL;
        switch (t->kind) {
        case T_EMBED: w->embed = p; break;
        case T_FINAL_NORM: w->final_norm = p; break;
        case T_LM_HEAD: w->lm_head = p; break;
        case T_ATTN_NORM: lw->attn_norm = p; break;
        case T_WQKV: lw->wqkv = p; break;
        case T_WO: lw->wo = p; break;
        case T_Q_NORM: lw->q_norm = p; break;
        case T_K_NORM: lw->k_norm = p; break;
        case T_FFN_NORM: lw->ffn_norm = p; break;
        case T_FFN_GATE: lw->ffn_gate = p; break;
        case T_FFN_UP: lw->ffn_up = p; break;
        case T_FFN_DOWN: lw->ffn_down = p; break;
        case T_ROUTER: lw->router = p; break;
        case T_EXP_GATE: lw->exp_gate[t->expert] = p; break;
        case T_EXP_UP: lw->exp_up[t->expert] = p; break;
        case T_EXP_DOWN: lw->exp_down[t->expert] = p; break;
        }
    }
    if (m->cfg.tie_embeddings) w->lm_head = w->embed;
}

static void weights_unbind(Weights *w, int L) {
    for (int l = 0; l < L; l++) { free(w->layer[l].exp_gate); free(w->layer[l].exp_up); free(w->layer[l].exp_down); }
    free(w->layer);
}

// An activation (or the backward's scratch): only ops touch it
static float *act_alloc(Model *m, size_t n) {
    m->mem.acts += sizeof(float) * n;
    return m->be->alloc_device(sizeof(float) * n);
}

// Layer l's activations (m->acts[l]) for batches of m->B_alloc sequences of m->T tokens.
static void layer_acts_alloc(Model *m, int l, int local_experts) {
    const ModelConfig *c = &m->cfg;
    size_t N = (size_t)m->B_alloc * m->T, d = c->d, q = model_q_dim(c), qk = q + model_kv_dim(c);
    LayerActs *a = &m->acts[l];
    if (l > 0 && c->recompute_attention) { // one set for all layers
        *a = m->acts[0];
        memset(&a->moe, 0, sizeof a->moe);
        a->ffn_h = a->ffn_u = a->ffn_a = NULL;
    } else {
        a->ln1 = act_alloc(m, N * d);
        a->rstd1 = act_alloc(m, N);
        a->qkv = act_alloc(m, N * model_qkv_dim(c));
        if (c->qk_norm != QK_NORM_NONE) {
            a->qk_raw = act_alloc(m, N * qk);
            a->qk_rstd = act_alloc(m, N * (c->n_heads + c->n_kv_heads));
        }
        a->att = act_alloc(m, m->be->attention_saved_floats(m->B_alloc, m->T, c->n_heads));
        a->atty = act_alloc(m, N * q);
        a->x_mid = act_alloc(m, N * d);
        a->ln2 = act_alloc(m, N * d);
        a->rstd2 = act_alloc(m, N);
    }
    if (!model_layer_is_moe(c, l)) {
        a->ffn_h = act_alloc(m, N * c->d_ff);
        a->ffn_u = act_alloc(m, N * c->d_ff);
        a->ffn_a = act_alloc(m, N * c->d_ff);
        return;
    }
    int shared = local_experts && c->recompute_experts; // one set of hidden activations for all layers
    if (shared && !m->moe_he) {
        size_t Nkf = N * c->top_k * c->expert_ff;
        m->moe_he = act_alloc(m, Nkf);
        m->moe_ue = act_alloc(m, Nkf);
        m->moe_ae = act_alloc(m, Nkf);
    }
    // a party whose experts run at their owners keeps one row buffer per layer: its packed inputs, its
    // outputs, their gradients, then its inputs' gradients, each read before the next is written
    moe_acts_alloc(&a->moe, (int)N, c->d, c->n_experts, c->top_k, c->expert_ff, local_experts && !shared,
                   !local_experts, &m->mem.acts, m->be->alloc_device);
    a->moe.renorm = c->router_renorm;
    if (shared) { a->moe.he = m->moe_he; a->moe.ue = m->moe_ue; a->moe.ae = m->moe_ae; }
}

void model_create(Model *m, const ModelConfig *c, const int *owned, int local_experts, int B, int T) {
    model_create_on(m, &backend_cpu, c, owned, local_experts, B, T);
}

void model_create_on(Model *m, const Backend *be, const ModelConfig *c, const int *owned, int local_experts, int B,
                     int T) {
    memset(m, 0, sizeof *m);
    m->be = be;
    m->cfg = *c;
    m->B = m->B_alloc = B;
    m->T = T;
    int E = c->n_experts;
    m->owned = mallocCheck(sizeof(int) * E);
    for (int e = 0; e < E; e++) m->owned[e] = owned ? owned[e] : 1;
    m->expert_order = mallocCheck(sizeof(int) * E); // (host memory: moe_route takes it from there)
    for (int e = 0; e < E; e++) m->expert_order[e] = e;

    layout_build(m);
    size_t bytes = sizeof(float) * m->n_params;
    m->params = be->alloc_device(bytes); // (only ops touch these; the host its copies, below)
    m->grads = be->alloc_device(bytes);
    m->adam_m = be->alloc_device(bytes);
    m->adam_v = be->alloc_device(bytes);
    if (be->device) {
        m->host_params = be->alloc_pinned(3 * bytes);
        m->host_adam_m = m->host_params + m->n_params;
        m->host_adam_v = m->host_adam_m + m->n_params;
    } else {
        m->host_params = m->params; m->host_adam_m = m->adam_m; m->host_adam_v = m->adam_v;
    }
    m->mem.params = m->mem.grads = sizeof(float) * m->n_params;
    m->adam_steps = callocCheck(m->n_tensors, sizeof(int));
    m->active = callocCheck(m->n_tensors, 1);
    m->selected = callocCheck(m->n_tensors, 1);
    m->mem.optim = 2 * sizeof(float) * m->n_params + sizeof(int) * m->n_tensors;
    weights_bind(&m->w, m, m->params);
    weights_bind(&m->g, m, m->grads);

    size_t N = (size_t)B * T, d = c->d, L = c->n_layers, q = model_q_dim(c);
    m->resid = act_alloc(m, (L + 1) * N * d);
    m->acts = callocCheck(L, sizeof(LayerActs));
    for (int l = 0; l < c->n_layers; l++) layer_acts_alloc(m, l, local_experts);
    m->lnf = NULL; // (below: dresid's buffer)
    m->rstdf = act_alloc(m, N);
    m->head_rows = model_head_rows(c, (int)N);
    m->dp_ranks = 1;
    m->logits = act_alloc(m, (size_t)m->head_rows * c->vocab);
    m->losses = act_alloc(m, N);
    m->row_losses = be->alloc_pinned(sizeof(float) * (N ? N : 1));
    size_t half = (size_t)T * c->head_dim / 2;
    m->cos_t = act_alloc(m, half);
    m->sin_t = act_alloc(m, half);
    float *tables = mallocCheck(sizeof(float) * 2 * (half ? half : 1)); // (built on the host, then copied)
    rope_tables(tables, tables + half, T, c->head_dim, c->rope_theta);
    be->copy(m->cos_t, tables, sizeof(float) * half);
    be->copy(m->sin_t, tables + half, sizeof(float) * half);
    be->sync();
    free(tables);
    m->dresid = act_alloc(m, N * d);
    m->lnf = m->dresid; // the final norm's output is last read before the backward first writes dresid
    m->dln = act_alloc(m, N * d);
    m->dqkv = act_alloc(m, N * model_qkv_dim(c));
    if (q > d) m->datty = act_alloc(m, N * q); // (else each layer's x_mid buffer, see model_backward)
    m->dlogits = m->logits; // the probabilities are read once, element by element, as their gradients are written
    int dense = 0; // the dense FFN's backward scratch, when there is a dense layer
    for (int l = 0; l < c->n_layers; l++) dense |= !model_layer_is_moe(c, l);
    if (dense) {
        m->dffn_h = act_alloc(m, N * c->d_ff);
        m->dffn_u = act_alloc(m, N * c->d_ff);
        m->dffn_a = act_alloc(m, N * c->d_ff);
    }
    m->tmp = m->dln; // tmp is the forward's scratch (and the recomputation's, which ends before dln is used)
    m->att_work_floats = be->attention_work_floats(T);
    m->att_work = act_alloc(m, m->att_work_floats);
    moe_scratch_alloc(&m->moe_scratch, (int)N, c->d, E, c->top_k, c->expert_ff, local_experts, local_experts,
                      &m->mem.acts, be->alloc_device);
}

void model_free(Model *m) {
    int L = m->cfg.n_layers;
    void (*release)(void *) = m->be->release;
    for (int l = 0; l < L; l++) {
        LayerActs *a = &m->acts[l];
        float *bufs[] = {a->ln1, a->rstd1, a->qkv, a->qk_raw, a->qk_rstd, a->att, a->atty, a->x_mid, a->ln2, a->rstd2};
        if (l == 0 || !m->cfg.recompute_attention) // (recompute_attention: layer 0's set is every layer's)
            for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) release(bufs[i]);
        if (model_layer_is_moe(&m->cfg, l)) {
            if (m->moe_he && a->moe.he == m->moe_he)
                a->moe.he = a->moe.ue = a->moe.ae = NULL; // (shared: released below)
            moe_acts_free(&a->moe, release);
        }
        else { release(a->ffn_h); release(a->ffn_u); release(a->ffn_a); }
    }
    free(m->acts);
    float *bufs[] = {m->resid, m->rstdf, m->logits, m->losses, m->cos_t, m->sin_t, m->dresid, m->dln, m->dqkv, m->datty,
                     m->dffn_h, m->dffn_u, m->dffn_a, m->att_work, m->params, m->grads, m->adam_m, m->adam_v};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) release(bufs[i]);
    m->be->release_pinned(m->row_losses);
    moe_scratch_free(&m->moe_scratch, release);
    if (m->moe_he) { release(m->moe_he); release(m->moe_ue); release(m->moe_ae); }
    weights_unbind(&m->w, L);
    weights_unbind(&m->g, L);
    free(m->expert_order);
    if (m->host_params != m->params) m->be->release_pinned(m->host_params);
    free(m->adam_steps); free(m->active); free(m->selected);
    free(m->tensors); free(m->owned);
    memset(m, 0, sizeof *m);
}

// params (and with optim adam_m, adam_v) between the device's buffers and the host's copies, then the wait
static void state_copy(Model *m, int optim, int to_host) {
    if (m->host_params == m->params) return;
    size_t bytes = sizeof(float) * m->n_params;
    float *dev[3] = {m->params, m->adam_m, m->adam_v}, *host[3] = {m->host_params, m->host_adam_m, m->host_adam_v};
    for (int i = 0; i < (optim ? 3 : 1); i++)
        m->be->copy(to_host ? host[i] : dev[i], to_host ? dev[i] : host[i], bytes);
    m->be->sync();
}
void model_state_to_host(Model *m, int optim) { state_copy(m, optim, 1); }
void model_state_to_device(Model *m, int optim) { state_copy(m, optim, 0); }

static uint64_t name_hash(const char *s) { // FNV-1a
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

void model_init(Model *m, uint64_t backbone_seed, uint64_t expert_seed) {
    const ModelConfig *c = &m->cfg;
    float out_std = c->init_std / sqrtf(2.0f * c->n_layers);
    for (int i = 0; i < m->n_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        float *p = m->host_params + t->offset;
        if (t->cols == 1) { // norm weights
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
            continue;
        }
        int is_out = t->kind == T_WO || t->kind == T_FFN_DOWN || t->kind == T_EXP_DOWN;
        float std = is_out ? out_std : c->init_std;
        Rng r;
        rng_seed(&r, (t->expert >= 0 ? expert_seed : backbone_seed) ^ name_hash(t->name));
        for (size_t j = 0; j < t->numel; j++) p[j] = std * rng_normal(&r);
    }
    memset(m->host_adam_m, 0, sizeof(float) * m->n_params);
    memset(m->host_adam_v, 0, sizeof(float) * m->n_params);
    model_state_to_device(m, 1);
    memset(m->adam_steps, 0, sizeof(int) * m->n_tensors);
}

static ExpertSet expert_set(const LayerWeights *lw) {
    ExpertSet s = {lw->exp_gate, lw->exp_up, lw->exp_down};
    return s;
}

// The FLOPs of the experts held in w on their routed rows (a->counts, readable after moe_route).
static double experts_flops(const MoeActs *a, ExpertSet w) {
    double f = 0.0;
    for (int e = 0; e < a->m; e++)
        if (w.gate[e]) f += flops_ffn(a->counts[e], a->d, a->f);
    return f;
}

// Layer l's attention sub-block and the FFN's norm, from the layer's input resid[l]:
//   x_mid = x + wo(attn(rope(wqkv(rmsnorm(x))))),  ln2 = rmsnorm(x_mid)
// The forward's calls; with recompute_attention the backward makes them again (the same values, not
// counted as model FLOPs: count = 0).
static void attention_block(Model *m, int l, int count) {
    const ModelConfig *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, d = c->d, H = c->n_heads, Hkv = c->n_kv_heads, hs = c->head_dim;
    int q = model_q_dim(c), qkv = model_qkv_dim(c);
    const LayerWeights *w = &m->w.layer[l];
    LayerActs *a = &m->acts[l];
    const float *x = m->resid + (size_t)l * N * d;
    m->be->rmsnorm_forward(a->ln1, a->rstd1, x, w->attn_norm, N, d, c->norm_eps);
    m->be->matmul_forward(a->qkv, a->ln1, w->wqkv, N, d, qkv);
    if (c->qk_norm != QK_NORM_NONE)
        m->be->qknorm_forward(a->qkv, a->qk_raw, a->qk_rstd, w->q_norm, w->k_norm, N, H, Hkv, hs,
                              c->qk_norm == QK_NORM_HEAD, c->norm_eps);
    m->be->rope_forward(a->qkv, m->cos_t, m->sin_t, B, T, H, Hkv, hs);
    m->be->attention_forward(a->atty, a->att, m->att_work, m->att_work_floats, a->qkv, B, T, H, Hkv, hs);
    m->be->matmul_forward(m->tmp, a->atty, w->wo, N, q, d);
    if (count) m->flops += flops_matmul(N, d, qkv) + flops_attention(B, T, H, hs) + flops_matmul(N, q, d);
    m->be->residual_forward(a->x_mid, x, m->tmp, (size_t)N * d);
    m->be->rmsnorm_forward(a->ln2, a->rstd2, a->x_mid, w->ffn_norm, N, d, c->norm_eps);
}

// Layer l's FFN sub-block on n rows: out (n, d) = ffn(x), where x (n, d) is the FFN norm's output. A MoE
// layer routes the rows (in the model's routing buffers, for n rows), reaches its experts (through the
// exchange in pcmoe) and combines their outputs; a dense layer keeps its activations in h, u, act (n, d_ff).
static void ffn_block(Model *m, int l, const float *x, float *out, int n, float *h, float *u, float *act) {
    const ModelConfig *c = &m->cfg;
    const LayerWeights *w = &m->w.layer[l];
    if (!model_layer_is_moe(c, l)) {
        m->be->ffn_forward(out, h, u, act, x, w->ffn_gate, w->ffn_up, w->ffn_down, n, c->d, c->d_ff);
        m->flops += flops_ffn(n, c->d, c->d_ff);
        return;
    }
    MoeActs *a = &m->acts[l].moe;
    a->N = n;
    m->be->moe_route(a, x, w->router, m->expert_order, m->shuffle_on ? &m->shuffle : NULL);
    m->flops += flops_matmul(n, c->d, c->n_experts);
    a->inp = x;
    if (m->ex && m->dp_ranks > 1) exchange_party_route(m->ex, a); // the aux loss of the party's whole batch
    if (m->ex) exchange_forward(m->ex, l, a, expert_set(w), &m->flops);
    else {
        m->be->moe_experts_forward(a, expert_set(w));
        m->flops += experts_flops(a, expert_set(w));
    }
    m->be->moe_combine(out, a);
}

int model_head_rows(const ModelConfig *c, int N) {
    return c->logits_rows > 0 && c->logits_rows < N ? c->logits_rows : N;
}

// d loss / d lnf for rows [r, r + n) into dln's rows, and the LM head's gradient, from the probabilities of those
// rows in the logits' buffer (which become their gradients).
static void head_chunk_backward(Model *m, const Token *targets, int r, int n) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, d = c->d, V = c->vocab;
    const float *ln = m->lnf + (size_t)r * d;
    m->be->crossentropy_backward(m->dlogits, m->logits, targets + r, n, V, 1.0f / (N * m->dp_ranks));
    m->be->matmul_backward(m->dln + (size_t)r * d, m->g.lm_head, m->dlogits, ln, m->w.lm_head, n, d, V);
}

// The LM head and cross-entropy on rows [r, r + n) of the final norm: their losses, their probabilities in
// the logits' buffer, or with `backward` their gradients in it (from one fused pass) and the head's backward.
static void head_chunk(Model *m, const Token *targets, int r, int n, int backward) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, d = c->d, V = c->vocab;
    const float *ln = m->lnf + (size_t)r * d;
    m->be->matmul_forward(m->logits, ln, m->w.lm_head, n, d, V);
    if (!backward) {
        m->be->crossentropy_forward(m->logits, m->losses + r, targets + r, n, V);
        return;
    }
    m->be->crossentropy_fused(m->dlogits, m->losses + r, targets + r, n, V, 1.0f / (N * m->dp_ranks)); // (logits)
    m->be->matmul_backward(m->dln + (size_t)r * d, m->g.lm_head, m->dlogits, ln, m->w.lm_head, n, d, V);
}

// The LM head and cross-entropy over the final norm's N rows, head_rows at a time: losses (N), queued.
// With `backward` (a training step: model_forward_train) the head's backward runs too, chunk by chunk while
// its logits are at hand (dln zeroed first). Without it, all rows in one chunk leave their probabilities in
// the logits' buffer for model_backward.
static void head_forward(Model *m, const Token *targets, int backward) {
    int N = m->B * m->T, R = m->head_rows;
    if (backward) m->be->zero(m->dln, sizeof(float) * (size_t)N * m->cfg.d);
    for (int r = 0; r < N; r += R) head_chunk(m, targets, r, N - r < R ? N - r : R, backward);
    m->be->copy(m->row_losses, m->losses, sizeof(float) * (size_t)N); // (queued: model_finish_loss reads them)
}

void model_finish_loss(Model *m) {
    if (!m->loss_pending) return;
    int N = m->B * m->T;
    m->be->sync(); // (free after a wait that passed the head, as the gradient norm's)
    double total = 0.0; // in row order, as crossentropy_forward sums (the same bits with one chunk)
    for (int n = 0; n < N; n++) total += m->row_losses[n];
    m->ce = total / N;
    m->loss = m->ce + m->cfg.aux_coef * m->aux + m->cfg.z_coef * m->z;
    m->loss_pending = 0;
}

// model_backward's LM head after a plain model_forward: d loss / d lnf into dln (zeroed), and the head's
// gradient. Chunks recompute their logits (not counted as model FLOPs). The head's gradient is summed chunk
// after chunk, always in the same order, as in head_forward.
static void head_backward(Model *m, const Token *targets) {
    int N = m->B * m->T, R = m->head_rows;
    m->be->zero(m->dln, sizeof(float) * (size_t)N * m->cfg.d);
    if (N <= R) { head_chunk_backward(m, targets, 0, N); return; }
    for (int r = 0; r < N; r += R) head_chunk(m, targets, r, N - r < R ? N - r : R, 1);
}

void model_head_logits(Model *m, int row, float *logits) {
    m->be->matmul_forward(logits, m->lnf + (size_t)row * m->cfg.d, m->w.lm_head, 1, m->cfg.d, m->cfg.vocab);
}

// The forward pass; with head_backward_too, the LM head's backward as well (model_forward_train).
static void forward(Model *m, const Token *tokens, const Token *targets, int head_backward_too) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, d = c->d;
    if (m->tap) record_batch(m->tap, tokens, targets); // study only: the truth behind the rows this pass sends
    m->be->batch(tokens, targets, N);
    m->be->embedding_forward(m->resid, tokens, m->w.embed, N, d);
    m->aux = m->z = 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        LayerActs *a = &m->acts[l];
        float *xo = m->resid + (size_t)(l + 1) * N * d;
        attention_block(m, l, 1);
        // FFN sub-block: xo = x_mid + ffn(ln2)
        ffn_block(m, l, a->ln2, m->tmp, N, a->ffn_h, a->ffn_u, a->ffn_a);
        if (model_layer_is_moe(c, l)) {
            m->aux += a->moe.aux;
            m->z += a->moe.z;
        }
        m->be->residual_forward(xo, a->x_mid, m->tmp, (size_t)N * d);
    }
    m->be->rmsnorm_forward(m->lnf, m->rstdf, m->resid + (size_t)c->n_layers * N * d, m->w.final_norm, N, d,
                           c->norm_eps);
    head_forward(m, targets, head_backward_too);
    m->flops += flops_matmul(N, d, c->vocab) + (head_backward_too ? flops_matmul_backward(N, d, c->vocab, 1) : 0.0);
    m->head_done = head_backward_too;
    m->ce = m->loss = NAN;
    m->loss_pending = 1;
}

double model_forward(Model *m, const Token *tokens, const Token *targets) {
    forward(m, tokens, targets, 0);
    model_finish_loss(m);
    return m->loss;
}

void model_forward_train(Model *m, const Token *tokens, const Token *targets) { forward(m, tokens, targets, 1); }

void model_set_batch(Model *m, int B) {
    if (B < 1 || B > m->B_alloc) fail("internal: batch %d outside [1, %d]", B, m->B_alloc);
    m->B = B;
    for (int l = 0; l < m->cfg.n_layers; l++) m->acts[l].moe.N = B * m->T;
}

void model_zero_grad(Model *m) { m->be->zero(m->grads, sizeof(float) * m->n_params); }

// The backward of layer l's attention sub-block: dresid holds d loss / d x_mid on entry, d loss / d x (the
// layer's input) on return. d loss / d atty goes in x_mid's buffer, which this layer's backward has finished
// with (or in datty when the attention is wider than d).
static void attention_block_backward(Model *m, int l) {
    const ModelConfig *c = &m->cfg;
    int B = m->B, T = m->T, N = B * T, d = c->d, H = c->n_heads, Hkv = c->n_kv_heads, hs = c->head_dim;
    int q = model_q_dim(c), qkv = model_qkv_dim(c);
    size_t Nd = (size_t)N * d;
    const LayerWeights *w = &m->w.layer[l], *g = &m->g.layer[l];
    const LayerActs *a = &m->acts[l];
    float *datty = m->datty ? m->datty : a->x_mid;
    m->be->zero(datty, sizeof(float) * N * q);
    m->be->matmul_backward(datty, g->wo, m->dresid, a->atty, w->wo, N, q, d);
    m->be->zero(m->dqkv, sizeof(float) * N * qkv);
    m->be->attention_backward(m->dqkv, m->att_work, m->att_work_floats, datty, a->qkv, a->att, a->atty, B, T, H, Hkv,
                              hs);
    m->be->rope_backward(m->dqkv, m->cos_t, m->sin_t, B, T, H, Hkv, hs);
    if (c->qk_norm != QK_NORM_NONE)
        m->be->qknorm_backward(m->dqkv, g->q_norm, g->k_norm, a->qk_raw, w->q_norm, w->k_norm, a->qk_rstd, N, H, Hkv,
                               hs, c->qk_norm == QK_NORM_HEAD);
    m->be->zero(m->dln, sizeof(float) * Nd);
    m->be->matmul_backward(m->dln, g->wqkv, m->dqkv, a->ln1, w->wqkv, N, d, qkv);
    m->flops += flops_matmul_backward(N, q, d, 1) + 2.0 * flops_attention(B, T, H, hs) +
                flops_matmul_backward(N, d, qkv, 1);
    m->be->rmsnorm_backward(m->dresid, g->attn_norm, m->dln, m->resid + (size_t)l * Nd, w->attn_norm, a->rstd1, N, d);
}

void model_backward(Model *m, const Token *tokens, const Token *targets) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, d = c->d;
    size_t Nd = (size_t)N * d;
    if (!m->head_done) {
        head_backward(m, targets);
        m->flops += flops_matmul_backward(N, d, c->vocab, 1);
    }
    m->head_done = 0;
    m->be->zero(m->dresid, sizeof(float) * Nd);
    m->be->rmsnorm_backward(m->dresid, m->g.final_norm, m->dln, m->resid + (size_t)c->n_layers * Nd, m->w.final_norm,
                     m->rstdf, N, d);
    for (int l = c->n_layers - 1; l >= 0; l--) {
        const LayerWeights *w = &m->w.layer[l];
        const LayerWeights *g = &m->g.layer[l];
        LayerActs *a = &m->acts[l];
        // recompute_attention: this layer's attention activations again (not counted as model FLOPs); the last
        // layer's are still those of the forward
        if (c->recompute_attention && l < c->n_layers - 1) attention_block(m, l, 0);
        // dresid holds d loss / d xo. FFN sub-block first.
        m->be->zero(m->dln, sizeof(float) * Nd);
        if (model_layer_is_moe(c, l)) {
            MoeScratch *s = &m->moe_scratch;
            if (!m->ex && m->moe_he && a->moe.he == m->moe_he) {
                // recompute_experts: this layer's hidden activations again, by the forward's calls on the
                // forward's inputs (the same values, outputs too; not counted as model FLOPs)
                m->be->moe_experts_forward(&a->moe, expert_set(w));
            }
            s->dye = a->moe.ye; // the layer's outputs are not needed again: their gradients replace them
            if (m->ex) s->dxe = a->moe.ye; // (and then, row by row, the inputs' gradients: see moe_acts_alloc)
            m->be->moe_combine_backward(s, m->dresid, &a->moe);
            if (m->ex) exchange_backward(m->ex, l, &a->moe, s, expert_set(w), expert_set(g), &m->flops);
            else {
                m->be->moe_experts_backward(s, &a->moe, expert_set(w), expert_set(g));
                m->flops += 2.0 * experts_flops(&a->moe, expert_set(w));
            }
            // (several ranks: the z-loss is the mean over their tokens; the aux loss is the party batch's already)
            m->be->moe_route_backward(m->dln, g->router, s, &a->moe, a->ln2, w->router, c->aux_coef,
                                      c->z_coef / m->dp_ranks);
            m->flops += flops_matmul_backward(N, d, c->n_experts, 1);
        } else {
            m->be->ffn_backward(m->dln, g->ffn_gate, g->ffn_up, g->ffn_down, m->dffn_h, m->dffn_u, m->dffn_a, m->dresid,
                         a->ln2, a->ffn_h, a->ffn_u, a->ffn_a, w->ffn_gate, w->ffn_up, w->ffn_down, N, d, c->d_ff);
            m->flops += 2.0 * flops_ffn(N, d, c->d_ff);
        }
        m->be->rmsnorm_backward(m->dresid, g->ffn_norm, m->dln, a->x_mid, w->ffn_norm, a->rstd2, N, d);
        // dresid now holds d loss / d x_mid
        attention_block_backward(m, l);
    }
    m->be->embedding_backward(m->g.embed, m->dresid, tokens, N, d);
    model_mark_active(m);
}

void model_serve_forward(Model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        if (model_layer_is_moe(&m->cfg, l)) exchange_forward(m->ex, l, NULL, expert_set(&m->w.layer[l]), &m->flops);
}

void model_serve_backward(Model *m) {
    for (int l = m->cfg.n_layers - 1; l >= 0; l--)
        if (model_layer_is_moe(&m->cfg, l))
            exchange_backward(m->ex, l, NULL, NULL, expert_set(&m->w.layer[l]), expert_set(&m->g.layer[l]), &m->flops);
}

void model_mark_active(Model *m) {
    for (int i = 0; i < m->n_tensors; i++) {
        const ParamTensor *t = &m->tensors[i];
        if (t->expert < 0) { m->active[i] = 1; continue; }
        int rows = m->ex ? exchange_expert_rows(m->ex, t->layer, t->expert) : m->acts[t->layer].moe.counts[t->expert];
        m->active[i] = rows > 0;
    }
}

// ---------------------------------------------------------------------------------------------------
// Generation with a KV cache (see model.h). The layer sequence is model_forward's; only attention differs,
// reading the keys and values of earlier positions from the cache.

void model_cache_create(KvCache *kv, const Model *m) {
    const ModelConfig *c = &m->cfg;
    if (m->be->device) fail("internal: generation runs on the CPU backend");
    size_t T = (size_t)m->T, d = c->d, L = c->n_layers, q = model_q_dim(c), kvd = model_kv_dim(c);
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    memset(kv, 0, sizeof *kv);
    kv->cap = (int)T;
    kv->k = callocCheck(L * T * kvd, sizeof(float));
    kv->v = callocCheck(L * T * kvd, sizeof(float));
    kv->x = callocCheck(T * d, sizeof(float));
    kv->xm = callocCheck(T * d, sizeof(float));
    kv->ln = callocCheck(T * d, sizeof(float));
    kv->rstd = callocCheck(T, sizeof(float));
    kv->qkv = callocCheck(T * model_qkv_dim(c), sizeof(float));
    if (c->qk_norm != QK_NORM_NONE) {
        kv->qk_raw = callocCheck(T * (q + kvd), sizeof(float));
        kv->qk_rstd = callocCheck(T * (size_t)(c->n_heads + c->n_kv_heads), sizeof(float));
    }
    kv->atty = callocCheck(T * q, sizeof(float));
    kv->tmp = callocCheck(T * d, sizeof(float));
    int dense = 0;
    for (int l = 0; l < c->n_layers; l++) dense |= !model_layer_is_moe(c, l);
    if (dense) {
        kv->h = callocCheck(T * c->d_ff, sizeof(float));
        kv->u = callocCheck(T * c->d_ff, sizeof(float));
        kv->a = callocCheck(T * c->d_ff, sizeof(float));
    }
    kv->scores = callocCheck((size_t)threads * T, sizeof(float));
}

void model_cache_free(KvCache *kv) {
    float *bufs[] = {kv->k,   kv->v,    kv->x,      kv->xm,      kv->ln,   kv->rstd, kv->qkv, kv->qk_raw,
                     kv->qk_rstd, kv->atty, kv->tmp, kv->h,       kv->u,    kv->a,    kv->scores};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]);
    memset(kv, 0, sizeof *kv);
}

// Causal attention of n new rows at positions p0 .. p0 + n - 1 over the cached keys K and values V (cap, kv)
// of positions 0 .. p0 + n - 1 (the new rows' own already appended). qkv (n, qkv): the rows' queries in its
// first H hs columns; query head h reads key/value head h / (H / Hkv). out (n, H hs). scores: (threads, cap).
static void attention_cached(float *out, const float *qkv, const float *K, const float *V, int n, int p0, int H,
                             int Hkv, int hs, float *scores, int cap) {
    int q = H * hs, kvd = Hkv * hs, width = q + 2 * kvd, group = H / Hkv;
    float scale = 1.0f / sqrtf((float)hs);
    long work = (long)n * H * hs * (p0 + n); // (one token of a small model: not worth waking the team)
#pragma omp parallel if (work > 65536)
    {
        int id = 0;
#ifdef _OPENMP
        id = omp_get_thread_num();
#endif
        float *S = scores + (size_t)id * cap;
#pragma omp for collapse(2) schedule(static)
        for (int i = 0; i < n; i++)
            for (int h = 0; h < H; h++) {
                int last = p0 + i, kh = h / group; // keys 0 .. last
                const float *qh = qkv + (size_t)i * width + h * hs;
                float maxv = -INFINITY, sum = 0.0f;
                for (int u = 0; u <= last; u++) {
                    const float *k = K + (size_t)u * kvd + kh * hs;
                    float s = 0.0f;
                    for (int j = 0; j < hs; j++) s += qh[j] * k[j];
                    S[u] = s * scale;
                    maxv = S[u] > maxv ? S[u] : maxv;
                }
                for (int u = 0; u <= last; u++) { S[u] = expf(S[u] - maxv); sum += S[u]; }
                float *y = out + (size_t)i * q + h * hs, inv = 1.0f / sum;
                for (int j = 0; j < hs; j++) y[j] = 0.0f;
                for (int u = 0; u <= last; u++) {
                    const float *v = V + (size_t)u * kvd + kh * hs;
                    float p = S[u] * inv;
                    for (int j = 0; j < hs; j++) y[j] += p * v[j];
                }
            }
    }
}

// The attention sub-block of layer l on the n new rows of the cache: kv->xm = x + wo(attn(rope(wqkv(rmsnorm(x))))).
static void attention_block_cached(Model *m, KvCache *kv, int l, int n) {
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    const LayerWeights *w = &m->w.layer[l];
    int d = c->d, H = c->n_heads, Hkv = c->n_kv_heads, hs = c->head_dim, half = hs / 2, p0 = kv->len;
    int q = model_q_dim(c), kvd = model_kv_dim(c), qkv = model_qkv_dim(c);
    float *K = kv->k + (size_t)l * kv->cap * kvd, *V = kv->v + (size_t)l * kv->cap * kvd;
    be->rmsnorm_forward(kv->ln, kv->rstd, kv->x, w->attn_norm, n, d, c->norm_eps);
    be->matmul_forward(kv->qkv, kv->ln, w->wqkv, n, d, qkv);
    if (c->qk_norm != QK_NORM_NONE)
        be->qknorm_forward(kv->qkv, kv->qk_raw, kv->qk_rstd, w->q_norm, w->k_norm, n, H, Hkv, hs,
                           c->qk_norm == QK_NORM_HEAD, c->norm_eps);
    be->rope_forward(kv->qkv, m->cos_t + (size_t)p0 * half, m->sin_t + (size_t)p0 * half, 1, n, H, Hkv, hs);
    for (int i = 0; i < n; i++) {
        memcpy(K + (size_t)(p0 + i) * kvd, kv->qkv + (size_t)i * qkv + q, sizeof(float) * kvd);
        memcpy(V + (size_t)(p0 + i) * kvd, kv->qkv + (size_t)i * qkv + q + kvd, sizeof(float) * kvd);
    }
    attention_cached(kv->atty, kv->qkv, K, V, n, p0, H, Hkv, hs, kv->scores, kv->cap);
    be->matmul_forward(kv->tmp, kv->atty, w->wo, n, q, d);
    m->flops += flops_matmul(n, d, qkv) + flops_matmul(n, q, d);
    for (int i = 0; i < n; i++) m->flops += flops_attention_row(H, hs, p0 + i + 1);
    be->residual_forward(kv->xm, kv->x, kv->tmp, (size_t)n * d);
}

void model_forward_cached(Model *m, KvCache *kv, const Token *tokens, int n, float *logits) {
    const ModelConfig *c = &m->cfg;
    const Backend *be = m->be;
    int d = c->d, p0 = kv->len;
    if (n < 1 || p0 + n > kv->cap) fail("internal: %d positions after %d overflow a cache of %d", n, p0, kv->cap);
    be->embedding_forward(kv->x, tokens, m->w.embed, n, d);
    for (int l = 0; l < c->n_layers; l++) {
        attention_block_cached(m, kv, l, n);
        // FFN sub-block: x = xm + ffn(rmsnorm(xm))
        be->rmsnorm_forward(kv->ln, kv->rstd, kv->xm, m->w.layer[l].ffn_norm, n, d, c->norm_eps);
        ffn_block(m, l, kv->ln, kv->tmp, n, kv->h, kv->u, kv->a);
        if (model_layer_is_moe(c, l)) m->acts[l].moe.N = m->B * m->T; // (the routing buffers back to the batch's rows)
        be->residual_forward(kv->x, kv->xm, kv->tmp, (size_t)n * d);
    }
    // the last position's logits
    be->rmsnorm_forward(kv->ln, kv->rstd, kv->x + (size_t)(n - 1) * d, m->w.final_norm, 1, d, c->norm_eps);
    be->matmul_forward(logits, kv->ln, m->w.lm_head, 1, d, c->vocab);
    m->flops += flops_matmul(1, d, c->vocab);
    kv->len += n;
}

const ParamTensor *model_find_tensor(const Model *m, const char *name) {
    for (int i = 0; i < m->n_tensors; i++)
        if (!strcmp(m->tensors[i].name, name)) return &m->tensors[i];
    return NULL;
}
