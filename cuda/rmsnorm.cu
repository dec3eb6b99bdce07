// rmsnorm.cu: RMSNorm, one block per row; the backward's weight gradient in two stages (column sums over
// chunks of rows, then the chunks' sums in order), so no atomics and a fixed summation order.
#include "kernels.h"

static const int RMS_THREADS = 128, RMS_DW_ROWS = 64; // (RMS_DW_ROWS: rows of one partial sum of dw)

int cu_rmsnorm_scratch_floats(int N, int d) { return ceil_div(N, RMS_DW_ROWS) * d; }

// block n: rstd[n] = 1/sqrt(mean(inp[n]^2) + eps), out[n] = inp[n] * rstd[n] * w
__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *w, int d, float eps) {
    __shared__ float scratch[32];
    const float *x = inp + (long)blockIdx.x * d;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) ss += x[c] * x[c];
    ss = block_sum(ss, scratch);
    float r = 1.0f / sqrtf(ss / d + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    float *o = out + (long)blockIdx.x * d;
    for (int c = threadIdx.x; c < d; c += blockDim.x) o[c] = x[c] * r * w[c];
}

// block n: dinp[n] += rstd * (dout*w - xhat * mean(dout*w*xhat)), xhat = inp * rstd
__global__ void rmsnorm_backward_input_kernel(float *dinp, const float *dout, const float *inp, const float *w,
                                              const float *rstd, int d) {
    __shared__ float scratch[32];
    long row = (long)blockIdx.x * d;
    float r = rstd[blockIdx.x], dot = 0.0f;
    for (int c = threadIdx.x; c < d; c += blockDim.x) dot += dout[row + c] * w[c] * inp[row + c] * r;
    dot = block_sum(dot, scratch) / d;
    for (int c = threadIdx.x; c < d; c += blockDim.x)
        dinp[row + c] += r * (dout[row + c] * w[c] - inp[row + c] * r * dot);
}

// block (x, y), thread c of column block x: partial[y, c] = sum of dout[n, c] * inp[n, c] * rstd[n] over the rows
// n of chunk y (RMS_DW_ROWS rows), in order
__global__ void rmsnorm_dw_partial_kernel(float *partial, const float *dout, const float *inp, const float *rstd,
                                          int N, int d) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= d) return;
    int n0 = blockIdx.y * RMS_DW_ROWS, n1 = n0 + RMS_DW_ROWS < N ? n0 + RMS_DW_ROWS : N;
    float s = 0.0f;
    for (int n = n0; n < n1; n++) s += dout[(long)n * d + c] * inp[(long)n * d + c] * rstd[n];
    partial[(long)blockIdx.y * d + c] = s;
}


void cu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *w, int N, int d, float eps,
                        cudaStream_t stream) {
    LAUNCH(rmsnorm_forward_kernel, N, RMS_THREADS, 0, stream, out, rstd, inp, w, d, eps);
    cudaCheck(cudaGetLastError());
}

void cu_rmsnorm_backward(float *dinp, float *dw, float *scratch, const float *dout, const float *inp, const float *w,
                         const float *rstd, int N, int d, cudaStream_t stream) {
    if (N == 0) return;
    LAUNCH(rmsnorm_backward_input_kernel, N, RMS_THREADS, 0, stream, dinp, dout, inp, w, rstd, d);
    cudaCheck(cudaGetLastError());
    int chunks = ceil_div(N, RMS_DW_ROWS);
    LAUNCH(rmsnorm_dw_partial_kernel, dim3(ceil_div(d, 128), chunks), 128, 0, stream, scratch, dout, inp, rstd, N, d);
    cudaCheck(cudaGetLastError());
    LAUNCH(column_chunks_sum_kernel<float>, ceil_div(d, 128), 128, 0, stream, dw, scratch, chunks, d);
    cudaCheck(cudaGetLastError());
}
