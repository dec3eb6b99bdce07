// attention.cu: causal grouped-query attention with the products in cuBLAS strided-batched GEMMs over the
// B*Hq query heads, and the causal softmax (and its backward) one warp per query row.
// Layout: qkv (B*T, (Hq + 2 Hkv) hs) as in src/layers.c; inside, q, k, v are permuted to (B, Hq, T, hs) so that
// one head is one contiguous (T, hs) matrix, key and value heads repeated for each query head of their group
// (query head h reads key/value head h / group), and the scores of one head are one (T, T) matrix.
#include "kernels.h"

// one thread per element of x (B, H, T, hs): gathers head h / group's columns col + (h / group)*hs .. of src
// (B*T, stride)
__global__ void attention_gather_kernel(float *x, const float *src, int B, int T, int H, int hs, int stride, int col,
                                        int group) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, n = (long)B * H * T * hs;
    if (i >= n) return;
    int c = (int)(i % hs), t = (int)((i / hs) % T), h = (int)((i / ((long)hs * T)) % H),
        b = (int)(i / ((long)hs * T * H));
    x[i] = src[((long)b * T + t) * stride + col + (h / group) * hs + c];
}

// the inverse of the gather for one (B, H, T, hs) tensor: out (B*T, stride) at column offset col + g*hs, for
// each of the H / group output heads g, gets (accumulate = 0) or adds (accumulate = 1) the sum of x over the
// group's heads g*group .. (g+1)*group - 1, in order. One thread per output element.
__global__ void attention_unpermute_kernel(float *out, const float *x, int B, int T, int H, int hs, int stride, int col,
                                           int group, int accumulate) {
    int Hout = H / group;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, n = (long)B * Hout * T * hs;
    if (i >= n) return;
    int c = (int)(i % hs), t = (int)((i / hs) % T), g = (int)((i / ((long)hs * T)) % Hout),
        b = (int)(i / ((long)hs * T * Hout));
    float s = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) s += x[(((long)b * H + h) * T + t) * hs + c];
    float *o = out + ((long)b * T + t) * stride + col + g * hs + c;
    *o = accumulate ? *o + s : s;
}

// one warp per row (bh, t) of the scores (B*H, T, T), already scaled: causal softmax in place, zeros
// above the diagonal
__global__ void causal_softmax_kernel(float *att, int BH, int T) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (long)BH * T) return; // (whole warps: blockDim.x is a multiple of 32)
    int t = (int)(row % T), lane = threadIdx.x % 32;
    float *p = att + row * T;
    float m = -INFINITY;
    for (int u = lane; u <= t; u += 32) m = fmaxf(m, p[u]);
    m = warp_reduce(m, MaxOp());
    float s = 0.0f;
    for (int u = lane; u <= t; u += 32) { p[u] = expf(p[u] - m); s += p[u]; }
    s = warp_sum(s);
    float inv = 1.0f / s;
    for (int u = lane; u < T; u += 32) p[u] = u <= t ? p[u] * inv : 0.0f;
}

// one warp per row: dp (the gradient of the probabilities) becomes the gradient of the scaled scores,
// p * (dp - sum_u p dp) * scale
__global__ void causal_softmax_backward_kernel(float *dp, const float *att, int BH, int T, float scale) {
    long row = (long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= (long)BH * T) return;
    int t = (int)(row % T), lane = threadIdx.x % 32;
    const float *p = att + row * T;
    float *g = dp + row * T;
    float dot = 0.0f;
    for (int u = lane; u <= t; u += 32) dot += p[u] * g[u];
    dot = warp_sum(dot);
    for (int u = lane; u < T; u += 32) g[u] = u <= t ? p[u] * (g[u] - dot) * scale : 0.0f;
}

long cu_attention_scratch_floats(int B, int T, int H, int hs) {
    long n = (long)B * H * T * hs;
    return 7 * n + (long)B * H * T * T;
}

static void gather(float *x, const float *src, int B, int T, int H, int hs, int stride, int col, int group,
                   cudaStream_t stream) {
    LAUNCH(attention_gather_kernel, ceil_div((long)B * H * T * hs, 256), 256, 0, stream, x, src, B, T, H, hs, stride,
           col, group);
    cudaCheck(cudaGetLastError());
}

