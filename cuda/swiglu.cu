// swiglu.cu: the SwiGLU gate a = silu(h) * u, elementwise, and the SwiGLU FFN built on it (the dense
// layers' FFN and every expert): the composition of src/layers.c's ffn_forward / ffn_backward.
#include "kernels.h"

__global__ void swiglu_forward_kernel(float *a, const float *h, const float *u, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float sig = 1.0f / (1.0f + expf(-h[i]));
    a[i] = h[i] * sig * u[i];
}

__global__ void swiglu_backward_kernel(float *dh, float *du, const float *da, const float *h, const float *u, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float sig = 1.0f / (1.0f + expf(-h[i]));
    du[i] = da[i] * h[i] * sig;
    dh[i] = da[i] * u[i] * sig * (1.0f + h[i] * (1.0f - sig));
}

void cu_swiglu_forward(float *a, const float *h, const float *u, long n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(swiglu_forward_kernel, ceil_div(n, 256), 256, 0, stream, a, h, u, n);
    cudaCheck(cudaGetLastError());
}

void cu_swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n,
                        cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(swiglu_backward_kernel, ceil_div(n, 256), 256, 0, stream, dh, du, da, h, u, n);
    cudaCheck(cudaGetLastError());
}

void cu_ffn_forward(cublasHandle_t blas, float *y, float *h, float *u, float *a, const float *x, const float *wg,
                    const float *wu, const float *wd, int N, int d, int f, cudaStream_t stream) {
    cu_matmul_forward(blas, h, x, wg, N, d, f);
    cu_matmul_forward(blas, u, x, wu, N, d, f);
    cu_swiglu_forward(a, h, u, (long)N * f, stream);
    cu_matmul_forward(blas, y, a, wd, N, f, d);
}

void cu_ffn_backward(cublasHandle_t blas, float *dx, float *dwg, float *dwu, float *dwd, float *dh, float *du,
                     float *da, const float *dy, const float *x, const float *h, const float *u, const float *a,
                     const float *wg, const float *wu, const float *wd, int N, int d, int f, cudaStream_t stream) {
    cudaCheck(cudaMemsetAsync(da, 0, sizeof(float) * N * f, stream));
    cu_matmul_backward(blas, da, dwd, dy, a, wd, N, f, d);
    cu_swiglu_backward(dh, du, da, h, u, (long)N * f, stream);
    cudaCheck(cudaMemsetAsync(dx, 0, sizeof(float) * N * d, stream)); // (dy is no longer read: dx may be dy)
    cu_matmul_backward(blas, dx, dwg, dh, x, wg, N, d, f);
    cu_matmul_backward(blas, dx, dwu, du, x, wu, N, d, f);
}
