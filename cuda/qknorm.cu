// qknorm.cu: QK-norm, RMSNorm of the query and key parts of each qkv row (src/layers.c's qknorm_forward):
// per_head = 0, one group for the query part and one for the key part; per_head = 1, one group per head.
// A warp per (row, group); the weight gradients in two stages (column sums over chunks of rows, then the chunks
// in order), so no atomics and a fixed summation order.
#include "kernels.h"

static const int QK_DW_ROWS = 64; // rows of one partial sum of a weight gradient

int cu_qknorm_scratch_floats(int N, int Hq, int Hkv, int hs, int per_head) {
    int lq = per_head ? hs : Hq * hs, lk = per_head ? hs : Hkv * hs;
    return ceil_div(N, QK_DW_ROWS) * (lq > lk ? lq : lk);
}

// group g of a row: its first column, its length, and whether it is a query group
__device__ __forceinline__ void qk_group(int g, int Hq, int Hkv, int hs, int per_head, int *col, int *len, int *is_q) {
    *is_q = per_head ? g < Hq : g == 0;
    *col = per_head ? g * hs : (g == 0 ? 0 : Hq * hs);
    *len = per_head ? hs : (g == 0 ? Hq : Hkv) * hs;
}

// one warp per (row n, group g): raw keeps the inputs; rstd (N, G)
__global__ void qknorm_forward_kernel(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N,
                                      int Hq, int Hkv, int hs, int per_head, float eps) {
    int G = per_head ? Hq + Hkv : 2, width = (Hq + 2 * Hkv) * hs, qk = (Hq + Hkv) * hs;
    long item = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (item >= (long)N * G) return; // (whole warps: blockDim.x is a multiple of 32)
    int lane = threadIdx.x % 32, g = (int)(item % G), col, len, is_q;
    long n = item / G;
    qk_group(g, Hq, Hkv, hs, per_head, &col, &len, &is_q);
    float *y = qkv + n * width + col, *x = raw + n * qk + col;
    const float *w = is_q ? wq : wk;
    float ss = 0.0f;
    for (int i = lane; i < len; i += 32) { x[i] = y[i]; ss += y[i] * y[i]; }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / len + eps);
    if (lane == 0) rstd[item] = r;
    for (int i = lane; i < len; i += 32) y[i] = x[i] * r * w[i];
}

// one warp per (row n, group g): the group's gradient, in place, becomes that of the norm's input
__global__ void qknorm_backward_input_kernel(float *dqkv, const float *raw, const float *wq, const float *wk,
                                             const float *rstd, int N, int Hq, int Hkv, int hs, int per_head) {
    int G = per_head ? Hq + Hkv : 2, width = (Hq + 2 * Hkv) * hs, qk = (Hq + Hkv) * hs;
    long item = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (item >= (long)N * G) return;
    int lane = threadIdx.x % 32, g = (int)(item % G), col, len, is_q;
    long n = item / G;
    qk_group(g, Hq, Hkv, hs, per_head, &col, &len, &is_q);
    float *dy = dqkv + n * width + col;
    const float *x = raw + n * qk + col, *w = is_q ? wq : wk;
    float r = rstd[item], dot = 0.0f;
    for (int i = lane; i < len; i += 32) dot += dy[i] * w[i] * x[i];
    dot = warp_sum(dot) / len * r * r;
    for (int i = lane; i < len; i += 32) dy[i] = r * (dy[i] * w[i] - x[i] * dot);
}

// block (x, y), thread i of column block x: partial[y, i] = sum over the rows n of chunk y (QK_DW_ROWS rows) and
// the query (want_q = 1) or key groups g of dy x rstd, in order
__global__ void qknorm_dw_partial_kernel(float *partial, int len, int want_q, const float *dqkv, const float *raw,
                                         const float *rstd, int N, int Hq, int Hkv, int hs, int per_head) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    int G = per_head ? Hq + Hkv : 2, width = (Hq + 2 * Hkv) * hs, qk = (Hq + Hkv) * hs;
    long n0 = (long)blockIdx.y * QK_DW_ROWS, n1 = n0 + QK_DW_ROWS < N ? n0 + QK_DW_ROWS : N;
    float s = 0.0f;
    for (long n = n0; n < n1; n++)
        for (int g = 0; g < G; g++) {
            int col, glen, is_q;
            qk_group(g, Hq, Hkv, hs, per_head, &col, &glen, &is_q);
            if (is_q != want_q) continue;
            s += dqkv[n * width + col + i] * raw[n * qk + col + i] * rstd[n * G + g];
        }
    partial[(long)blockIdx.y * len + i] = s;
}

void cu_qknorm_forward(float *qkv, float *raw, float *rstd, const float *wq, const float *wk, int N, int Hq, int Hkv,
                       int hs, int per_head, float eps, cudaStream_t stream) {
    long items = (long)N * (per_head ? Hq + Hkv : 2);
    LAUNCH(qknorm_forward_kernel, ceil_div(items, 4), 128, 0, stream, qkv, raw, rstd, wq, wk, N, Hq, Hkv, hs, per_head,
           eps);
    cudaCheck(cudaGetLastError());
}

void cu_qknorm_backward(float *dqkv, float *dwq, float *dwk, float *scratch, const float *raw, const float *wq,
                        const float *wk, const float *rstd, int N, int Hq, int Hkv, int hs, int per_head,
                        cudaStream_t stream) {
    if (N == 0) return;
    int lq = per_head ? hs : Hq * hs, lk = per_head ? hs : Hkv * hs, chunks = ceil_div(N, QK_DW_ROWS);
    // the weight gradients first: they read dy before it is replaced by the input gradient
    for (int q = 1; q >= 0; q--) {
        int len = q ? lq : lk;
        LAUNCH(qknorm_dw_partial_kernel, dim3(ceil_div(len, 128), chunks), 128, 0, stream, scratch, len, q, dqkv, raw,
               rstd, N, Hq, Hkv, hs, per_head);
        cudaCheck(cudaGetLastError());
        LAUNCH(column_chunks_sum_kernel<float>, ceil_div(len, 128), 128, 0, stream, q ? dwq : dwk, scratch, chunks,
               len);
        cudaCheck(cudaGetLastError());
    }
    long items = (long)N * (per_head ? Hq + Hkv : 2);
    LAUNCH(qknorm_backward_input_kernel, ceil_div(items, 4), 128, 0, stream, dqkv, raw, wq, wk, rstd, N, Hq, Hkv, hs,
           per_head);
    cudaCheck(cudaGetLastError());
}
