// residual.cu: the residual connection out = a + b, elementwise.
#include "kernels.h"

__global__ void residual_kernel(float *out, const float *a, const float *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

void cu_residual_forward(float *out, const float *a, const float *b, long n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(residual_kernel, ceil_div(n, 256), 256, 0, stream, out, a, b, n);
    cudaCheck(cudaGetLastError());
}
