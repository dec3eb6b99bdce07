// kernels.h: the CUDA backend's ops, each a forward/backward pair with the shapes and accumulation
// rules of its CPU counterpart in src/layers.h and src/optim.h (the tests check one against the other).
// All pointers are device pointers; every call is queued on `stream` and checked (cudaCheck).
#ifndef PCMOE_CUDA_KERNELS_H
#define PCMOE_CUDA_KERNELS_H

#include "common.cuh"

extern "C" {
#include "../src/layers.h" // FfnGroup
}

// residual.cu: out (n) = a + b
void cu_residual_forward(float *out, const float *a, const float *b, long n, cudaStream_t stream);

// embedding.cu: out (N, d) = embed[tokens[n]];  dembed (V, d) += scatter of dout by token, from the tokens'
// buckets: cu_embedding_buckets (host code, host arrays) returns the number nb of distinct tokens and fills
// token (nb), start (nb + 1) and rows (N): bucket b's rows, rows[start[b], start[b+1]) in row order
int cu_embedding_buckets(const Token *tokens, int N, int *token, int *start, int *rows);
void cu_embedding_forward(float *out, const Token *tokens, const float *embed, int N, int d, cudaStream_t stream);
void cu_embedding_backward(float *dembed, const float *dout, const int *bucket_token, const int *bucket_start,
                           const int *bucket_rows, int n_buckets, int d, cudaStream_t stream);

// rmsnorm.cu: out (N, d) = inp * rstd * w, rstd (N);  dinp (N, d) +=, dw (d) +=; scratch: device floats,
// cu_rmsnorm_scratch_floats(N, d) of them (dw's partial sums)
void cu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps,
                        cudaStream_t stream);
int cu_rmsnorm_scratch_floats(int N, int d);
void cu_rmsnorm_backward(float *dinp, float *dw, float *scratch, const float *dout, const float *inp, const float *w,
                         const float *rstd, int N, int d, cudaStream_t stream);

// rope.cu: rotates the Hq query and Hkv key heads of qkv (B*T, (Hq + 2 Hkv) hs) in place (rotate-half); the
// backward applies the inverse
void cu_rope_forward(float *qkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                     cudaStream_t stream);
void cu_rope_backward(float *dqkv, const float *cos_t, const float *sin_t, int B, int T, int Hq, int Hkv, int hs,
                      cudaStream_t stream);

// qknorm.cu: QK-norm of qkv's query and key parts in place (src/layers.h's qknorm_forward); raw (N, (Hq + Hkv) hs),
// rstd (N, groups). The backward turns dqkv's query and key parts into the gradients before the norm; dwq, dwk +=
void cu_qknorm_forward(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int Hq, int Hkv,
                       int hs, int per_head, float eps, cudaStream_t stream);
// scratch: cu_qknorm_scratch_floats(...) device floats (the weight gradients' partial sums)
int cu_qknorm_scratch_floats(int N, int Hq, int Hkv, int hs, int per_head);
void cu_qknorm_backward(float *dqkv, float *dwq, float *dwk, float *scratch, const float *raw, const float *wq,
                        const float *wk, const float *rstd, int N, int Hq, int Hkv, int hs, int per_head,
                        cudaStream_t stream);

// swiglu.cu: a (n) = silu(h) * u;  dh, du (n) overwritten from da
void cu_swiglu_forward(float *a, const float *h, const float *u, long n, cudaStream_t stream);
void cu_swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n,
                        cudaStream_t stream);
// the SwiGLU FFN: h = x wg^T, u = x wu^T (N, f); a = silu(h) * u; y (N, d) = a wd^T (overwritten). Backward:
// dx (N, d) overwritten (it may be dy, which is read first), dwg, dwu, dwd +=; scratch dh, du, da (N, f) overwritten
void cu_ffn_forward(cublasHandle_t blas, float *y, float *h, float *u, float *a, const float *x, const float *wg,
                    const float *wu, const float *wd, int N, int d, int f, cudaStream_t stream);
void cu_ffn_backward(cublasHandle_t blas, float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du,
                     float *da, const float *dy, const float *x, const float *h, const float *u, const float *a,
                     const float *wg, const float *wu, const float *wd, int N, int d, int f, cudaStream_t stream);
