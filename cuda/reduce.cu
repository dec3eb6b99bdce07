// reduce.cu: the sum of squares of a gradient (its norm for clipping), deterministic: fixed chunks
// summed by fixed blocks, then the partial sums in order by one block.
#include "kernels.h"

static const int SS_THREADS = 256, SS_BLOCKS = 256;

int cu_sum_squares_scratch_doubles(void) { return SS_BLOCKS; }

// block b: partial[b] = sum of g[i]^2 over i = b*blockDim + t, stepping by the whole grid (double)
__global__ void sum_squares_partial_kernel(double *partial, const float *g, long n) {
    DYNAMIC_SMEM(double, s);
    double acc = 0.0;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        acc += (double)g[i] * g[i];
    s[threadIdx.x] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) s[threadIdx.x] += s[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[blockIdx.x] = s[0];
}

__global__ void sum_partials_kernel(double *out, const double *partial, int n) {
    double acc = 0.0;
    for (int i = 0; i < n; i++) acc += partial[i];
    *out = acc;
}

void cu_sum_squares(double *out, double *partial, const float *g, long n, cudaStream_t stream) {
    LAUNCH(sum_squares_partial_kernel, SS_BLOCKS, SS_THREADS, sizeof(double) * SS_THREADS, stream, partial, g, n);
    cudaCheck(cudaGetLastError());
    LAUNCH(sum_partials_kernel, 1, 1, 0, stream, out, partial, SS_BLOCKS);
    cudaCheck(cudaGetLastError());
}
