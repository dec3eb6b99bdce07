// attention.cu: causal grouped-query attention with the products in cuBLAS strided-batched GEMMs over the
// B*Hq query heads, and the causal softmax (and its backward) one warp per query row.
// Layout: qkv (B*T, (Hq + 2 Hkv) hs) as in src/layers.c; inside, q, k, v are permuted (one launch) to (B, Hq, T, hs)
// so that one head is one contiguous (T, hs) matrix, key and value heads repeated for each query head of their
// group (query head h reads key/value head h / group), and the scores of one head are one (T, T) matrix.
#include "kernels.h"

// one thread per element of qkvp (3, B, H, T, hs), the query, key and value parts one after the other: part p's
// head h is column block p_col + (h / p_group) hs of qkv (B*T, (H + 2 Hkv) hs) (keys and values repeated for the
// query heads of their group)
__global__ void attention_permute_kernel(float *qkvp, const float *qkv, int B, int T, int H, int Hkv, int hs) {
    long n = (long)B * H * T * hs, i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= 3 * n) return;
    int part = (int)(i / n);
    long j = i % n;
    int c = (int)(j % hs), t = (int)((j / hs) % T), h = (int)((j / ((long)hs * T)) % H),
        b = (int)(j / ((long)hs * T * H));
    int group = part == 0 ? 1 : H / Hkv, col = part == 0 ? 0 : (H + (part - 1) * Hkv) * hs;
    qkvp[i] = qkv[((long)b * T + t) * (H + 2 * Hkv) * hs + col + (h / group) * hs + c];
}

// one thread per element of x (B, H, T, hs): gathers the columns col .. col + H hs of src (B*T, stride), head by head
__global__ void attention_gather_kernel(float *x, const float *src, int B, int T, int H, int hs, int stride, int col) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, n = (long)B * H * T * hs;
    if (i >= n) return;
    int c = (int)(i % hs), t = (int)((i / hs) % T), h = (int)((i / ((long)hs * T)) % H),
        b = (int)(i / ((long)hs * T * H));
    x[i] = src[((long)b * T + t) * stride + col + h * hs + c];
}

// the inverse of the permute, accumulated: one thread per element of dqkv (B*T, (H + 2 Hkv) hs), which adds the
// sum over its group's heads (in order) of its part of x (3, B, H, T, hs): the query part head for head, each key
// and value head the H / Hkv query heads that read it
__global__ void attention_unpermute_kernel(float *dqkv, const float *x, int B, int T, int H, int Hkv, int hs) {
    int width = (H + 2 * Hkv) * hs;
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x, n = (long)B * H * T * hs;
    if (i >= (long)B * T * width) return;
    int col = (int)(i % width), t = (int)((i / width) % T), b = (int)(i / ((long)width * T));
    int part = col < H * hs ? 0 : col < (H + Hkv) * hs ? 1 : 2;
    int group = part == 0 ? 1 : H / Hkv, g = (col - (part == 0 ? 0 : (H + (part - 1) * Hkv) * hs)) / hs,
        c = col % hs;
    const float *xp = x + part * n;
    float s = 0.0f;
    for (int h = g * group; h < (g + 1) * group; h++) s += xp[(((long)b * H + h) * T + t) * hs + c];
    dqkv[i] += s;
}

// one thread per element of out (B*T, H hs): head h's row t of y (B, H, T, hs)
__global__ void attention_merge_kernel(float *out, const float *y, int B, int T, int H, int hs) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)B * T * H * hs) return;
    int c = (int)(i % hs), h = (int)((i / hs) % H), t = (int)((i / ((long)hs * H)) % T),
        b = (int)(i / ((long)hs * H * T));
    out[i] = y[(((long)b * H + h) * T + t) * hs + c];
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

// q, k, v (B, Hq, T, hs each, one after the other) from qkv (B*T, (Hq + 2 Hkv) hs): one launch
static void permute(float *q, const float *qkv, int B, int T, int Hq, int Hkv, int hs, cudaStream_t stream) {
    LAUNCH(attention_permute_kernel, ceil_div(3L * B * Hq * T * hs, 256), 256, 0, stream, q, qkv, B, T, Hq, Hkv, hs);
    cudaCheck(cudaGetLastError());
}

void cu_attention_forward(cublasHandle_t h, float *out, float *att, const float *qkv, float *scratch, int B, int T,
                          int H, int Hkv, int hs, cudaStream_t stream) {
    long n = (long)B * H * T * hs, tt = (long)T * T;
    int BH = B * H, qd = H * hs;
    float *q = scratch, *k = q + n, *v = k + n, *y = v + n;
    const float scale = 1.0f / sqrtf((float)hs), zero = 0.0f, one = 1.0f;
    permute(q, qkv, B, T, H, Hkv, hs, stream);
    // per head, row-major S (T, T) = scale * Q K^T, i.e. column-major S^T = scale * K Q^T
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs, &scale, k, hs, (long long)T * hs, q,
                                          hs, (long long)T * hs, &zero, att, T, tt, BH));
    LAUNCH(causal_softmax_kernel, ceil_div((long)BH * T, 4), 128, 0, stream, att, BH, T);
    cudaCheck(cudaGetLastError());
    // per head, Y (T, hs) = P V, i.e. column-major Y^T = V^T P^T
    cublasCheck(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T, &one, v, hs, (long long)T * hs, att, T,
                                          tt, &zero, y, hs, (long long)T * hs, BH));
    LAUNCH(attention_merge_kernel, ceil_div((long)B * T * qd, 256), 256, 0, stream, out, y, B, T, H, hs);
    cudaCheck(cudaGetLastError());
}

void cu_attention_backward(cublasHandle_t h, float *dqkv, const float *dout, const float *qkv, const float *att,
                           float *scratch, int B, int T, int H, int Hkv, int hs, cudaStream_t stream) {
    long n = (long)B * H * T * hs, tt = (long)T * T, th = (long)T * hs;
    int BH = B * H, width = (H + 2 * Hkv) * hs;
    float *q = scratch, *k = q + n, *v = k + n, *dy = v + n, *dq = dy + n, *dk = dq + n, *dv = dk + n, *dp = dv + n;
    const float scale = 1.0f / sqrtf((float)hs), zero = 0.0f, one = 1.0f;
    permute(q, qkv, B, T, H, Hkv, hs, stream);
    LAUNCH(attention_gather_kernel, ceil_div(n, 256), 256, 0, stream, dy, dout, B, T, H, hs, H * hs, 0);
    cudaCheck(cudaGetLastError());
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
    // dq, dk, dv (one after the other) into dqkv, one launch: the key and value gradients of a group's query
    // heads add into their one key and value head
    LAUNCH(attention_unpermute_kernel, ceil_div((long)B * T * width, 256), 256, 0, stream, dqkv, dq, B, T, H, Hkv, hs);
    cudaCheck(cudaGetLastError());
}