// Many SwiGLU FFNs at once (FfnGroup, src/layers.h: a MoE layer's experts, an owner's served experts), group i
// on its own rows with its own weights: every product is one grouped cuBLAS call for all groups (gate and up
// in one), the gate one launch. groups is host memory; the calls read pointer tables on the device, which they
// queue from t.host (pinned, cu_ffn_table_bytes(n) bytes, no copy from it in flight) to t.dev (as many bytes).
typedef struct {
    void *host, *dev;
} CuTable;
size_t cu_ffn_table_bytes(int n);
void cu_ffn_groups_forward(cublasHandle_t blas, const FfnGroup *groups, int n, CuTable t, int d, int f,
                           cudaStream_t stream);
void cu_ffn_groups_backward(cublasHandle_t blas, const FfnGroup *groups, int n, CuTable t, int d, int f,
                            cudaStream_t stream);

// crossentropy.cu: probs_inout (N, V): logits in, softmax out; losses (N).  dlogits (N, V) overwritten
void cu_crossentropy_forward(float *probs_inout, float *losses, const Token *targets, int N, int V,
                             cudaStream_t stream);
void cu_crossentropy_backward(float *dlogits, const float *probs, const Token *targets, int N, int V, float scale,
                              cudaStream_t stream);
// both in one pass: logits_inout (N, V) in, (softmax - onehot(target)) * scale out; losses (N)
void cu_crossentropy_fused(float *logits_inout, float *losses, const Token *targets, int N, int V, float scale,
                           cudaStream_t stream);

// adamw.cu: one AdamW step of n parameters (src/optim.c's formula); bc1, bc2 the bias corrections,
// decay = lr * weight_decay (0 for tensors without decay), grads scaled by grad_scale (clipping)
void cu_adamw(float *params, const float *grads, float *m, float *v, long n, float lr, float beta1, float beta2,
              float eps, float decay, float bc1, float bc2, float grad_scale, cudaStream_t stream);
// The same over many tensors of the buffers in one launch. tensors (n_tensors) and blocks (n_blocks) are device
// copies of tables built on the host: cu_adamw_plan (host code) fills blocks from the tensors and returns
// their number (blocks NULL: only counts).
typedef struct CuAdamwTensor {
    long offset, numel;     // where the tensor starts in the buffers, and its length
    float bc1, bc2, decay;  // its step's bias corrections and decay (optim_adamw_scalars)
} CuAdamwTensor;
typedef struct CuAdamwBlock {
    int tensor;             // index into the tensor table
    long start;             // its first element
} CuAdamwBlock;
int cu_adamw_plan(const CuAdamwTensor *tensors, int n_tensors, CuAdamwBlock *blocks);
void cu_adamw_tensors(float *params, const float *grads, float *m, float *v, const CuAdamwTensor *tensors,
                      const CuAdamwBlock *blocks, int n_blocks, float lr, float beta1, float beta2, float eps,
                      float grad_scale, cudaStream_t stream);
// reduce.cu: *out (one double, device) = sum of g[i]^2, in a fixed order (deterministic); partial:
// device scratch of cu_sum_squares_scratch_doubles() doubles (allocated once, outside the step)
int cu_sum_squares_scratch_doubles(void);
void cu_sum_squares(double *out, double *partial, const float *g, long n, cudaStream_t stream);
// first (count) = per block q of buf (rows_offs[q] rows of d at row rows_offs[count + q]; rows_offs a device
// array of 2 count; most_rows: the largest rows_offs[q]), the index of its first NaN or Inf (~0: none); value
// (count) = that element (device arrays)
void cu_first_nonfinite(unsigned long long *first, float *value, const float *buf, const int *rows_offs,
                        int most_rows, int count, int d, cudaStream_t stream);

// attention.cu: causal grouped-query attention, qkv (B*T, (H + 2 Hkv) hs) -> out (B*T, H hs), att (B, H, T, T)
// probabilities (zeros above the diagonal); dqkv +=. scratch: cu_attention_scratch_floats(B, T, H, hs) floats.
long cu_attention_scratch_floats(int B, int T, int H, int hs);
void cu_attention_forward(cublasHandle_t h, float *out, float *att, const float *qkv, float *scratch, int B, int T,
                          int H, int Hkv, int hs, cudaStream_t stream);
void cu_attention_backward(cublasHandle_t h, float *dqkv, const float *dout, const float *qkv, const float *att,
                           float *scratch, int B, int T, int H, int Hkv, int hs, cudaStream_t stream);

