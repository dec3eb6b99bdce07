// reduce.cu: the sum of squares of a gradient (its norm for clipping), deterministic: fixed chunks
// summed by fixed blocks, then the partial sums in order by one block. And the scan of received rows for
// NaN and Inf (privacy.check_finite).
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

// block (x, q): every element i of block q (rows[q] rows of d at row offs[q] of buf) that is NaN or Inf
// lowers first[q] to i (the smallest such i: the same for any order)
__global__ void nonfinite_kernel(unsigned long long *first, const float *buf, const int *rows_offs, int count, int d) {
    int q = blockIdx.y;
    const float *v = buf + (long)rows_offs[count + q] * d;
    long n = (long)rows_offs[q] * d;
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
        if (!(v[i] - v[i] == 0.0f)) atomicMin(&first[q], (unsigned long long)i);
}

// thread q: value[q] = that element (0 when none)
__global__ void nonfinite_value_kernel(float *value, const unsigned long long *first, const float *buf,
                                       const int *rows_offs, int count, int d) {
    int q = blockIdx.x * blockDim.x + threadIdx.x;
    if (q >= count) return;
    value[q] = first[q] == ~0ull ? 0.0f : buf[(long)rows_offs[count + q] * d + (long)first[q]];
}

void cu_first_nonfinite(unsigned long long *first, float *value, const float *buf, const int *rows_offs,
                        int most_rows, int count, int d, cudaStream_t stream) {
    if (count == 0) return;
    cudaCheck(cudaMemsetAsync(first, 0xff, sizeof(unsigned long long) * count, stream));
    int x = ceil_div((long)most_rows * d, 256);
    LAUNCH(nonfinite_kernel, dim3(x < 1 ? 1 : x < 1024 ? x : 1024, count), 256, 0, stream, first, buf, rows_offs, count,
           d);
    cudaCheck(cudaGetLastError());
    LAUNCH(nonfinite_value_kernel, ceil_div(count, 128), 128, 0, stream, value, first, buf, rows_offs, count, d);
    cudaCheck(cudaGetLastError());
}
