// flops.h: the floating-point operations of the ops the model and the exchange call, from the call's
// shapes. Counted where model.c and exchange.c call an op (Model.flops), never inside a backend's op, so
// every backend reports the same count: the GEMMs and attention's two products (the rest is lower order).
// Work that is recomputed (recompute_attention, recompute_experts) is not counted as model FLOPs.
#ifndef PCMOE_FLOPS_H
#define PCMOE_FLOPS_H

// matmul_forward: out (N, n_out) = inp (N, n_in) @ w^T
static inline double flops_matmul(int N, int n_in, int n_out) { return 2.0 * N * n_in * n_out; }

// matmul_backward: dw always; dinp unless it is NULL
static inline double flops_matmul_backward(int N, int n_in, int n_out, int with_dinp) {
    return (with_dinp ? 2.0 : 1.0) * flops_matmul(N, n_in, n_out);
}

// causal attention forward over B sequences of T positions: q.k and p.v over the causal triangle;
// the backward (dv, dp, dq, dk) is twice this
static inline double flops_attention(int B, int T, int H, int hs) {
    return 2.0 * 2.0 * B * H * hs * (T * (T + 1.0) / 2.0);
}

// one position attending to `keys` cached positions (generation's KV cache)
static inline double flops_attention_row(int H, int hs, int keys) { return 2.0 * 2.0 * H * hs * keys; }

// SwiGLU FFN forward on N rows (three GEMMs); the backward is twice this
static inline double flops_ffn(int N, int d, int f) { return 3.0 * flops_matmul(N, d, f); }

#endif