// moe.cu: the MoE layer of src/moe.c (shapes and meanings as MoeActs there; all device pointers).
typedef struct {
    int N, d, m, k, f;
    int renorm;             // 1: gates = chosen probs / their sum; 0: the chosen probs (gate_sum 1)
    float *logits, *probs;  // (N, m)
    float *lse;             // (N)
    int *topk;              // (N, k)
    float *gates;           // (N, k)
    float *gate_sum;        // (N)
    int *counts, *offsets;  // (m)
    int *row_choice, *choice_row; // (N*k)
    float *xe, *ye;         // (N*k, d)
    float *he, *ue, *ae;    // (N*k, f)
} CuMoeActs;
// router GEMM, softmax, top-k, gates, counts, offsets (experts in `order`, a device array, or NULL) and
// the packing order (each expert's rows in choice order); scratch: cu_moe_dispatch_scratch_ints(N*k, m) ints
void cu_moe_route(cublasHandle_t h, CuMoeActs *a, const float *inp, const float *router, const int *order,
                  int *scratch, cudaStream_t stream);
// the dispatch alone: counts, offsets (m) and row_choice (Nk) from topk (Nk), as src/moe.c's counting sort
int cu_moe_dispatch_scratch_ints(long Nk, int m);
void cu_moe_dispatch(int *counts, int *offsets, int *row_choice, const int *topk, const int *order, long Nk, int m,
                     int *scratch, cudaStream_t stream);
// the private shuffle (perm (N*k) from moe_shuffle_permutation, uploaded; NULL: none; scratch: N*k
// ints), the inverse order choice_row, and the packed inputs xe
void cu_moe_pack(CuMoeActs *a, const float *inp, const int *perm, int *scratch, cudaStream_t stream);
// out (2 doubles, device) = this layer's aux and z losses; scratch: cu_moe_losses_scratch_doubles(m) device doubles
int cu_moe_losses_scratch_doubles(int m);
void cu_moe_losses(double *out, double *scratch, const CuMoeActs *a, cudaStream_t stream);
// the experts present (gate[e] != NULL; device weights) on their rows, in grouped GEMMs (cu_ffn_groups_*);
// counts and offsets: HOST copies; t: a table of cu_ffn_table_bytes(m) bytes
void cu_moe_experts_forward(cublasHandle_t h, CuMoeActs *a, float *const *gate, float *const *up, float *const *down,
                            const int *counts, const int *offsets, CuTable t, cudaStream_t stream);
// out (N, d) = sum_j gates * ye (overwritten)
void cu_moe_combine(float *out, const CuMoeActs *a, cudaStream_t stream);
// dye (N*k, d) and dgates (N, k) from dout (N, d)
void cu_moe_combine_backward(float *dye, float *dgates, const float *dout, const CuMoeActs *a, cudaStream_t stream);
// dxe (N*k, d) of the experts present (overwritten), weight grads +=; scratch dhe, due, dae (N*k, f)
void cu_moe_experts_backward(cublasHandle_t h, float *dxe, float *dhe, float *due, float *dae, const float *dye,
                             const CuMoeActs *a, float *const *gate, float *const *up, float *const *down,
                             float *const *dgate, float *const *dup, float *const *ddown, const int *counts,
                             const int *offsets, CuTable t, cudaStream_t stream);
// dinp (N, d) += unpacked dxe and the router's input gradient; drouter (m, d) +=; dlogits (N, m) scratch.
// aux_counts (m, device) over aux_rows rows: the aux loss's fractions (a party of several ranks: its ranks'
// counts); NULL: a->counts over N.
void cu_moe_route_backward(cublasHandle_t h, float *dinp, float *drouter, float *dlogits, const float *dxe,
                           const float *dgates, const CuMoeActs *a, const float *inp, const float *router,
                           float aux_coef, float z_coef, const int *aux_counts, int aux_rows, cudaStream_t stream);

// matmul.cu (cuBLAS, fp32): out (N, n_out) = inp (N, n_in) @ w^T, w (n_out, n_in) row-major;
// dinp += dout @ w (skipped when dinp is NULL), dw += dout^T @ inp
void cu_matmul_forward(cublasHandle_t h, float *out, const float *inp, const float *w, int N, int n_in, int n_out);
void cu_matmul_backward(cublasHandle_t h, float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                        int N, int n_in, int n_out);

#endif
