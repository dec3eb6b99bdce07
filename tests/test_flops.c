// test_flops: the step's executed FLOP count (counted where model.c calls each op, flops.h) equals the
// analytic count of the architecture, and at fixed top_k doubling the number of experts changes it by
// exactly the router's GEMMs: expert work scales with top_k, not with the number of experts.
#include <math.h>   // fabs
#include <stdlib.h> // malloc

#include "testutil.h"

// FLOPs of one forward pass, written from the architecture (not from the code).
static double analytic_forward(const ModelConfig *c, int B, int T) {
    double N = (double)B * T, d = c->d, f = 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        double q = (double)c->n_heads * c->head_dim, kv = (double)c->n_kv_heads * c->head_dim;
        f += 2 * N * d * (q + 2 * kv) + 2 * N * q * d;                    // wqkv, wo
        f += 2.0 * 2.0 * B * c->n_heads * c->head_dim * (T * (T + 1.0) / 2.0); // causal q.k and p.v
        if (model_layer_is_moe(c, l))
            f += 2 * N * d * c->n_experts + 3 * 2 * (N * c->top_k) * d * c->expert_ff; // router, experts
        else
            f += 3 * 2 * N * d * c->d_ff;
    }
    return f + 2 * N * d * c->vocab; // lm head
}

static double step_flops(const ModelConfig *c, int B, int T) {
    Model m;
    model_create(&m, c, NULL, 1, B, T);
    model_init(&m, 5, 6);
    Token *tok = malloc(sizeof(Token) * B * T), *tgt = malloc(sizeof(Token) * B * T);
    test_batch(tok, tgt, B * T, 11);
    m.flops = 0.0;
    model_zero_grad(&m);
    model_forward(&m, tok, tgt);
    model_backward(&m, tok, tgt);
    double f = m.flops;
    free(tok);
    free(tgt);
    model_free(&m);
    return f;
}

int main(void) {
    int B = 4, T = 8, failures = 0;
    ModelConfig c4 = test_config(3, 1, 4, 2), c8 = test_config(3, 1, 8, 2);
    double f4 = step_flops(&c4, B, T), f8 = step_flops(&c8, B, T);
    // backward = 2x forward for every GEMM (input and weight gradients) and for attention
    double a4 = 3 * analytic_forward(&c4, B, T), a8 = 3 * analytic_forward(&c8, B, T);
    double router_delta = 3.0 * 2.0 * B * T * c4.d * (c8.n_experts - c4.n_experts) * c4.n_layers;
    printf("step FLOPs: m=4 %.0f (analytic %.0f), m=8 %.0f (analytic %.0f)\n", f4, a4, f8, a8);
    printf("m=8 minus m=4: %.0f; router GEMMs account for %.0f\n", f8 - f4, router_delta);
    if (fabs(f4 - a4) > 0.5) { printf("FAIL: m=4 count differs from the analytic count\n"); failures++; }
    if (fabs(f8 - a8) > 0.5) { printf("FAIL: m=8 count differs from the analytic count\n"); failures++; }
    if (fabs((f8 - f4) - router_delta) > 0.5) { printf("FAIL: doubling experts changed more than the router\n"); failures++; }
    // and top_k does scale the expert work
    ModelConfig k1 = test_config(3, 1, 8, 1);
    double fk1 = step_flops(&k1, B, T);
    double expert_k1 = 3.0 * 3 * 2 * (double)B * T * 1 * k1.d * k1.expert_ff * k1.n_layers;
    printf("top_k=1 vs 2 at m=8: %.0f vs %.0f (expert work halves: difference %.0f)\n", fk1, f8, f8 - fk1);
    if (fabs((f8 - fk1) - expert_k1) > 0.5) { printf("FAIL: top_k does not scale expert work linearly\n"); failures++; }
    // grouped-query attention with heads wider than d / n_heads: smaller k and v projections, a wider wo
    ModelConfig g = test_config(3, 1, 4, 2);
    g.n_heads = 4; g.n_kv_heads = 1; g.head_dim = 6;
    double fg = step_flops(&g, B, T), ag = 3 * analytic_forward(&g, B, T);
    printf("GQA 4/1 heads of 6: %.0f (analytic %.0f)\n", fg, ag);
    if (fabs(fg - ag) > 0.5) { printf("FAIL: the GQA count differs from the analytic count\n"); failures++; }
    printf("%s\n", failures ? "FAIL" : "PASS");
    return failures ? 1 : 0;
}
