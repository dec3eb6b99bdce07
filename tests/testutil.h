// testutil.h: small helpers shared by the C tests (header-only; each test is one program).
#ifndef PCMOE_TESTUTIL_H
#define PCMOE_TESTUTIL_H

#include <stdint.h> // uint8_t
#include <stdio.h>  // printf

#include "model.h"  // ModelConfig
#include "rng.h"    // Rng

// A small model with every kind of layer: dense FFN layers and MoE layers.
static inline ModelConfig test_config(int n_layers, int moe_every, int n_experts, int top_k) {
    ModelConfig c = {
        .vocab = 256, .d = 16, .n_layers = n_layers, .n_heads = 2, .n_kv_heads = 2, .head_dim = 8, .seq_len = 8,
        .router_renorm = 1,
        .d_ff = 24, .n_experts = n_experts, .top_k = top_k, .expert_ff = 12, .moe_every = moe_every,
        .aux_coef = 0.01f, .z_coef = 0.001f, .rope_theta = 10000.0f, .norm_eps = 1e-5f, .init_std = 0.1f,
    };
    return c;
}

// Random bytes as tokens and targets (B*T each).
static inline void test_batch(Token *tokens, Token *targets, int n, uint64_t seed) {
    Rng r;
    rng_seed(&r, seed);
    for (int i = 0; i < n; i++) { tokens[i] = (Token)rng_below(&r, 256); targets[i] = (Token)rng_below(&r, 256); }
}

#endif
