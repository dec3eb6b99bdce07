// swiglu.cu: the SwiGLU gate a = silu(h) * u, elementwise.
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

void cu_swiglu_backward(float *dh, float *du, const float *da, const float *h, const float *u, long n, cudaStream_t stream) {
    if (n == 0) return;
    LAUNCH(swiglu_backward_kernel, ceil_div(n, 256), 256, 0, stream, dh, du, da, h, u, n);
    cudaCheck(cudaGetLastError());
}
