// crossentropy.cu: softmax cross-entropy over the vocabulary, one block per row.
#include "kernels.h"

static const int CE_THREADS = 256;

// block n: probs[n] = softmax(logits[n]) in place; losses[n] = logsumexp - logit of the target
__global__ void crossentropy_forward_kernel(float *probs, float *losses, const Token *targets, int V) {
    __shared__ float scratch[32];
    float *p = probs + (long)blockIdx.x * V;
    float logit_t = p[targets[blockIdx.x]];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, p[i]);
    m = block_max(m, scratch); // (its final barrier: every thread has read logit_t before p changes)
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) { p[i] = expf(p[i] - m); s += p[i]; }
    s = block_sum(s, scratch);
    float inv = 1.0f / s;
    for (int i = threadIdx.x; i < V; i += blockDim.x) p[i] *= inv;
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(s) + m - logit_t;
}

// block n: logits[n] becomes its gradient (softmax - onehot(target)) * scale, with the forward's and the
// backward's values (the same operations, so the same bits); losses[n] as the forward's
__global__ void crossentropy_fused_kernel(float *logits, float *losses, const Token *targets, int V, float scale) {
    __shared__ float scratch[32];
    float *p = logits + (long)blockIdx.x * V;
    int t = (int)targets[blockIdx.x];
    float logit_t = p[t];
    float m = -INFINITY;
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, p[i]);
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) { p[i] = expf(p[i] - m); s += p[i]; }
    s = block_sum(s, scratch);
    float inv = 1.0f / s;
    for (int i = threadIdx.x; i < V; i += blockDim.x) p[i] = (p[i] * inv) * scale - (i == t ? scale : 0.0f);
    if (threadIdx.x == 0) losses[blockIdx.x] = logf(s) + m - logit_t;
}

// one thread per element: dlogits = (probs - onehot(target)) * scale
__global__ void crossentropy_backward_kernel(float *dlogits, const float *probs, const Token *targets, int N, int V,
                                             float scale) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * V) return;
    long n = i / V;
    int c = (int)(i % V);
    dlogits[i] = probs[i] * scale - (c == (int)targets[n] ? scale : 0.0f);
}

void cu_crossentropy_forward(float *probs_inout, float *losses, const Token *targets, int N, int V,
                             cudaStream_t stream) {
    LAUNCH(crossentropy_forward_kernel, N, CE_THREADS, 0, stream, probs_inout, losses, targets, V);
    cudaCheck(cudaGetLastError());
}

void cu_crossentropy_backward(float *dlogits, const float *probs, const Token *targets, int N, int V, float scale,
                              cudaStream_t stream) {
    LAUNCH(crossentropy_backward_kernel, ceil_div((long)N * V, 256), 256, 0, stream, dlogits, probs, targets, N, V,
           scale);
    cudaCheck(cudaGetLastError());
}

void cu_crossentropy_fused(float *logits_inout, float *losses, const Token *targets, int N, int V, float scale,
                           cudaStream_t stream) {
    LAUNCH(crossentropy_fused_kernel, N, CE_THREADS, 0, stream, logits_inout, losses, targets, V, scale);
    cudaCheck(cudaGetLastError());
}
