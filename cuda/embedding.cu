// embedding.cu: token embedding lookup and its scatter-add backward. The backward runs one block per distinct
// token of the batch (a bucket: the rows that hold it, in row order, built on the host, which has the tokens),
// so it is parallel over tokens and columns, needs no atomics, and adds each row in src/layers.c's order.
#include "kernels.h"

#include <algorithm> // stable_sort
#include <vector>

// one thread per element of out (N, d)
__global__ void embedding_forward_kernel(float *out, const Token *tokens, const float *embed, int N, int d) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * d) return;
    long n = i / d, c = i % d;
    out[i] = embed[(long)tokens[n] * d + c];
}

// block (b, column tile), one thread per column c: dembed[token of bucket b, c] += its rows of dout, in order
__global__ void embedding_backward_kernel(float *dembed, const float *dout, const int *bucket_token,
                                          const int *bucket_start, const int *bucket_rows, int d) {
    int b = blockIdx.x, c = blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= d) return;
    float *dst = dembed + (long)bucket_token[b] * d + c;
    float s = *dst;
    for (int i = bucket_start[b]; i < bucket_start[b + 1]; i++) s += dout[(long)bucket_rows[i] * d + c];
    *dst = s;
}

int cu_embedding_buckets(const Token *tokens, int N, int *token, int *start, int *rows) {
    std::vector<int> order(N);
    for (int n = 0; n < N; n++) order[n] = n;
    std::stable_sort(order.begin(), order.end(), [tokens](int a, int b) { return tokens[a] < tokens[b]; });
    int nb = 0;
    for (int i = 0; i < N; i++) {
        if (i == 0 || tokens[order[i]] != tokens[order[i - 1]]) {
            token[nb] = (int)tokens[order[i]];
            start[nb++] = i;
        }
        rows[i] = order[i];
    }
    start[nb] = N;
    return nb;
}

void cu_embedding_forward(float *out, const Token *tokens, const float *embed, int N, int d, cudaStream_t stream) {
    if (N == 0) return;
    LAUNCH(embedding_forward_kernel, ceil_div((long)N * d, 256), 256, 0, stream, out, tokens, embed, N, d);
    cudaCheck(cudaGetLastError());
}

void cu_embedding_backward(float *dembed, const float *dout, const int *bucket_token, const int *bucket_start,
                           const int *bucket_rows, int n_buckets, int d, cudaStream_t stream) {
    if (n_buckets == 0) return;
    LAUNCH(embedding_backward_kernel, dim3(n_buckets, ceil_div(d, 128)), 128, 0, stream, dembed, dout, bucket_token,
           bucket_start, bucket_rows, d);
    cudaCheck(cudaGetLastError());
}
