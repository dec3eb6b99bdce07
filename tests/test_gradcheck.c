// test_gradcheck: every parameter tensor's hand-written gradient against central finite differences of
// the full loss (cross-entropy + aux + z), on a tiny model with a dense layer and an MoE layer.
//
// The engine is fp32, so differences are taken along directions, not element by element: for each
// tensor, (1) along its own gradient, v = g/|g|, where the exact directional derivative is |g|, and
// (2) along two random unit directions. err = |fd - g.v| / |g|: the error relative to the largest
// directional derivative of that tensor. With eps = 1e-2 the fp32 rounding of the loss (~1e-6
// absolute) contributes ~5e-5 / |g| and truncation ~eps^2; the bound TOL = 2e-3 leaves room for that
// while a wrong gradient term (a missing factor, a dropped path) gives errors of order 1e-1 to 1.
// Top-k routing is piecewise constant: a difference whose +-eps points route differently is retried
// with a smaller eps. Runs three times: without the router losses, and with large aux and z coefficients
// (so that their gradient terms dominate the router's gradient); and the latter again with model.recompute_experts
// and model.recompute_attention on (the backward recomputes the experts' and attention's activations). Then twice
// with the Hugging Face models' features: grouped-query and multi-query attention, a head width apart from
// d / n_heads, both QK-norms, tied embeddings and gates without renormalisation.
#include <math.h>   // fabs, sqrt
#include <stdlib.h> // malloc
#include <string.h> // memcpy, memcmp

#include "testutil.h"

#define TOL 2e-3

static int routing_equal(const Model *m, int **saved, int save) {
    int same = 1;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        if (!model_layer_is_moe(&m->cfg, l)) continue;
        size_t n = sizeof(int) * m->B * m->T * m->cfg.top_k;
        if (save) memcpy(saved[l], m->acts[l].moe.topk, n);
        else if (memcmp(saved[l], m->acts[l].moe.topk, n)) same = 0;
    }
    return same;
}

// Loss at params + eps * v on tensor t; reports whether routing stayed as in `base_topk`.
static double loss_at(Model *m, const ParamTensor *t, const double *v, double eps, const float *orig,
                      const Token *tok, const Token *tgt, int **base_topk, int *same) {
    float *p = m->params + t->offset;
    for (size_t i = 0; i < t->numel; i++) p[i] = (float)(orig[i] + eps * v[i]);
    double loss = model_forward(m, tok, tgt);
    *same = routing_equal(m, base_topk, 0);
    memcpy(p, orig, sizeof(float) * t->numel);
    return loss;
}

static int run(ModelConfig c, const char *what) {
    int B = 2, T = c.seq_len, N = B * T;
    Model m;
    model_create(&m, &c, NULL, 1, B, T);
    model_init(&m, 42, 43);
    Token *tok = malloc(sizeof(Token) * N), *tgt = malloc(sizeof(Token) * N);
    test_batch(tok, tgt, N, 7);
    int *base_topk[8] = {0};
    for (int l = 0; l < c.n_layers; l++) base_topk[l] = malloc(sizeof(int) * N * c.top_k);

    model_zero_grad(&m);
    model_forward(&m, tok, tgt);
    routing_equal(&m, base_topk, 1);
    model_backward(&m, tok, tgt);
    printf("# %s: aux_coef %g z_coef %g recompute (experts, attention) %d: loss %.6f (ce %.6f aux %.6f z %.6f)\n", what,
           c.aux_coef, c.z_coef, c.recompute_experts, m.loss, m.ce, m.aux, m.z);

    int failures = 0;
    Rng r;
    rng_seed(&r, 99);
    for (int ti = 0; ti < m.n_tensors; ti++) {
        const ParamTensor *t = &m.tensors[ti];
        const float *g = m.grads + t->offset;
        float *orig = malloc(sizeof(float) * t->numel);
        double *v = malloc(sizeof(double) * t->numel);
        memcpy(orig, m.params + t->offset, sizeof(float) * t->numel);
        double gnorm = 0.0;
        for (size_t i = 0; i < t->numel; i++) gnorm += (double)g[i] * g[i];
        gnorm = sqrt(gnorm);
        double worst = 0.0;
        for (int dir = 0; dir < 3; dir++) {
            double vn = 0.0;
            for (size_t i = 0; i < t->numel; i++) {
                v[i] = dir == 0 ? g[i] : rng_normal(&r);
                vn += v[i] * v[i];
            }
            vn = sqrt(vn);
            if (vn == 0.0) continue;
            double an = 0.0;
            for (size_t i = 0; i < t->numel; i++) { v[i] /= vn; an += g[i] * v[i]; }
            double eps = 1e-2, fd = 0.0;
            int ok_route = 0;
            for (int tries = 0; tries < 6 && !ok_route; tries++, eps *= 0.25) {
                int s1, s2;
                double lp = loss_at(&m, t, v, eps, orig, tok, tgt, base_topk, &s1);
                double lm = loss_at(&m, t, v, -eps, orig, tok, tgt, base_topk, &s2);
                ok_route = s1 && s2;
                fd = (lp - lm) / (2 * eps);
            }
            double err = fabs(fd - an) / (gnorm > 1e-8 ? gnorm : 1e-8);
            if (!ok_route) { printf("#   %s: routing changes at every eps; direction %d skipped\n", t->name, dir); continue; }
            if (err > worst) worst = err;
        }
        int bad = !(worst <= TOL) || !isfinite(gnorm);
        failures += bad;
        printf("%s %-28s |g| %.3e  max rel err %.2e\n", bad ? "FAIL" : "ok  ", t->name, gnorm, worst);
        free(orig);
        free(v);
    }
    for (int l = 0; l < c.n_layers; l++) free(base_topk[l]);
    free(tok);
    free(tgt);
    model_free(&m);
    return failures;
}

