// layers.h: forward/backward pairs of the dense transformer ops on the CPU (fp32).
// N = number of token rows (B*T). Weight matrices are (out, in) row-major and applied as x @ W^T,
// the nn.Linear convention. Every backward ACCUMULATES (+=) into its input and weight gradients.
// (FLOPs are counted by the callers, from the shapes: flops.h.)
#ifndef PCMOE_LAYERS_H
#define PCMOE_LAYERS_H

#include <stddef.h> // size_t
#include <stdint.h> // uint8_t

#include "token.h" // Token

// out (n) = a + b (the residual connection; out may be a or b)
void residual_forward(float *out, const float *a, const float *b, size_t n);

// out (N, d) = embed[tokens[n]]
void embedding_forward(float *out, const Token *tokens, const float *embed, int N, int d);
// dembed (V, d) += scatter of dout (N, d) by token
void embedding_backward(float *dembed, const float *dout, const Token *tokens, int N, int d);

// out (N, d) = inp * rstd * w, rstd (N) = 1/sqrt(mean(inp^2) + eps)
void rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps);
// dinp (N, d) +=, dw (d) += ; given dout (N, d)
void rmsnorm_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                      const float *rstd, int N, int d);

// out (N, n_out) = inp (N, n_in) @ w^T, w (n_out, n_in)
void matmul_forward(float *out, const float *inp, const float *w, int N, int n_in, int n_out);
// dinp (N, n_in) += dout @ w (skipped when dinp is NULL); dw (n_out, n_in) += dout^T @ inp
void matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                     int N, int n_in, int n_out);

// Rotary embedding tables: cos, sin (T, hs/2), angle = t * theta^(-2i/hs).
void rope_tables(float *cos_t, float *sin_t, int T, int hs, float theta);
// Rows of qkv (B*T, (Hq + 2 Hkv) hs) hold Hq query heads, Hkv key heads, then Hkv value heads, of hs each.
// Rotates the query and key heads in place (rotate-half convention: pairs (i, i + hs/2)).
void rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs);
// Applies the inverse rotation to the query and key gradients in dqkv in place.
void rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs);

// QK-norm: RMSNorm of the query and key parts of each row of qkv (N, (Hq + 2 Hkv) hs), in place. per_head = 0
// (OLMoE): one norm over the whole query part, weights wq (Hq hs), and one over the key part, wk (Hkv hs);
// per_head = 1 (Qwen3): one norm per head, every query head with wq (hs), every key head with wk (hs).
// raw (N, (Hq + Hkv) hs): the parts before the norm; rstd (N, groups): groups = 2, or Hq + Hkv per head.
void qknorm_forward(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int Hq, int Hkv,
                    int hs, int per_head, float eps);
// The query and key gradients in dqkv become those of the parts before the norm (overwritten in place);
// dwq, dwk +=.
void qknorm_backward(float *dqkv, float *dwq, float *dwk, const float *raw, const float *wq, const float *wk,
                     const float *rstd, int N, int Hq, int Hkv, int hs, int per_head);

// Row-major C (M, N) = alpha op(A) op(B) + beta C, op(A) (M, K), op(B) (K, N), op = transpose when
// trans_* is 1. With a one-thread BLAS and several OpenMP threads it is cut into blocks of C's longer
// side, one per thread, each a BLAS call: the result depends on the thread count, never on timing.
void layers_gemm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc);

// Causal softmax attention with grouped-query heads: query head h attends with key and value head
// h / (Hq / Hkv). qkv (B*T, (Hq + 2 Hkv) hs) as for rope_forward; out (B*T, Hq hs). lse (B, Hq, T) keeps
// each query row's log-sum-exp of its scaled scores: all the backward needs besides q, k, v and out (it
// recomputes the probabilities, never stored whole). work: scratch of attention_work_floats(T, threads)
// floats, shared by forward and backward; at most `threads` OpenMP threads run.
size_t attention_work_floats(int T, int threads);
void attention_forward(float *out, float *lse, float *work, size_t work_floats, const float *qkv, int B, int T, int Hq,
                       int Hkv, int hs);
// dqkv (B*T, (Hq + 2 Hkv) hs) += ; given dout (B*T, Hq hs) and the forward's lse and out (out gives each
// row's sum_u p_u dp_u as dout . out)
void attention_backward(float *dqkv, float *work, size_t work_floats, const float *dout, const float *qkv,
                        const float *lse, const float *out, int B, int T, int Hq, int Hkv, int hs);

// a (n) = silu(h) * u
void swiglu_forward(float *a, const float *h, const float *u, long n);
// dh (n) =, du (n) = (overwritten, not accumulated); given da (n)
void swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n);

// Mean cross-entropy. logits (N, V) are overwritten with softmax probabilities; losses (N) per row.
// Returns the mean loss over the N rows (accumulated in double).
double crossentropy_forward(float *probs_inout, float *losses, const Token *targets, int N, int V);
// dlogits (N, V) = (probs - onehot(target)) * scale  (overwritten)
void crossentropy_backward(float *dlogits, const float *probs, const Token *targets, int N, int V, float scale);
// Both in one pass over each row: logits (N, V) in, their gradients (probs - onehot(target)) * scale out;
// losses (N). The same bits as crossentropy_forward then crossentropy_backward in place.
void crossentropy_fused(float *logits_inout, float *losses, const Token *targets, int N, int V, float scale);



// SwiGLU feed-forward block, used by dense layers and by every expert:
// h = x @ wg^T, u = x @ wu^T (N, f); a = silu(h) * u; y (N, d) = a @ wd^T.   wg, wu (f, d); wd (d, f)
void ffn_forward(float *y, float *h, float *u, float *a, const float *x,
                 const float *wg, const float *wu, const float *wd, int N, int d, int f);
// dx (N, d) overwritten (it may be the same buffer as dy, which is read first); dwg, dwu, dwd +=.
// Scratch dh, du, da (N, f) are overwritten; they may be h, u, a themselves (read first).
void ffn_backward(float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du, float *da,
                  const float *dy, const float *x, const float *h, const float *u, const float *a,
                  const float *wg, const float *wu, const float *wd, int N, int d, int f);

// Many SwiGLU FFNs run together (the experts an owner serves): group i is ffn_forward / ffn_backward on its
// own rows with its own weights and buffers (the fields below, shapes as there with N = rows). The CUDA
// backend runs each product as one grouped GEMM for all groups.
typedef struct FfnGroup {
    int rows;                    // > 0
    const float *wg, *wu, *wd;   // (f, d), (f, d), (d, f)
    const float *x;              // (rows, d)
    float *y, *h, *u, *a;        // y (rows, d) overwritten; h, u, a (rows, f)
    const float *dy;             // backward only (else NULL): dy (rows, d)
    float *dx;                   // (rows, d) overwritten; may be dy
    float *dwg, *dwu, *dwd;      // +=
    float *dh, *du, *da;         // (rows, f) overwritten; may be h, u, a
} FfnGroup;
void ffn_forward_groups(const FfnGroup *groups, int n, int d, int f);
void ffn_backward_groups(const FfnGroup *groups, int n, int d, int f);

#endif