// q, k, v (B, Hq, T, hs) from qkv (B*T, (Hq + 2 Hkv) hs)
static void permute(float *q, float *k, float *v, const float *qkv, int B, int T, int Hq, int Hkv, int hs,
                    cudaStream_t stream) {
    int width = (Hq + 2 * Hkv) * hs, group = Hq / Hkv;
    gather(q, qkv, B, T, Hq, hs, width, 0, 1, stream);
    gather(k, qkv, B, T, Hq, hs, width, Hq * hs, group, stream);
    gather(v, qkv, B, T, Hq, hs, width, (Hq + Hkv) * hs, group, stream);
}

static void unpermute(float *out, const float *x, int B, int T, int H, int hs, int stride, int col, int group,
                      int accumulate, cudaStream_t stream) {
    LAUNCH(attention_unpermute_kernel, ceil_div((long)B * (H / group) * T * hs, 256), 256, 0, stream, out, x, B, T, H,
           hs, stride, col, group, accumulate);
    cudaCheck(cudaGetLastError());
}

void cu_attention_forward(cublasHandle_t h, float *out, float *att, const float *qkv, float *scratch, int B, int T,
                          int H, int Hkv, int hs, cudaStream_t stream) {
    long n = (long)B * H * T * hs, tt = (long)T * T;
    int BH = B * H, qd = H * hs;
    float *q = scratch, *k = q + n, *v = k + n, *y = v + n;
    const float scale = 1.0f / sqrtf((float)hs), zero = 0.0f, one = 1.0f;
    permute(q, k, v, qkv, B, T, H, Hkv, hs, stream);
    // per head, row-major S (T, T) = scale * Q K^T, i.e. column-major S^T = scale * K Q^T
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, &scale, k, hs, (long long)T * hs, q,
                                          hs, (long long)T * hs, &zero, att, T, tt, BH));
    LAUNCH(causal_softmax_kernel, ceil_div((long)BH * T, 4), 128, 0, stream, att, BH, T);
    cudaCheck(cudaGetLastError());
    // per head, Y (T, hs) = P V, i.e. column-major Y^T = V^T P^T
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, &one, v, hs, (long long)T * hs, att, T,
                                          tt, &zero, y, hs, (long long)T * hs, BH));
    unpermute(out, y, B, T, H, hs, qd, 0, 1, 0, stream);
}

void cu_attention_backward(cublasHandle_t h, float *dqkv, const float *dout, const float *qkv, const float *att,
                           float *scratch, int B, int T, int H, int Hkv, int hs, cudaStream_t stream) {
    long n = (long)B * H * T * hs, tt = (long)T * T, th = (long)T * hs;
    int BH = B * H, qd = H * hs, width = (H + 2 * Hkv) * hs, group = H / Hkv;
    float *q = scratch, *k = q + n, *v = k + n, *dy = v + n, *dq = dy + n, *dk = dq + n, *dv = dk + n, *dp = dv + n;
    const float scale = 1.0f / sqrtf((float)hs), zero = 0.0f, one = 1.0f;
    permute(q, k, v, qkv, B, T, H, Hkv, hs, stream);
    gather(dy, dout, B, T, H, hs, qd, 0, 1, stream);
    // dP (T, T) = dY V^T: column-major dP^T = V dY^T
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, &one, v, hs, th, dy, hs, th, &zero, dp,
                                          T, tt, BH));
    // dV (T, hs) = P^T dY: column-major dV^T = dY^T P
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, &one, dy, hs, th, att, T, tt, &zero,
                                          dv, hs, th, BH));
    LAUNCH(causal_softmax_backward_kernel, ceil_div((long)BH * T, 4), 128, 0, stream, dp, att, BH, T, scale);
    cudaCheck(cudaGetLastError());
    // dQ (T, hs) = dS K: column-major dQ^T = K^T dS^T;  dK (T, hs) = dS^T Q: column-major dK^T = Q^T dS
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, &one, k, hs, th, dp, T, tt, &zero, dq,
                                          hs, th, BH));
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hs, T, T, &one, q, hs, th, dp, T, tt, &zero, dk,
                                          hs, th, BH));
    // the key and value gradients of a group's query heads add into their one key and value head
    unpermute(dqkv, dq, B, T, H, hs, width, 0, 1, 1, stream);
    unpermute(dqkv, dk, B, T, H, hs, width, qd, group, 1, stream);
    unpermute(dqkv, dv, B, T, H, hs, width, qd + Hkv * hs, group, 1, stream);
}