// The LM head in chunks of `rows` rows against all rows at once (model_forward, model_backward): the same loss
// and per-token losses, and every gradient within fp32 summation order (the LM head's is summed chunk by chunk).
// train: the chunked model's forward is model_forward_train (the head's backward inside it).
static int chunks_check(ModelConfig c, int rows, int train) {
    int B = 2, T = c.seq_len, N = B * T, bad = 0;
    Model m[2];
    Token *tok = malloc(sizeof(Token) * N), *tgt = malloc(sizeof(Token) * N);
    test_batch(tok, tgt, N, 11);
    for (int i = 0; i < 2; i++) {
        c.logits_rows = i ? rows : 0;
        model_create(&m[i], &c, NULL, 1, B, T);
        model_init(&m[i], 42, 43);
        model_zero_grad(&m[i]);
        if (i && train) model_forward_train(&m[i], tok, tgt);
        else model_forward(&m[i], tok, tgt);
        model_backward(&m[i], tok, tgt);
        model_finish_loss(&m[i]); // (model_forward_train leaves the loss for the step to read)
    }
    double worst = 0.0;
    for (int n = 0; n < N; n++) bad += m[0].losses[n] != m[1].losses[n];
    for (int ti = 0; ti < m[0].n_tensors; ti++) {
        const ParamTensor *t = &m[0].tensors[ti];
        double gn = 0.0, dn = 0.0;
        for (size_t i = 0; i < t->numel; i++) {
            double a = m[0].grads[t->offset + i], b = m[1].grads[t->offset + i];
            gn += a * a; dn += (a - b) * (a - b);
        }
        double rel = sqrt(dn) / (sqrt(gn) > 1e-12 ? sqrt(gn) : 1e-12);
        if (rel > worst) worst = rel;
    }
    bad += m[0].loss != m[1].loss || !(worst <= 1e-6);
    printf("%s LM head %d rows at a time (%d chunks%s) vs all %d: loss %.9g vs %.9g, per-token losses %s, "
           "worst gradient difference %.2e of its norm\n", bad ? "FAIL" : "ok  ", m[1].head_rows,
           (N + m[1].head_rows - 1) / m[1].head_rows, train ? ", backward in model_forward_train" : "", N,
           m[1].loss, m[0].loss, bad ? "differ" : "equal", worst);
    if (rows == 0 && worst != 0.0) { printf("FAIL   one chunk: the gradients are not bit for bit the same\n"); bad++; }
    for (int i = 0; i < 2; i++) model_free(&m[i]);
    free(tok); free(tgt);
    return bad;
}

// The base model (layer 0 dense, layer 1 MoE) with the router losses' coefficients and recomputation.
static ModelConfig base(float aux_coef, float z_coef, int recompute) {
    ModelConfig c = test_config(2, 2, 4, 2);
    c.aux_coef = aux_coef;
    c.z_coef = z_coef;
    c.recompute_experts = c.recompute_attention = recompute;
    return c;
}

int main(void) {
    int failures = run(base(0.0f, 0.0f, 0), "base") + run(base(1.0f, 0.5f, 0), "base") + run(base(1.0f, 0.5f, 1), "base");
    // the Hugging Face shapes: grouped-query attention wider than d (4 query heads of 6 on d = 16, so d loss / d atty
    // has its own buffer), OLMoE's QK-norm, tied embeddings, gates without renormalisation
    ModelConfig hf = base(1.0f, 0.5f, 0);
    hf.n_heads = 4; hf.n_kv_heads = 2; hf.head_dim = 6; hf.qk_norm = QK_NORM_FULL; hf.tie_embeddings = 1;
    hf.router_renorm = 0;
    failures += run(hf, "GQA 4/2 heads of 6, QK-norm full, tied, no renorm");
    // Qwen3's per-head QK-norm, multi-query attention, recomputation
    ModelConfig qw = base(1.0f, 0.5f, 1);
    qw.n_heads = 4; qw.n_kv_heads = 1; qw.head_dim = 4; qw.qk_norm = QK_NORM_HEAD; qw.router_renorm = 0;
    qw.logits_rows = 5; // (16 rows: chunks of 5, 5, 5 and 1)
    failures += run(qw, "MQA 4/1 heads of 4, QK-norm per head, recompute, no renorm, LM head 5 rows at a time");
    for (int train = 0; train < 2; train++)
        failures += chunks_check(qw, 0, train) + chunks_check(qw, 1, train) + chunks_check(base(1.0f, 0.5f, 0), 7, train);
    printf("%s: %d tensor checks failed (tolerance %.0e)\n", failures ? "FAIL" : "PASS", failures, TOL);
    return failures ? 1 : 0;
}
