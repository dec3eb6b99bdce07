// embedding.cu: token embedding lookup and its scatter-add backward.
#include "kernels.h"

// one thread per element of out (N, d)
__global__ void embedding_forward_kernel(float *out, const Token *tokens, const float *embed, int N, int d) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * d) return;
    long n = i / d, c = i % d;
    out[i] = embed[(long)tokens[n] * d + c];
}

// one thread per column c: walks the rows in order, so the sums are deterministic (no atomics)
__global__ void embedding_backward_kernel(float *dembed, const float *dout, const Token *tokens, int N, int d) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    for (int n = 0; n < N; n++) dembed[(long)tokens[n] * d + c] += dout[(long)n * d + c];
}

void cu_embedding_forward(float *out, const Token *tokens, const float *embed, int N, int d, cudaStream_t stream) {
    LAUNCH(embedding_forward_kernel, ceil_div((long)N * d, 256), 256, 0, stream, out, tokens, embed, N, d);
    cudaCheck(cudaGetLastError());
}

void cu_embedding_backward(float *dembed, const float *dout, const Token *tokens, int N, int d, cudaStream_t stream) {
    LAUNCH(embedding_backward_kernel, ceil_div(d, 128), 128, 0, stream, dembed, dout, tokens, N, d);
    cudaCheck(cudaGetLastError());
}
